"""A scan's settings (:class:`ScanConfig`, validated once) and job configs in TOML: one ``[scan]``
table whose keys are :class:`ScanConfig` fields. A leaf: nothing here imports the drivers.

Relative paths are resolved against the config file's directory; unknown keys are rejected with a
did-you-mean hint. A ``[spark]`` table (string values) is passed to the session builder, and an
optional top-level ``spark_properties = "file"`` names a spark-defaults style file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field

from .errors import ConfigError, did_you_mean
from .spark.session import read_properties


def tasks_can_write(uri: str) -> bool:
    """Whether the tasks write a scan's output files themselves (a local or shared path, file://);
    other filesystems (hdfs://, s3a:// ...) go through Spark's writer."""
    return "://" not in uri or uri.startswith("file://")


def object_store_out(uri: str) -> bool:
    """Whether an --out URI is object storage written through pyarrow (s3://, gs://); other URIs
    (hdfs://, s3a:// ...) go through Spark's writer."""
    from .outputs.staging import object_store_uri

    return object_store_uri(uri)


MISSING_GENOTYPE_MODES = ("drop", "mean")
PRED_TESTS = ("wald", "regenie")
BINARY_TESTS = ("hybrid", "score")
#: the score test's correction of its small p-values (REGENIE's --spa, --firth --approx, neither)
SCORE_CORRECTIONS = ("spa", "firth", "none")


@dataclass(frozen=True)
class ScanConfig:
    """Settings of one scan (CLI flags and job-config keys have the same names), validated once.

    Parameters
    ----------
    pheno, out : str
        The phenotype table and the output directory (``--pheno``, ``--out``).
    bfile, pfile, bgen, features : str, optional
        Exactly one genotype source (``bgen`` with ``bgen_ref``; ``features`` with
        ``feature_samples``).
    **other
        Every other ``dash-spark scan`` option by its field name (``--covar`` is ``covar``,
        ``--binary-test`` is ``binary_test`` ...).

    Raises
    ------
    ConfigError
        One line naming the option and what it expects.

    Examples
    --------
    >>> cfg = ScanConfig(bfile="cohort", pheno="pheno.tsv", out="results", maf=0.01)
    >>> cfg.missing_genotypes, cfg.binary_test
    ('drop', 'hybrid')
    >>> ScanConfig(bfile="cohort", pfile="cohort", pheno="pheno.tsv", out="results")
    Traceback (most recent call last):
    ...
    dash_spark.errors.ConfigError: give exactly one genotype source: ...
    """

    pheno: str
    out: str
    bfile: str | None = None
    covar: str | None = None
    features: str | None = None
    feature_samples: str | None = None
    pfile: str | None = None
    bgen: str | None = None
    bgen_ref: str | None = None
    sample: str | None = None
    #: plink2's --id-delim: the BGEN's own sample IDs are FID<delim>IID (REGENIE writes FID_IID)
    id_delim: str | None = None
    #: a statistics model's chrX/Y/MT as plink2 models them (False: as autosomes, as the batches of
    #: a store made before these models were added)
    sex_chromosomes: bool = True
    #: plink2's --1: a case/control phenotype is coded 0 control, 1 case (default 1/2, 0 missing)
    pheno_01: bool = False
    #: analyse case/control phenotypes by linear regression (a linear probability model); without it
    #: they are refused, since plink2 fits them by logistic regression
    linear_for_binary: bool = False
    #: case/control phenotypes: "hybrid" (plink2's logistic Wald test, Firth fallback) or "score"
    #: (the score test with the saddlepoint correction, :mod:`dash_spark.stats.score`)
    binary_test: str = "hybrid"
    #: the score test's correction below ``score_p_thresh`` (REGENIE's --pThresh): "spa" (the
    #: saddlepoint approximation), "firth" (REGENIE's --firth --approx) or "none"
    score_correction: str = "spa"
    score_p_thresh: float = 0.05
    pheno_name: tuple[str, ...] | None = None
    covar_name: tuple[str, ...] | None = None
    no_intercept: bool = False
    overwrite: bool = False
    block_variants: int | None = None
    task_memory_mb: int = 256
    missing_genotypes: str = "drop"
    count_alt: bool = False
    plots: bool = True
    #: write the per-phenotype text files (.glm.linear, .glm.logistic.hybrid, .regenie); False
    #: (--no-text): results.parquet, the summaries and plots only (large runs: no text formatting)
    text: bool = True
    keep: str | None = None
    remove: str | None = None
    extract: str | None = None
    exclude: str | None = None
    chr: str | None = None
    from_bp: int | None = None
    to_bp: int | None = None
    maf: float | None = None
    mac: float | None = None
    geno: float | None = None
    covar_variance_standardize: bool = False
    a1freq_lower_limit: float = 0.0
    plots_top: int | None = None
    gwas_ssf: bool = False
    genome_assembly: str | None = None
    report_covariates: bool = False
    pred: str | None = None
    pred_test: str = "wald"
    xchr_model: int = 2
    mach_r2_filter: tuple[float, float] | None = None
    master: str | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if sum(bool(x) for x in (self.bfile, self.features, self.pfile, self.bgen)) != 1:
            raise ConfigError("give exactly one genotype source: --bfile PREFIX, --pfile PREFIX, --bgen FILE "
                              "ref-first|ref-last, or --features FILE.parquet (with --feature-samples)")
        if self.bgen and self.bgen_ref not in ("ref-first", "ref-last"):
            raise ConfigError(f"--bgen {self.bgen}: expected 'ref-first' or 'ref-last' after the file name (which "
                              f"allele is REF, as plink2's --bgen), found {self.bgen_ref!r}")
        if self.id_delim is not None and not self.bgen:
            raise ConfigError("--id-delim splits the sample IDs stored in a --bgen file; give --bgen FILE too")
        if self.id_delim is not None and self.sample:
            raise ConfigError("--id-delim splits the sample IDs stored in the .bgen, but --sample gives the IDs "
                              "(ID_1 and ID_2 are FID and IID already); drop one of them")
        if self.id_delim is not None and (len(self.id_delim) != 1 or self.id_delim.isspace()):
            raise ConfigError(f"--id-delim {self.id_delim!r}: expected one character that is not a space, e.g. _")
        if self.sample and not self.bgen:
            raise ConfigError("--sample names the samples of a --bgen file; give --bgen FILE ref-first|ref-last too")
        if self.features and not self.feature_samples:
            raise ConfigError("--features needs --feature-samples FILE (the sample IDs, in the order of the values)")
        if self.missing_genotypes not in MISSING_GENOTYPE_MODES:
            raise ConfigError(
                f"missing_genotypes: expected one of {', '.join(MISSING_GENOTYPE_MODES)}, "
                f"found {self.missing_genotypes!r}"
            )
        if self.block_variants is not None and self.block_variants < 1:
            raise ConfigError(f"block_variants: expected a positive integer, found {self.block_variants}")
        for name in ("maf", "geno"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise ConfigError(f"--{name}: expected a fraction between 0 and 1, found {v}")
        if self.mac is not None and self.mac < 0:
            raise ConfigError(f"--mac: expected a non-negative count, found {self.mac}")
        if self.plots_top is not None and self.plots_top < 1:
            raise ConfigError(f"--plots-top: expected a positive number of phenotypes, found {self.plots_top}")
        if not 0 <= self.a1freq_lower_limit < 0.5:
            raise ConfigError(f"--a1freq-lower-limit: expected a frequency in [0, 0.5), found {self.a1freq_lower_limit}")
        if self.mach_r2_filter is not None:
            lo, hi = self.mach_r2_filter
            if not 0 <= lo <= hi:
                raise ConfigError(f"--mach-r2-filter: expected 0 <= MIN <= MAX, found {lo:g} {hi:g}")
        if self.xchr_model not in (0, 1, 2):
            raise ConfigError(f"--xchr-model: expected 0, 1 or 2 (as plink2), found {self.xchr_model!r}")
        if self.binary_test not in BINARY_TESTS:
            raise ConfigError(f"--binary-test: expected one of {', '.join(BINARY_TESTS)}, found {self.binary_test!r}")
        if self.score_correction not in SCORE_CORRECTIONS:
            raise ConfigError(f"--score-correction: expected one of {', '.join(SCORE_CORRECTIONS)}, found "
                              f"{self.score_correction!r}")
        if not 0 < self.score_p_thresh <= 1:
            raise ConfigError(f"--score-p-thresh: expected a p-value in (0, 1], found {self.score_p_thresh!r}")
        if (self.score_correction, self.score_p_thresh) != ("spa", 0.05) and self.binary_test != "score":
            raise ConfigError("--score-correction/--score-p-thresh: they set the score test's correction; add "
                              "--binary-test score")
        if self.binary_test == "score" and not (tasks_can_write(self.out) or object_store_out(self.out)):
            raise ConfigError("--binary-test score writes its .regenie files to a local, shared or object-storage "
                              f"(s3://, gs://) --out; found {self.out}")
        if self.pred_test not in PRED_TESTS:
            raise ConfigError(f"--pred-test: expected one of {', '.join(PRED_TESTS)}, found {self.pred_test!r}")
        if self.pred_test == "regenie" and not self.pred:
            raise ConfigError("--pred-test regenie needs --pred FILE_pred.list (REGENIE's step-1 predictions)")
        if self.pred_test == "regenie" and not (tasks_can_write(self.out) or object_store_out(self.out)):
            raise ConfigError("--pred-test regenie writes its .regenie files to a local, shared or object-storage "
                              f"(s3://, gs://) --out; found {self.out}")
        if self.pred and self.pred_test == "regenie" and self.no_intercept:
            raise ConfigError("--pred-test regenie: REGENIE's test always has an intercept; drop --no-intercept")
        if self.task_memory_mb < 16:
            raise ConfigError(f"task_memory_mb: expected at least 16, found {self.task_memory_mb}")
        if self.gwas_ssf or self.genome_assembly or self.report_covariates:
            from .outputs.gwas_ssf import check_ssf_options

            check_ssf_options(self.gwas_ssf, self.genome_assembly, self.out, features=bool(self.features),
                              report_covariates=self.report_covariates)



#: the genotype and table files of a batch or party (``--bfile`` ... ``--pred``), by ScanConfig field
SOURCE_KEYS = ("bfile", "features", "feature_samples", "pfile", "bgen", "bgen_ref", "sample", "id_delim", "pheno",
               "covar", "pred")


@dataclass(frozen=True)
class ModelSettings:
    """The model options a store fixes when it is created and a study's manifest fixes for every
    party, so that every batch's or party's statistics have the same meaning and add up. Stored as
    JSON (:meth:`to_json`) and read back checked (:meth:`from_json`).

    Examples
    --------
    >>> m = ModelSettings.from_json({"intercept": True, "pheno_names": ["bmi"]}, where="store.json")
    >>> m.pheno_names, m.missing_genotypes
    (('bmi',), 'drop')
    >>> ModelSettings.from_json({"missing_genotypes": "zero"}, where="store.json")
    Traceback (most recent call last):
    ...
    dash_spark.errors.ConfigError: store.json: missing_genotypes: expected one of drop, mean, found 'zero'
    """

    intercept: bool = True
    missing_genotypes: str = "drop"
    #: the phenotypes and covariates selected by name (None: every column of the tables)
    pheno_names: tuple[str, ...] | None = None
    covar_names: tuple[str, ...] | None = None
    pheno_01: bool = False
    linear_for_binary: bool = False
    pred_test: str = "wald"

    def __post_init__(self):
        for key in ("intercept", "pheno_01", "linear_for_binary"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}: expected true or false, found {getattr(self, key)!r}")
        for key, allowed in (("missing_genotypes", MISSING_GENOTYPE_MODES), ("pred_test", PRED_TESTS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, found {getattr(self, key)!r}")
        for key in ("pheno_names", "covar_names"):
            names = getattr(self, key)
            if names is not None and not (isinstance(names, tuple) and names and all(isinstance(n, str) and n
                                                                                     for n in names)):
                raise ConfigError(f"{key}: expected a list of column names, found {names!r}")

    @classmethod
    def from_json(cls, doc, *, where: str) -> ModelSettings:
        """The settings in ``doc`` (a store's or a manifest's ``settings``; other keys are left to
        their readers), checked; a missing key takes its default, as in stores made before it."""
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: settings: expected a JSON object, found {type(doc).__name__}")
        values: dict = {}
        for f in dataclasses.fields(cls):
            if doc.get(f.name) is None:
                continue
            v = doc[f.name]
            values[f.name] = tuple(v) if f.name.endswith("_names") and isinstance(v, list) else v
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_json(self) -> dict:
        """The settings as JSON (lists for names, None where unset)."""
        out = dataclasses.asdict(self)
        for key in ("pheno_names", "covar_names"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out

    def scan_config(self, source: dict, *, sex_chromosomes: bool, **options) -> ScanConfig:
        """The scan settings of a batch's or party's files (``source``: :data:`SOURCE_KEYS`) under
        these options, with plink2's sex-chromosome models or not (what the store or the study
        fixed); ``options``: other :class:`ScanConfig` fields (``keep``, ``task_memory_mb`` ...).
        Its ``out`` is nowhere: a statistics model writes no scan outputs."""
        files: dict = {k: source.get(k) for k in SOURCE_KEYS}
        return ScanConfig(**files, out=os.devnull, plots=False, sex_chromosomes=sex_chromosomes,
                          pheno_name=self.pheno_names,
                          covar_name=self.covar_names, no_intercept=not self.intercept,
                          missing_genotypes=self.missing_genotypes, pred_test=self.pred_test,
                          pheno_01=self.pheno_01, linear_for_binary=self.linear_for_binary, **options)


PATH_KEYS = ("pred", "bfile", "features", "feature_samples", "pfile", "bgen", "sample", "pheno", "covar", "out", "keep",
             "remove", "extract", "exclude")


def _resolve(base: str, value: str) -> str:
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def load_scan_config(path: str, **overrides) -> ScanConfig:
    """Read a TOML job config into a :class:`ScanConfig`; ``overrides`` win over file values."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    base = os.path.dirname(os.path.abspath(path))
    known_top = {"scan", "spark", "spark_properties"}
    for key in doc:
        if key not in known_top:
            raise ConfigError(f"{path}: unknown table or key {key!r}; expected one of {sorted(known_top)}."
                              + did_you_mean(key, sorted(known_top)))
    scan = dict(doc.get("scan", {}))
    fields = {f.name for f in dataclasses.fields(ScanConfig)} - {"spark_conf"}
    for key in scan:
        if key not in fields:
            raise ConfigError(f"{path}: [scan] has unknown key {key!r}." + did_you_mean(key, sorted(fields)))
    for key in PATH_KEYS:
        if key in scan and isinstance(scan[key], str):
            scan[key] = _resolve(base, scan[key])
    if isinstance(scan.get("mach_r2_filter"), list):
        scan["mach_r2_filter"] = tuple(float(v) for v in scan["mach_r2_filter"])
    for key in ("pheno_name", "covar_name"):
        if isinstance(scan.get(key), str):
            scan[key] = tuple(x for x in scan[key].split(",") if x)
        elif key in scan:
            scan[key] = tuple(scan[key])
    conf: dict[str, str] = {}
    if "spark_properties" in doc:
        conf.update(read_properties(_resolve(base, doc["spark_properties"])))
    conf.update({k: str(v) for k, v in doc.get("spark", {}).items()})
    scan["spark_conf"] = conf
    scan.update({k: v for k, v in overrides.items() if v is not None})
    scan.setdefault("bfile", None)
    for key in ("pheno", "out"):
        if key not in scan:
            raise ConfigError(f"{path}: [scan] needs {key!r}")
    try:
        return ScanConfig(**scan)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
