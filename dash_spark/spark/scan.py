"""The distributed scan: variant ranges as Spark partitions, one broadcast, Arrow batches out.

What runs where:

- driver: plans ranges of variants (one Spark partition each) and broadcasts the per-sample weight
  matrix ``W = [A | B]`` (covariate bases Q, phenotypes Y and sample masks of every missingness
  pattern; see :mod:`dash_spark.stats.kernel`) once. It never reads genotype bytes and collects
  nothing per variant.
- each task: reads its own .bim lines and .bed bytes (the paths must be readable by executors),
  walks its range in sub-blocks sized from the memory budget, compresses each sub-block to additive
  sums, finalizes them to per-variant statistics and yields Arrow record batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa

from ..filters import CallFilters
from ..io.features import compress_dense, missing_grams_dense, read_feature_rows
from ..io.plink import read_bed_rows, read_bim_range
from ..stats.kernel import compress_block, missing_grams
from ..stats.regression import ERRCODES, CovariateCorrelation, finalize_complete_case, finalize_mean_imputed

RESULT_SCHEMA_DDL = (
    "variant_index long, chrom string, pos long, id string, ref string, alt string, a1 string, "
    "a1_freq double, obs_ct long, beta double, se double, t_stat double, p double, "
    "neg_log10_p double, phenotype string, errcode string"
)

RESULT_SCHEMA = pa.schema([
    ("variant_index", pa.int64()), ("chrom", pa.string()), ("pos", pa.int64()), ("id", pa.string()),
    ("ref", pa.string()), ("alt", pa.string()), ("a1", pa.string()), ("a1_freq", pa.float64()),
    ("obs_ct", pa.int64()), ("beta", pa.float64()), ("se", pa.float64()), ("t_stat", pa.float64()),
    ("p", pa.float64()), ("neg_log10_p", pa.float64()), ("phenotype", pa.string()), ("errcode", pa.string()),
])  # the same columns as RESULT_SCHEMA_DDL, for tasks that write Parquet themselves

RANGE_SCHEMA_DDL = "part int, start long, stop long, bim_start long, bim_stop long, rows array<int>"


@dataclass(frozen=True)
class Pattern:
    """Phenotypes analysed on the same samples.

    Columns of A: ``[a_offset, a_offset+k)`` = Q, then ``p_g`` phenotype columns, then the mask;
    column ``b_offset`` of B = the mask. ``Qy`` [shape: (k, p_g)], ``yy`` [shape: (p_g,)].
    """

    phenotypes: tuple[str, ...]
    n: int
    k: int
    a_offset: int
    b_offset: int
    Qy: np.ndarray
    yy: np.ndarray
    cc: CovariateCorrelation | None = None
    CtC: np.ndarray | None = None  # multi-party patterns only: C'C and C'1 over the pattern
    Ct1: np.ndarray | None = None


@dataclass(frozen=True)
class ScanPlan:
    """Everything a task needs besides the broadcast ``W`` (small; pickled with the closure).

    The last two columns of A are the masks of the ``n_kept`` samples left by --keep/--remove
    (for --geno) and of the ``n_freq`` samples whose allele frequency decides which allele is
    major and feeds --maf/--mac (plink2: the founders among them).
    """

    bed_path: str
    bim_path: str
    n_samples: int
    n_a: int
    n_freq: int
    n_kept: int
    patterns: tuple[Pattern, ...]
    sub_block: int
    count_alt: bool = False
    missing_genotypes: str = "drop"
    filters: CallFilters = CallFilters()
    features_path: str | None = None  # real-valued features (Parquet) instead of the .bed


def plan_ranges(variants: np.ndarray, block_variants: int, line_offsets: np.ndarray) -> list[tuple]:
    """Split the selected variant indices (sorted) into partitions of at most ``block_variants``.

    Each row is ``(part, start, stop, bim_start, bim_stop, rows)``: the .bim/.bed span
    ``[start, stop)`` and the selected offsets within it (empty when all of the span is selected).
    """
    out = []
    for part, a in enumerate(range(0, len(variants), block_variants)):
        chunk = variants[a : a + block_variants]
        start, stop = int(chunk[0]), int(chunk[-1]) + 1
        rows = [] if stop - start == len(chunk) else (chunk - start).astype(int).tolist()
        out.append((part, start, stop, int(line_offsets[start]), int(line_offsets[stop]), rows))
    return out


def default_block_variants(n_variants: int, parallelism: int) -> int:
    """About three partitions per core, each between 2,000 and 100,000 variants."""
    per = math.ceil(n_variants / max(1, 3 * parallelism))
    return int(min(100_000, max(2_000, per)))


def sub_block_size(n_samples: int, n_columns: int, budget_bytes: int) -> int:
    """Variants per sub-block so that a task's working set stays within ``budget_bytes``."""
    per_variant = 2 * ((n_samples + 3) // 4) + 8 * (3 * n_columns) + 64
    return int(max(16, min(2048, budget_bytes // per_variant)))


def read_block(plan: ScanPlan, variants: np.ndarray, meta_all=None, offsets=None):
    """A block of variants: packed .bed bytes or dense feature values, and its metadata (for the
    .bed: ``meta_all`` rows at ``offsets``, or None when ``meta_all`` is not given)."""
    if plan.features_path:
        return read_feature_rows(plan.features_path, plan.n_samples, variants)
    meta = None if meta_all is None else tuple(x[offsets] for x in meta_all)
    return read_bed_rows(plan.bed_path, plan.n_samples, variants), meta


def block_sums(plan: ScanPlan, W: np.ndarray, block: np.ndarray):
    """``(SX, SXX, SM)`` of a block (see :mod:`dash_spark.stats.kernel`), for either source."""
    if plan.features_path:
        return compress_dense(block, W, plan.n_a)
    return compress_block(block, W, plan.n_a)


def block_missing_grams(plan: ScanPlan, W: np.ndarray, block: np.ndarray, a: int, k: int, p: int, todo):
    if plan.features_path:
        return missing_grams_dense(block, W, a, k, p, todo)
    return missing_grams(block, W, a, k, p, todo=todo)


def _batch_for_block(plan: ScanPlan, W: np.ndarray, vidx: np.ndarray, packed: np.ndarray, meta) -> pa.RecordBatch:
    SX, SXX, SM = block_sums(plan, W, packed)
    if plan.filters.active:
        ok = plan.filters.keep(SX[:, -1], plan.n_freq - SM[:, -1], SM[:, -2], plan.n_kept)
        if not ok.all():
            SX, SXX, SM, packed, vidx = SX[ok], SXX[ok], SM[ok], packed[ok], vidx[ok]
            meta = tuple(x[ok] for x in meta)
    named = []
    for pat in plan.patterns:
        a, k, pg = pat.a_offset, pat.k, len(pat.phenotypes)
        sums = dict(Qx=SX[:, a : a + k], yx=SX[:, a + k : a + k + pg], sx=SX[:, a + k + pg],
                    sxx=SXX[:, pat.b_offset], Qm=SM[:, a : a + k], miss=SM[:, a + k + pg],
                    Qy=pat.Qy, yy=pat.yy, n=pat.n, cc=pat.cc)
        if plan.missing_genotypes == "mean":
            stats = finalize_mean_imputed(ym=SM[:, a + k : a + k + pg], **sums)
        else:
            QmQm, Qmy, ymy = block_missing_grams(plan, W, packed, a, k, pg, sums["miss"] > 0)
            stats = finalize_complete_case(QmQm=QmQm, Qmy=Qmy, ymy=ymy, **sums)
        named += list(zip(pat.phenotypes, stats))
    return results_batch(vidx, meta, SX[:, -1], plan.n_freq - SM[:, -1], named, count_alt=plan.count_alt)


def results_batch(vidx, meta, freq_alt_sum, freq_called, named_stats, *, count_alt: bool) -> pa.RecordBatch:
    """Result rows (phenotype-major) for variants ``vidx`` with .bim fields ``meta``.

    ``freq_alt_sum``/``freq_called`` (m,): ALT dosage sum and called count over the samples whose
    frequency decides the major allele; ``named_stats``: (phenotype, VariantStats) pairs.
    """
    chrom, ids, pos, alt, ref = meta
    m = len(vidx)
    cols: dict[str, list] = {name: [] for name in (
        "variant_index", "chrom", "pos", "id", "ref", "alt", "a1", "a1_freq", "obs_ct", "beta", "se",
        "t_stat", "p", "neg_log10_p", "phenotype", "errcode")}
    # plink2's default: A1 is the non-major allele over the frequency samples. plink2 takes
    # ref_freq = ref_count * (1 / (2 n)) and alt_freq = 1 - ref_freq, and keeps REF as major on an
    # exact tie; that arithmetic decides tied counts (either way, depending on n), so it is
    # reproduced as is. A variant with no call among them falls back to the phenotype's samples
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(freq_called > 0, 1.0 / (2.0 * freq_called), np.nan)
        ref_freq = (2.0 * freq_called - freq_alt_sum) * inv
    no_freq = np.isnan(ref_freq)
    flip_all = np.zeros(m, dtype=bool) if count_alt else (1.0 - ref_freq) > ref_freq
    errnames = np.array(ERRCODES, dtype=object)
    for name, st in named_stats:
        flip = flip_all
        if not count_alt and no_freq.any():
            flip = np.where(no_freq, st.alt_freq > 0.5, flip_all)
        sign = np.where(flip, -1.0, 1.0)
        cols["variant_index"].append(vidx)
        cols["chrom"].append(chrom)
        cols["pos"].append(pos)
        cols["id"].append(ids)
        cols["ref"].append(ref)
        cols["alt"].append(alt)
        cols["a1"].append(np.where(flip, ref, alt))
        cols["a1_freq"].append(np.where(flip, 1.0 - st.alt_freq, st.alt_freq))
        cols["obs_ct"].append(st.obs_ct)
        cols["beta"].append(sign * st.beta)
        cols["se"].append(st.se)
        cols["t_stat"].append(sign * st.t_stat)
        cols["p"].append(st.p)
        cols["neg_log10_p"].append(st.neg_log10_p)
        cols["phenotype"].append(np.full(m, name, dtype=object))
        cols["errcode"].append(errnames[st.errcode])
    arrays = []
    for name, parts in cols.items():
        values = np.concatenate(parts)
        if values.dtype == object:
            arrays.append(pa.array(values, type=pa.string()))
        elif values.dtype.kind == "f":
            arrays.append(pa.array(values, type=pa.float64(), from_pandas=True))
        else:
            arrays.append(pa.array(values, type=pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, names=list(cols))


def scan_ranges(plan: ScanPlan, W: np.ndarray, ranges):
    """Yield Arrow batches of results for an iterable of range rows (executor side, no Spark)."""
    for part, start, stop, bim_start, bim_stop, rows in ranges:
        meta_all = None if plan.features_path else read_bim_range(plan.bim_path, bim_start, bim_stop, start + 1)
        offsets = np.arange(stop - start) if not rows else np.asarray(rows, dtype=np.int64)
        for a in range(0, len(offsets), plan.sub_block):
            sub = offsets[a : a + plan.sub_block]
            block, meta = read_block(plan, start + sub, meta_all, sub)
            yield _batch_for_block(plan, W, (start + sub).astype(np.int64), block, meta)


def map_ranges(spark, W: np.ndarray, ranges: list[tuple], per_ranges, schema_ddl: str):
    """A DataFrame with one partition per range row: ``per_ranges(W, rows)`` yields its Arrow batches.

    ``W`` is broadcast once; the function and its small arguments travel with the task closure.
    Returns ``(DataFrame, broadcast)``; destroy the broadcast when the DataFrame is consumed.
    """
    sc = spark.sparkContext
    W_bc = sc.broadcast(W)

    def task(batches):
        W_local = W_bc.value
        for batch in batches:
            d = batch.to_pydict()
            yield from per_ranges(W_local, zip(d["part"], d["start"], d["stop"], d["bim_start"], d["bim_stop"],
                                               d["rows"]))

    ranges_df = spark.createDataFrame(sc.parallelize(ranges, len(ranges)), RANGE_SCHEMA_DDL)
    return ranges_df.mapInArrow(task, schema_ddl), W_bc


def run_ranges(spark, value, ranges: list[tuple], per_ranges) -> list:
    """A plain RDD job with one partition per range row: each runs ``per_ranges(value, rows)``
    (``value`` broadcast once) and what the tasks yield is collected. After a failure it waits for
    the job's cancelled tasks before re-raising, since they may still be writing files the caller
    is about to remove."""
    from .session import wait_for_running_tasks

    sc = spark.sparkContext
    bc = sc.broadcast(value)

    def task(rows):
        yield from per_ranges(bc.value, rows)

    try:
        return sc.parallelize(ranges, len(ranges)).mapPartitions(task).collect()
    except BaseException:
        wait_for_running_tasks(spark)
        raise
    finally:
        bc.destroy()


def write_ranges(spark, value, ranges: list[tuple], per_ranges, stage: str, phenotypes) -> int:
    """Every range row in its own task: ``per_ranges(value, [row])`` yields the row's result batches,
    which the task writes under the local (or shared) directory ``stage`` with
    :func:`dash_spark.output.write_result_parts` (:func:`run_ranges`; only row counts come back).
    Returns the number of result rows."""
    from ..output import prepare_result_dirs, write_result_parts

    prepare_result_dirs(stage, phenotypes)

    def write(v, rows):
        for row in rows:
            yield write_result_parts(stage, phenotypes, row[0], per_ranges(v, [row]))

    return int(sum(run_ranges(spark, value, ranges, write)))


def run_scan_job(spark, plan: ScanPlan, W: np.ndarray, ranges: list[tuple]):
    """Return the (lazy) results DataFrame: one partition per range, ``W`` broadcast once."""
    return map_ranges(spark, W, ranges, partial(scan_ranges, plan), RESULT_SCHEMA_DDL)
