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

from .errors import ConfigError, DashError, InputError
from .scanner.sources import GENOTYPE_SOURCES, FeatureSource, GenotypeSource, open_bfile, open_bgen, open_pfile
from .scanner.sources import open_features as _open_feature_files
from .stats.sufficient import SufficientStats

log = logging.getLogger("dash_spark")

__all__ = ["compress", "example_data", "linear_regression", "logistic_regression", "open_bfile", "open_bgen",
           "open_features", "open_pfile", "session", "unpersist"]


def example_data(folder: str | None = None, *, n_samples: int = 300, n_variants: int = 120, seed: int = 7):
    """A small simulated cohort for trying the API (and for the examples in these docstrings).

    Parameters
    ----------
    folder : str, optional
        Where to write it (default: a new temporary folder).
    n_samples, n_variants : int
        Its size; two phenotypes (``pheno1``, ``pheno2``) with a few missing values, covariates
        ``age`` and ``sex``, missing calls and planted causal variants.
    seed : int
        The same seed gives the same files.

    Returns
    -------
    Cohort
        ``.bfile`` (a PLINK prefix), ``.pheno``, ``.covar`` (plink2-style tables).

    Examples
    --------
    >>> data = example_data()
    >>> geno = open_bfile(data.bfile)
    >>> geno.fam.n_samples, geno.variants.n_variants
    (300, 120)
    """
    from .bench.simulate import simulate_cohort

    folder = folder or tempfile.mkdtemp(prefix="dash-spark-example-")
    return simulate_cohort(folder, n_samples=n_samples, n_variants=n_variants, n_covariates=2, n_phenotypes=2,
                           n_causal=3, missing_rate=0.01, pheno_missing_rate=0.03, n_chrom=2, seed=seed)


def session(master: str | None = None, conf: dict | None = None):
    """The SparkSession to pass to :func:`linear_regression` and :func:`compress`.

    The active session if there is one, checked: a warning says so when its Python workers run
    another interpreter than this one, or cannot import dash_spark (then set
    ``spark.pyspark.python``, or ``PYSPARK_PYTHON`` before the session starts, to this
    interpreter). Otherwise a new session whose workers run this interpreter.

    Parameters
    ----------
    master : str, optional
        Spark master URL for a new session (default ``local[*]``, or what spark-submit set).
    conf : dict, optional
        Spark properties for a new session.

    Returns
    -------
    pyspark.sql.SparkSession

    Examples
    --------
    >>> spark = session()
    >>> spark.sparkContext.defaultParallelism >= 1
    True
    """
    import sys

    from pyspark.sql import SparkSession

    from .spark.session import get_session

    active = SparkSession.getActiveSession()
    if active is None:
        return get_session(master=master, conf=conf)

    def probe(_):  # runs in a worker: by value, needing nothing of dash_spark
        import importlib.util
        import sys as worker_sys

        return worker_sys.executable, importlib.util.find_spec("dash_spark") is not None

    try:
        python, importable = active.sparkContext.parallelize([0], 1).map(probe).collect()[0]
    except Exception as exc:  # noqa: BLE001 - the check itself must not stop the user
        log.warning("session: could not check the active session's Python workers (%s)", str(exc).splitlines()[0])
        return active
    if not importable:
        log.warning("session: the active session's Python workers (%s) cannot import dash_spark; its jobs will "
                    "fail. Start the session with spark.pyspark.python=%s (or PYSPARK_PYTHON set to it)", python,
                    sys.executable)
    elif python != sys.executable:
        log.warning("session: the active session's Python workers run %s, this notebook %s; results are computed "
                    "by the workers' copy of dash_spark", python, sys.executable)
    return active


def open_features(features, samples, *, stage_dir: str | None = None) -> FeatureSource:
    """Real-valued features as a genotype source.

    ``features``: a Parquet path (a file, or a directory of parts) or a Spark DataFrame with
    Glow's columns ``id`` (string) and ``values`` (array<double>, one per sample in the order of
    ``samples``, null/NaN missing), optional ``chrom`` (string) and ``pos`` (long). ``samples``:
    a file of sample IDs (one IID, or FID IID, per line) or a sequence of IIDs.

    A DataFrame is written once as Parquet under ``stage_dir`` (default: a temporary directory;
    on a cluster give a path every executor can read), so that tasks read variant ranges.

    Parameters
    ----------
    features : str or pyspark.sql.DataFrame
        The Parquet path, or the DataFrame.
    samples : str or sequence of str
        A file of sample IDs, or the IIDs, in the order of the values.
    stage_dir : str, optional
        Where a DataFrame is written once.

    Returns
    -------
    FeatureSource
        Its samples and features (``.variants``: one per feature).

    Examples
    --------
    >>> df = spark.createDataFrame([("f1", [0.5, 1.0, 2.0]), ("f2", [1.5, None, 0.0])], "id string, values array<double>")
    >>> feats = open_features(df, ["s1", "s2", "s3"])
    >>> feats.fam.n_samples, feats.variants.n_variants
    (3, 2)
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


def _frame(table, kind: str):
    """A pandas DataFrame of a table given as pandas or Arrow, with plink2's ``#FID``/``#IID``
    headers read as ``FID``/``IID`` and an index named ``IID`` (or ``FID``, ``IID``) as columns."""
    if hasattr(table, "to_pandas") and not hasattr(table, "itertuples"):  # a pyarrow Table
        table = table.to_pandas()
    if not hasattr(table, "columns"):
        raise InputError(f"{kind}: expected a path, a pandas DataFrame or a pyarrow Table with an 'IID' column "
                         f"(FID optional), found {type(table).__name__}")
    table = table.rename(columns={c: c[1:] for c in table.columns if str(c) in ("#FID", "#IID")})
    names = [n for n in (getattr(table.index, "names", None) or []) if n]
    if "IID" not in table.columns and "IID" in names:
        table = table.reset_index(level=[n for n in names if n in ("FID", "IID")])
    if "IID" not in table.columns:
        raise InputError(f"{kind}: expected an 'IID' column or index (FID optional; plink2's '#FID'/'#IID' "
                         f"headers too), found columns {list(table.columns)}")
    return table


def _cell(v, boolean_codes) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "NA"
    if isinstance(v, (bool, np.bool_)):
        return boolean_codes[bool(v)]
    return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)


@contextmanager
def _private_file(name: str, text: str, shown_as: str):
    """``text`` written to a private temporary file ``name``, removed afterwards; an error whose
    message names the file names ``shown_as`` instead (the argument the user gave)."""
    folder = tempfile.mkdtemp(prefix="dash-spark-arg-")
    path = os.path.join(folder, name)
    try:
        with open(path, "w") as fh:
            fh.write(text)
        try:
            yield path
        except DashError as exc:
            raise type(exc)(str(exc).replace(path, shown_as)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _table_path(table, kind: str):
    """A path for a plink2-style table given as a path, a pandas DataFrame or a pyarrow Table with
    an ``IID`` column or index (``FID`` optional); a table is written to a private temporary file,
    and errors about it name ``kind`` (the argument), never that file. Booleans are written as
    plink2's case/control codes in a phenotype table (False 1, True 2) and as 0/1 elsewhere."""
    if table is None or isinstance(table, (str, os.PathLike)):
        yield None if table is None else os.fspath(table)
        return
    table = _frame(table, kind)
    cols = [c for c in table.columns if c not in ("FID", "IID")]
    head = (["#FID", "IID"] if "FID" in table.columns else ["#IID"]) + [str(c) for c in cols]
    codes = {False: "1", True: "2"} if kind == "phenotypes" else {False: "0", True: "1"}
    ids = (["FID"] if "FID" in table.columns else []) + ["IID"]
    lines = ["\t".join(head)] + ["\t".join(_cell(v, codes) for v in row)
                                  for row in table[ids + cols].itertuples(index=False)]
    with _private_file(f"{kind}.tsv", "\n".join(lines) + "\n", f"{kind} (the table given)") as path:
        yield path


@contextmanager
def _id_list_path(ids, kind: str):
    """A path for ``keep=``/``remove=``: a file of IDs, or a list of IIDs (written to a private
    temporary file; errors name ``kind``)."""
    if ids is None or isinstance(ids, (str, os.PathLike)):
        yield None if ids is None else os.fspath(ids)
        return
    values = [str(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    with _private_file(f"{kind}.txt", "#IID\n" + "".join(f"{i}\n" for i in values),
                       f"{kind} (the list given)") as path:
        yield path


def _names(value, kind: str):
    """``pheno_names``/``covar_names``: one name as a string, or a sequence of names."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        raise ConfigError(f"{kind}: expected a column name or a list of names, found {type(value).__name__}") from None


def _config(source: GenotypeSource, pheno: str, covar: str | None, **options):
    from .config import ScanConfig

    intercept = options.pop("intercept", True)
    names: dict = {k: tuple(options.pop(k)) if options.get(k) else None for k in ("pheno_name", "covar_name")}
    return ScanConfig(**source.options(), pheno=pheno, covar=covar, out=os.devnull, no_intercept=not intercept,
                      plots=False, **names, **{k: v for k, v in options.items() if v is not None})


def linear_regression(spark, genotypes, phenotypes, covariates=None, *, intercept: bool = True,
                      missing_genotypes: str = "drop", pheno_names=None, covar_names=None, count_alt: bool = False,
                      covar_variance_standardize: bool = False, keep: str | None = None, remove: str | None = None,
                      maf: float | None = None, mac: float | None = None, geno: float | None = None,
                      block_variants: int | None = None, task_memory_mb: int = 256, linear_for_binary: bool = False,
                      pheno_01: bool = False):
    """Per-variant linear regression of every phenotype, as a lazy Spark DataFrame.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
        The session (:func:`session` makes a local one).
    genotypes
        :func:`open_bfile`, :func:`open_pfile`, :func:`open_bgen` or :func:`open_features` (or a
        PLINK prefix).
    phenotypes, covariates : str, pandas.DataFrame or pyarrow.Table
        plink2-style text files, or tables with ``IID`` (a column, ``#IID``, or the index; ``FID``
        optional; NaN missing). Case/control phenotypes are refused here
        (:func:`logistic_regression`), unless ``linear_for_binary=True``.
    pheno_names, covar_names : str or list of str, optional
        The columns to use (default: all).
    keep, remove : str or list of str, optional
        A file of IIDs, or the IIDs.
    **options
        The other options are ``dash-spark scan``'s, by their field names.

    What runs where: the driver reads the samples, the tables and the variant list and builds the
    covariate bases; one per-sample matrix (the bases, phenotypes and masks) is broadcast once;
    each partition is a range of variants whose task reads its own genotypes and yields Arrow
    batches of results. Nothing runs until the DataFrame is used. The columns are those of the
    module docstring (``results.parquet``); the broadcast is released with the session.

    Returns
    -------
    pyspark.sql.DataFrame
        One row per variant and phenotype [rows: variants x phenotypes]. Lazy: the scan runs at
        its first action, and an error in a Spark task (a genotype block that does not decode)
        is raised by that action, and by those of frames derived from it, as the same
        :class:`~dash_spark.errors.DashError` the command line prints.

    Examples
    --------
    >>> data = example_data()
    >>> df = linear_regression(spark, open_bfile(data.bfile), data.pheno, data.covar, pheno_names="pheno1")
    >>> df.count()
    120
    >>> sorted(df.columns)[:4]
    ['a1', 'a1_freq', 'alt', 'beta']
    """
    return _scan_frame(spark, genotypes, phenotypes, covariates, "linear", intercept=intercept,
                       missing_genotypes=missing_genotypes, pheno_names=pheno_names, covar_names=covar_names,
                       count_alt=count_alt, covar_variance_standardize=covar_variance_standardize, keep=keep,
                       remove=remove, maf=maf, mac=mac, geno=geno, block_variants=block_variants,
                       task_memory_mb=task_memory_mb, linear_for_binary=linear_for_binary, pheno_01=pheno_01)


def logistic_regression(spark, genotypes, phenotypes, covariates=None, *, intercept: bool = True,
                        missing_genotypes: str = "drop", pheno_names=None, covar_names=None, count_alt: bool = False,
                        covar_variance_standardize: bool = False, keep: str | None = None, remove: str | None = None,
                        maf: float | None = None, mac: float | None = None, geno: float | None = None,
                        block_variants: int | None = None, task_memory_mb: int = 256, pheno_01: bool = False,
                        test: str = "hybrid", correction: str = "spa", p_thresh: float = 0.05):
    """Per-variant logistic regression of every case/control phenotype (plink2's ``--glm``: Firth
    regression where logistic regression cannot be trusted), as a lazy Spark DataFrame; with
    ``test="score"``, the score test from the null model with the saddlepoint correction below
    p 0.05 (``dash-spark scan --binary-test score``: ``beta`` = U / V, ``t_stat`` the signed root of
    the chi-square).

    Arguments as :func:`linear_regression`'s; every selected phenotype must be case/control as
    plink2 reads it (1 control, 2 case, 0/-9/NA missing; ``pheno_01=True``: 0 control, 1 case;
    booleans in a DataFrame). The rows have the same columns: ``beta`` is the log odds ratio of A1,
    ``se`` its standard error, ``t_stat`` the Wald z, and ``firth`` says whether Firth regression
    gave the row.

    Parameters
    ----------
    test : {"hybrid", "score"}
        plink2's Wald test with Firth fallback, or the score test with the saddlepoint correction.
    correction : {"spa", "firth", "none"}
        The score test's correction of p-values below ``p_thresh`` (``--score-correction``): the
        saddlepoint approximation, REGENIE's approximate Firth test (``beta`` is then Firth's
        estimate and ``firth`` is set), or none.
    p_thresh : float
        ``--score-p-thresh`` (REGENIE's ``--pThresh``).
    other
        As for :func:`linear_regression`.

    Returns
    -------
    pyspark.sql.DataFrame
        One row per variant and phenotype [rows: variants x phenotypes].

    Examples
    --------
    >>> import pandas as pd
    >>> data = example_data()
    >>> y = pd.read_csv(data.pheno, sep="\\t")
    >>> y["case"] = y["pheno1"] > y["pheno1"].quantile(0.7)
    >>> df = logistic_regression(spark, open_bfile(data.bfile), y[["IID", "case"]], data.covar)
    >>> df.filter("errcode = '.'").count() > 100
    True
    """
    return _scan_frame(spark, genotypes, phenotypes, covariates, "logistic", intercept=intercept,
                       missing_genotypes=missing_genotypes, pheno_names=pheno_names, covar_names=covar_names,
                       count_alt=count_alt, covar_variance_standardize=covar_variance_standardize, keep=keep,
                       remove=remove, maf=maf, mac=mac, geno=geno, block_variants=block_variants,
                       task_memory_mb=task_memory_mb, pheno_01=pheno_01, binary_test=test,
                       score_correction=correction, score_p_thresh=p_thresh)


def _scan_frame(spark, genotypes, phenotypes, covariates, kind: str, *, pheno_names, covar_names, keep, remove,
                **options):
    """The scan's result rows as a lazy DataFrame; ``kind``: the model every phenotype must get."""
    from .scanner.pipeline import plan_scan
    from .scanner.model import scan_model
    from .scanner.jobs import map_ranges
    from .stats.results import RESULT_SCHEMA_DDL
    from .scanner.tasks import scan_ranges
    from .spark.frames import adopt

    source = _as_source(genotypes)
    with _table_path(phenotypes, "phenotypes") as pheno, _table_path(covariates, "covariates") as covar, \
            _id_list_path(keep, "keep") as keep, _id_list_path(remove, "remove") as remove:
        cfg = _config(source, pheno, covar, pheno_name=_names(pheno_names, "pheno_names"),
                      covar_name=_names(covar_names, "covar_names"), keep=keep, remove=remove, **options)
        model = scan_model(cfg)
    logistic = set(model.logistic_phenotypes)
    other = [p for p in model.phenotypes if (p in logistic) != (kind == "logistic")]
    if other and kind == "linear":
        raise ConfigError(f"phenotypes: {', '.join(other)} are case/control as plink2 reads them; fit them with "
                          "logistic_regression() (plink2's logistic --glm), or pass linear_for_binary=True for a "
                          "linear probability model")
    if other:
        raise ConfigError(f"phenotypes: {', '.join(other)} are not case/control (expected only 1/2 with 0, -9 or NA "
                          "missing, 0/1 with pheno_01=True, or booleans); fit them with linear_regression() or leave "
                          "them out with pheno_names")
    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    df, broadcast = map_ranges(spark, model.W, ranges, partial(scan_ranges, plan), RESULT_SCHEMA_DDL)
    df = adopt(df)  # its actions (and those of frames derived from it) raise our errors, one line each
    df._dash_broadcast = broadcast  # unpersist(df) frees it
    return df


def unpersist(df) -> None:
    """Free the per-sample matrix a :func:`linear_regression` DataFrame broadcast to the executors
    (samples x columns, kept until the session ends otherwise). Use neither the DataFrame nor the
    ones derived from it afterwards; releasing twice, or another DataFrame, does nothing.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        A DataFrame of :func:`linear_regression` or :func:`logistic_regression`.

    Examples
    --------
    >>> data = example_data()
    >>> df = linear_regression(spark, open_bfile(data.bfile), data.pheno, pheno_names="pheno1")
    >>> df.count()
    120
    >>> unpersist(df)
    """
    broadcast = getattr(df, "_dash_broadcast", None)
    if broadcast is not None:
        broadcast.destroy()
        df._dash_broadcast = None


def compress(spark, genotypes, phenotypes, covariates=None, *, intercept: bool = True,
             missing_genotypes: str = "drop", pheno_names=None, covar_names=None, keep: str | None = None,
             remove: str | None = None, block_variants: int | None = None,
             task_memory_mb: int = 256, linear_for_binary: bool = False, pheno_01: bool = False) -> SufficientStats:
    """The additive statistics ``S`` of one batch of samples (DESIGN.md section 2).

    Parameters
    ----------
    spark, genotypes, phenotypes, covariates, **options
        As for :func:`linear_regression` (case/control phenotypes only with ``linear_for_binary``).
 ``S`` holds each phenotype's global moments and
    every variant's sums; its size depends on the variants and the model, not on the samples.
    Statistics of disjoint sample sets with the same variants, phenotypes and covariates add up:
    ``(S1 + S2).finalize()`` equals ``linear_regression`` on the pooled samples, and ``S - S_w``
    withdraws samples. The driver gathers ``S`` (variants x statistics).

    Returns
    -------
    SufficientStats
        Each phenotype's moments and the per-variant sums [shape: (variants, layout width)].

    Examples
    --------
    >>> data = example_data()
    >>> geno = open_bfile(data.bfile)
    >>> ids = list(geno.fam.iids)
    >>> S1 = compress(spark, geno, data.pheno, data.covar, keep=ids[:200])
    >>> S2 = compress(spark, geno, data.pheno, data.covar, keep=ids[200:])
    >>> S = S1 + S2
    >>> S.n_samples("pheno1") == S1.n_samples("pheno1") + S2.n_samples("pheno1")
    True
    >>> S.finalize().num_rows  # 120 variants x 2 phenotypes
    240
    >>> S1 + S1
    Traceback (most recent call last):
        ...
    dash_spark.errors.ModelError: statistics +: both hold the same batch (1 batch(es) in common); each batch's samples may be added once
    """
    from .scanner.pipeline import compress_model
    from .scanner.model import statistics_model

    source = _as_source(genotypes)
    with _table_path(phenotypes, "phenotypes") as pheno, _table_path(covariates, "covariates") as covar, \
            _id_list_path(keep, "keep") as keep, _id_list_path(remove, "remove") as remove:
        cfg = _config(source, pheno, covar, intercept=intercept, missing_genotypes=missing_genotypes,
                      pheno_name=_names(pheno_names, "pheno_names"), covar_name=_names(covar_names, "covar_names"),
                      keep=keep, remove=remove,
                      block_variants=block_variants, task_memory_mb=task_memory_mb,
                      linear_for_binary=linear_for_binary, pheno_01=pheno_01)
        model = statistics_model(cfg)
    from dataclasses import replace

    from .studies.study import variant_table

    import uuid

    S = compress_model(spark, cfg, model)
    return replace(S, variants=variant_table(model.bim), sources=frozenset({uuid.uuid4().hex}))
