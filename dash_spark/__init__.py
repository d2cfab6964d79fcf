"""dash-spark: genome-wide linear-regression scans on Spark from additive sufficient statistics."""

__version__ = "0.1.0"
