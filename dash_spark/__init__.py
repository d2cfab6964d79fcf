"""dash-spark: genome-wide association scans on Spark from additive sufficient statistics.

The public API (see :mod:`dash_spark.api` for the model and every output column)::

    import dash_spark as ds
    geno = ds.open_bfile("cohort")                 # or open_pfile, open_bgen, open_features
    df = ds.linear_regression(spark, geno, "pheno.tsv", "covar.tsv")   # lazy Spark DataFrame
    cc = ds.logistic_regression(spark, geno, "cases.tsv", "covar.tsv")  # case/control: plink2's logistic
    S = ds.compress(spark, geno, "pheno.tsv", "covar.tsv")             # additive statistics
    table = (S + S_other).finalize()                                    # pyarrow Table
    res = ds.scan(ds.ScanConfig(bfile="cohort", pheno="pheno.tsv", out="results/"))  # files

The names load on first use, so that ``import dash_spark.<module>`` (the command line, Spark's
Python workers) does not pay for the whole package.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> (module, attribute)
_EXPORTS = {
    "compress": ("dash_spark.api", "compress"),
    "linear_regression": ("dash_spark.api", "linear_regression"),
    "logistic_regression": ("dash_spark.api", "logistic_regression"),
    "open_bfile": ("dash_spark.api", "open_bfile"),
    "open_features": ("dash_spark.api", "open_features"),
    "open_pfile": ("dash_spark.api", "open_pfile"),
    "open_bgen": ("dash_spark.api", "open_bgen"),
    "session": ("dash_spark.api", "session"),
    "example_data": ("dash_spark.api", "example_data"),
    "unpersist": ("dash_spark.api", "unpersist"),
    "task_errors": ("dash_spark.spark.frames", "task_errors"),
    "DashError": ("dash_spark.errors", "DashError"),
    "ScanConfig": ("dash_spark.scanner.pipeline", "ScanConfig"),
    "ScanResult": ("dash_spark.scanner.pipeline", "ScanResult"),
    "scan": ("dash_spark.scanner.pipeline", "run_scan"),
    "Moments": ("dash_spark.stats.sufficient", "Moments"),
    "StatLayout": ("dash_spark.stats.sufficient", "StatLayout"),
    "SufficientStats": ("dash_spark.stats.sufficient", "SufficientStats"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'dash_spark' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
