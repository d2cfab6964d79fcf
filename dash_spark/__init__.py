"""dash-spark: genome-wide linear-regression scans on Spark from additive sufficient statistics.

The public API (see :mod:`dash_spark.api` for the model and every output column)::

    import dash_spark as ds
    geno = ds.open_bfile("cohort")
    df = ds.linear_regression(spark, geno, "pheno.tsv", "covar.tsv")   # lazy Spark DataFrame
    S = ds.compress(spark, geno, "pheno.tsv", "covar.tsv")             # additive statistics
    table = (S + S_other).finalize()                                    # pyarrow Table
    res = ds.scan(ds.ScanConfig(bfile="cohort", pheno="pheno.tsv", out="results/"))  # files
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import compress, linear_regression, open_bfile, open_bgen, open_features, open_pfile
from .errors import DashError
from .pipeline import ScanConfig, ScanResult
from .pipeline import run_scan as scan
from .stats.sufficient import Moments, StatLayout, SufficientStats

__all__ = [
    "DashError",
    "Moments",
    "ScanConfig",
    "ScanResult",
    "StatLayout",
    "SufficientStats",
    "__version__",
    "compress",
    "linear_regression",
    "open_bfile",
    "open_bgen",
    "open_features",
    "open_pfile",
    "scan",
]
