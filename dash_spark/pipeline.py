"""Compose IO, the covariate model and the Spark scan into one run (shared by the CLI and jobs/).

The missing-data rules of a scan, stated once:

- a sample is analysed only if it is in the .fam, in the phenotype file, and (when covariates are
  given) in the covariate file with every selected covariate present; samples are matched by IID;
- a sample missing a phenotype value (NA, nan, -9) is left out of that phenotype's test only: each
  phenotype has its own n and degrees of freedom; phenotypes with the same missing samples share
  one covariate basis and one pass of work;
- a missing genotype call drops that sample from that variant's test, for every phenotype
  (``missing_genotypes = "drop"``, the default: plink2's semantics, each variant has its own
  OBS_CT), or is replaced by the mean of the variant's observed calls on the phenotype's samples
  (``missing_genotypes = "mean"``: Hail / REGENIE semantics).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .errors import ConfigError, InputError, OutputError
from .filters import CallFilters, sample_mask, variant_mask
from .io.plink import check_bed, read_bim, read_fam
from .io.tables import match_samples, read_sample_table
from .spark.scan import (
    Pattern,
    ScanPlan,
    default_block_variants,
    plan_ranges,
    run_scan_job,
    scan_ranges,
    sub_block_size,
    write_ranges,
)
from .stats.kernel import pad_weights
from .stats.regression import CovariateCorrelation, covariate_basis

log = logging.getLogger("dash_spark")

MISSING_GENOTYPE_MODES = ("drop", "mean")


@dataclass(frozen=True)
class ScanConfig:
    """Settings of one scan (CLI flags and job-config keys have the same names)."""

    pheno: str
    out: str
    bfile: str | None = None
    covar: str | None = None
    features: str | None = None
    feature_samples: str | None = None
    pheno_name: tuple[str, ...] | None = None
    covar_name: tuple[str, ...] | None = None
    no_intercept: bool = False
    overwrite: bool = False
    block_variants: int | None = None
    task_memory_mb: int = 256
    missing_genotypes: str = "drop"
    count_alt: bool = False
    plots: bool = True
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
    master: str | None = None
    spark_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if bool(self.bfile) == bool(self.features):
            raise ConfigError("give either --bfile PREFIX or --features FILE.parquet (with --feature-samples)")
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
        if self.task_memory_mb < 16:
            raise ConfigError(f"task_memory_mb: expected at least 16, found {self.task_memory_mb}")


@dataclass(frozen=True)
class Model:
    """The driver-side model: samples, bases and the broadcast matrix ``W = [A | B]``."""

    fam_path: str
    bim: object
    n_samples: int
    phenotypes: tuple[str, ...]
    covariates: tuple[str, ...]
    patterns: tuple[Pattern, ...]
    W: np.ndarray
    n_a: int
    n_freq: int
    n_kept: int
    variants: np.ndarray
    counts: dict


@dataclass(frozen=True)
class ScanResult:
    out: str
    results_path: str
    glm_paths: dict[str, str]
    summaries: dict
    seconds: float


def _bfile_paths(prefix: str) -> tuple[str, str, str]:
    for ext in (".bed", ".bim", ".fam"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return prefix + ".bed", prefix + ".bim", prefix + ".fam"


def build_model(cfg: ScanConfig, *, party: bool = False, subset_of_fam: bool = False) -> Model:
    """Read .fam/.bim (checking the .bed), phenotypes and covariates; build bases and ``W``.

    ``party=True`` builds a party's model for a multi-party study instead: the raw covariates
    ``C`` (masked) take the place of ``Q`` and phenotypes are not centred (the pooled basis is
    only known after the parties' sums are added), each phenotype is its own pattern (so every
    party produces statistics of the same shape), and each pattern carries its global moments
    ``C'C`` and ``C'1``.

    ``subset_of_fam=True`` (a withdrawal: the statistics of the ``--keep`` samples, to be
    subtracted from those of the whole .fam) decides between "founders" and "all samples" for
    the allele-frequency samples on the whole .fam, as the batch's own statistics did, and accepts
    samples of which none is analysed (they still count in the allele frequencies).
    """
    if cfg.features:
        from .io.features import read_feature_meta
        from .io.plink import Fam
        from .io.tables import read_sample_ids

        for p in (cfg.features, cfg.feature_samples):
            if not os.path.exists(p):
                raise InputError(f"{p}: file not found")
        ids = read_sample_ids(cfg.feature_samples)
        fam = Fam(path=cfg.feature_samples, fids=ids, iids=ids, founder=np.ones(len(ids), dtype=bool))
        fam_path = cfg.feature_samples
        bim = read_feature_meta(cfg.features, fam.n_samples)
        log.info("features: %s: %d samples x %d features", cfg.features, fam.n_samples, bim.n_variants)
    else:
        bed, bim_path, fam_path = _bfile_paths(cfg.bfile)
        for p in (bed, bim_path, fam_path):
            if not os.path.exists(p):
                raise InputError(f"{p}: file not found; --bfile expects PREFIX with PREFIX.bed/.bim/.fam")
        fam = read_fam(fam_path)
        bim = read_bim(bim_path)
        check_bed(bed, fam.n_samples, bim.n_variants, fam_path, bim_path)
        log.info("genotypes: %s: %d samples x %d variants", cfg.bfile, fam.n_samples, bim.n_variants)

    pheno = read_sample_table(cfg.pheno, kind="pheno", names=list(cfg.pheno_name) if cfg.pheno_name else None)
    tables = [pheno]
    covar = None
    if cfg.covar:
        covar = read_sample_table(cfg.covar, kind="covar", names=list(cfg.covar_name) if cfg.covar_name else None)
        tables.append(covar)
    elif cfg.covar_name:
        raise ConfigError("--covar-name given without --covar")
    rows, counts = match_samples(fam.iids, tables)
    n = fam.n_samples
    kept = sample_mask(fam.iids, cfg.keep, cfg.remove)
    in_all = (rows >= 0).all(axis=0) & kept
    variants = np.flatnonzero(variant_mask(bim, chr_spec=cfg.chr, from_bp=cfg.from_bp, to_bp=cfg.to_bp,
                                           extract=cfg.extract, exclude=cfg.exclude))

    Y = np.full((n, len(pheno.names)), np.nan)
    Y[in_all] = pheno.values[rows[0, in_all]]
    cov_names: list[str] = [] if cfg.no_intercept else ["(intercept)"]
    C_parts = [] if cfg.no_intercept else [np.ones((n, 1))]
    base = in_all.copy()
    dropped_cov = 0
    if covar is not None:
        Cv = np.full((n, len(covar.names)), np.nan)
        Cv[in_all] = covar.values[rows[1, in_all]]
        complete = ~np.isnan(Cv).any(axis=1)
        dropped_cov = int((base & ~complete).sum())
        base &= complete
        Cv = np.where(np.isnan(Cv), 0.0, Cv)
        if cfg.covar_variance_standardize:
            # plink2's --covar-variance-standardize: mean 0, variance 1 over the analysed samples
            # (the genotype's statistics do not change; the covariates are only rescaled)
            mu = Cv[base].mean(axis=0)
            sd = Cv[base].std(axis=0, ddof=1)
            Cv = np.where(base[:, None], (Cv - mu) / np.where(sd > 0, sd, 1.0), 0.0)
        C_parts.append(Cv)
        cov_names += list(covar.names)
    if not C_parts:
        raise ConfigError("--no-intercept without --covar leaves no covariate; give covariates or drop --no-intercept")
    C = np.hstack(C_parts)
    if cfg.no_intercept:
        log.warning("--no-intercept: the model has no intercept; unless a covariate is constant, "
                    "effects are biased by the phenotype's mean. Drop the flag unless that is intended")
    log.info(
        "samples: %d in .fam, %d matched to all tables, %d dropped for a missing covariate, %d analysed at most",
        n, int(in_all.sum()), dropped_cov, int(base.sum()),
    )
    if not base.any() and not subset_of_fam:  # withdrawn samples may have had no phenotype at all
        raise InputError(
            f"{cfg.pheno}: no sample has a phenotype row and complete covariates among the "
            f"{n} samples of {fam_path}; check that the IIDs match"
        )

    masks = [base & ~np.isnan(Y[:, t]) for t in range(Y.shape[1])]
    groups: dict[bytes, list[int]] = {}
    for t, mask in enumerate(masks):
        groups.setdefault(str(t).encode() if party else np.packbits(mask).tobytes(), []).append(t)

    A_cols, B_cols, patterns = [], [], []
    a_off = 0
    for g, idx in enumerate(groups.values()):
        mask = masks[idx[0]]
        names = tuple(pheno.names[t] for t in idx)
        where = f"phenotype {', '.join(names)} ({cfg.pheno}" + (f"; covariates {cfg.covar})" if cfg.covar else ")")
        Yg = np.where(mask[:, None], np.nan_to_num(Y[:, idx]), 0.0)
        if party:
            Cm = np.where(mask[:, None], C, 0.0)
            A_cols += [Cm, Yg, mask.astype(np.float64)[:, None]]
            B_cols.append(mask.astype(np.float64)[:, None])
            patterns.append(Pattern(names, int(mask.sum()), C.shape[1], a_off, g, Cm.T @ Yg,
                                    np.einsum("np,np->p", Yg, Yg), None, CtC=Cm.T @ Cm, Ct1=Cm.sum(axis=0)))
            a_off += C.shape[1] + len(idx) + 1
            continue
        basis = covariate_basis(C, mask, cov_names, where=where)
        if not cfg.no_intercept:
            # the intercept spans the mean: centring changes no result and keeps the digits that
            # x'y - (Q'x)'(Q'y) would otherwise cancel away for a phenotype with a large mean
            Yg = np.where(mask[:, None], Yg - Yg[mask].mean(axis=0), 0.0)
        w = mask.astype(np.float64)[:, None]
        A_cols += [basis.Q, Yg, w]
        B_cols.append(w)
        Qy = basis.Q.T @ Yg
        yy = np.einsum("np,np->p", Yg, Yg)
        cc = CovariateCorrelation.build(C[mask], basis.R)
        patterns.append(Pattern(names, basis.n, basis.k, a_off, g, Qy, yy, cc))
        a_off += basis.k + len(idx) + 1
        for name in names:
            log.info("phenotype %s: %d samples, %d covariates, %d degrees of freedom",
                     name, basis.n, basis.k, basis.n - basis.k - 1)
    # allele frequencies over the .fam's founders (all samples if none) decide which allele is
    # major, as plink2 does, independently of each phenotype's samples
    # (among the samples --keep/--remove leave); the kept mask itself gives --geno's missing rate
    use_founders = fam.founder.any() if subset_of_fam else (fam.founder & kept).any()
    freq_mask = fam.founder & kept if use_founders else kept
    A_cols += [kept.astype(np.float64)[:, None], freq_mask.astype(np.float64)[:, None]]
    A = np.hstack(A_cols)
    B = np.hstack(B_cols)
    log.info("model: %d phenotype(s) in %d missingness pattern(s); broadcast matrix %d x %d (%.1f MB)",
             len(pheno.names), len(patterns), A.shape[0], A.shape[1] + B.shape[1],
             A.nbytes / 1e6 + B.nbytes / 1e6)
    counts = dict(counts)
    counts.update(analysed=int(base.sum()), dropped_missing_covariate=dropped_cov)
    return Model(
        fam_path=fam_path, bim=bim, n_samples=n, phenotypes=tuple(pheno.names),
        covariates=tuple(cov_names), patterns=tuple(patterns), W=pad_weights(A, B),
        n_a=A.shape[1], n_freq=int(freq_mask.sum()), n_kept=int(kept.sum()), variants=variants,
        counts=counts,
    )


def _check_out(cfg: ScanConfig, exists=None) -> None:
    """Refuse an existing output without --overwrite (``exists``: a URI-aware test, else local)."""
    if exists is None:
        if "://" in cfg.out:
            return
        exists = os.path.exists
    if exists(cfg.out) and not cfg.overwrite:
        raise OutputError(f"{cfg.out}: output directory exists; pass --overwrite to replace it or choose another --out")


def plan_scan(cfg: ScanConfig, model: Model, parallelism: int) -> tuple[ScanPlan, list[tuple], int]:
    """The tasks' plan and the partition ranges of a model (shared by the scan and a party's compress).

    Returns ``(plan, ranges, block_variants)``.
    """
    from .spark.fs import qualify

    bed, bim_path, _ = _bfile_paths(cfg.bfile) if cfg.bfile else (os.devnull, os.devnull, None)
    bv = cfg.block_variants or default_block_variants(len(model.variants), parallelism)
    plan = ScanPlan(
        bed_path=qualify(bed), bim_path=qualify(bim_path), n_samples=model.n_samples,
        n_a=model.n_a, n_freq=model.n_freq, n_kept=model.n_kept, patterns=model.patterns,
        filters=CallFilters(maf=cfg.maf, mac=cfg.mac, geno=cfg.geno),
        sub_block=sub_block_size(model.n_samples, model.W.shape[1], cfg.task_memory_mb << 20),
        count_alt=cfg.count_alt or bool(cfg.features), missing_genotypes=cfg.missing_genotypes,
        features_path=qualify(cfg.features) if cfg.features else None,
    )
    return plan, plan_ranges(model.variants, bv, model.bim.line_offsets), bv


def tasks_can_write(uri: str) -> bool:
    """Whether the tasks write a scan's output files themselves (a local or shared path, file://);
    other filesystems (hdfs://, s3a:// ...) go through Spark's writer."""
    return "://" not in uri or uri.startswith("file://")


def run_scan(cfg: ScanConfig, spark=None) -> ScanResult:
    """Run a scan end to end; outputs appear under ``cfg.out`` only if everything succeeded."""
    from .spark.fs import HadoopFS, qualify
    from .spark.session import SessionStarter

    t0 = time.time()
    _check_out(cfg)
    # the JVM starts (and warms its Python workers) while the driver builds the model
    starter = SessionStarter(cfg.master, cfg.spark_conf) if spark is None else None
    model = build_model(cfg)
    if starter is not None:
        spark = starter.get()
    fs = HadoopFS(spark, cfg.out)
    out = qualify(cfg.out)
    _check_out(cfg, exists=lambda _: fs.exists(out))
    stage = fs.staging_dir(out)
    try:
        fs.mkdirs(stage)
        m = len(model.variants)
        plan, ranges, bv = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
        log.info("scan: %d variants in %d partitions of <= %d variants, sub-blocks of %d; "
                 "missing genotype calls: %s", m, len(ranges), bv, plan.sub_block,
                 "sample dropped for that variant (plink2)" if cfg.missing_genotypes == "drop"
                 else "mean-imputed per variant (Hail/REGENIE)")
        if tasks_can_write(stage):
            # a local (or shared) directory: tasks write their own parts, no SQL job
            from .output import finish_local_outputs

            local = stage.removeprefix("file://")
            write_ranges(spark, model.W, ranges, partial(scan_ranges, plan), local, list(model.phenotypes))
            log.info("scan: results written (%.1f s since start)", time.time() - t0)
            glm, summaries = finish_local_outputs(local, model, plots=cfg.plots)
            glm = {k: v if "://" not in stage else "file://" + v for k, v in glm.items()}
        else:
            from .output import write_reports

            results, W_bc = run_scan_job(spark, plan, model.W, ranges)
            results.write.parquet(f"{stage}/results.parquet")
            W_bc.destroy()
            log.info("scan: results written (%.1f s since start)", time.time() - t0)
            glm, summaries = write_reports(spark, fs, stage, model, plots=cfg.plots)
        if fs.exists(out):
            fs.delete(out)
        fs.rename(stage, out)
    except BaseException:
        try:
            fs.delete(stage)
        except Exception:  # pragma: no cover - best effort cleanup
            if "://" not in stage:
                shutil.rmtree(stage, ignore_errors=True)
        raise
    final = {k: v.replace(stage, out) for k, v in glm.items()}
    log.info("done in %.1f s: %s", time.time() - t0, out)
    return ScanResult(out=out, results_path=f"{out}/results.parquet", glm_paths=final,
                      summaries=summaries, seconds=time.time() - t0)
