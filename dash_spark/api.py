"""The Python API: genotype sources, a lazy results DataFrame, and the additive statistics ``S``.

For notebooks (the shape Glow and Hail users know)::

    import dash_spark as ds

    geno = ds.open_bfile("cohort")                       # or ds.open_features(path_or_df, samples)
    df = ds.linear_regression(spark, geno, phenotypes=pheno_pdf, covariates=covar_pdf)
    df.filter("p < 5e-8").show()

    S1 = ds.compress(spark, ds.open_bfile("wave1"), "wave1.pheno", "wave1.covar")
    S2 = ds.compress(spark, ds.open_bfile("wave2"), "wave2.pheno", "wave2.covar")
    table = (S1 + S2).finalize()                         # pyarrow Table: the pooled scan

The model (DESIGN.md section 1), for every variant ``x`` and phenotype ``y`` over the samples
analysed for that phenotype: ``y = beta x + C gamma + e``, ``e ~ N(0, sigma^2 I)``; ``C`` holds
an intercept (unless ``intercept=False``) and the covariates. ``beta = x'y|C / x'x|C``,
``se = sqrt(sigma^2 / x'x|C)`` with ``sigma^2`` on ``n - k - 1`` degrees of freedom, ``t =
beta / se``, two-sided p from Student's t. A sample is analysed for a phenotype when it has the
phenotype, every covariate, and is in the genotypes (matched by IID); a missing genotype call
drops the sample from that variant (``missing_genotypes="drop"``, plink2) or is replaced by the
variant's mean (``"mean"``, Hail/REGENIE).

Output columns (``linear_regression``, :meth:`SufficientStats.finalize`, ``results.parquet``):

- ``variant_index`` (long): 0-based row of the variant in the source's variant list;
- ``chrom``, ``pos``, ``id``, ``ref``, ``alt``: the variant (``alt`` is the counted allele;
  features have ``.`` alleles);
- ``a1`` (string): the tested allele (plink2: the non-major allele over the founders; ALT with
  ``count_alt=True`` or for features);
- ``a1_freq`` (double): A1's frequency among the phenotype's samples with a call;
- ``obs_ct`` (long): samples in the regression;
- ``beta``, ``se``, ``t_stat`` (double): the effect of one A1 copy, its standard error, ``t``;
- ``p``, ``neg_log10_p`` (double): the two-sided p-value and ``-log10 p`` (exact where ``p``
  underflows to 0);
- ``phenotype`` (string); ``errcode`` (string): ``.`` when tested, else plink2's reason
  (``SAMPLE_CT<=PREDICTOR_CT``, ``CONST_OMITTED_ALLELE``, ``CORR_TOO_HIGH``, ``VIF_INFINITE``,
  ``VIF_TOO_HIGH``: plink2's names, checked in plink2's order) with null statistics.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from functools import partial

import numpy as np

from .errors import ConfigError, InputError
from .sources import GENOTYPE_SOURCES, FeatureSource, GenotypeSource, open_bfile, open_bgen, open_pfile
from .sources import open_features as _open_feature_files
from .stats.sufficient import SufficientStats

log = logging.getLogger("dash_spark")

__all__ = ["compress", "linear_regression", "open_bfile", "open_bgen", "open_features", "open_pfile"]


def open_features(features, samples, *, stage_dir: str | None = None) -> FeatureSource:
    """Real-valued features as a genotype source.

    ``features``: a Parquet path (a file, or a directory of parts) or a Spark DataFrame with
    Glow's columns ``id`` (string) and ``values`` (array<double>, one per sample in the order of
    ``samples``, null/NaN missing), optional ``chrom`` (string) and ``pos`` (long). ``samples``:
    a file of sample IDs (one IID, or FID IID, per line) or a sequence of IIDs.

    A DataFrame is written once as Parquet under ``stage_dir`` (default: a temporary directory;
    on a cluster give a path every executor can read), so that tasks read variant ranges.
    """
    staged = None
    if not isinstance(samples, (str, os.PathLike)):
        ids = [str(s) for s in samples]
        if not ids:
            raise InputError("open_features: samples is empty; expected one sample ID per value")
        staged = tempfile.mkdtemp(prefix="dash-spark-features-", dir=stage_dir)
        samples = os.path.join(staged, "samples.txt")
        with open(samples, "w") as fh:
            fh.write("#IID\n" + "".join(f"{s}\n" for s in ids))
    if hasattr(features, "write") and hasattr(features, "columns"):  # a Spark DataFrame
        missing = [c for c in ("id", "values") if c not in features.columns]
        if missing:
            raise InputError(f"open_features: the DataFrame lacks column(s) {', '.join(missing)}; expected Glow's "
                             "'id' and 'values' (array<double>), optional 'chrom' and 'pos'")
        staged = staged or tempfile.mkdtemp(prefix="dash-spark-features-", dir=stage_dir)
        path = os.path.join(staged, "features.parquet")
        keep = [c for c in ("id", "values", "chrom", "pos") if c in features.columns]
        features.select(*keep).write.parquet(path)
        features = path
    return _open_feature_files(str(features), str(samples))


def _as_source(genotypes) -> GenotypeSource:
    if isinstance(genotypes, GENOTYPE_SOURCES):
        return genotypes
    if isinstance(genotypes, (str, os.PathLike)):
        return open_bfile(os.fspath(genotypes))
    raise ConfigError(f"genotypes: expected open_bfile(...), open_pfile(...), open_bgen(...), open_features(...) "
                      f"or a PLINK prefix, found "
                      f"{type(genotypes).__name__}")


@contextmanager
def _table_path(table, kind: str):
    """A path for a plink2-style table given as a path or a pandas DataFrame with an ``IID``
    column (``FID`` optional); a DataFrame is written to a private temporary file."""
    if table is None or isinstance(table, (str, os.PathLike)):
        yield None if table is None else os.fspath(table)
        return
    if not hasattr(table, "columns") or "IID" not in list(table.columns):
        raise InputError(f"{kind}: expected a path or a pandas DataFrame with an 'IID' column (FID optional), "
                         f"found {type(table).__name__}" + (f" with columns {list(table.columns)}"
                                                            if hasattr(table, "columns") else ""))
    cols = [c for c in table.columns if c not in ("FID", "IID")]
    head = (["#FID", "IID"] if "FID" in table.columns else ["#IID"]) + [str(c) for c in cols]
    folder = tempfile.mkdtemp(prefix="dash-spark-table-")
    path = os.path.join(folder, f"{kind}.tsv")
    try:
        with open(path, "w") as fh:
            fh.write("\t".join(head) + "\n")
            ids = (["FID"] if "FID" in table.columns else []) + ["IID"]
            for row in table[ids + cols].itertuples(index=False):
                fields = []
                for v in row:
                    if v is None or (isinstance(v, float) and np.isnan(v)):
                        fields.append("NA")
                    else:
                        fields.append(repr(float(v)) if isinstance(v, (float, np.floating)) else str(v))
                fh.write("\t".join(fields) + "\n")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _config(source: GenotypeSource, pheno: str, covar: str | None, **options):
    from .pipeline import ScanConfig

    intercept = options.pop("intercept", True)
    names = {k: tuple(options.pop(k)) if options.get(k) else None for k in ("pheno_name", "covar_name")}
    return ScanConfig(**source.options(), pheno=pheno, covar=covar, out=os.devnull, no_intercept=not intercept,
                      plots=False, **names, **{k: v for k, v in options.items() if v is not None})


def linear_regression(spark, genotypes, phenotypes, covariates=None, *, intercept: bool = True,
                      missing_genotypes: str = "drop", pheno_names=None, covar_names=None, count_alt: bool = False,
                      covar_variance_standardize: bool = False, keep: str | None = None, remove: str | None = None,
                      maf: float | None = None, mac: float | None = None, geno: float | None = None,
                      block_variants: int | None = None, task_memory_mb: int = 256, linear_for_binary: bool = False,
                      pheno_01: bool = False):
    """Per-variant linear regression of every phenotype, as a lazy Spark DataFrame.

    ``genotypes``: :func:`open_bfile` / :func:`open_features` (or a PLINK prefix);
    ``phenotypes`` / ``covariates``: plink2-style text files or pandas DataFrames with an ``IID``
    column (``FID`` optional; NaN missing). The other options are ``dash-spark scan``'s.

    What runs where: the driver reads the samples, the tables and the variant list and builds the
    covariate bases; one per-sample matrix (the bases, phenotypes and masks) is broadcast once;
    each partition is a range of variants whose task reads its own genotypes and yields Arrow
    batches of results. Nothing runs until the DataFrame is used. The columns are those of the
    module docstring (``results.parquet``); the broadcast is released with the session.
    """
    from .pipeline import build_model, plan_scan
    from .spark.scan import map_ranges
    from .stats.results import RESULT_SCHEMA_DDL
    from .tasks import scan_ranges

    source = _as_source(genotypes)
    with _table_path(phenotypes, "phenotypes") as pheno, _table_path(covariates, "covariates") as covar:
        cfg = _config(source, pheno, covar, intercept=intercept, missing_genotypes=missing_genotypes,
                      pheno_name=pheno_names, covar_name=covar_names, count_alt=count_alt,
                      covar_variance_standardize=covar_variance_standardize, keep=keep, remove=remove, maf=maf,
                      mac=mac, geno=geno, block_variants=block_variants, task_memory_mb=task_memory_mb,
                      linear_for_binary=linear_for_binary, pheno_01=pheno_01)
        model = build_model(cfg)
    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    df, _broadcast = map_ranges(spark, model.W, ranges, partial(scan_ranges, plan), RESULT_SCHEMA_DDL)
    return df


def compress(spark, genotypes, phenotypes, covariates=None, *, intercept: bool = True,
             missing_genotypes: str = "drop", pheno_names=None, covar_names=None, keep: str | None = None,
             remove: str | None = None, block_variants: int | None = None,
             task_memory_mb: int = 256, linear_for_binary: bool = False, pheno_01: bool = False) -> SufficientStats:
    """The additive statistics ``S`` of one batch of samples (DESIGN.md section 2).

    Arguments as for :func:`linear_regression`. ``S`` holds each phenotype's global moments and
    every variant's sums; its size depends on the variants and the model, not on the samples.
    Statistics of disjoint sample sets with the same variants, phenotypes and covariates add up:
    ``(S1 + S2).finalize()`` equals ``linear_regression`` on the pooled samples, and ``S - S_w``
    withdraws samples. The driver gathers ``S`` (variants x statistics).
    """
    from .pipeline import compress_model, statistics_model

    source = _as_source(genotypes)
    with _table_path(phenotypes, "phenotypes") as pheno, _table_path(covariates, "covariates") as covar:
        cfg = _config(source, pheno, covar, intercept=intercept, missing_genotypes=missing_genotypes,
                      pheno_name=pheno_names, covar_name=covar_names, keep=keep, remove=remove,
                      block_variants=block_variants, task_memory_mb=task_memory_mb,
                      linear_for_binary=linear_for_binary, pheno_01=pheno_01)
        model = statistics_model(cfg)
    from dataclasses import replace

    from .study import variant_table

    S = compress_model(spark, cfg, model)
    return replace(S, variants=variant_table(model.bim))
