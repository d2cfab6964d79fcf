"""What one Spark task does with its variant ranges: plain numpy, no Spark.

A plan (:class:`ScanPlan`, small, pickled with the task) and the broadcast weight matrix ``W``
are all a task needs. It reads its own variants through the plan's source reader
(:mod:`dash_spark.scanner.sources`), walks its range in sub-blocks sized from the memory budget, and

- :func:`scan_ranges`: finalizes each sub-block to per-variant results (Arrow record batches);
- :func:`statistics_ranges`: yields each sub-block's rows of the additive statistics ``S``
  (:mod:`dash_spark.stats.sufficient`) for a party, a store batch or the API's ``compress``.

The same functions run in unit tests on one process, which is how their exactness is checked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .filters import CallFilters
from ..stats.blocks import DenseBlock, block_downdate, block_grams, block_sums
from ..stats.regenie import RegenieSpec, regenie_stats
from ..stats.regression import (CovariateCorrelation, finalize_complete_case, finalize_mean_imputed,
                                finalize_no_missing)
from ..stats.results import RESULT_SCHEMA, results_batch
from ..stats.sufficient import StatLayout, block_statistics


#: seconds this process spent in the kernels' sums (block_sums), for the scan's phase split
KERNEL_SECONDS = [0.0]


@dataclass(frozen=True)
class Pattern:
    """Phenotypes analysed on the same samples.

    Columns of A: ``[a_offset, a_offset+k)`` = Q (one-party scan) or the masked raw covariates
    ``C`` (statistics models), then ``p_g`` phenotype columns, then the mask; column ``b_offset`` of
    B = the mask. One-party scans also carry ``Qy`` [shape: (k, p_g)], ``yy`` [shape: (p_g,)] and
    the covariate correlations ``cc``.
    """

    phenotypes: tuple[str, ...]
    n: int
    k: int
    a_offset: int
    b_offset: int
    Qy: np.ndarray | None = None
    yy: np.ndarray | None = None
    cc: CovariateCorrelation | None = None
    #: a scan with a shared basis (:class:`SharedBasis`): the pattern's phenotype columns among the
    #: shared ones, the analysed samples it lacks (sorted .fam rows) and ``T = L^-1``, where
    #: ``L L' = Q_S'Q_S`` is the Gram of the shared basis on its own samples S (so ``Q_S T'`` is
    #: an orthonormal basis of its covariates)
    cols: np.ndarray | None = None
    missing: np.ndarray | None = None
    T: np.ndarray | None = None
    #: case/control phenotypes (plink2's logistic --glm, :mod:`dash_spark.stats.logistic`): their
    #: columns of A hold y as 0/1 (not centred); the raw covariates are ``Q R`` on the pattern's
    #: samples; ``always_firth``: per phenotype, a covariate separates it (Firth for every variant)
    logistic: bool = False
    R: np.ndarray | None = None
    always_firth: tuple[bool, ...] = ()
    #: the score test of one case/control phenotype (:mod:`dash_spark.stats.score`): its columns of
    #: A are ``[y - mu | W C | W | 1 | mu]`` (k + 4), of B ``[W]``; ``CtWC`` = C'WC of its null model
    score: bool = False
    CtWC: np.ndarray | None = None
    spa_threshold: float = 0.05
    null_iterations: int = 0
    #: the correction below ``spa_threshold``: "spa", "firth" (REGENIE's --firth --approx: every
    #: sample's covariate offset from the null model's Firth fit in ``firth_offset``) or "none"
    correction: str = "spa"
    firth_offset: np.ndarray | None = None


@dataclass(frozen=True)
class SharedBasis:
    """Phenotype missingness by downdates: A = ``[Q | Y | 1_U]`` over the union U of the patterns'
    samples (``Q``: k columns, an orthonormal basis of the covariates on U; ``Y``: p phenotype
    columns, each zero where it is missing), B = ``[1_U]``. Each pattern takes its missing samples'
    share out of these sums (:func:`dash_spark.stats.blocks.block_downdate`), so the kernel's width
    is k + p + 3 whatever the number of patterns."""

    k: int
    p: int


@dataclass(frozen=True)
class ScanPlan:
    """Everything a task needs besides the broadcast ``W`` (small; pickled with the closure).

    ``reader`` reads the task's variants (:class:`~dash_spark.scanner.sources.BedReader` or
    :class:`~dash_spark.scanner.sources.FeatureReader`). The last two columns of A are the masks of the
    ``n_kept`` samples left by --keep/--remove (for --geno) and of the ``n_freq`` samples whose
    allele frequency decides which allele is major and feeds --maf/--mac (plink2: the founders
    among them).
    """

    reader: object
    n_samples: int
    n_a: int
    n_freq: int
    n_kept: int
    patterns: tuple[Pattern, ...]
    sub_block: int
    count_alt: bool = False
    missing_genotypes: str = "drop"
    filters: CallFilters = CallFilters()
    a1freq_floor: float = 0.0
    #: REGENIE's score test (``--pred ... --pred-test regenie``) instead of the patterns' Wald tests
    regenie: RegenieSpec | None = None
    #: sex chromosomes (plink2's models): each sample's dosage factor in the regression (0.5: a
    #: haploid call coded 0..1) and its allele weight in the frequencies (0.5: hemizygous, one
    #: allele; 0: not counted), over the frequency samples
    dosage_scale: np.ndarray | None = None
    hemi: np.ndarray | None = None
    #: phenotype missingness by downdates of shared sums (one-party scans with many patterns)
    shared: SharedBasis | None = None

    @property
    def layout(self) -> StatLayout:
        """The statistics layout of a statistics model's plan (one pattern per phenotype)."""
        return StatLayout(self.patterns[0].k if self.patterns else 0, len(self.patterns), self.missing_genotypes)


@dataclass(frozen=True)
class GroupedPlan:
    """Plans of variant groups that need their own weight matrix (``--pred``: one per chromosome,
    whose LOCO offsets differ; sex chromosomes: one per class, with their own samples, covariates
    and dosage coding); the broadcast value is the tuple of the groups' ``W``. A scan's range rows
    never span two groups."""

    plans: tuple[ScanPlan, ...]
    run_starts: np.ndarray   # each variant's group as runs of .bim rows: run i starts at run_starts[i]
    run_groups: np.ndarray   # ... and has group run_groups[i] (-1: a variant in no group)

    @property
    def filters(self) -> CallFilters:
        return self.plans[0].filters

    @property
    def sub_block(self) -> int:
        return self.plans[0].sub_block

    @property
    def reader(self):
        return self.plans[0].reader

    @property
    def layout(self) -> StatLayout:
        return self.plans[0].layout

    def groups_of(self, vidx: np.ndarray) -> np.ndarray:
        """The group of each variant index."""
        return self.run_groups[np.searchsorted(self.run_starts, vidx, side="right") - 1]


class RangeRow(NamedTuple):
    """One Spark partition's variants: the variant span ``[start, stop)``, its .bim (or .pvar) byte
    span ``[bim_start, bim_stop)`` where the task reads its own lines (0, 0: none to read), and the
    selected offsets within the span (empty when all of it is selected)."""

    part: int
    start: int
    stop: int
    bim_start: int = 0
    bim_stop: int = 0
    rows: Sequence[int] = ()


def plan_ranges(variants: np.ndarray, block_variants: int, line_offsets: np.ndarray) -> list[RangeRow]:
    """Split the selected variant indices (sorted) into partitions of at most ``block_variants``."""
    out = []
    for part, a in enumerate(range(0, len(variants), block_variants)):
        chunk = variants[a : a + block_variants]
        start, stop = int(chunk[0]), int(chunk[-1]) + 1
        rows = [] if stop - start == len(chunk) else (chunk - start).astype(int).tolist()
        out.append(RangeRow(part, start, stop, int(line_offsets[start]), int(line_offsets[stop]), rows))
    return out


def default_block_variants(n_variants: int, parallelism: int) -> int:
    """About three partitions per core, each between 2,000 and 100,000 variants."""
    per = math.ceil(n_variants / max(1, 3 * parallelism))
    return int(min(100_000, max(2_000, per)))


#: bytes a task holds per result row of a sub-block: the Arrow batch, its .glm.linear text and the
#: formatting's temporaries
RESULT_ROW_BYTES = 600


def sub_block_size(n_samples: int, n_columns: int, budget_bytes: int, *, dense: bool = False,
                   result_rows: int = 0) -> int:
    """Variants per sub-block so that a task's working set stays within ``budget_bytes``: packed
    .bed bytes (as read, and the kernel's transposed copy), or for dense blocks (dosages, features)
    the float64 values and the kernel's masked copies, plus the per-variant sums and, for a scan,
    its ``result_rows`` per variant (one per phenotype: a sub-block's results are written before
    the next is read)."""
    per_variant = ((4 * 8 * n_samples if dense else 3 * ((n_samples + 3) // 4)) + 8 * (3 * n_columns) + 64
                   + RESULT_ROW_BYTES * result_rows)
    return int(max(16, min(2048, budget_bytes // per_variant)))


def _sub_blocks(plan: ScanPlan, ranges, *, meta: bool):
    """``(first variant, variant indices, block)`` of every sub-block of the range rows."""
    for _part, start, stop, bim_start, bim_stop, rows in ranges:
        range_meta = plan.reader.range_meta(start, stop, bim_start, bim_stop) if meta else None
        offsets = np.arange(stop - start) if not rows else np.asarray(rows, dtype=np.int64)
        for a in range(0, len(offsets), plan.sub_block):
            sub = offsets[a : a + plan.sub_block]
            vidx = (start + sub).astype(np.int64)
            # the block is used up before the next is read: its bytes may reuse one buffer
            yield vidx, plan.reader.read(vidx, range_meta, sub, reuse=True)


def scan_block(plan: ScanPlan, W: np.ndarray, vidx: np.ndarray, block) -> pa.RecordBatch:
    """Per-variant results of one block; multiallelic variants (plink2's joint model of their
    non-omitted alleles, :func:`multiallelic_batch`) are merged in variant order."""
    multi = None
    if block.meta is not None and hasattr(plan.reader, "allele_dosages"):
        multi = np.fromiter(("," in str(a) for a in block.meta[3]), dtype=bool, count=len(vidx))
    if multi is None or not multi.any():
        return _scan_block(plan, W, vidx, block)
    parts = [multiallelic_batch(plan, W, vidx[multi], block.take(np.flatnonzero(multi)))]
    if not multi.all():
        parts.insert(0, _scan_block(plan, W, vidx[~multi], block.take(np.flatnonzero(~multi))))
    table = pa.Table.from_batches(parts)
    names = [p for pat in plan.patterns for p in pat.phenotypes]
    rank = {p: i for i, p in enumerate(names)}
    key = pa.table({"p": np.array([rank[p] for p in table.column("phenotype").to_pylist()]),
                    "v": table.column("variant_index"), "r": np.arange(table.num_rows)})
    order = key.sort_by([("p", "ascending"), ("v", "ascending"), ("r", "ascending")]).column("r")
    batches = table.take(order).combine_chunks().to_batches()
    return batches[0] if batches else parts[0]  # no rows: no phenotype


def _pattern_columns_of(plan: ScanPlan, W: np.ndarray, pat):
    """A pattern's covariate basis Q [shape: (n, k)], phenotype columns [shape: (n, p)] and sample
    mask, from the broadcast ``W`` (its own columns, or the shared basis less its missing samples)."""
    n = plan.n_samples
    if plan.shared is not None:
        k, p = plan.shared.k, plan.shared.p
        mask = W[:n, k + p] > 0
        mask[pat.missing] = False
        return W[:n, :k], W[:n, k : k + p][:, pat.cols], mask
    a, k, pg = pat.a_offset, pat.k, len(pat.phenotypes)
    return W[:n, a : a + k], W[:n, a + k : a + k + pg], W[:n, a + k + pg] > 0


def multiallelic_batch(plan: ScanPlan, W: np.ndarray, vidx: np.ndarray, block) -> pa.RecordBatch:
    """plink2's ``--glm`` for multiallelic variants: the phenotype regressed on the covariates and
    the dosages of every allele but the omitted one (the major allele over the frequency samples,
    or REF with ``count_alt``) jointly, on the samples with a call; one row per tested allele, in
    allele order (A1 = that allele, ALT the variant's whole ALT list)."""
    from ..stats.regression import ERR_COLLINEAR, ERR_FEW, ERRCODES, t_pvalues

    n = plan.n_samples
    chrom, ids, pos, alt, ref = block.meta
    alleles = [[str(r)] + str(a).split(",") for r, a in zip(ref, alt)]
    dosages = plan.reader.allele_dosages(vidx, [len(a) for a in alleles])
    freq = W[:n, plan.n_a - 1] > 0
    cols: dict[str, list] = {c: [] for c in ("variant_index", "chrom", "pos", "id", "ref", "alt", "a1", "a1_freq",
                                             "obs_ct", "beta", "se", "t_stat", "p", "neg_log10_p", "phenotype",
                                             "errcode")}
    for pat in plan.patterns:
        Q, Y, mask = _pattern_columns_of(plan, W, pat)
        k = Q.shape[1]
        for t, name in enumerate(pat.phenotypes):
            for j, X in enumerate(dosages):
                called = ~np.isnan(X[0])
                use = mask & called
                counts = np.nansum(X[:, freq & called], axis=1)
                omit = 0 if plan.count_alt else int(np.argmax(counts))  # ties: the first (REF)
                tested = [a for a in range(len(X)) if a != omit]
                D = np.column_stack([Q[use], X[tested][:, use].T])
                y = Y[use, t]
                m, q = D.shape[0], len(tested)
                beta = se = np.full(q, np.nan)
                err = ERR_FEW if m <= D.shape[1] else 0
                if not err:
                    G = D.T @ D
                    try:
                        Ginv = np.linalg.inv(G)
                        ok = np.linalg.cond(G) < 1e12
                    except np.linalg.LinAlgError:
                        ok = False
                    if not ok:
                        err = ERR_COLLINEAR
                    else:
                        b = Ginv @ (D.T @ y)
                        rss = float(np.sum((y - D @ b) ** 2))
                        dof = m - D.shape[1]
                        beta = b[k:]
                        se = np.sqrt(np.diag(Ginv)[k:] * rss / dof)
                tstat = beta / se
                pv, nlp = t_pvalues(tstat, float(m - D.shape[1]) if not err else 1.0)
                for i, a in enumerate(tested):
                    cols["variant_index"].append(int(vidx[j]))
                    cols["chrom"].append(str(chrom[j]))
                    cols["pos"].append(int(pos[j]))
                    cols["id"].append(str(ids[j]))
                    cols["ref"].append(str(ref[j]))
                    cols["alt"].append(str(alt[j]))
                    cols["a1"].append(alleles[j][a])
                    cols["a1_freq"].append(float(X[a, use].sum() / (2.0 * m)) if m else float("nan"))
                    cols["obs_ct"].append(int(m))
                    cols["beta"].append(float(beta[i]))
                    cols["se"].append(float(se[i]))
                    cols["t_stat"].append(float(tstat[i]))
                    cols["p"].append(float(pv[i]))
                    cols["neg_log10_p"].append(float(nlp[i]))
                    cols["phenotype"].append(name)
                    cols["errcode"].append(ERRCODES[err])
    arrays = []
    for field in RESULT_SCHEMA:
        if field.name == "mach_r2":
            arrays.append(pa.array(np.full(len(cols["variant_index"]), np.nan), type=pa.float64()))
        elif field.name == "firth":
            arrays.append(pa.nulls(len(cols["variant_index"]), type=pa.bool_()))
        else:
            arrays.append(pa.array(cols[field.name], type=field.type, from_pandas=True))
    return pa.RecordBatch.from_arrays(arrays, schema=RESULT_SCHEMA)


def _scan_block(plan: ScanPlan, W: np.ndarray, vidx: np.ndarray, block) -> pa.RecordBatch:
    """Per-variant results of one block (one-party scan model): sums, call filters, finalize."""
    called = None
    if plan.dosage_scale is not None:  # a sex chromosome: haploid codings and hemizygous frequencies
        raw = block.dense()
        called = ~np.isnan(raw)
        freq_alt = np.where(called, raw, 0.0) @ plan.hemi
        freq_called = called @ plan.hemi
        block = DenseBlock(raw * plan.dosage_scale[None, :], block.meta)
    t_kernel = time.perf_counter()
    SX, SXX, SM = block_sums(block, W, plan.n_a)
    KERNEL_SECONDS[0] += time.perf_counter() - t_kernel
    if called is None:
        freq_alt, freq_called = SX[:, -1], plan.n_freq - SM[:, -1]
    if plan.filters.active:
        # --mach-r2-filter: the kept samples' dosage sums (A's kept column; B's last column when set)
        kept = (SX[:, -2], SXX[:, -1]) if plan.filters.mach_r2 is not None and called is None else None
        ok = plan.filters.keep(freq_alt, freq_called, SM[:, -2], plan.n_kept, kept)
        if not ok.all():
            SX, SXX, SM, vidx = SX[ok], SXX[ok], SM[ok], vidx[ok]
            freq_alt, freq_called = freq_alt[ok], freq_called[ok]
            block = block.take(ok)
            called = None if called is None else called[ok]
    if plan.regenie is not None:  # REGENIE's score test; ALLELE1 is the ALT allele, as REGENIE reports it
        tested, named = regenie_stats(plan.regenie, SX, SXX, SM)
        return results_batch(vidx[tested], tuple(x[tested] for x in block.meta), freq_alt[tested],
                             freq_called[tested], named, count_alt=True, a1freq_floor=plan.a1freq_floor)
    if plan.shared is not None:
        named = _shared_stats(plan, W, block, SX, SXX, SM)
        return results_batch(vidx, block.meta, freq_alt, freq_called, named, count_alt=plan.count_alt,
                             a1freq_floor=plan.a1freq_floor)
    named = []
    for pat in plan.patterns:
        if pat.score:
            named += score_test_stats(plan, W, pat, block, SX, SXX, SM, called)
            continue
        if pat.logistic:
            named += logistic_stats(plan, W, pat, block, freq_alt, freq_called, called)
            continue
        a, k, pg = pat.a_offset, pat.k, len(pat.phenotypes)
        sums = dict(Qx=SX[:, a : a + k], yx=SX[:, a + k : a + k + pg], sx=SX[:, a + k + pg],
                    sxx=SXX[:, pat.b_offset], Qm=SM[:, a : a + k], miss=SM[:, a + k + pg],
                    Qy=pat.Qy, yy=pat.yy, n=pat.n, cc=pat.cc)
        if plan.missing_genotypes == "mean":
            stats = finalize_mean_imputed(ym=SM[:, a + k : a + k + pg], **sums)
        else:
            QmQm, Qmy, ymy = block_grams(block, W, a, k, pg, sums["miss"] > 0)
            stats = finalize_complete_case(QmQm=QmQm, Qmy=Qmy, ymy=ymy, **sums)
        named += list(zip(pat.phenotypes, _haploid_freq(plan, W, pat, called, stats)))
    return results_batch(vidx, block.meta, freq_alt, freq_called, named, count_alt=plan.count_alt,
                         a1freq_floor=plan.a1freq_floor)


def _haploid_freq(plan: ScanPlan, W: np.ndarray, pat: Pattern, called, stats: list, mask=None) -> list:
    """A1_FREQ as plink2 reports it on a sex chromosome (``called``: the raw block's calls; None
    elsewhere): the regressed dosages over 2 x (each called sample's factor). ``mask``: the
    pattern's samples (default: its column of B)."""
    if called is None:
        return stats
    if mask is None:
        mask = W[: plan.n_samples, plan.n_a + pat.b_offset]
    n_called = called @ mask
    weight = called @ (mask * plan.dosage_scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        fix = np.where(weight > 0, n_called / weight, np.nan)
    return [replace(st, alt_freq=st.alt_freq * fix, mach_r2=None) for st in stats]


def logistic_chunk(n_samples: int) -> int:
    """Variants fitted together by the logistic model: its (chunk, n) float64 matrices of about 8 MB
    each (a few of them stay in a core's share of the cache; measured fastest at 20,000 samples)."""
    return int(max(16, min(256, (1 << 20) // max(1, n_samples))))


def logistic_stats(plan: ScanPlan, W: np.ndarray, pat: Pattern, block, freq_alt, freq_called, called) -> list:
    """``(phenotype, VariantStats)`` of a case/control pattern: plink2's logistic-Firth hybrid
    (:func:`dash_spark.stats.logistic.logistic_hybrid`) of each phenotype on the A1 dosage (A1 as
    :func:`~dash_spark.stats.results.results_batch` picks it), missing calls dropped per variant
    (or mean-imputed with ``missing_genotypes="mean"``). ``beta`` and ``t_stat`` are returned for
    ALT, as the linear model's, and flipped back to A1 by the results' rows."""
    from ..stats.logistic import logistic_hybrid
    from ..stats.regression import VariantStats, mach_r2
    from ..stats.results import a1_flip

    Q, Y, mask = _pattern_columns_of(plan, W, pat)
    C = Q[mask] @ pat.R
    mean = plan.missing_genotypes == "mean"
    scale = 2.0 * (plan.dosage_scale[mask] if plan.dosage_scale is not None else np.ones(int(mask.sum())))
    P = len(pat.phenotypes)
    fits: list[list] = [[] for _ in range(P)]
    chunks: dict[str, list] = {"alt_freq": [], "mach": [], "sign": []}
    # chunk by chunk from the block: a chunk's dense dosages and the fits' (chunk, n) matrices stay in cache
    chunk = logistic_chunk(len(scale))
    for a in range(0, len(block), chunk):
        rows = np.arange(a, min(a + chunk, len(block)))
        X = (block.take(rows) if len(rows) < len(block) else block).dense()[:, mask]
        present = ~np.isnan(X)
        Xz = np.where(present, X, 0.0)
        n_obs = present.sum(axis=1)
        sx = Xz.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            alt_freq = np.where(n_obs > 0, sx / (2.0 * n_obs), np.nan)
        chunks["alt_freq"].append(alt_freq)
        chunks["mach"].append(mach_r2(sx, np.einsum("mn,mn->m", Xz, Xz), n_obs))
        if mean:
            X = np.where(present, X, (sx / np.maximum(n_obs, 1))[:, None])
        flip = a1_flip(freq_alt[rows], freq_called[rows], alt_freq, count_alt=plan.count_alt)
        chunks["sign"].append(np.where(flip, -1.0, 1.0))
        A1 = np.where(flip[:, None], scale[None, :] - X, X)
        obs = np.ones_like(present) if mean else present
        for t in range(P):
            fits[t].append(logistic_hybrid(C, Y[mask, t], A1, obs, mask=np.ones(len(scale), dtype=bool),
                                           always_firth=pat.always_firth[t]))
    whole = {k: np.concatenate(v) if v else np.zeros(0) for k, v in chunks.items()}
    stats = []
    for t in range(P):
        def cat(field, t=t):
            return np.concatenate([getattr(f, field) for f in fits[t]]) if fits[t] else np.zeros(0)

        stats.append(VariantStats(beta=whole["sign"] * cat("beta"), se=cat("se"), t_stat=whole["sign"] * cat("z"),
                                  neg_log10_p=cat("neg_log10_p"), p=cat("p"), obs_ct=cat("obs_ct").astype(np.int64),
                                  alt_freq=whole["alt_freq"], errcode=cat("errcode").astype(np.uint8),
                                  mach_r2=whole["mach"], firth=cat("firth").astype(bool)))
    return list(zip(pat.phenotypes, _haploid_freq(plan, W, pat, called, stats)))


def score_test_stats(plan: ScanPlan, W: np.ndarray, pat: Pattern, block, SX, SXX, SM, called) -> list:
    """``(phenotype, VariantStats)`` of a score-tested case/control phenotype from the kernel's
    sums (:func:`dash_spark.stats.score.score_stats`); variants whose p is below the pattern's
    threshold get the saddlepoint p, from their dense dosages (missing calls at the mean)
    (:func:`dash_spark.stats.score.score_variant_stats`)."""
    from ..stats.score import adjusted_genotypes, approx_firth, score_stats, score_variant_stats, spa_log_pvalues

    a, k, n = pat.a_offset, pat.k, plan.n_samples
    st = score_stats(SX[:, a : a + k + 4], SXX[:, pat.b_offset], SM[:, a : a + k + 4], pat.CtWC, pat.n,
                     float(W[:n, a + k + 1].sum()))

    def samples(rows: np.ndarray):
        """The rows' dosages on the phenotype's samples (missing calls at the mean) [shape: (rows, n_pat)],
        those samples' weight columns (A's, with the Firth offsets where the pattern has them), their
        raw covariates C and weights w."""
        cols = W[:n, a : a + k + (5 if pat.correction == "firth" else 4)]
        mask = cols[:, k + 2] > 0
        X = block.take(rows).dense()[:, mask]
        cols = cols[mask]
        w = cols[:, k + 1]
        return np.where(np.isnan(X), st.mean[rows][:, None], X), cols, cols[:, 1 : k + 1] / w[:, None], w

    def spa(rows: np.ndarray) -> np.ndarray:
        X, cols, C, w = samples(rows)
        return spa_log_pvalues(adjusted_genotypes(X, C, w, pat.CtWC), cols[:, k + 3], st.U[rows])

    def firth(rows: np.ndarray):
        X, cols, C, _ = samples(rows)
        y = cols[:, 0] + cols[:, k + 3]  # (y - mu) + mu
        if k:  # the covariates projected out of the dosages (least squares), as REGENIE does for Firth
            Q, _ = np.linalg.qr(C)
            X = X - (X @ Q) @ Q.T
        return approx_firth(X, y, cols[:, k + 4])

    out = score_variant_stats(st, few=pat.n <= k + 1, spa_threshold=pat.spa_threshold,
                              spa=spa if pat.correction == "spa" else None,
                              firth=firth if pat.correction == "firth" else None)
    return list(zip(pat.phenotypes, _haploid_freq(plan, W, pat, called, [out], mask=W[:n, a + k + 2])))


#: one-phenotype patterns finalized side by side at a time (:func:`_shared_stats`)
SIDE_BY_SIDE = 128


def _shared_stats(plan: ScanPlan, W: np.ndarray, block, SX, SXX, SM) -> list:
    """Each pattern's statistics from the shared sums less its missing samples' share.

    With ``a = Q'x`` over U and ``d = Q_M'x_M`` over the pattern's missing samples M, its own
    orthonormal basis gives ``Q_S'x = T (a - d)``; sums of x, x^2, the missing calls' ``Q'1`` and
    ``Q'Q`` are downdated alike. ``Y'x`` needs nothing: a phenotype's column is zero on M.
    """
    k, p = plan.shared.k, plan.shared.p
    drop = plan.missing_genotypes != "mean"
    QxU, Yx, sxU, sxxU = SX[:, :k], SX[:, k : k + p], SX[:, k + p], SXX[:, 0]
    QmU, Ym, missU = SM[:, :k], SM[:, k : k + p], SM[:, k + p]
    m = len(missU)
    anymiss = np.flatnonzero(missU > 0)  # variants with a missing call among U's samples
    if drop and len(anymiss):  # the missing calls' Grams, of those variants only (k x p each)
        QmQmA, QmyA, ymyA = block_grams(block.take(anymiss), W, 0, k, p, np.ones(len(anymiss), dtype=bool))
    named: list = [None] * len(plan.patterns)
    # no missing call in the sub-block: the one-phenotype patterns are finalized side by side
    side = [] if len(anymiss) else [i for i, pat in enumerate(plan.patterns) if len(pat.cols) == 1]
    at = {i: j for j, i in enumerate(side)}
    if side:
        QxS, sxS, sxxS = np.empty((len(side), m, k)), np.empty((len(side), m)), np.empty((len(side), m))
    for i, pat in enumerate(plan.patterns):
        cols, T = pat.cols, pat.T
        Qx, sx, sxx, Qm, miss = QxU, sxU, sxxU, QmU, missU
        dQQ = None
        if len(pat.missing):
            dQx, ds, dQm, dQQ = block_downdate(block, W, pat.missing, k, drop)
            Qx, sx, sxx, miss = (Qx - dQx) @ T.T, sx - ds[:, 0], sxx - ds[:, 1], miss - ds[:, 2]
            Qm = np.zeros_like(QmU)
            Qm[anymiss] = (QmU[anymiss] - dQm[anymiss]) @ T.T
        if i in at:
            QxS[at[i]], sxS[at[i]], sxxS[at[i]] = Qx, sx, sxx
            continue
        if drop:
            QmQm, Qmy, ymy = np.zeros((m, k, k)), np.zeros((m, k, len(cols))), np.zeros((m, len(cols)))
            if len(anymiss):
                qq, qy = QmQmA, QmyA[:, :, cols]
                if dQQ is not None:  # into the pattern's own basis, less its missing samples' calls
                    qq = np.einsum("ab,mbc,dc->mad", T, qq - dQQ[anymiss], T, optimize=True)
                    qy = np.einsum("ab,mbp->map", T, qy, optimize=True)
                QmQm[anymiss], Qmy[anymiss], ymy[anymiss] = qq, qy, ymyA[:, cols]
        sums = dict(Qx=Qx, yx=Yx[:, cols], sx=sx, sxx=sxx, Qm=Qm, miss=miss, Qy=pat.Qy, yy=pat.yy, n=pat.n, cc=pat.cc)
        if not drop:
            stats = finalize_mean_imputed(ym=Ym[:, cols], **sums)
        else:
            stats = finalize_complete_case(QmQm=QmQm, Qmy=Qmy, ymy=ymy, **sums)
        named[i] = list(zip(pat.phenotypes, stats))
    for a in range(0, len(side), SIDE_BY_SIDE):  # (in chunks: their temporaries stay a few MB per pattern)
        chunk = side[a : a + SIDE_BY_SIDE]
        pats = [plan.patterns[i] for i in chunk]
        part = slice(a, a + len(chunk))
        stats = finalize_no_missing(QxS[part], Yx[:, [int(p.cols[0]) for p in pats]].T, sxS[part], sxxS[part],
                                    np.stack([p.Qy[:, 0] for p in pats]), np.array([p.yy[0] for p in pats]),
                                    np.array([p.n for p in pats]), [p.cc for p in pats],
                                    mode="drop" if drop else "mean")
        for i, pat, st in zip(chunk, pats, stats):
            named[i] = [(pat.phenotypes[0], st)]
    return [pair for group in named for pair in group]


def scan_ranges(plan: ScanPlan | GroupedPlan, W: np.ndarray | tuple[np.ndarray, ...], ranges):
    """Yield Arrow batches of results for an iterable of range rows (executor side, no Spark)."""
    if isinstance(plan, GroupedPlan):
        for row in ranges:  # (part, start, ...): the range's group is its first variant's
            g = int(plan.groups_of(np.array([row[1]]))[0])
            yield from scan_ranges(plan.plans[g], W[g], [row])
        return
    for vidx, block in _sub_blocks(plan, ranges, meta=True):
        yield scan_block(plan, W, vidx, block)


def block_stats(plan: ScanPlan, W: np.ndarray, block, vidx: np.ndarray | None = None) -> np.ndarray:
    """Per-variant rows of ``S`` [shape: (m, layout.width)] of one block (statistics model); a
    :class:`GroupedPlan` needs the block's variant indices ``vidx`` (each group has its own ``W``)."""
    if isinstance(plan, GroupedPlan):
        groups = plan.groups_of(np.asarray(vidx))
        out = np.empty((len(groups), plan.layout.width))
        for g in np.unique(groups):
            if g < 0:
                raise ValueError("block_stats: a variant outside the planned chromosomes")
            rows = np.flatnonzero(groups == g)
            out[rows] = block_stats(plan.plans[g], W[g], block.take(rows))
        return out
    if plan.dosage_scale is not None:  # a sex chromosome (statistics model): haploid codings
        block = DenseBlock(block.dense() * plan.dosage_scale[None, :], block.meta)
    SX, SXX, SM = block_sums(block, W, plan.n_a)
    return block_statistics(plan.layout, [p.a_offset for p in plan.patterns], [p.b_offset for p in plan.patterns],
                            SX, SXX, SM, lambda a, k, todo: block_grams(block, W, a, k, 1, todo))


def statistics_ranges(plan: ScanPlan, W: np.ndarray, ranges):
    """Yield ``(first variant index, per-variant statistics rows)`` per sub-block (executor side)."""
    for vidx, block in _sub_blocks(plan, ranges, meta=False):
        yield int(vidx[0]), block_stats(plan, W, block, vidx)


def share_ranges(plan: ScanPlan, writer, W: np.ndarray, ranges):
    """A party's share, executor side: each sub-block's statistics rows encoded, masked and staged
    by ``writer`` (:class:`dash_spark.multiparty.rounds.PartWriter`); yields their header entries."""
    for first, block in statistics_ranges(plan, W, ranges):
        yield writer.write(first, block)


def score_share_ranges(plan: ScanPlan, writer, W: np.ndarray, ranges):
    """A party's share of a score study's scan round, executor side: per variant, the kernel's sums
    ``[X'A | (X^2)'B | M'A]`` with the weights of
    :func:`dash_spark.studies.score.score_share_weights`, encoded, masked and staged by ``writer``;
    yields the parts' header entries."""
    for vidx, block in _sub_blocks(plan, ranges, meta=False):
        SX, SXX, SM = block_sums(block, W, plan.n_a)
        yield writer.write(int(vidx[0]), np.hstack([SX, SXX, SM]))


def spa_cgf_ranges(spec: dict, plan: ScanPlan, value, ranges):
    """A party's saddlepoint values, executor side: for each variant ``v`` of ``spec`` (``{v: (mean,
    b, [t, ...])}``) in the ranges, ``g = x - C b`` over the party's samples (``value = (C, mu,
    mask)``: their covariates, null-model means and their mask in .fam order; a missing call takes
    the pooled mean) and :func:`dash_spark.stats.score.cgf` at each ``t``; yields ``(v, [(K, K',
    K''), ...])``."""
    from ..stats.score import cgf

    C, mu, mask = value
    for vidx, block in _sub_blocks(plan, ranges, meta=False):
        X = block.dense()[:, mask]
        for r, v in enumerate(vidx):
            mean, coef, ts = spec[int(v)]
            g = np.where(np.isnan(X[r]), mean, X[r]) - C @ coef
            yield int(v), [cgf(t, g, mu) for t in ts]
