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
import dataclasses
import json
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..config import (  # noqa: F401 - re-exported: the settings live in the leaf config.py
    BINARY_TESTS,
    MISSING_GENOTYPE_MODES,
    PRED_TESTS,
    ScanConfig,
    object_store_out,
    tasks_can_write,
)
from ..errors import ConfigError, InputError, ModelError, OutputError
from .filters import CallFilters, sample_mask, variant_mask
from ..io.tables import match_samples, read_sample_table
from .sources import BedSource, GenotypeSource, qualify, source_from_options
from .jobs import map_ranges, write_ranges
from ..stats.kernel import pad_weights
from ..stats.regression import CovariateCorrelation, covariate_basis
from ..stats.results import RESULT_SCHEMA_DDL
from ..stats.sexchrom import sex_chrom_class
from ..stats.sufficient import Moments, SufficientStats
from .tasks import GroupedPlan, Pattern, ScanPlan, SharedBasis, default_block_variants, plan_ranges, scan_ranges, sub_block_size

log = logging.getLogger("dash_spark")

# a scan's settings (ScanConfig) live in dash_spark.config, a leaf; imported above for the callers
# that take them from this driver


@dataclass(frozen=True)
class Model:
    """The driver-side model: samples, bases and the broadcast matrix ``W = [A | B]``.

    A one-party scan model holds an orthonormal basis ``Q`` per missingness pattern in ``W``; a
    statistics model (``build_model(..., party=True)``: parties, store batches, the API's
    ``compress``) holds the raw masked covariates per phenotype and their global ``moments``.
    """

    source: GenotypeSource
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
    moments: tuple[Moments, ...] | None = None
    missing_genotypes: str = "drop"
    #: extra per-phenotype outputs of a scan: GWAS-SSF files (:mod:`dash_spark.outputs.gwas_ssf`) and the
    #: null models' covariate effects (``--report-covariates``), written by the output writers
    extra_outputs: object | None = None
    #: ``--pred`` (one :class:`VariantGroup` per chromosome) or sex chromosomes (one per class): the
    #: groups' variants, patterns or REGENIE spec; ``W`` is then the tuple of their weight matrices
    groups: tuple | None = None
    #: ``--pred-test regenie``: also write ``<phenotype>.regenie``
    regenie_outputs: bool = False
    #: a statistics model's LOCO offsets (``--pred``): :attr:`SufficientStats.offsets`
    offset_moments: dict | None = None
    #: phenotype missingness by downdates of one shared basis (:class:`~dash_spark.scanner.tasks.SharedBasis`)
    shared: SharedBasis | None = None
    #: a statistics model's IIDs analysed for at least one phenotype (a party's release guard)
    sample_ids: tuple[str, ...] | None = None
    #: a statistics model's sums for plink2's sex-chromosome models (:attr:`SufficientStats.sexchr`)
    sexchr_stats: object | None = None
    #: a statistics model's sums for REGENIE's test (:attr:`SufficientStats.regenie`)
    regenie_sums: object | None = None
    #: case/control phenotypes, fitted by plink2's logistic --glm (``<phenotype>.glm.logistic.hybrid``)
    logistic_phenotypes: tuple[str, ...] = ()
    #: ... those tested by the score test instead (``--binary-test score``: ``<phenotype>.regenie``)
    score_phenotypes: tuple[str, ...] = ()
    #: write the per-phenotype text files (``--no-text``: False)
    text_outputs: bool = True

    @property
    def n_variants(self) -> int:
        """Variants selected for testing (after --extract/--chr ... filters)."""
        return len(self.variants)


@dataclass(frozen=True)
class VariantGroup:
    """Variants that share one weight matrix: one chromosome under ``--pred`` (its LOCO offsets), or
    one class of chromosomes for plink2's sex-chromosome models (``dosage_scale``: each sample's
    dosage factor, ``hemi``: its allele weight in the frequencies; ``n_a``: the columns of A)."""

    chrom: str
    variants: np.ndarray
    patterns: tuple
    regenie: object | None = None
    dosage_scale: np.ndarray | None = None
    hemi: np.ndarray | None = None
    n_a: int = 0


@dataclass(frozen=True)
class ScanResult:
    """What :func:`run_scan` wrote: the output directory, ``results.parquet``, each phenotype's text
    file (``.glm.linear``, ``.glm.logistic.hybrid`` or ``.regenie``), each phenotype's summary
    (:class:`dash_spark.outputs.report.PhenotypeSummary`: tests, error codes, lambda_GC, top hits) and the
    wall time in seconds.

    Examples
    --------
    >>> import os, tempfile
    >>> from dash_spark.api import example_data
    >>> data = example_data()
    >>> res = run_scan(ScanConfig(bfile=data.bfile, pheno=data.pheno, covar=data.covar, plots=False,
    ...                           out=os.path.join(tempfile.mkdtemp(), "out")), spark=spark)
    >>> sorted(os.path.basename(p) for p in res.glm_paths.values())
    ['pheno1.glm.linear', 'pheno2.glm.linear']
    >>> res.summaries["pheno1"].n_tests
    120
    """

    out: str
    results_path: str
    glm_paths: dict[str, str]
    summaries: dict
    seconds: float


def _named_source(cfg: ScanConfig) -> GenotypeSource:
    return source_from_options(bfile=cfg.bfile, features=cfg.features, feature_samples=cfg.feature_samples,
                               pfile=cfg.pfile, bgen=cfg.bgen, bgen_ref=cfg.bgen_ref, sample=cfg.sample,
                               id_delim=cfg.id_delim)


def config_source(cfg: ScanConfig) -> GenotypeSource:
    """The genotype source a config names (``--bfile``, ``--pfile``, ``--bgen`` or ``--features``), checked."""
    return _named_source(cfg).check()


def build_model(cfg: ScanConfig, *, party: bool = False, subset_of_fam: bool = False) -> Model:
    """Read .fam/.bim (checking the .bed), phenotypes and covariates; build bases and ``W``.

    ``party=True`` builds a statistics model instead (a party of a multi-party study, a store
    batch, the API's ``compress``): the raw covariates ``C`` (masked) take the place of ``Q`` and
    phenotypes are not centred (the pooled basis is only known after the batches' sums are
    added), each phenotype is its own pattern (so every batch produces statistics of the same
    shape), and the model carries each phenotype's global :class:`Moments`.

    ``subset_of_fam=True`` (a withdrawal: the statistics of the ``--keep`` samples, to be
    subtracted from those of the whole .fam) decides between "founders" and "all samples" for
    the allele-frequency samples on the whole .fam, as the batch's own statistics did, and accepts
    samples of which none is analysed (they still count in the allele frequencies).
    """
    source = config_source(cfg)
    fam, bim, fam_path = source.fam, source.variants, source.samples_path
    log.info("%s: %s: %d samples x %d %s", source.kind, source.label, fam.n_samples, bim.n_variants,
             "features" if source.kind == "features" else "variants")

    pheno = read_sample_table(cfg.pheno, kind="pheno", names=list(cfg.pheno_name) if cfg.pheno_name else None)
    from ..outputs.writers import check_output_names  # each phenotype's output files need a name of their own

    check_output_names(pheno.names, cfg.pheno)
    tables = [pheno]
    covar = None
    if cfg.covar:
        covar = read_sample_table(cfg.covar, kind="covar", names=list(cfg.covar_name) if cfg.covar_name else None)
        tables.append(covar)
    elif cfg.covar_name:
        raise ConfigError("--covar-name given without --covar")
    try:
        rows, counts = match_samples(fam.iids, tables)
    except InputError as exc:
        raise InputError(f"{exc}{_id_hint(source, fam, tables[0])}") from None
    n = fam.n_samples
    kept = sample_mask(fam.iids, cfg.keep, cfg.remove)
    pheno, logistic = _case_control(cfg, pheno, (rows[0] >= 0) & kept, rows[0], party=party)
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
        covar_names = list(covar.names)
        if not party:  # plink2 excludes a constant covariate with a warning (a party's may vary pooled)
            Cv, covar_names = _usable_covariates(Cv, in_all, covar_names, cfg)
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
        cov_names += covar_names
    C = np.hstack(C_parts) if C_parts else np.zeros((n, 0))
    if cfg.no_intercept and C.shape[1] == 0:
        log.warning("--no-intercept without covariates: y ~ 0 + x, the regression through the origin "
                    "(Hail's covariates=[]); effects are biased by the phenotype's mean. Drop the flag "
                    "unless that is intended")
    elif cfg.no_intercept:
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
    for t, mask in enumerate(masks):
        if pheno.names[t] in logistic and not (0 < Y[mask, t].sum() < mask.sum()):  # plink2 stops too
            raise InputError(
                f"{cfg.pheno}: case/control phenotype {pheno.names[t]!r}: all {int(mask.sum())} analysed samples "
                f"are {'cases' if mask.any() and Y[mask, t].min() > 0 else 'controls'}; expected both cases and "
                "controls. Check the column's coding (1 control, 2 case; --1: 0 control, 1 case) or leave it out "
                "with --pheno-name")
        if not party and mask.sum() >= 2 and np.ptp(Y[mask, t]) == 0:  # plink2 stops on one too
            raise InputError(
                f"{cfg.pheno}: phenotype {pheno.names[t]!r} has the same value for all {int(mask.sum())} "
                f"analysed samples; expected a phenotype that varies, found a constant. Check the column "
                f"or leave it out with --pheno-name")
    loco = None
    if cfg.pred:
        loco = _read_locos(cfg, fam, pheno.names, masks)
        masks = [mask & loco[t].present for t, mask in enumerate(masks)]
    # allele frequencies over the .fam's founders (all samples if none) decide which allele is
    # major, as plink2 does, independently of each phenotype's samples
    # (among the samples --keep/--remove leave); the kept mask itself gives --geno's missing rate
    use_founders = fam.founder.any() if subset_of_fam else (fam.founder & kept).any()
    freq_mask = fam.founder & kept if use_founders else kept
    tail = [kept.astype(np.float64)[:, None], freq_mask.astype(np.float64)[:, None]]
    # --mach-r2-filter needs sum x^2 over the kept samples: one more B column, the last
    tail_b = [kept.astype(np.float64)[:, None]] if cfg.mach_r2_filter and not party else []
    # plink2's sex-chromosome models (REGENIE's test keeps its own diploid coding). A statistics
    # model applies them whatever its own samples' sexes (the pooled samples decide at finalize),
    # except with --pred, whose groups are the chromosomes' LOCO offsets
    has_sexchr = any(sex_chrom_class(c) for c in set(np.asarray(bim.chrom)[variants].tolist()))
    if party:
        sexchr = has_sexchr and not cfg.pred and source.kind != "features" and cfg.sex_chromosomes
        if sexchr and cfg.xchr_model == 1:
            raise ConfigError("--xchr-model 1: stored and multi-party statistics model chrX as plink2's default "
                              "(--xchr-model 2); leave chrX out (--chr) or use the default")
    else:
        sexchr = fam.sex is not None and cfg.pred_test != "regenie" and has_sexchr
    if has_sexchr and not sexchr and (fam.sex is not None or party) and source.kind != "features":
        log.warning("chrX/Y/MT variants are tested as autosomes here (%s); plink2's sex-chromosome models "
                    "apply to scans, stores and studies without it", "REGENIE's test" if not party else "--pred")
    _check_multiallelic(cfg, source, bim, variants, party=party, sexchr=sexchr, logistic=bool(logistic))
    grouped = bool(cfg.pred) or sexchr
    groups = offset_moments = shared = sexchr_stats = regenie_sums = None
    moments: list = []
    if not grouped and not party and not logistic and _use_shared(masks):
        A_cols, B_cols, patterns, shared = _shared_columns(cfg, C, cov_names, Y, masks, pheno.names)
        A = np.hstack(A_cols + tail)
        W = pad_weights(A, np.hstack(B_cols + tail_b))
    elif not grouped or party:  # a statistics model keeps its phenotypes' own moments (--pred: of y itself)
        A_cols, B_cols, patterns, moments = _pattern_columns(cfg, C, cov_names, Y, masks, pheno.names, party,
                                                             quiet=grouped, logistic=logistic)
        A = np.hstack(A_cols + tail)
        W = pad_weights(A, np.hstack(B_cols + tail_b))
    if grouped:
        Y_raw = None
        if cfg.pred and cfg.pred_test == "regenie":
            # REGENIE centres a phenotype on every sample that has it (also one without covariates)
            Y_raw = np.full_like(Y, np.nan)
            has = (rows[0] >= 0) & kept
            Y_raw[has] = pheno.values[rows[0, has]]
        W, groups, A, patterns, offset_moments, variants, sexchr_stats, regenie_sums = _chrom_groups(
            cfg, fam, bim, variants, C, cov_names, Y, Y_raw, masks, base, kept, freq_mask, loco, pheno.names, tail,
            party, sexchr, tail_b, logistic)
    widths = [w.shape[1] for w in (W if groups else (W,))]
    log.info("model: %d phenotype(s) in %d missingness pattern(s)%s; broadcast matrix %d x %d (%.1f MB)%s",
             len(pheno.names), len(patterns), ", by downdates of one shared basis" if shared else "",
             W[0].shape[0] if groups else W.shape[0], max(widths),
             sum(w.nbytes for w in (W if groups else (W,))) / 1e6,
             f" in {len(groups)} chromosome group(s)" if groups else "")
    counts = dict(counts)
    counts.update(analysed=int(base.sum()), dropped_missing_covariate=dropped_cov,
                  phenotype_samples={name: int(m.sum()) for name, m in zip(pheno.names, masks)})
    extra = None
    if not party and (cfg.gwas_ssf or cfg.report_covariates):
        from ..outputs.gwas_ssf import ExtraOutputs

        extra = ExtraOutputs.build(cfg, C, Y, masks, tuple(pheno.names), tuple(cov_names))
    return Model(
        source=source, fam_path=fam_path, bim=bim, n_samples=n, phenotypes=tuple(pheno.names),
        covariates=tuple(cov_names), patterns=tuple(patterns), W=W, groups=groups,
        n_a=A.shape[1], n_freq=int(freq_mask.sum()), n_kept=int(kept.sum()), variants=variants,
        counts=counts, moments=tuple(moments) if party else None,
        # REGENIE imputes missing calls with the mean: its statistics model keeps no missing-call Grams
        missing_genotypes="mean" if regenie_sums is not None else cfg.missing_genotypes,
        extra_outputs=extra, regenie_outputs=cfg.pred_test == "regenie", offset_moments=offset_moments,
        score_phenotypes=tuple(name for name in pheno.names if name in logistic) if cfg.binary_test == "score" else (),
        shared=shared, sexchr_stats=sexchr_stats, regenie_sums=regenie_sums,
        logistic_phenotypes=tuple(name for name in pheno.names if name in logistic), text_outputs=cfg.text,
        sample_ids=tuple(map(str, np.asarray(fam.iids)[np.logical_or.reduce(masks)])) if party and masks else None,
    )


#: from this many missingness patterns on, a one-party scan takes each pattern's missing samples
#: out of sums over their union (one kernel of width k + p + 3) instead of summing each pattern
#: with its own basis (width patterns x (k + 2) + p); ``DASH_SPARK_PHENO_DOWNDATE=on|off`` forces
#: either way
SHARED_MIN_PATTERNS = 3


def _use_shared(masks) -> bool:
    mode = os.environ.get("DASH_SPARK_PHENO_DOWNDATE", "auto").strip().lower()
    if mode in ("on", "off"):
        return mode == "on"
    return len(_mask_patterns(masks)) >= SHARED_MIN_PATTERNS


def _mask_patterns(masks, keys=None) -> list[list[int]]:
    """The phenotypes (indices) of each distinct sample mask and ``keys[t]`` (bytes; phenotypes
    with other keys have patterns of their own), in order of first appearance."""
    groups: dict[bytes, list[int]] = {}
    for t, mask in enumerate(masks):
        groups.setdefault(np.packbits(mask).tobytes() + (keys[t] if keys is not None else b""), []).append(t)
    return list(groups.values())


def _pattern_where(cfg: ScanConfig, names) -> str:
    """How errors name a pattern's phenotypes and their files."""
    return f"phenotype {', '.join(names)} ({cfg.pheno}" + (f"; covariates {cfg.covar})" if cfg.covar else ")")


def _shared_columns(cfg: ScanConfig, C: np.ndarray, cov_names: list[str], Y: np.ndarray, masks, names):
    """``(A columns, B columns, patterns, SharedBasis)``: one orthonormal basis ``Q`` of the
    covariates on the union U of the phenotypes' samples, every phenotype's column (centred on its
    own samples, zero elsewhere) and U's mask; each pattern of missingness keeps the samples of U it
    lacks and ``T = L^-1`` (``L L' = I - Q_M'Q_M``, the Gram of Q on its own samples)."""
    pheno_names = list(names)
    union = np.logical_or.reduce(masks)
    where_u = f"phenotypes ({cfg.pheno}" + (f"; covariates {cfg.covar})" if cfg.covar else ")")
    basis_u = covariate_basis(C, union, cov_names, where=where_u)
    Q, k = basis_u.Q, basis_u.k
    CtC_u, Ct1_u = C[union].T @ C[union], C[union].sum(axis=0)
    Yc = np.zeros_like(Y)
    patterns = []
    from ..outputs.logs import PhenotypeLines

    lines, lines_seen = PhenotypeLines(log), []
    for idx in _mask_patterns(masks):
        mask = masks[idx[0]]
        names_g = tuple(pheno_names[t] for t in idx)
        where = _pattern_where(cfg, names_g)
        Yg = np.where(mask[:, None], np.nan_to_num(Y[:, idx]), 0.0)
        if not cfg.no_intercept:  # centred on the pattern's samples, as a pattern's own basis would have it
            Yg = np.where(mask[:, None], Yg - Yg[mask].mean(axis=0), 0.0)
        Yc[:, idx] = Yg
        missing = np.flatnonzero(union & ~mask)
        n = int(mask.sum())
        G = np.eye(k) - Q[missing].T @ Q[missing]
        try:
            L = np.linalg.cholesky(G) if k else np.zeros((0, 0))
            ok = n >= k + 2 and (k == 0 or np.min(np.diag(L)) ** 2 > 1e-9)
        except np.linalg.LinAlgError:
            ok = False
        if not ok:  # the pattern's own basis names the covariate at fault (or the sample count)
            covariate_basis(C, mask, cov_names, where=where)
            if not (n >= k + 2 and k and np.linalg.eigvalsh(G)[0] > 0):
                raise ModelError(f"{where}: the covariates are too close to collinear on its {n} samples; "
                                 "remove one (--covar-name)")
            L = np.linalg.cholesky(G)
        T = np.linalg.inv(L) if k else np.zeros((0, 0))
        Qy = T @ (Q.T @ Yg)
        yy = np.einsum("np,np->p", Yg, Yg)
        Cm = C[missing]
        cc = CovariateCorrelation.from_moments(CtC_u - Cm.T @ Cm, Ct1_u - Cm.sum(axis=0), n, L.T @ basis_u.R)
        patterns.append(Pattern(names_g, n, k, 0, 0, Qy, yy, cc, cols=np.asarray(idx, dtype=np.int64),
                                missing=missing, T=T))
        for name in names_g:
            lines.line(len(lines_seen), "phenotype %s: %d samples, %d covariates, %d degrees of freedom", name, n, k,
                       n - k - 1)
            lines_seen.append(name)
    lines.done("modelled (their sample counts: summary.json, counts.phenotype_samples)")
    w = union.astype(np.float64)[:, None]
    return [Q, Yc, w], [w], patterns, SharedBasis(k=k, p=Y.shape[1])


def _pattern_columns(cfg: ScanConfig, C: np.ndarray, cov_names: list[str], Y: np.ndarray, masks, names,
                     party: bool, *, quiet: bool = False, logistic=frozenset(), offsets: np.ndarray | None = None):
    """``(A columns, B columns, patterns, moments)`` of the phenotypes ``Y`` [shape: (n, p)] with
    their sample ``masks``: one pattern per distinct mask (per phenotype for a statistics model);
    the case/control phenotypes named in ``logistic`` (y coded 0/1) in patterns of their own, their
    score test's null model with the ``offsets`` [shape: (n, p)] (``--pred``: LOCO, logit scale)."""
    pheno_names = list(names)
    flags = [pheno_names[t] in logistic for t in range(len(masks))]
    # case/control phenotypes share patterns among themselves; under the score test each has its own
    # (its null model's weights)
    score = cfg.binary_test == "score"
    keys = [(b"s%d" % t if score else b"1") if flag else b"0" for t, flag in enumerate(flags)]
    groups = [[t] for t in range(len(masks))] if party else _mask_patterns(masks, keys)

    A_cols, B_cols, patterns, moments = [], [], [], []
    a_off = 0
    from ..outputs.logs import PhenotypeLines

    lines, lines_seen = PhenotypeLines(log), []
    for g, idx in enumerate(groups):
        mask = masks[idx[0]]
        names = tuple(pheno_names[t] for t in idx)
        where = _pattern_where(cfg, names)
        Yg = np.where(mask[:, None], np.nan_to_num(Y[:, idx]), 0.0)
        if party:
            Cm = np.where(mask[:, None], C, 0.0)
            A_cols += [Cm, Yg, mask.astype(np.float64)[:, None]]
            B_cols.append(mask.astype(np.float64)[:, None])
            patterns.append(Pattern(names, int(mask.sum()), C.shape[1], a_off, g))
            moments.append(Moments(n=int(mask.sum()), CtC=Cm.T @ Cm, Ct1=Cm.sum(axis=0), Cty=Cm.T @ Yg[:, 0],
                                   yty=float(Yg[:, 0] @ Yg[:, 0])))
            a_off += C.shape[1] + len(idx) + 1
            continue
        basis = covariate_basis(C, mask, cov_names, where=where)
        if flags[idx[0]] and score:  # the score test: the null model's weights, fitted here
            off = None if offsets is None else np.nan_to_num(offsets[:, idx[0]])
            pat, A, w, cases = _score_pattern(cfg, C, Yg[:, 0], mask, basis, names[0], a_off, g, off, quiet=quiet)
            A_cols.append(A)
            B_cols.append(w)
            patterns.append(pat)
            a_off += A.shape[1]
            if not quiet:
                how = {"spa": "saddlepoint-corrected below p %g" % pat.spa_threshold,
                       "firth": "Firth-corrected (REGENIE's approximate Firth) below p %g" % pat.spa_threshold,
                       "none": "uncorrected"}[pat.correction]
                lines.line(len(lines_seen), "phenotype %s: case/control, %d cases and %d controls, %d covariates: "
                           "score test, %s (null model: %d Newton steps)", names[0],
                           cases, basis.n - cases, basis.k, how, pat.null_iterations)
                lines_seen.append(names[0])
            continue
        if flags[idx[0]]:  # case/control: y stays 0/1, and the tasks fit on the raw covariates Q R
            pat, cases = _logistic_pattern(C, Yg, mask, basis, names, a_off, g, quiet=quiet)
            A_cols += [basis.Q, Yg, mask.astype(np.float64)[:, None]]
            B_cols.append(mask.astype(np.float64)[:, None])
            patterns.append(pat)
            a_off += basis.k + len(idx) + 1
            for name, n_cases in zip(() if quiet else names, cases):
                lines.line(len(lines_seen), "phenotype %s: case/control, %d cases and %d controls, %d covariates: "
                           "logistic regression, Firth fallback (plink2's --glm)", name, n_cases,
                           basis.n - n_cases, basis.k)
                lines_seen.append(name)
            continue
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
        for name in () if quiet else names:
            lines.line(len(lines_seen), "phenotype %s: %d samples, %d covariates, %d degrees of freedom",
                       name, basis.n, basis.k, basis.n - basis.k - 1)
            lines_seen.append(name)
    lines.done("modelled (their sample counts: summary.json, counts.phenotype_samples)")
    return A_cols, B_cols, patterns, moments


def _score_pattern(cfg: ScanConfig, C: np.ndarray, y: np.ndarray, mask: np.ndarray, basis, name: str, a_off: int,
                   g: int, offset: np.ndarray | None = None, *, quiet: bool = False):
    """A case/control phenotype's score-test :class:`Pattern`, its weight columns ``A`` and ``B``
    (:func:`dash_spark.stats.score.score_weights`) and its case count: the null model ``logit(mu) =
    C gamma (+ offset)`` is fitted here, from sums over its samples."""
    from ..stats.score import fit_null, null_sums, score_weights

    n = int(mask.sum())
    off = np.zeros(len(y)) if offset is None else offset
    fit = fit_null(null_sums(C[mask], y[mask], off[mask]), C.shape[1])
    if not fit.converged:
        raise ModelError(f"{_pattern_where(cfg, (name,))}: the null model (the phenotype on the covariates alone) "
                         f"did not converge in {fit.iterations} Newton steps; a covariate may separate cases from "
                         "controls. Remove it (--covar-name) or use --binary-test hybrid (Firth regression)")
    mu = np.where(mask, 1.0 / (1.0 + np.exp(-(C @ fit.gamma + off))), 0.0)
    A, w = score_weights(C, y, mu, mask)
    if cfg.score_correction == "firth":  # REGENIE's approximate Firth: the null model's Firth offsets ride along
        from ..stats.score import firth_null_offset

        fo = firth_null_offset(C[mask], y[mask], off[mask], intercept=not cfg.no_intercept)
        if fo is None:
            raise ModelError(f"{_pattern_where(cfg, (name,))}: the null model's Firth fit (--score-correction firth) "
                             "did not converge; use --score-correction spa")
        A = np.column_stack([A, np.zeros(len(y))])
        A[mask, -1] = fo
    CtWC = C[mask].T @ (C[mask] * w[mask])
    cases = int(y[mask].sum())
    if not quiet:  # (once: not again per chromosome group)
        _warn_few_cases(name, cases, n, basis.k + 1)
    pat = Pattern((name,), n, basis.k, a_off, g, logistic=True, score=True, CtWC=CtWC,
                  spa_threshold=cfg.score_p_thresh, null_iterations=fit.iterations, correction=cfg.score_correction)
    return pat, A, w, cases


def _warn_few_cases(name: str, cases: int, n: int, predictors: int) -> None:
    """plink2's warning: fewer cases (or controls) than 10x the predictors."""
    if min(cases, n - cases) < 10 * predictors:
        log.warning("phenotype %s: %d %s, fewer than 10 x the %d predictors (plink2 warns too)", name,
                    min(cases, n - cases), "cases" if 2 * cases < n else "controls", predictors)


def _logistic_pattern(C: np.ndarray, Yg: np.ndarray, mask: np.ndarray, basis, names, a_off: int, g: int, *,
                      quiet: bool = False):
    """The :class:`Pattern` of case/control phenotypes (``Yg``: 0/1 on ``mask``) and each one's case
    count, with plink2's warnings: fewer cases or controls than 10x the predictors, and a covariate
    that separates the phenotype on its own (then every variant gets Firth regression, as in plink2)."""
    from ..stats.logistic import covariate_separates

    firth, cases = [], []
    n = int(mask.sum())
    for t, name in enumerate(names):
        y = Yg[mask, t]
        cases.append(int(y.sum()))
        firth.append(covariate_separates(C[mask], y))
        if not quiet:
            _warn_few_cases(name, cases[-1], n, basis.k + 1)
        if firth[-1]:
            log.warning("phenotype %s: a covariate separates cases from controls%s; every variant is fitted by "
                        "Firth regression (plink2's firth-fallback does the same)", name,
                        " on a sex chromosome's samples" if quiet else "")
    return Pattern(tuple(names), n, basis.k, a_off, g, logistic=True, R=basis.R, always_firth=tuple(firth)), cases


def case_control_columns(values: np.ndarray, pheno_01: bool = False) -> np.ndarray:
    """Which phenotype columns plink2 reads as case/control [shape: (n_columns,), bool]: every value
    (NaN missing: NA and -9) is 1 or 2, or 0 (missing there), with at least one 1 or 2; with
    ``pheno_01`` (plink2's --1), every value is 0 or 1."""
    out = np.zeros(values.shape[1], dtype=bool)
    for t in range(values.shape[1]):
        v = values[:, t]
        v = v[~np.isnan(v)]
        codes = (0.0, 1.0) if pheno_01 else (0.0, 1.0, 2.0)
        out[t] = v.size > 0 and bool(np.isin(v, codes).all()) and (pheno_01 or bool(np.isin(v, (1.0, 2.0)).any()))
    return out


def _case_control(cfg: ScanConfig, pheno, present: np.ndarray, row_of: np.ndarray, *, party: bool = False):
    """plink2's reading of case/control phenotypes (judged on the genotype samples' rows): returns
    the table with those columns coded 0 control / 1 case (NaN missing: 0 is missing in the 1/2
    coding) and their names, which get plink2's logistic --glm. With ``--linear-for-binary`` they
    keep their values (plink2's missing codes applied) and are analysed linearly. The log says
    which model each phenotype gets."""
    import dataclasses

    from ..outputs.logs import PhenotypeLines

    rows = row_of[present]
    binary = case_control_columns(pheno.values[rows], cfg.pheno_01)
    if not binary.any():
        return pheno, frozenset()
    names = [pheno.names[t] for t in np.flatnonzero(binary)]
    coding = "0 control, 1 case (--1)" if cfg.pheno_01 else "1 control, 2 case, 0 missing"
    if not cfg.linear_for_binary:
        what = None
        if party and cfg.binary_test != "score":  # (a score study's parties: dash_spark.studies.score)
            what = "stored and multi-party statistics (compress, party compress, select) are linear"
        elif cfg.pred and cfg.binary_test != "score":
            what = ("with --pred they take REGENIE's test: add --binary-test score (the score test with the LOCO "
                    "offsets in the null model)")
        elif cfg.pred and cfg.pred_test == "regenie":
            what = ("--pred-test regenie is REGENIE's quantitative-trait test: leave it out (--binary-test score is "
                    "REGENIE's binary-trait test)")
        if what is not None:
            raise ConfigError(f"{cfg.pheno}: phenotype(s) {', '.join(names)} are case/control as plink2 reads them "
                              f"({coding}), which plink2 fits by logistic regression; {what}. Pass "
                              "--linear-for-binary to analyse them by linear regression (a linear probability "
                              "model; its numbers are not plink2's), or leave them out with --pheno-name")
        for flag, on in (("--gwas-ssf", cfg.gwas_ssf), ("--report-covariates", cfg.report_covariates)):
            if on:
                raise ConfigError(f"{flag}: phenotype(s) {', '.join(names)} are case/control ({coding}) and get "
                                  f"logistic regression, which {flag} does not write yet; leave them out with "
                                  "--pheno-name, or drop the flag")
    values = pheno.values.copy()
    lines = PhenotypeLines(log)
    for i, t in enumerate(np.flatnonzero(binary)):
        col = values[:, t]
        if not cfg.pheno_01:
            col[col == 0] = np.nan
        v = col[rows]
        case = 1.0 if cfg.pheno_01 else 2.0
        if cfg.linear_for_binary:
            lines.line(i, "phenotype %s: case/control (%d cases, %d controls), analysed by linear regression "
                       "(--linear-for-binary)", pheno.names[t], int((v == case).sum()), int((v == case - 1).sum()))
        else:
            col -= case - 1.0  # 0 control, 1 case
    if cfg.linear_for_binary:
        lines.done("case/control, analysed by linear regression")
        log.info("models: %d phenotype(s) quantitative, %d case/control, all by linear regression",
                 int((~binary).sum()), int(binary.sum()))
        return dataclasses.replace(pheno, values=values), frozenset()
    log.info("models: %d phenotype(s) quantitative (linear regression), %d case/control (%s)",
             int((~binary).sum()), int(binary.sum()),
             "the score test, saddlepoint-corrected: .regenie" if cfg.binary_test == "score"
             else "logistic regression, Firth fallback: .glm.logistic.hybrid")
    return dataclasses.replace(pheno, values=values), frozenset(names)


def _id_hint(source, fam, table) -> str:
    """Advice when a BGEN's stored IDs match no table row: REGENIE and plink2's exports store
    ``FID_IID``, which --id-delim splits."""
    if getattr(source, "kind", None) != "bgen" or getattr(source, "sample", None) or getattr(source, "id_delim", None):
        return ""
    joined = {f"{f}_{i}" for f, i in zip(table.fids or table.iids, table.iids)}
    if any(i in joined for i in fam.iids[:1000]):
        return (f" The .bgen's stored IDs look like FID_IID of {table.path} (e.g. {fam.iids[0]!r}): add --id-delim _ "
                "(plink2's flag) to read them as FID and IID")
    return ""


def _read_locos(cfg: ScanConfig, fam, names, masks) -> list:
    """Each phenotype's :class:`~dash_spark.io.loco.Loco` (``--pred``), matched to the .fam by
    REGENIE's ``FID_IID`` keys and checked on that phenotype's own samples (``masks``: REGENIE's step
    1 writes ``NA`` for samples missing the trait); samples without a prediction leave that
    phenotype, as in REGENIE."""
    from ..io.loco import read_loco, read_pred_list

    files = read_pred_list(cfg.pred, names)
    keys = [f"{f}_{i}" for f, i in zip(fam.fids, fam.iids)]
    out = []
    for name, mask in zip(names, masks):
        loco = read_loco(files[name], keys, mask, name)
        gone = int((mask & ~loco.present).sum())
        if gone:
            log.warning("%s: %d analysed sample(s) have no LOCO prediction for phenotype %s; left out of it "
                        "(as REGENIE does)", loco.path, gone, name)
        if mask.any() and not (mask & loco.present).any():
            raise InputError(f"{loco.path}: none of the analysed samples of phenotype {name!r} is in the file "
                             "(its header's FID_IID keys); rerun REGENIE's step 1 on these samples")
        out.append(loco)
    return out


def _chrom_groups(cfg: ScanConfig, fam, bim, variants: np.ndarray, C: np.ndarray, cov_names, Y: np.ndarray,
                  Y_raw: np.ndarray, masks, base: np.ndarray, kept: np.ndarray, freq_mask: np.ndarray, loco,
                  names, tail, party: bool = False, sexchr: bool = False, tail_b=(), logistic=frozenset()):
    """``(W tuple, groups, A of the first group, patterns of the first group, offset moments, variants)``
    of a model whose variants need more than one weight matrix:

    - ``--pred``: one per chromosome, whose phenotype columns carry that chromosome's LOCO offsets
      (Wald: ``y - o``; REGENIE: the score test's residual ``r``). A statistics model (``party``)
      also returns each chromosome's moments of ``y - o`` (:attr:`SufficientStats.offsets`);
    - ``sexchr`` (plink2's defaults, from the samples' sex): chrX with a SEX covariate (1 male, 2
      female) on the samples of known sex, male dosages halved with ``--xchr-model 1`` (2, the
      default, keeps 0..2; 0 skips chrX); chrY on males only and chrMT, both haploid (dosages
      halved); every other chromosome (XY included) as an autosome.

    ``variants`` comes back without the variants no group tests (chrX under ``--xchr-model 0``,
    chrY without males)."""
    from ..io.loco import loco_chromosome
    from ..stats.regenie import null_phenotype, regenie_weights

    chroms = np.asarray(bim.chrom)[variants] if len(variants) else np.asarray([], dtype=object)
    groups, Ws, first = [], [], None
    offset_moments: dict | None = {} if party else None
    regenie = cfg.pred_test == "regenie" and bool(cfg.pred)
    stat_regenie = regenie and party  # a statistics model: sums from which finalize runs the test
    reg_sums = None
    if regenie:  # REGENIE's analysed samples: a phenotype and every covariate
        analysed = base & np.any(~np.isnan(Y), axis=1)
    if stat_regenie:
        reg_sums = _regenie_sums(C, Y_raw, analysed)
    elif regenie:
        basis = covariate_basis(C, analysed, cov_names, where=f"--pred-test regenie: covariates ({cfg.covar})")
        nulls = []
        for t, name in enumerate(names):
            yt, scale = null_phenotype(basis.Q, analysed, Y_raw[:, t], masks[t])
            if not scale > 1e-6:
                raise InputError(f"{cfg.pheno}: phenotype {name!r} has no variance left after the covariates "
                                 "(REGENIE's sd=0); leave it out with --pheno-name")
            nulls.append((name, yt, scale, masks[t]))
    classes = {c: (sex_chrom_class(c) if sexchr else None) for c in dict.fromkeys(chroms.tolist())}
    # without --pred, the chromosomes of one class share a group
    keys = {c: (c if cfg.pred else (classes[c] or "")) for c in classes}
    sex = fam.sex if fam.sex is not None else np.zeros(fam.n_samples, dtype=np.int8)
    male, known = (sex == 1) & kept, (sex > 0) & kept
    keep_variants = np.ones(len(variants), dtype=bool)
    # a statistics model's sex classes: every group has the SEX column (zero but on chrX), so that
    # all rows share one layout; the classes' moments and frequency weights are kept for finalize
    stat_sex = party and sexchr
    sex_col = np.where(male, 1.0, np.where(known, 2.0, 0.0))
    class_moments: dict = {}
    class_freq = {"X": float((freq_mask * np.where(male, 0.5, 1.0)).sum()), "Y": float((freq_mask * male).sum() * 0.5),
                  "MT": float(freq_mask.sum() * 0.5)}
    for key in dict.fromkeys(keys.values()):
        members = [c for c in classes if keys[c] == key]
        cls = classes[members[0]]
        rows = np.isin(chroms, members)
        if cls == "X" and cfg.xchr_model == 0:
            log.info("chrX: %d variant(s) skipped (--xchr-model 0)", int(rows.sum()))
            keep_variants &= ~rows
            continue
        if cls == "Y" and not male.any() and not stat_sex:  # a statistics model: the pooled samples decide
            log.info("chrY: %d variant(s) skipped: no males", int(rows.sum()))
            keep_variants &= ~rows
            continue
        Cg, cov_g, masks_g = C, cov_names, masks
        scale = hemi = None
        with_sex = None
        if stat_sex:
            Cg = np.column_stack([C, sex_col if cls == "X" else np.zeros(fam.n_samples)])
            cov_g = list(cov_names) + ["SEX"]
            if cls == "X":
                masks_g = [m & known for m in masks]
            elif cls == "Y":
                masks_g = [m & male for m in masks]
        if cls == "X" and stat_sex:
            scale = np.ones(fam.n_samples)
            hemi = freq_mask * np.where(male, 0.5, 1.0)
        elif cls == "X":
            if male.any() and male.sum() < known.sum():  # plink2 adds SEX when both sexes are present
                Cg = np.column_stack([C, np.where(male, 1.0, 2.0)])
                cov_g = list(cov_names) + ["SEX"]
                masks_g = [m & known for m in masks]
                # ... and leaves it out for a phenotype analysed in one sex only (it would be constant)
                with_sex = [t for t, m in enumerate(masks_g) if (m & male).any() and (m & ~male).any()]
            scale = np.where(male, 0.5, 1.0) if cfg.xchr_model == 1 else np.ones(fam.n_samples)
            hemi = freq_mask * np.where(male, 0.5, 1.0)
        elif cls == "Y":
            masks_g = [m & male for m in masks]
            scale = np.full(fam.n_samples, 0.5)
            hemi = freq_mask * male * 0.5
        elif cls == "MT":
            scale = np.full(fam.n_samples, 0.5)
            hemi = freq_mask * 0.5
        offsets = None
        if cfg.pred:
            code = loco_chromosome(members[0])
            if code is None:
                raise InputError(f"--pred {cfg.pred}: REGENIE has no LOCO prediction for chromosome {members[0]!r} "
                                 "(its predictions cover 1-22 and X); leave it out with --chr")
            offsets = [lc.offset(code, members[0]) for lc in loco]
        idx = variants[rows]
        if stat_regenie:
            A_cols, B_cols, pats = _regenie_stat_columns(cfg, C, cov_names, Y, masks, names, offsets, reg_sums,
                                                         members[0], analysed)
            spec = None
        elif regenie:
            A_cols, B_cols, spec = regenie_weights(basis.Q, analysed, nulls, offsets)
            pats = ()
        else:
            O = np.column_stack(offsets) if offsets is not None else None
            Yc = Y
            if O is not None:  # y - o for a linear model; a case/control phenotype's null model takes o
                lin = np.array([name not in logistic for name in names])
                Yc = np.where(lin[None, :], Y - O, Y)
            if with_sex is not None and len(with_sex) < len(names):
                A_cols, B_cols, pats, mos = _split_sex_patterns(cfg, C, Cg, cov_names, cov_g, Yc, masks_g, names,
                                                                with_sex, party, logistic)
            else:
                A_cols, B_cols, pats, mos = _pattern_columns(cfg, Cg, cov_g, Yc, masks_g, names, party,
                                                             quiet=party or first is not None, logistic=logistic,
                                                             offsets=O)
                if stat_sex and cls in ("X", "Y"):
                    class_moments[cls] = tuple(mos)
            pats, spec = tuple(pats), None
            if party and cfg.pred:
                offset_moments[members[0]] = (np.stack([mo.Cty for mo in mos]), np.array([mo.yty for mo in mos]))
        # a statistics model's frequency column: the class's allele weights (finalize divides by the
        # class's dosage factor: the dosages are scaled before the sums)
        tail_g = [tail[0], hemi[:, None]] if stat_sex and hemi is not None else tail
        A = np.hstack(A_cols + tail_g)
        Ws.append(pad_weights(A, np.hstack(list(B_cols) + list(tail_b))))
        groups.append(VariantGroup(chrom=",".join(members), variants=idx, patterns=pats, regenie=spec,
                                dosage_scale=scale, hemi=hemi, n_a=A.shape[1]))
        if first is None:
            first = (A, pats)
    if first is None:
        raise InputError("no variant left to test (check --chr/--extract, --xchr-model, or the samples' sex)")
    if cfg.pred:
        log.info("--pred %s: %s test, LOCO offsets for %d chromosome(s)", cfg.pred,
                 "REGENIE's score" if regenie else "Wald", len(groups))
    sexchr_stats = None
    if stat_sex:
        from ..stats.sexchrom import SexChromStats

        k1 = C.shape[1] + 1
        empty = tuple(Moments(0, np.zeros((k1, k1)), np.zeros(k1), np.zeros(k1), 0.0) for _ in names)
        sexchr_stats = SexChromStats(moments={c: class_moments.get(c, empty) for c in ("X", "Y")}, n_freq=class_freq,
                                     males=int(male.sum()), known=int(known.sum()))
    return (tuple(Ws), tuple(groups), first[0], list(first[1]), offset_moments or None, variants[keep_variants],
            sexchr_stats, reg_sums)


def _check_multiallelic(cfg: ScanConfig, source, bim, variants, *, party: bool, sexchr: bool,
                        logistic: bool = False) -> None:
    """Multiallelic variants (a comma in ALT) are tested by a scan's joint model of their alleles
    (plink2's); the other models take biallelic variants only, and say so before any work."""
    alt = np.asarray(bim.alt, dtype=object)[variants]
    multi = np.flatnonzero(np.fromiter(("," in str(a) for a in alt), dtype=bool, count=len(alt)))
    if not len(multi):
        return
    chroms = np.asarray(bim.chrom, dtype=object)[variants][multi]
    what = None
    if party:
        what = "stored and multi-party statistics (compress, party compress)"
    elif cfg.pred:
        what = "--pred"
    elif cfg.gwas_ssf:
        what = "--gwas-ssf"
    elif logistic:
        what = "logistic regression (case/control phenotypes)"
    elif sexchr and any(sex_chrom_class(c) for c in set(chroms.tolist())):
        what = "chrX/Y/MT (plink2's sex-chromosome models)"
    if what is None:
        log.info("%d multiallelic variant(s): each tested as plink2 does, the alleles but the omitted one jointly "
                 "(call filters do not apply to them)", len(multi))
        return
    j = int(variants[multi[0]])
    raise ConfigError(f"{source.label}: {len(multi):,} multiallelic variant(s), e.g. {bim.id[j]} (ALT {bim.alt[j]}); "
                      f"{what} tests biallelic variants only. Split them into biallelic records (plink2 --pfile IN "
                      "--make-pgen multiallelics=- --out NEW) or leave them out (plink2 --max-alleles 2)")


def _regenie_sums(C: np.ndarray, Y_raw: np.ndarray, analysed: np.ndarray):
    """A statistics model's :class:`~dash_spark.stats.regenie.RegenieSums` without the chromosomes'
    (added by :func:`_regenie_stat_columns`); ``analysed``: the samples with a phenotype and every
    covariate."""
    from ..stats.regenie import RegenieSums

    use = ~np.isnan(Y_raw)
    au = use & analysed[:, None]
    yr = np.nan_to_num(Y_raw)
    T = Y_raw.shape[1]
    CA = C[analysed]
    return RegenieSums(n_use=use.sum(axis=0).astype(np.float64), s_use=(yr * use).sum(axis=0),
                       n_au=au.sum(axis=0).astype(np.float64), s_au=(yr * au).sum(axis=0),
                       ss_au=(yr * yr * au).sum(axis=0),
                       CAy_au=np.stack([C[au[:, t]].T @ yr[au[:, t], t] for t in range(T)]),
                       CA1_au=np.stack([C[au[:, t]].sum(axis=0) for t in range(T)]),
                       n_A=float(analysed.sum()), CAtCA=CA.T @ CA, chroms={})


def _regenie_stat_columns(cfg: ScanConfig, C, cov_names, Y, masks, names, offsets, sums, chrom: str,
                          analysed: np.ndarray):
    """A statistics model's weight columns of one chromosome for REGENIE's test: per phenotype its
    own (raw y on its samples M), then per phenotype the chromosome's LOCO predictions on M in
    place of y, then the ``analysed`` samples (y = 0); ``sums.chroms[chrom]`` gets the predictions'
    moments. Returns ``(A columns, B columns, patterns)``."""
    n, T = Y.shape
    o = np.column_stack([np.where(masks[t], np.nan_to_num(offsets[t]), 0.0) for t in range(T)])
    y = np.column_stack([np.where(masks[t], np.nan_to_num(Y[:, t]), 0.0) for t in range(T)])
    stack = np.column_stack([y, o, np.zeros(n)])
    A_cols, B_cols, pats, _mos = _pattern_columns(cfg, C, cov_names, stack, list(masks) + list(masks) + [analysed],
                                                  list(names) + [f"o:{p}" for p in names] + ["(analysed)"], True,
                                                  quiet=True)
    sums.chroms[chrom] = (np.stack([C[masks[t]].T @ o[masks[t], t] for t in range(T)]),
                          np.einsum("nt,nt->t", o, o), np.einsum("nt,nt->t", y, o), o.sum(axis=0))
    return A_cols, B_cols, pats


def _split_sex_patterns(cfg: ScanConfig, C, Cg, cov_names, cov_g, Y, masks, names, with_sex, party: bool,
                        logistic=frozenset()):
    """chrX's pattern columns when only some phenotypes get the SEX covariate (``with_sex``: their
    indices; the others are analysed in one sex): the two sets' columns side by side."""
    rest = [t for t in range(len(names)) if t not in with_sex]
    parts = []
    for idx, CC, cn in ((with_sex, Cg, cov_g), (rest, C, cov_names)):
        if idx:
            parts.append(_pattern_columns(cfg, CC, cn, Y[:, idx], [masks[t] for t in idx], [names[t] for t in idx],
                                          party, quiet=True, logistic=logistic))
    A_cols, B_cols, pats, mos = [], [], [], []
    for a, b, p, mo in parts:
        na, nb = sum(x.shape[1] for x in A_cols), sum(x.shape[1] for x in B_cols)
        pats += [dataclasses.replace(q, a_offset=q.a_offset + na, b_offset=q.b_offset + nb) for q in p]
        A_cols += a
        B_cols += b
        mos += mo
    return A_cols, B_cols, pats, mos


def _usable_covariates(Cv: np.ndarray, rows: np.ndarray, names: list[str], cfg: ScanConfig):
    """The covariate columns ``Cv`` [shape: (n, c)] without those that carry no information on the
    samples ``rows``, as plink2 does: a column with no value at all (all ``NA``), and, with an
    intercept, a constant one (without one, only an all-zero column). Each is named in a warning."""
    keep = []
    for j, name in enumerate(names):
        v = Cv[rows, j]
        v = v[~np.isnan(v)]
        if v.size == 0:
            log.warning("%s: covariate %r has no value (all NA) for the analysed samples; excluded from "
                        "the model (plink2 excludes it too). Fix the column or leave it out with --covar-name",
                        cfg.covar, name)
            continue
        keep.append(j)
    # constant over the samples that have every remaining covariate
    complete = rows & ~np.isnan(Cv[:, keep]).any(axis=1)
    out = []
    for j in keep:
        v = Cv[complete, j]
        if v.size and np.ptp(v) == 0 and (not cfg.no_intercept or v[0] == 0):
            log.warning("%s: covariate %r is constant on the %d analysed samples; excluded from the model "
                        "(plink2 excludes a constant covariate too). Leave it out with --covar-name to "
                        "silence this", cfg.covar, names[j], int(complete.sum()))
            continue
        out.append(j)
    return Cv[:, out], [names[j] for j in out]


def config_inputs(cfg: ScanConfig) -> tuple[str, ...]:
    """Every file a scan reads (what its --out may never be, contain or lie inside)."""
    paths = list(_named_source(cfg).input_paths())
    paths += [cfg.pheno, cfg.covar, cfg.keep, cfg.remove, cfg.extract, cfg.exclude, cfg.pred]
    return tuple(p for p in paths if p)


def plan_scan(cfg: ScanConfig, model: Model, parallelism: int) -> tuple[ScanPlan, list[tuple], int]:
    """The tasks' plan and the partition ranges of a model (shared by the scan and a party's compress).

    Returns ``(plan, ranges, block_variants)``; a ``--pred`` model's plan is a
    :class:`~dash_spark.scanner.tasks.GroupedPlan` (one plan per chromosome; ``model.W`` is the tuple of
    their weight matrices) whose ranges never span two chromosomes.
    """
    bv = cfg.block_variants or default_block_variants(len(model.variants), parallelism)
    width = (model.W[0] if model.groups else model.W).shape[1]
    plan = ScanPlan(
        reader=model.source.reader(), n_samples=model.n_samples,
        n_a=model.n_a, n_freq=model.n_freq, n_kept=model.n_kept, patterns=model.patterns, shared=model.shared,
        filters=CallFilters(maf=cfg.maf, mac=cfg.mac, geno=cfg.geno, mach_r2=cfg.mach_r2_filter),
        sub_block=sub_block_size(model.n_samples, width + _shared_gram_width(model), cfg.task_memory_mb << 20,
                                 dense=not isinstance(model.source, BedSource),
                                 result_rows=0 if model.moments is not None else len(model.phenotypes)),
        count_alt=cfg.count_alt or model.source.count_alt, missing_genotypes=model.missing_genotypes,
        a1freq_floor=cfg.a1freq_lower_limit,
    )
    if not model.groups:
        return plan, plan_ranges(model.variants, bv, model.bim.line_offsets), bv
    plans, ranges = [], []
    group = np.full(model.bim.n_variants, -1, dtype=np.int64)
    for g, grp in enumerate(model.groups):
        sub = plan.sub_block
        if grp.dosage_scale is not None:  # a sex chromosome's blocks are decoded to float64 in the task
            sub = sub_block_size(model.n_samples, model.W[g].shape[1], cfg.task_memory_mb << 20, dense=True,
                                 result_rows=0 if model.moments is not None else len(model.phenotypes))
        plans.append(dataclasses.replace(plan, patterns=tuple(grp.patterns), regenie=grp.regenie, n_a=grp.n_a,
                                         dosage_scale=grp.dosage_scale, hemi=grp.hemi, sub_block=sub))
        group[grp.variants] = g
        # ranges never span another group's variants: a statistics job stacks its blocks in
        # variant order by their first variant (chrX between chr22 and XY, say)
        pos = np.searchsorted(model.variants, grp.variants)
        for run in np.split(grp.variants, np.flatnonzero(np.diff(pos) != 1) + 1):
            if len(run):
                ranges += [row._replace(part=len(ranges) + i)
                           for i, row in enumerate(plan_ranges(run, bv, model.bim.line_offsets))]
    # parts in variant order (the text files join the parts' lines in part order, as plink2 writes
    # variants in .bim order: chrX between chr22 and XY, not after the autosomes' group)
    ranges = [row._replace(part=i) for i, row in enumerate(sorted(ranges, key=lambda r: r.start))]
    # each variant's group, as runs of .bim rows (chromosomes are mostly contiguous: a few runs)
    starts = np.flatnonzero(np.diff(group, prepend=-2) != 0)
    return GroupedPlan(tuple(plans), starts, group[starts]), ranges, bv


def _shared_gram_width(model: Model) -> int:
    """Per-variant columns a shared-basis task holds besides the kernel's: the missing calls'
    ``Q'Y`` (k x p) of all phenotypes, and one pattern's ``Q'Q`` (k x k)."""
    sh = model.shared
    return 0 if sh is None or model.missing_genotypes == "mean" else (sh.k * sh.p + sh.k * sh.k) // 3 + 1


def run_scan(cfg: ScanConfig, spark=None) -> ScanResult:
    """Run a scan end to end; outputs appear under ``cfg.out`` only if everything succeeded
    (``ds.scan``, the ``dash-spark scan`` command).

    Parameters
    ----------
    cfg : ScanConfig
        The scan's settings.
    spark : pyspark.sql.SparkSession, optional
        The session to run on (default: one started for the scan, as the command does).

    Returns
    -------
    ScanResult
        The files written and each phenotype's summary (see :class:`ScanResult`).

    Examples
    --------
    >>> import os, tempfile
    >>> from dash_spark.api import example_data
    >>> data = example_data()
    >>> out = os.path.join(tempfile.mkdtemp(), "out")
    >>> res = run_scan(ScanConfig(bfile=data.bfile, pheno=data.pheno, pheno_name=("pheno2",), out=out,
    ...                           plots=False), spark=spark)
    >>> sorted(os.listdir(out))[:3]
    ['.dash-spark-output', 'pheno2.glm.linear', 'results.parquet']

    A local (or shared, ``file://``) ``--out`` is staged by :func:`dash_spark.outputs.staging.staged_output`
    and the tasks write their own parts; another filesystem (hdfs://, s3a:// ...) goes through
    Spark's writer and Hadoop's FileSystem API, with the same rules (marker, no overwrite of what
    dash-spark did not write).
    """
    from ..spark.session import SessionStarter
    from ..outputs.staging import staged_output

    t0 = time.time()
    early = spark if isinstance(spark, SessionStarter) else None  # started by the CLI before its imports
    spark = None if early is not None else spark
    if not tasks_can_write(cfg.out):
        starter = early or (SessionStarter(cfg.master, cfg.spark_conf) if spark is None else None)
        if object_store_out(cfg.out):
            from ..outputs.staging import ObjectStage

            stage = ObjectStage(cfg.out, overwrite=cfg.overwrite, inputs=config_inputs(cfg))  # refuses before work
            model = build_model(cfg)
            return _run_scan_object_store(cfg, spark if starter is None else starter.get(), model, stage, t0)
        model = build_model(cfg)
        return _run_scan_hadoop(cfg, spark if starter is None else starter.get(), model, t0)
    with staged_output(cfg.out, overwrite=cfg.overwrite, inputs=config_inputs(cfg), command="scan") as stage:
        from ..outputs.writers import finish_local_outputs, text_phenotypes

        # the JVM starts (and warms its Python workers) while the driver builds the model
        starter = early or (SessionStarter(cfg.master, cfg.spark_conf) if spark is None else None)
        model = build_model(cfg)
        phases = {"model_seconds": round(time.time() - t0, 2)}
        if starter is not None:
            spark = starter.get()
        phases["session_ready_seconds"] = round(time.time() - t0, 2)
        plan, ranges = _log_plan(cfg, model, spark)
        t_stage = time.time()
        # a local (or shared) directory: tasks write their own parts, no SQL job
        n_rows = write_ranges(spark, model.W, ranges, partial(scan_ranges, plan), stage.path, text_phenotypes(model),
                              timings=phases)
        phases["scan_stage_seconds"] = round(time.time() - t_stage, 2)
        if n_rows == 0 and plan.filters.active:  # --maf/--mac/--geno removed every variant
            raise plan.filters.none_passed(model.n_variants)
        log.info("scan: results written (%.1f s since start)", time.time() - t0)
        t_out = time.time()
        glm, summaries = finish_local_outputs(stage.path, model, plots=cfg.plots, plots_top=cfg.plots_top)
        phases["outputs_seconds"] = round(time.time() - t_out, 2)
        final = {k: stage.final(v) for k, v in glm.items()}
    out = stage.out
    phases["total_seconds"] = round(time.time() - t0, 2)
    # one JSON line, read by `dash-spark bench` (kernel: the tasks' seconds in the kernels, summed)
    log.info("phases: %s", json.dumps(phases))
    log.info("done in %.1f s: %s", time.time() - t0, out)
    return ScanResult(out=out, results_path=f"{out}/results.parquet", glm_paths=final,
                      summaries=summaries, seconds=time.time() - t0)


def _log_plan(cfg: ScanConfig, model: Model, spark):
    plan, ranges, bv = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    log.info("scan: %d variants in %d partitions of <= %d variants, sub-blocks of %d; "
             "missing genotype calls: %s", model.n_variants, len(ranges), bv, plan.sub_block,
             "sample dropped for that variant (plink2)" if cfg.missing_genotypes == "drop"
             else "mean-imputed per variant (Hail/REGENIE)")
    return plan, ranges


def _run_scan_object_store(cfg: ScanConfig, spark, model: Model, stage, t0: float) -> ScanResult:
    """A scan whose --out is in object storage (s3://, gs://): the tasks write their parts under
    the stage prefix themselves; the driver reads them back into a local temporary folder, finishes
    the outputs there as for a local --out, puts them under the stage and commits it
    (:class:`dash_spark.outputs.staging.ObjectStage`)."""
    import tempfile

    from ..outputs.writers import finish_local_outputs, text_phenotypes

    try:
        plan, ranges = _log_plan(cfg, model, spark)
        n_rows = write_ranges(spark, model.W, ranges, partial(scan_ranges, plan), stage.path, text_phenotypes(model))
        if n_rows == 0 and plan.filters.active:
            raise plan.filters.none_passed(model.n_variants)
        log.info("scan: results written to %s (%.1f s since start)", stage.path, time.time() - t0)
        with tempfile.TemporaryDirectory(prefix="dash-spark-out-") as local:
            stage.download(local)
            glm, summaries = finish_local_outputs(local, model, plots=cfg.plots, plots_top=cfg.plots_top)
            stage.upload(local, "scan")
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    out = stage.out
    final = {k: f"{out}/{os.path.basename(v)}" for k, v in glm.items()}
    log.info("done in %.1f s: %s", time.time() - t0, out)
    return ScanResult(out=out, results_path=f"{out}/results.parquet", glm_paths=final,
                      summaries=summaries, seconds=time.time() - t0)


def _run_scan_hadoop(cfg: ScanConfig, spark, model: Model, t0: float) -> ScanResult:
    """A scan whose --out is on a Hadoop filesystem (hdfs://, s3a:// ...): Spark writes the files."""
    import tempfile

    from ..errors import translate_task_error
    from ..outputs.writers import write_reports
    from .fs import HadoopFS
    from ..outputs.staging import MARKER, write_marker

    fs = HadoopFS(spark, cfg.out)
    out = qualify(cfg.out).rstrip("/")
    if fs.exists(out):
        if not cfg.overwrite:
            raise OutputError(f"{out}: output directory exists; pass --overwrite to replace it or choose another --out")
        if not fs.exists(f"{out}/{MARKER}"):
            raise OutputError(f"--out {out}: exists and was not written by dash-spark (no {MARKER} in it); "
                              "--overwrite replaces only dash-spark output directories")
    stage = fs.staging_dir(out)
    try:
        fs.mkdirs(stage)
        plan, ranges = _log_plan(cfg, model, spark)
        results, W_bc = map_ranges(spark, model.W, ranges, partial(scan_ranges, plan), RESULT_SCHEMA_DDL)
        try:
            results.write.parquet(f"{stage}/results.parquet")
        except Exception as exc:  # noqa: BLE001 - our errors from the tasks as one line
            translate_task_error(exc)
        W_bc.destroy()
        log.info("scan: results written (%.1f s since start)", time.time() - t0)
        glm, summaries = write_reports(spark, fs, stage, model, plots=cfg.plots)
        with tempfile.TemporaryDirectory(prefix="dash-spark-") as tmp:
            write_marker(tmp, "scan")
            fs.put(os.path.join(tmp, MARKER), f"{stage}/{MARKER}")
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


def statistics_model(cfg: ScanConfig, *, subset_of_fam: bool = False) -> Model:
    """The model whose tasks compute additive statistics ``S`` (a party, a store batch, the API's
    ``compress``): raw masked covariates, one pattern per phenotype (see :func:`build_model`)."""
    return build_model(cfg, party=True, subset_of_fam=subset_of_fam)


def model_statistics(model: Model, per_variant: np.ndarray | None) -> SufficientStats:
    """``S`` of a statistics model: its global moments with the given per-variant rows."""
    return SufficientStats(phenotypes=model.phenotypes, covariates=model.covariates,
                           mode=model.missing_genotypes, moments=model.moments, n_freq=model.n_freq,
                           per_variant=per_variant, offsets=model.offset_moments, sexchr=model.sexchr_stats,
                           regenie=model.regenie_sums)


def compress_model(spark, cfg: ScanConfig, model: Model) -> SufficientStats:
    """Run a statistics model's Spark job: ``S`` of every selected variant, gathered on the driver
    (variants x statistics, independent of the number of samples)."""
    from .compress import collect_ranges
    from .tasks import statistics_ranges

    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    V = collect_ranges(spark, model.W, ranges, partial(statistics_ranges, plan))
    if V.shape[0] != len(model.variants):  # pragma: no cover - one row per variant
        raise OutputError(f"compress: {V.shape[0]} statistics rows for {len(model.variants)} variants")
    return model_statistics(model, V.reshape(len(model.variants), -1))


def stage_model_share(spark, cfg: ScanConfig, model: Model, writer) -> list[dict]:
    """Run a statistics model's Spark job for a party's share: each task encodes, masks and stages
    its rows of the per-variant statistics (``writer``: a
    :class:`~dash_spark.multiparty.rounds.PartWriter`); only the parts' header entries come back."""
    from .jobs import run_ranges
    from .tasks import share_ranges

    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    parts = sorted(run_ranges(spark, model.W, ranges, partial(share_ranges, plan, writer)), key=lambda p: p["start"])
    if sum(p["stop"] - p["start"] for p in parts) != len(model.variants):  # pragma: no cover - one row per variant
        raise OutputError(f"share: {sum(p['stop'] - p['start'] for p in parts)} statistics rows for "
                          f"{len(model.variants)} variants")
    return parts
