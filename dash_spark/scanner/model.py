"""The model of a scan or of additive statistics: who is analysed for which phenotype, with which
covariates, and the weight matrix ``W`` the Spark tasks multiply the genotypes by.

It is built in two steps, each with one meaning:

- :func:`read_samples` reads the genotype source's samples, the phenotypes and the covariates, and
  decides who is analysed for which phenotype (:class:`Samples`); the :class:`SampleRules` of the
  model it serves say what it drops or refuses on the way (plink2's rules for a scan; a batch of
  statistics keeps what may vary once batches are pooled);
- :func:`scan_model` builds a one-party scan's weights (an orthonormal covariate basis ``Q`` per
  missingness pattern, or one shared basis with downdates), :func:`statistics_model` those of
  additive statistics ``S`` (a party's share, a store batch, the API's ``compress``: the raw
  covariates on each phenotype's samples, one pattern per phenotype, and the phenotypes' global
  moments). Models whose variants need several weight matrices (``--pred``'s chromosomes, plink2's
  sex-chromosome models) build them group by group with the same builder's columns.

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

import dataclasses
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..config import ScanConfig
from ..errors import ConfigError, InputError, ModelError
from ..io.loco import Loco
from ..io.plink import Bim, Fam
from ..io.tables import match_samples, read_sample_table
from ..stats.kernel import pad_weights
from ..stats.regression import CovariateCorrelation, covariate_basis
from ..stats.sexchrom import sex_chrom_class
from ..stats.sufficient import Moments
from .filters import sample_mask, variant_mask
from .sources import GenotypeSource, source_from_options
from .tasks import Pattern, SharedBasis

log = logging.getLogger("dash_spark")


@dataclass(frozen=True)
class Model:
    """The driver-side model: samples, bases and the broadcast matrix ``W = [A | B]``.

    A one-party scan model holds an orthonormal basis ``Q`` per missingness pattern in ``W``; a
    statistics model (``build_model(..., party=True)``: parties, store batches, the API's
    ``compress``) holds the raw masked covariates per phenotype and their global ``moments``.
    """

    source: GenotypeSource
    fam_path: str
    bim: Bim
    n_samples: int
    phenotypes: tuple[str, ...]
    covariates: tuple[str, ...]
    patterns: tuple[Pattern, ...]
    #: one matrix, or one per group (:attr:`groups`)
    W: np.ndarray | tuple[np.ndarray, ...]
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



def named_source(cfg: ScanConfig) -> GenotypeSource:
    """The genotype source a config names, unchecked (its files are listed by ``input_paths``)."""
    return source_from_options(bfile=cfg.bfile, features=cfg.features, feature_samples=cfg.feature_samples,
                               pfile=cfg.pfile, bgen=cfg.bgen, bgen_ref=cfg.bgen_ref, sample=cfg.sample,
                               id_delim=cfg.id_delim)


def config_source(cfg: ScanConfig) -> GenotypeSource:
    """The genotype source a config names (``--bfile``, ``--pfile``, ``--bgen`` or ``--features``), checked."""
    return named_source(cfg).check()


@dataclass(frozen=True)
class SampleRules:
    """What :func:`read_samples` drops or refuses, by the model it serves. A scan follows plink2; a
    batch of statistics is summed with others before any model is fitted, so what is constant or
    empty in one batch may vary pooled, and is kept."""

    #: leave out an all-NA or constant covariate, with plink2's warning
    drop_uninformative_covariates: bool
    #: refuse a phenotype that is constant on its samples, as plink2 does
    refuse_constant_phenotypes: bool
    #: why case/control phenotypes cannot get their model here (None: they can)
    linear_only: str | None = None
    #: a withdrawal's statistics (the ``--keep`` samples of a whole .fam): the allele-frequency
    #: samples are chosen on the whole .fam, and samples of which none is analysed are accepted
    subset_of_fam: bool = False


#: plink2's rules: a scan's
SCAN_RULES = SampleRules(drop_uninformative_covariates=True, refuse_constant_phenotypes=True)


@dataclass(frozen=True)
class Samples:
    """Who is analysed for which phenotype, and with which covariates: what a scan model and a
    statistics model share. Arrays have one row per sample of the genotype source (``n``)."""

    source: GenotypeSource
    fam: Fam
    bim: Bim
    fam_path: str
    #: the phenotypes' names, and their values [shape: (n, p)]; NaN: not analysed for that phenotype
    names: tuple[str, ...]
    Y: np.ndarray
    #: the phenotypes on every kept sample that has them, covariates or not (REGENIE centres on
    #: those); only under ``--pred-test regenie``
    Y_any: np.ndarray | None
    #: the covariates [shape: (n, k)] (the intercept's column first), 0 where a value is missing
    C: np.ndarray
    cov_names: tuple[str, ...]
    #: samples with a phenotype row and every covariate (``base``), each phenotype's analysed samples
    base: np.ndarray
    masks: tuple[np.ndarray, ...]
    #: the samples --keep/--remove leave, and those whose alleles count in the frequencies
    kept: np.ndarray
    freq_mask: np.ndarray
    #: each phenotype's LOCO predictions (``--pred``)
    loco: tuple[Loco, ...] | None
    #: the variants selected for testing (indices into ``bim``)
    variants: np.ndarray
    #: the case/control phenotypes that get their binary model (y coded 0/1)
    logistic: frozenset
    counts: dict

    @property
    def n(self) -> int:
        return self.fam.n_samples

    def tail(self) -> list[np.ndarray]:
        """The last columns of every ``A``: the kept samples (--geno's missing rate) and the
        frequency samples."""
        return [self.kept.astype(np.float64)[:, None], self.freq_mask.astype(np.float64)[:, None]]

    def sex_chromosomes(self) -> bool:
        """Whether any selected variant is on chrX/Y/MT."""
        chroms = set(np.asarray(self.bim.chrom)[self.variants].tolist())
        return any(sex_chrom_class(c) for c in chroms)


def read_samples(cfg: ScanConfig, rules: SampleRules) -> Samples:
    """Read .fam/.bim (checking the genotype files), the phenotypes and the covariates, and decide
    who is analysed for which phenotype, under ``rules``."""
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
    pheno, logistic = _case_control(cfg, pheno, (rows[0] >= 0) & kept, rows[0], linear_only=rules.linear_only)
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
        if rules.drop_uninformative_covariates:
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
    if not base.any() and not rules.subset_of_fam:  # withdrawn samples may have had no phenotype at all
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
        if rules.refuse_constant_phenotypes and mask.sum() >= 2 and np.ptp(Y[mask, t]) == 0:
            raise InputError(
                f"{cfg.pheno}: phenotype {pheno.names[t]!r} has the same value for all {int(mask.sum())} "
                f"analysed samples; expected a phenotype that varies, found a constant. Check the column "
                f"or leave it out with --pheno-name")
    loco = None
    if cfg.pred:
        loco = tuple(_read_locos(cfg.pred, fam, pheno.names, masks))
        masks = [mask & loco[t].present for t, mask in enumerate(masks)]
    # allele frequencies over the .fam's founders (all samples if none) decide which allele is
    # major, as plink2 does, independently of each phenotype's samples
    # (among the samples --keep/--remove leave); the kept mask itself gives --geno's missing rate
    use_founders = fam.founder.any() if rules.subset_of_fam else (fam.founder & kept).any()
    freq_mask = fam.founder & kept if use_founders else kept
    Y_any = None
    if cfg.pred and cfg.pred_test == "regenie":
        # REGENIE centres a phenotype on every sample that has it (also one without covariates)
        Y_any = np.full_like(Y, np.nan)
        has = (rows[0] >= 0) & kept
        Y_any[has] = pheno.values[rows[0, has]]
    counts = dict(counts)
    counts.update(analysed=int(base.sum()), dropped_missing_covariate=dropped_cov,
                  phenotype_samples={name: int(m.sum()) for name, m in zip(pheno.names, masks)})
    return Samples(source=source, fam=fam, bim=bim, fam_path=fam_path, names=tuple(pheno.names), Y=Y, Y_any=Y_any,
                   C=C, cov_names=tuple(cov_names), base=base, masks=tuple(masks), kept=kept, freq_mask=freq_mask,
                   loco=loco, variants=variants, logistic=logistic, counts=counts)


def scan_model(cfg: ScanConfig) -> Model:
    """A one-party scan's model: the samples under plink2's rules, an orthonormal covariate basis
    per missingness pattern (or one shared basis with downdates, from
    :data:`SHARED_MIN_PATTERNS` patterns on) and the case/control phenotypes' null models."""
    s = read_samples(cfg, SCAN_RULES)
    has_sexchr = s.sex_chromosomes()
    sexchr = s.fam.sex is not None and cfg.pred_test != "regenie" and has_sexchr
    if has_sexchr and not sexchr and s.fam.sex is not None and s.source.kind != "features":
        log.warning("chrX/Y/MT variants are tested as autosomes here (REGENIE's test); plink2's sex-chromosome "
                    "models apply to scans, stores and studies without it")
    _check_multiallelic(s, lambda chroms: _scan_biallelic_only(cfg, s, sexchr, chroms))
    # --mach-r2-filter needs sum x^2 over the kept samples: one more B column, the last
    tail_b = [s.kept.astype(np.float64)[:, None]] if cfg.mach_r2_filter else []
    groups: tuple | None = None
    shared: SharedBasis | None = None
    W: np.ndarray | tuple[np.ndarray, ...]
    variants = s.variants
    if cfg.pred or sexchr:
        grouped = _chrom_groups(cfg, s, sexchr, tail_b, _ScanGroupColumns(cfg, s))
        W, groups, A, patterns, variants = grouped.W, grouped.groups, grouped.A, grouped.patterns, grouped.variants
    else:
        if not s.logistic and _use_shared(s.masks):
            A_cols, B_cols, patterns, shared = _shared_columns(cfg, s.C, list(s.cov_names), s.Y, s.masks, s.names)
        else:
            A_cols, B_cols, patterns = _scan_columns(cfg, s.C, list(s.cov_names), s.Y, s.masks, s.names,
                                                     logistic=s.logistic)
        A = np.hstack(A_cols + s.tail())
        W = pad_weights(A, np.hstack(B_cols + tail_b))
    _log_weights(s, W, groups, patterns, shared)
    extra = None
    if cfg.gwas_ssf or cfg.report_covariates:
        from ..outputs.gwas_ssf import ExtraOutputs

        extra = ExtraOutputs.build(cfg, s.C, s.Y, list(s.masks), s.names, s.cov_names)
    return Model(
        source=s.source, fam_path=s.fam_path, bim=s.bim, n_samples=s.n, phenotypes=s.names,
        covariates=s.cov_names, patterns=tuple(patterns), W=W, groups=groups, n_a=A.shape[1],
        n_freq=int(s.freq_mask.sum()), n_kept=int(s.kept.sum()), variants=variants, counts=s.counts,
        missing_genotypes=cfg.missing_genotypes, extra_outputs=extra, regenie_outputs=cfg.pred_test == "regenie",
        score_phenotypes=tuple(p for p in s.names if p in s.logistic) if cfg.binary_test == "score" else (),
        shared=shared, logistic_phenotypes=tuple(p for p in s.names if p in s.logistic), text_outputs=cfg.text,
    )


def statistics_model(cfg: ScanConfig, *, subset_of_fam: bool = False) -> Model:
    """The model whose tasks compute additive statistics ``S`` (a party's share, a store batch, the
    API's ``compress``): the raw covariates on each phenotype's samples take the place of ``Q`` and
    phenotypes are not centred (the pooled basis is only known once the batches' sums are added),
    each phenotype is its own pattern (every batch's statistics have the same shape), and the model
    carries each phenotype's global :class:`Moments`.

    ``subset_of_fam=True``: the statistics of a withdrawal (the ``--keep`` samples, to be
    subtracted from those of the whole .fam) choose between "founders" and "all samples" for the
    allele-frequency samples on the whole .fam, as the batch's own statistics did, and accept
    samples of which none is analysed (they still count in the allele frequencies).
    """
    linear_only = None
    if cfg.binary_test != "score":  # (a score study's parties: dash_spark.studies.score)
        linear_only = "stored and multi-party statistics (compress, party compress, select) are linear"
    s = read_samples(cfg, SampleRules(drop_uninformative_covariates=False, refuse_constant_phenotypes=False,
                                      linear_only=linear_only, subset_of_fam=subset_of_fam))
    has_sexchr = s.sex_chromosomes()
    # plink2's sex-chromosome models apply whatever the batch's own samples' sexes (the pooled
    # samples decide at finalize), except with --pred, whose groups are the chromosomes' LOCO offsets
    sexchr = has_sexchr and not cfg.pred and s.source.kind != "features" and cfg.sex_chromosomes
    if sexchr and cfg.xchr_model == 1:
        raise ConfigError("--xchr-model 1: stored and multi-party statistics model chrX as plink2's default "
                          "(--xchr-model 2); leave chrX out (--chr) or use the default")
    if has_sexchr and not sexchr and s.source.kind != "features":
        log.warning("chrX/Y/MT variants are tested as autosomes here (--pred); plink2's sex-chromosome models "
                    "apply to scans, stores and studies without it")
    _check_multiallelic(s, lambda chroms: "stored and multi-party statistics (compress, party compress)")
    A_cols, B_cols, patterns, moments = _statistics_columns(s.C, s.Y, s.masks, s.names)
    A = np.hstack(A_cols + s.tail())
    W: np.ndarray | tuple[np.ndarray, ...] = pad_weights(A, np.hstack(B_cols))
    groups = offset_moments = sexchr_stats = regenie_sums = None
    variants = s.variants
    if cfg.pred or sexchr:  # the groups' weights; the moments stay the phenotypes' own (--pred: of y itself)
        columns = _StatisticsGroupColumns(cfg, s, sexchr)
        grouped = _chrom_groups(cfg, s, sexchr, [], columns)
        W, groups, A, patterns, variants = grouped.W, grouped.groups, grouped.A, grouped.patterns, grouped.variants
        offset_moments, sexchr_stats, regenie_sums = columns.offset_moments or None, columns.sexchr(), columns.sums
    _log_weights(s, W, groups, patterns, None)
    return Model(
        source=s.source, fam_path=s.fam_path, bim=s.bim, n_samples=s.n, phenotypes=s.names,
        covariates=s.cov_names, patterns=tuple(patterns), W=W, groups=groups, n_a=A.shape[1],
        n_freq=int(s.freq_mask.sum()), n_kept=int(s.kept.sum()), variants=variants, counts=s.counts,
        moments=tuple(moments),
        # REGENIE imputes missing calls with the mean: its statistics model keeps no missing-call Grams
        missing_genotypes="mean" if regenie_sums is not None else cfg.missing_genotypes,
        regenie_outputs=cfg.pred_test == "regenie", offset_moments=offset_moments,
        score_phenotypes=tuple(p for p in s.names if p in s.logistic) if cfg.binary_test == "score" else (),
        sexchr_stats=sexchr_stats, regenie_sums=regenie_sums,
        logistic_phenotypes=tuple(p for p in s.names if p in s.logistic), text_outputs=cfg.text,
        sample_ids=tuple(map(str, np.asarray(s.fam.iids)[np.logical_or.reduce(s.masks)])) if s.masks else None,
    )


def _log_weights(s: Samples, W, groups, patterns, shared) -> None:
    widths = [w.shape[1] for w in (W if groups else (W,))]
    log.info("model: %d phenotype(s) in %d missingness pattern(s)%s; broadcast matrix %d x %d (%.1f MB)%s",
             len(s.names), len(patterns), ", by downdates of one shared basis" if shared else "",
             W[0].shape[0] if groups else W.shape[0], max(widths),
             sum(w.nbytes for w in (W if groups else (W,))) / 1e6,
             f" in {len(groups)} chromosome group(s)" if groups else "")


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

    lines, lines_seen = PhenotypeLines(log), list[str]()
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


def _statistics_columns(C: np.ndarray, Y: np.ndarray, masks, names):
    """``(A columns, B columns, patterns, moments)`` of a statistics model's phenotypes ``Y``
    [shape: (n, p)]: each phenotype its own pattern, with the raw covariates, the phenotype and the
    samples' indicator on its samples ``masks[t]``, and its global :class:`Moments`."""
    A_cols, B_cols, patterns, moments = [], [], [], []
    a_off = 0
    for t, (mask, name) in enumerate(zip(masks, names)):
        y = np.where(mask, np.nan_to_num(Y[:, t]), 0.0)
        Cm = np.where(mask[:, None], C, 0.0)
        ind = mask.astype(np.float64)[:, None]
        A_cols += [Cm, y[:, None], ind]
        B_cols.append(ind)
        patterns.append(Pattern((name,), int(mask.sum()), C.shape[1], a_off, t))
        moments.append(Moments(n=int(mask.sum()), CtC=Cm.T @ Cm, Ct1=Cm.sum(axis=0), Cty=Cm.T @ y, yty=float(y @ y)))
        a_off += C.shape[1] + 2
    return A_cols, B_cols, patterns, moments


def _scan_columns(cfg: ScanConfig, C: np.ndarray, cov_names: list[str], Y: np.ndarray, masks, names, *,
                  quiet: bool = False, logistic=frozenset(), offsets: np.ndarray | None = None):
    """``(A columns, B columns, patterns)`` of a scan's phenotypes ``Y`` [shape: (n, p)] with their
    sample ``masks``: one pattern per distinct mask, with its orthonormal covariate basis; the
    case/control phenotypes named in ``logistic`` (y coded 0/1) in patterns of their own, their
    score test's null model with the ``offsets`` [shape: (n, p)] (``--pred``: LOCO, logit scale)."""
    pheno_names = list(names)
    flags = [pheno_names[t] in logistic for t in range(len(masks))]
    # case/control phenotypes share patterns among themselves; under the score test each has its own
    # (its null model's weights)
    score = cfg.binary_test == "score"
    keys = [(b"s%d" % t if score else b"1") if flag else b"0" for t, flag in enumerate(flags)]

    A_cols, B_cols, patterns = [], [], []
    a_off = 0
    from ..outputs.logs import PhenotypeLines

    lines, lines_seen = PhenotypeLines(log), list[str]()
    for g, idx in enumerate(_mask_patterns(masks, keys)):
        mask = masks[idx[0]]
        names = tuple(pheno_names[t] for t in idx)
        where = _pattern_where(cfg, names)
        Yg = np.where(mask[:, None], np.nan_to_num(Y[:, idx]), 0.0)
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
    return A_cols, B_cols, patterns


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


def _case_control(cfg: ScanConfig, pheno, present: np.ndarray, row_of: np.ndarray, *, linear_only: str | None = None):
    """plink2's reading of case/control phenotypes (judged on the genotype samples' rows): returns
    the table with those columns coded 0 control / 1 case (NaN missing: 0 is missing in the 1/2
    coding) and their names, which get plink2's logistic --glm. With ``--linear-for-binary`` they
    keep their values (plink2's missing codes applied) and are analysed linearly. The log says
    which model each phenotype gets; ``linear_only``: why the model at hand cannot give them theirs
    (then they are refused without --linear-for-binary)."""
    import dataclasses

    from ..outputs.logs import PhenotypeLines

    rows = row_of[present]
    binary = case_control_columns(pheno.values[rows], cfg.pheno_01)
    if not binary.any():
        return pheno, frozenset()
    names = [pheno.names[t] for t in np.flatnonzero(binary)]
    coding = "0 control, 1 case (--1)" if cfg.pheno_01 else "1 control, 2 case, 0 missing"
    if not cfg.linear_for_binary:
        what = linear_only
        if what is None and cfg.pred and cfg.binary_test != "score":
            what = ("with --pred they take REGENIE's test: add --binary-test score (the score test with the LOCO "
                    "offsets in the null model)")
        elif what is None and cfg.pred and cfg.pred_test == "regenie":
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


def _read_locos(pred: str, fam: Fam, names, masks) -> list[Loco]:
    """Each phenotype's :class:`~dash_spark.io.loco.Loco` (``--pred``), matched to the .fam by
    REGENIE's ``FID_IID`` keys and checked on that phenotype's own samples (``masks``: REGENIE's step
    1 writes ``NA`` for samples missing the trait); samples without a prediction leave that
    phenotype, as in REGENIE."""
    from ..io.loco import read_loco, read_pred_list

    files = read_pred_list(pred, names)
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


@dataclass(frozen=True)
class GroupedWeights:
    """A grouped model's weights (:func:`_chrom_groups`): one matrix per group, the groups, the
    first group's ``A`` and patterns, and the variants some group tests."""

    W: tuple
    groups: tuple
    A: np.ndarray
    patterns: list
    variants: np.ndarray


@dataclass(frozen=True)
class SexClass:
    """One group's covariates, samples and dosage factors: plink2's model of its class of
    chromosomes (X, Y, MT; None: an autosome, or any chromosome without the sex models)."""

    C: np.ndarray
    cov_names: list
    masks: list
    #: each sample's dosage factor and its allele weight in the frequencies (None: 1 and the frequency samples)
    scale: np.ndarray | None = None
    hemi: np.ndarray | None = None
    #: the phenotypes that get the SEX covariate, when only some do (the others are analysed in one sex)
    with_sex: list | None = None


def _sexes(s: Samples):
    sex = s.fam.sex if s.fam.sex is not None else np.zeros(s.n, dtype=np.int8)
    return (sex == 1) & s.kept, (sex > 0) & s.kept


class _ScanGroupColumns:
    """A scan's groups: plink2's sex-chromosome models from the samples' sexes, and ``--pred``'s
    LOCO offsets (Wald: ``y - o``; REGENIE: the score test's residual ``r``)."""

    def __init__(self, cfg: ScanConfig, s: Samples):
        from ..stats.regenie import null_phenotype

        self.cfg, self.s = cfg, s
        self.male, self.known = _sexes(s)
        self.regenie = cfg.pred_test == "regenie" and bool(cfg.pred)
        if self.regenie:  # REGENIE's analysed samples: a phenotype and every covariate
            self.analysed = s.base & np.any(~np.isnan(s.Y), axis=1)
            self.basis = covariate_basis(s.C, self.analysed, list(s.cov_names),
                                         where=f"--pred-test regenie: covariates ({cfg.covar})")
            self.nulls = []
            assert s.Y_any is not None  # (read under --pred-test regenie)
            for t, name in enumerate(s.names):
                yt, scale = null_phenotype(self.basis.Q, self.analysed, s.Y_any[:, t], s.masks[t])
                if not scale > 1e-6:
                    raise InputError(f"{cfg.pheno}: phenotype {name!r} has no variance left after the covariates "
                                     "(REGENIE's sd=0); leave it out with --pheno-name")
                self.nulls.append((name, yt, scale, s.masks[t]))

    def sex_class(self, cls: str | None) -> SexClass | None:
        """The class's covariates and samples; None: the class has no sample to test (chrY without males)."""
        s, male, known = self.s, self.male, self.known
        C, cov, masks = s.C, list(s.cov_names), list(s.masks)
        if cls == "X":
            with_sex = None
            if male.any() and male.sum() < known.sum():  # plink2 adds SEX when both sexes are present
                C = np.column_stack([s.C, np.where(male, 1.0, 2.0)])
                cov = cov + ["SEX"]
                masks = [m & known for m in masks]
                # ... and leaves it out for a phenotype analysed in one sex only (it would be constant)
                with_sex = [t for t, m in enumerate(masks) if (m & male).any() and (m & ~male).any()]
            scale = np.where(male, 0.5, 1.0) if self.cfg.xchr_model == 1 else np.ones(s.n)
            return SexClass(C, cov, masks, scale, s.freq_mask * np.where(male, 0.5, 1.0), with_sex)
        if cls == "Y":
            if not male.any():
                return None
            return SexClass(C, cov, [m & male for m in masks], np.full(s.n, 0.5), s.freq_mask * male * 0.5)
        if cls == "MT":
            return SexClass(C, cov, masks, np.full(s.n, 0.5), s.freq_mask * 0.5)
        return SexClass(C, cov, masks)

    def columns(self, chrom: str, sc: SexClass, offsets, *, quiet: bool):
        """``(A columns, B columns, patterns, REGENIE spec)`` of one group."""
        cfg, s = self.cfg, self.s
        if self.regenie:
            from ..stats.regenie import regenie_weights

            A_cols, B_cols, spec = regenie_weights(self.basis.Q, self.analysed, self.nulls, offsets)
            return A_cols, B_cols, (), spec
        O = np.column_stack(offsets) if offsets is not None else None
        Yc = s.Y
        if O is not None:  # y - o for a linear model; a case/control phenotype's null model takes o
            lin = np.array([name not in s.logistic for name in s.names])
            Yc = np.where(lin[None, :], s.Y - O, s.Y)
        if sc.with_sex is not None and len(sc.with_sex) < len(s.names):
            A_cols, B_cols, pats = _split_sex_patterns(cfg, s.C, sc.C, list(s.cov_names), sc.cov_names, Yc, sc.masks,
                                                       s.names, sc.with_sex, s.logistic)
        else:
            A_cols, B_cols, pats = _scan_columns(cfg, sc.C, sc.cov_names, Yc, sc.masks, s.names, quiet=quiet,
                                                 logistic=s.logistic, offsets=O)
        return A_cols, B_cols, tuple(pats), None

    def tail(self, sc: SexClass) -> list:
        return self.s.tail()


class _StatisticsGroupColumns:
    """A statistics model's groups. Under plink2's sex-chromosome models every group has the SEX
    column (zero but on chrX), so that all rows share one layout, whatever the batch's own samples'
    sexes (the pooled samples decide at finalize); the classes' moments and frequency weights are
    kept for finalize (:meth:`sexchr`). Under ``--pred``, each chromosome's moments of ``y - o``
    (:attr:`offset_moments`), and under ``--pred-test regenie`` REGENIE's sums (:attr:`sums`)."""

    def __init__(self, cfg: ScanConfig, s: Samples, sexchr: bool):
        self.cfg, self.s, self.sex_models = cfg, s, sexchr
        self.male, self.known = _sexes(s)
        self.offset_moments: dict = {}
        self.class_moments: dict = {}
        self.sums = None
        if cfg.pred_test == "regenie" and cfg.pred:  # sums from which finalize runs REGENIE's test
            self.analysed = s.base & np.any(~np.isnan(s.Y), axis=1)
            assert s.Y_any is not None  # (read under --pred-test regenie)
            self.sums = _regenie_sums(s.C, s.Y_any, self.analysed)

    def sex_class(self, cls: str | None) -> SexClass:
        s, male, known = self.s, self.male, self.known
        if not self.sex_models:
            return SexClass(s.C, list(s.cov_names), list(s.masks))
        sex_col = np.where(male, 1.0, np.where(known, 2.0, 0.0)) if cls == "X" else np.zeros(s.n)
        C, cov = np.column_stack([s.C, sex_col]), list(s.cov_names) + ["SEX"]
        if cls == "X":
            return SexClass(C, cov, [m & known for m in s.masks], np.ones(s.n), s.freq_mask * np.where(male, 0.5, 1.0))
        if cls == "Y":
            return SexClass(C, cov, [m & male for m in s.masks], np.full(s.n, 0.5), s.freq_mask * male * 0.5)
        if cls == "MT":
            return SexClass(C, cov, list(s.masks), np.full(s.n, 0.5), s.freq_mask * 0.5)
        return SexClass(C, cov, list(s.masks))

    def columns(self, chrom: str, sc: SexClass, offsets, *, quiet: bool):
        s = self.s
        if self.sums is not None:
            A_cols, B_cols, pats = _regenie_stat_columns(s, offsets, self.sums, chrom, self.analysed)
            return A_cols, B_cols, pats, None
        Yc = s.Y
        if offsets is not None:  # y - o (a score study's case/control phenotype keeps y: it takes no --pred)
            lin = np.array([name not in s.logistic for name in s.names])
            Yc = np.where(lin[None, :], s.Y - np.column_stack(offsets), s.Y)
        A_cols, B_cols, pats, mos = _statistics_columns(sc.C, Yc, sc.masks, s.names)
        cls = sex_chrom_class(chrom) if self.sex_models else None
        if cls in ("X", "Y"):
            self.class_moments[cls] = tuple(mos)
        if self.cfg.pred:
            self.offset_moments[chrom] = (np.stack([mo.Cty for mo in mos]), np.array([mo.yty for mo in mos]))
        return A_cols, B_cols, tuple(pats), None

    def tail(self, sc: SexClass) -> list:
        # the frequency column: the class's allele weights (finalize divides by the class's dosage
        # factor: the dosages are scaled before the sums)
        return [self.s.tail()[0], sc.hemi[:, None]] if sc.hemi is not None else self.s.tail()

    def sexchr(self):
        """The sums for plink2's sex-chromosome models (:attr:`SufficientStats.sexchr`), or None."""
        if not self.sex_models:
            return None
        from ..stats.sexchrom import SexChromStats

        s, male, known = self.s, self.male, self.known
        k1 = s.C.shape[1] + 1
        empty = tuple(Moments(0, np.zeros((k1, k1)), np.zeros(k1), np.zeros(k1), 0.0) for _ in s.names)
        fm = s.freq_mask
        n_freq = {"X": float((fm * np.where(male, 0.5, 1.0)).sum()), "Y": float((fm * male).sum() * 0.5),
                  "MT": float(fm.sum() * 0.5)}
        return SexChromStats(moments={c: self.class_moments.get(c, empty) for c in ("X", "Y")}, n_freq=n_freq,
                             males=int(male.sum()), known=int(known.sum()))


def _chrom_groups(cfg: ScanConfig, s: Samples, sexchr: bool, tail_b, columns) -> GroupedWeights:
    """The weights of a model whose variants need more than one weight matrix, group by group with
    ``columns`` (:class:`_ScanGroupColumns` or :class:`_StatisticsGroupColumns`):

    - ``--pred``: one per chromosome, whose phenotype columns carry that chromosome's LOCO offsets;
    - ``sexchr`` (plink2's defaults, from the samples' sex): chrX with a SEX covariate (1 male, 2
      female) on the samples of known sex, male dosages halved with ``--xchr-model 1`` (2, the
      default, keeps 0..2; 0 skips chrX); chrY on males only and chrMT, both haploid (dosages
      halved); every other chromosome (XY included) as an autosome.

    The variants come back without those no group tests (chrX under ``--xchr-model 0``, a scan's
    chrY without males)."""
    from ..io.loco import loco_chromosome

    variants = s.variants
    chroms = np.asarray(s.bim.chrom)[variants] if len(variants) else np.asarray([], dtype=object)
    groups, Ws, first = [], [], None
    classes = {c: (sex_chrom_class(c) if sexchr else None) for c in dict.fromkeys(chroms.tolist())}
    # without --pred, the chromosomes of one class share a group
    keys = {c: (c if cfg.pred else (classes[c] or "")) for c in classes}
    keep_variants = np.ones(len(variants), dtype=bool)
    for key in dict.fromkeys(keys.values()):
        members = [c for c in classes if keys[c] == key]
        cls = classes[members[0]]
        rows = np.isin(chroms, members)
        if cls == "X" and cfg.xchr_model == 0:
            log.info("chrX: %d variant(s) skipped (--xchr-model 0)", int(rows.sum()))
            keep_variants &= ~rows
            continue
        sc = columns.sex_class(cls)
        if sc is None:
            log.info("chrY: %d variant(s) skipped: no males", int(rows.sum()))
            keep_variants &= ~rows
            continue
        offsets = None
        if cfg.pred:
            code = loco_chromosome(members[0])
            if code is None:
                raise InputError(f"--pred {cfg.pred}: REGENIE has no LOCO prediction for chromosome {members[0]!r} "
                                 "(its predictions cover 1-22 and X); leave it out with --chr")
            offsets = [lc.offset(code, members[0]) for lc in s.loco or ()]
        A_cols, B_cols, pats, spec = columns.columns(members[0], sc, offsets, quiet=first is not None)
        A = np.hstack(list(A_cols) + columns.tail(sc))
        Ws.append(pad_weights(A, np.hstack(list(B_cols) + list(tail_b))))
        groups.append(VariantGroup(chrom=",".join(members), variants=variants[rows], patterns=pats, regenie=spec,
                                   dosage_scale=sc.scale, hemi=sc.hemi, n_a=A.shape[1]))
        if first is None:
            first = (A, pats)
    if first is None:
        raise InputError("no variant left to test (check --chr/--extract, --xchr-model, or the samples' sex)")
    if cfg.pred:
        log.info("--pred %s: %s test, LOCO offsets for %d chromosome(s)", cfg.pred,
                 "REGENIE's score" if cfg.pred_test == "regenie" else "Wald", len(groups))
    return GroupedWeights(W=tuple(Ws), groups=tuple(groups), A=first[0], patterns=list(first[1]),
                          variants=variants[keep_variants])


def _scan_biallelic_only(cfg: ScanConfig, s: Samples, sexchr: bool, chroms) -> str | None:
    """Which of a scan's models refuses the multiallelic variants on ``chroms`` (None: the joint model tests them)."""
    if cfg.pred:
        return "--pred"
    if cfg.gwas_ssf:
        return "--gwas-ssf"
    if s.logistic:
        return "logistic regression (case/control phenotypes)"
    if sexchr and any(sex_chrom_class(c) for c in set(chroms.tolist())):
        return "chrX/Y/MT (plink2's sex-chromosome models)"
    return None


def _check_multiallelic(s: Samples, refuses) -> None:
    """Multiallelic variants (a comma in ALT) are tested by a scan's joint model of their alleles
    (plink2's); the other models take biallelic variants only, and say so before any work.
    ``refuses(chroms)``: the model that does not test the multiallelic variants on ``chroms``, or None."""
    bim, variants = s.bim, s.variants
    alt = np.asarray(bim.alt, dtype=object)[variants]
    multi = np.flatnonzero(np.fromiter(("," in str(a) for a in alt), dtype=bool, count=len(alt)))
    if not len(multi):
        return
    what = refuses(np.asarray(bim.chrom, dtype=object)[variants][multi])
    if what is None:
        log.info("%d multiallelic variant(s): each tested as plink2 does, the alleles but the omitted one jointly "
                 "(call filters do not apply to them)", len(multi))
        return
    j = int(variants[multi[0]])
    raise ConfigError(f"{s.source.label}: {len(multi):,} multiallelic variant(s), e.g. {bim.id[j]} (ALT {bim.alt[j]}); "
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


def _regenie_stat_columns(s: Samples, offsets, sums, chrom: str, analysed: np.ndarray):
    """A statistics model's weight columns of one chromosome for REGENIE's test: per phenotype its
    own (raw y on its samples M), then per phenotype the chromosome's LOCO predictions on M in
    place of y, then the ``analysed`` samples (y = 0); ``sums.chroms[chrom]`` gets the predictions'
    moments. Returns ``(A columns, B columns, patterns)``."""
    C, masks, names = s.C, s.masks, s.names
    n, T = s.Y.shape
    o = np.column_stack([np.where(masks[t], np.nan_to_num(offsets[t]), 0.0) for t in range(T)])
    y = np.column_stack([np.where(masks[t], np.nan_to_num(s.Y[:, t]), 0.0) for t in range(T)])
    stack = np.column_stack([y, o, np.zeros(n)])
    A_cols, B_cols, pats, _mos = _statistics_columns(C, stack, list(masks) + list(masks) + [analysed],
                                                     list(names) + [f"o:{p}" for p in names] + ["(analysed)"])
    sums.chroms[chrom] = (np.stack([C[masks[t]].T @ o[masks[t], t] for t in range(T)]),
                          np.einsum("nt,nt->t", o, o), np.einsum("nt,nt->t", y, o), o.sum(axis=0))
    return A_cols, B_cols, pats


def _split_sex_patterns(cfg: ScanConfig, C, Cg, cov_names, cov_g, Y, masks, names, with_sex, logistic=frozenset()):
    """A scan's chrX pattern columns when only some phenotypes get the SEX covariate (``with_sex``:
    their indices; the others are analysed in one sex): the two sets' columns side by side."""
    rest = [t for t in range(len(names)) if t not in with_sex]
    parts = []
    for idx, CC, cn in ((with_sex, Cg, cov_g), (rest, C, cov_names)):
        if idx:
            parts.append(_scan_columns(cfg, CC, cn, Y[:, idx], [masks[t] for t in idx], [names[t] for t in idx],
                                       quiet=True, logistic=logistic))
    A_cols: list[np.ndarray] = []
    B_cols: list[np.ndarray] = []
    pats: list[Pattern] = []
    for a, b, p in parts:
        na, nb = sum(x.shape[1] for x in A_cols), sum(x.shape[1] for x in B_cols)
        pats += [dataclasses.replace(q, a_offset=q.a_offset + na, b_offset=q.b_offset + nb) for q in p]
        A_cols += a
        B_cols += b
    return A_cols, B_cols, pats


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


