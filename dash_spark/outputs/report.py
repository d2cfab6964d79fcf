"""Scan reports: per-phenotype summaries, Manhattan/QQ plots and summary files.

Everything per variant is reduced inside Spark; the driver only ever receives

* a handful of aggregates (counts per ``errcode``, the median p, the smallest p),
* the ``top_n`` best rows,
* the rows at or above ``keep_above`` on the -log10(p) scale (the significant tail, kept exactly),
* one point per (chromosome, position bin, -log10(p) bin) for the rest.

The last item is bounded by the genome length and the bin sizes, not by the number of variants:
at most ``n_position_bins * keep_above * bins_per_unit`` points (for a 3.1 Gb genome with 100 kb
position bins, ``keep_above=3`` and 50 bins per unit that is 31,000 x 150 = 4.65 million in the
worst case; a typical imputed scan fills well under half of those cells).

Input: the ``results`` DataFrame of a scan, one row per (variant, phenotype) with at least the
columns ``chrom, pos, id, a1, beta, se, p, neg_log10_p, obs_ct, phenotype, errcode``. A row was
tested when ``errcode == "."``; rows with any other code (a null code is reported as ``"NA"``) are
counted as errors. Statistics use the tested rows whose ``p`` and ``neg_log10_p`` are non-null and
not NaN.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from ..errors import InputError, did_you_mean

__all__ = [
    "DEFAULT_EXACT_MEDIAN_MAX_N",
    "MEDIAN_APPROX_ACCURACY",
    "PhenotypeSummary",
    "PlotPoints",
    "chrom_sort_key",
    "format_p",
    "format_top_hits",
    "lambda_gc_from_median_p",
    "plot_manhattan",
    "plot_points",
    "plot_points_table",
    "plot_qq",
    "summarize_phenotype",
    "summarize_table",
    "write_summary",
]

#: ``accuracy`` of Spark's ``percentile_approx`` for the median p (relative rank error 1e-5).
MEDIAN_APPROX_ACCURACY = 100_000
#: Up to this many tested rows the median p is exact (Spark ``percentile``, which holds every
#: distinct value of the group in one aggregation buffer); above it ``percentile_approx`` is used.
DEFAULT_EXACT_MEDIAN_MAX_N = 200_000

TESTED = "."
_NULL_ERRCODE = "NA"
_REQUIRED = ("chrom", "pos", "p", "neg_log10_p", "phenotype", "errcode")
_TOP_COLUMNS = ("id", "chrom", "pos", "a1", "beta", "se", "p", "neg_log10_p", "obs_ct")
SUMMARY_COLUMNS = _REQUIRED + _TOP_COLUMNS  # what the summaries and the plot points read
_SEX_MT_ORDER = {"X": 0, "Y": 1, "XY": 2, "MT": 3, "M": 3}


# ----------------------------------------------------------------------------------------------
# helpers


def chrom_sort_key(chrom: str) -> tuple:
    """Sort key for chromosome names: 1..22 (numerically), then X, Y, XY, MT, then the rest.

    A leading ``chr`` (any case) is ignored for ordering, so ``chr2`` sorts before ``chr10``.
    ``M`` is treated as ``MT``. Other contigs follow in lexicographic order.
    """
    name = str(chrom)
    bare = name[3:] if name[:3].lower() == "chr" and len(name) > 3 else name
    if bare.isdigit():
        return (0, int(bare), name)
    upper = bare.upper()
    if upper in _SEX_MT_ORDER:
        return (1, _SEX_MT_ORDER[upper], name)
    return (2, 0, name)


def format_p(neg_log10_p: float | None, digits: int = 4) -> str:
    """Format p from its -log10, also where p itself underflows float64 (``1e-400`` style)."""
    if neg_log10_p is None or not math.isfinite(neg_log10_p):
        return "NA" if neg_log10_p is None or math.isnan(neg_log10_p) else "0"
    if neg_log10_p < 300:
        return f"{10.0 ** -neg_log10_p:.{digits}g}"
    exponent = math.floor(-neg_log10_p)
    mantissa = 10.0 ** (-neg_log10_p - exponent)
    text = f"{mantissa:.{digits - 1}f}"
    if float(text) >= 10.0:  # rounding carried into the next decade
        exponent += 1
        text = f"{mantissa / 10.0:.{digits - 1}f}"
    return f"{text}e{exponent:+04d}"


def lambda_gc_from_median_p(median_p: float) -> float:
    """Genomic-control lambda from the median p: ``chi2.isf(median_p, 1) / chi2.ppf(0.5, 1)``, with
    scipy.special's inverse chi-square survival function (importing scipy.stats costs half a
    second per process)."""
    from scipy.special import chdtri

    if median_p is None or not math.isfinite(median_p):
        return math.nan
    return float(chdtri(1, median_p) / chdtri(1, 0.5))


def _check_columns(results, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise InputError(
            f"results: missing column(s) {', '.join(missing)}; expected the scan output columns, "
            f"found {', '.join(results.columns)}. Pass the DataFrame produced by the scan."
        )


def _phenotype_rows(results, phenotype: str):
    from pyspark.sql import functions as F

    return results.where(F.col("phenotype") == F.lit(phenotype))


def _valid_tested(rows):
    """Rows that were tested and carry usable p / -log10 p values."""
    from pyspark.sql import functions as F

    p, nlp = F.col("p"), F.col("neg_log10_p")
    return rows.where(
        (F.col("errcode") == F.lit(TESTED))
        & p.isNotNull()
        & ~F.isnan(p)
        & nlp.isNotNull()
        & ~F.isnan(nlp)
    )


def _unknown_phenotype(results, phenotype: str) -> InputError:
    names = sorted(r[0] for r in results.select("phenotype").distinct().limit(1000).collect())
    shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
    return InputError(
        f"results: no rows for phenotype {phenotype!r}; expected one of the scanned phenotypes, "
        f"found {shown or 'none'}.{did_you_mean(phenotype, [str(n) for n in names])}"
    )


def _py(value: Any) -> Any:
    """Plain Python scalar (numpy scalars unwrapped)."""
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------------------------
# summary


@dataclass(frozen=True)
class PhenotypeSummary:
    """Per-phenotype aggregates of a scan.

    ``median_method`` says how ``median_p`` was computed: ``"exact"`` (Spark ``percentile``, linear
    interpolation between the two middle values, like ``numpy.median``) or ``"approx"`` (Spark
    ``percentile_approx(p, 0.5, 100000)``, rank error at most ``n_tests / 100000``).
    ``min_p_neg_log10`` is ``-log10`` of the smallest p (exact also where p underflows to 0).
    """

    phenotype: str
    n_tests: int
    n_errors: int
    errcode_counts: dict[str, int]
    median_p: float
    median_method: str
    lambda_gc: float
    min_p_neg_log10: float
    top_hits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def min_p(self) -> float:
        """The smallest p as a float (0.0 where it underflows; see ``min_p_neg_log10``)."""
        x = self.min_p_neg_log10
        return math.nan if math.isnan(x) else 10.0 ** -x


def summarize_phenotype(
    results,
    phenotype: str,
    *,
    top_n: int = 10,
    exact_median_max_n: int = DEFAULT_EXACT_MEDIAN_MAX_N,
    n_rows_hint: int | None = None,
) -> PhenotypeSummary:
    """Summarise one phenotype of a scan with Spark aggregations (two or three small jobs).

    The median p behind ``lambda_gc`` is exact (Spark ``percentile``) when the phenotype has at
    most ``exact_median_max_n`` tested rows, otherwise ``percentile_approx(p, 0.5, 100000)``; the
    choice is recorded in ``median_method``. When the caller knows an upper bound on the rows
    (``n_rows_hint``, e.g. the number of variants scanned), the method is chosen up front and
    the error-code counts and the median come from one grouped job. Raises :class:`InputError`
    when the phenotype has no rows at all.
    """
    from pyspark.sql import functions as F

    if top_n < 0:
        raise InputError(f"summarize_phenotype: top_n must be >= 0; found {top_n}.")
    _check_columns(results, _REQUIRED + _TOP_COLUMNS)
    rows = _phenotype_rows(results, phenotype)

    valid = (F.col("errcode") == F.lit(TESTED)) & F.col("p").isNotNull() & ~F.isnan("p") \
        & F.col("neg_log10_p").isNotNull() & ~F.isnan("neg_log10_p")

    def median_of(n_bound):  # percentile and max ignore the nulls of rows that are not valid
        p = F.when(valid, F.col("p"))
        if n_bound <= exact_median_max_n:
            return F.percentile(p, F.lit(0.5)), "exact"
        return F.percentile_approx(p, F.lit(0.5), F.lit(MEDIAN_APPROX_ACCURACY)), "approx"

    code = F.coalesce(F.col("errcode"), F.lit(_NULL_ERRCODE)).alias("errcode")
    aggs = [F.count(F.lit(1)).alias("n")]
    if n_rows_hint is not None:
        median_col, method = median_of(n_rows_hint)
        aggs += [median_col.alias("median_p"), F.max(F.when(valid, F.col("neg_log10_p"))).alias("max_nlp")]
    grouped = rows.groupBy(code).agg(*aggs).collect()
    counts = {r["errcode"]: int(r["n"]) for r in grouped}
    if not counts:
        raise _unknown_phenotype(results, phenotype)
    n_tests = counts.pop(TESTED, 0)
    errcode_counts = {k: counts[k] for k in sorted(counts)}
    n_errors = sum(errcode_counts.values())

    tested = _valid_tested(rows)
    median_p, max_nlp = math.nan, math.nan
    if n_rows_hint is not None:
        row = next((r for r in grouped if r["errcode"] == TESTED), None)
        if row is not None and row["median_p"] is not None:
            median_p, max_nlp = float(row["median_p"]), float(row["max_nlp"])
        else:
            method = "none"
    elif n_tests > 0:
        median_col, method = median_of(n_tests)
        agg = tested.agg(median_col.alias("median_p"), F.max("neg_log10_p").alias("max_nlp")).first()
        if agg["median_p"] is not None:
            median_p = float(agg["median_p"])
            max_nlp = float(agg["max_nlp"])
        else:
            method = "none"
    else:
        method = "none"

    top_hits: list[dict[str, Any]] = []
    if top_n > 0 and n_tests > 0:
        best = (
            tested.select(*_TOP_COLUMNS)
            .orderBy(F.col("neg_log10_p").desc(), "chrom", "pos", "id")
            .limit(top_n)
            .collect()
        )
        top_hits = [{c: r[c] for c in _TOP_COLUMNS} for r in best]

    return PhenotypeSummary(
        phenotype=phenotype,
        n_tests=n_tests,
        n_errors=n_errors,
        errcode_counts=errcode_counts,
        median_p=median_p,
        median_method=method,
        lambda_gc=lambda_gc_from_median_p(median_p),
        min_p_neg_log10=max_nlp,
        top_hits=top_hits,
    )


# ----------------------------------------------------------------------------------------------
# plot points


@dataclass(frozen=True, eq=False)
class PlotPoints:
    """Bounded point sets for the Manhattan and QQ plots of one phenotype.

    Manhattan (sorted by chromosome order, then position): ``chrom``, ``chrom_index`` (index into
    ``chromosomes``, the plotting order), ``pos``, ``neg_log10_p`` and ``exact`` (True for rows
    kept as they are, False for one representative per thinning cell: the cell's row with the
    largest -log10 p).

    QQ (sorted by observed -log10 p, descending): ``qq_expected``, ``qq_observed``, ``qq_count``.
    The first ``n_kept`` points are the kept rows with their exact expected value
    ``-log10((rank - 0.5) / n_tests)``; each later point is one -log10(p) bin of the bulk, placed at
    the bin's middle rank with the mean observed value of the bin, ``qq_count`` rows per point.
    ``bulk_bin``/``bulk_count`` hold the raw histogram (bin ``b`` covers
    ``[b, b + 1) / bins_per_unit``), in the same descending order.
    """

    phenotype: str
    chrom: np.ndarray
    chrom_index: np.ndarray
    pos: np.ndarray
    neg_log10_p: np.ndarray
    exact: np.ndarray
    qq_expected: np.ndarray
    qq_observed: np.ndarray
    qq_count: np.ndarray
    bulk_bin: np.ndarray
    bulk_count: np.ndarray
    n_tests: int
    n_kept: int
    keep_above: float
    bins_per_unit: int
    pos_bin_bp: int
    chromosomes: tuple[str, ...]

    @property
    def bin_width(self) -> float:
        return 1.0 / self.bins_per_unit


def _arrow_columns(table, names):
    return [table.column(n).to_numpy(zero_copy_only=False) for n in names]


def _chrom_codes(*columns) -> tuple[np.ndarray, tuple[str, ...]]:
    """Plot-order index of every value of the concatenated chrom columns, and that order."""
    import pyarrow as pa

    chunks = [chunk for col in columns for chunk in col.chunks]
    if not chunks:
        return np.empty(0, dtype=np.int64), ()
    encoded = pa.chunked_array(chunks, type=pa.string()).combine_chunks().dictionary_encode()
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    chromosomes = tuple(sorted(set(names), key=chrom_sort_key))
    lut = np.array([chromosomes.index(n) for n in names], dtype=np.int64)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return (lut[codes] if codes.size else codes), chromosomes


def _check_plot_args(keep_above: float, bins_per_unit: int, pos_bin_bp: int) -> int:
    if not (bins_per_unit >= 1 and int(bins_per_unit) == bins_per_unit):
        raise InputError(
            f"plot_points: bins_per_unit must be a positive integer; found {bins_per_unit}."
        )
    if not pos_bin_bp >= 1:
        raise InputError(f"plot_points: pos_bin_bp must be >= 1; found {pos_bin_bp}.")
    if not math.isfinite(keep_above):
        raise InputError(f"plot_points: keep_above must be finite; found {keep_above}.")
    return int(bins_per_unit)


def plot_points(
    results,
    phenotype: str,
    *,
    keep_above: float = 3.0,
    bins_per_unit: int = 50,
    pos_bin_bp: int = 100_000,
) -> PlotPoints:
    """Reduce one phenotype's tested rows to Manhattan and QQ points in Spark (two jobs).

    Rows with ``neg_log10_p >= keep_above`` come back exactly. The others are grouped by
    (chrom, ``pos // pos_bin_bp``, ``floor(neg_log10_p * bins_per_unit)``); each group returns its
    top row plus its count and sum of -log10 p, from which the driver builds the QQ histogram.
    """
    from pyspark.sql import functions as F

    bins_per_unit = _check_plot_args(keep_above, bins_per_unit, pos_bin_bp)
    _check_columns(results, _REQUIRED)
    tested = _valid_tested(_phenotype_rows(results, phenotype))
    tested = tested.where(F.col("chrom").isNotNull() & F.col("pos").isNotNull()).select(
        F.col("chrom").cast("string").alias("chrom"),
        F.col("pos").cast("long").alias("pos"),
        F.col("neg_log10_p").cast("double").alias("nlp"),
    )
    nlp = F.col("nlp")

    kept = tested.where(nlp >= F.lit(keep_above)).toArrow()

    ybin = F.greatest(F.floor(nlp * F.lit(float(bins_per_unit))), F.lit(0)).cast("long")
    cells = (
        tested.where(nlp < F.lit(keep_above))
        .groupBy(
            F.col("chrom"),
            F.floor(F.col("pos") / F.lit(pos_bin_bp)).cast("long").alias("pbin"),
            ybin.alias("ybin"),
        )
        .agg(
            F.max_by("pos", "nlp").alias("pos"),
            F.max("nlp").alias("nlp"),
            F.count(F.lit(1)).alias("n"),
            F.sum("nlp").alias("s"),
        )
        .select("chrom", "pos", "nlp", "ybin", "n", "s")
        .toArrow()
    )
    points = _assemble_plot_points(phenotype, kept, cells, keep_above=keep_above,
                                   bins_per_unit=bins_per_unit, pos_bin_bp=pos_bin_bp)
    if points.n_tests == 0 and _phenotype_rows(results, phenotype).limit(1).count() == 0:
        raise _unknown_phenotype(results, phenotype)
    return points


def _assemble_plot_points(phenotype: str, kept, cells, *, keep_above: float, bins_per_unit: int,
                          pos_bin_bp: int) -> PlotPoints:
    """:class:`PlotPoints` from the kept rows (Arrow ``chrom, pos, nlp``) and the thinning cells
    (Arrow ``chrom, pos, nlp, ybin, n, s``), however they were reduced (Spark or Arrow)."""
    k_chrom, k_pos, k_nlp = _arrow_columns(kept, ["chrom", "pos", "nlp"])
    c_chrom, c_pos, c_nlp, c_ybin, c_n, c_s = _arrow_columns(
        cells, ["chrom", "pos", "nlp", "ybin", "n", "s"]
    )
    k_nlp = np.asarray(k_nlp, dtype=np.float64)
    c_n = np.asarray(c_n, dtype=np.int64)
    n_kept = int(k_nlp.size)
    n_tests = n_kept + int(c_n.sum())

    # Manhattan points, chromosome order then position
    chrom_index, chromosomes = _chrom_codes(kept.column("chrom"), cells.column("chrom"))
    chrom = np.concatenate([np.asarray(k_chrom, dtype=object), np.asarray(c_chrom, dtype=object)])
    pos = np.concatenate([np.asarray(k_pos, dtype=np.int64), np.asarray(c_pos, dtype=np.int64)])
    y = np.concatenate([k_nlp, np.asarray(c_nlp, dtype=np.float64)])
    exact = np.concatenate([np.ones(n_kept, dtype=bool), np.zeros(c_n.size, dtype=bool)])
    order = np.lexsort((-y, pos, chrom_index))
    chrom, chrom_index, pos, y, exact = (
        chrom[order], chrom_index[order], pos[order], y[order], exact[order]
    )

    # QQ: exact kept tail, then the bulk histogram in descending bin order
    bins, inverse = np.unique(np.asarray(c_ybin, dtype=np.int64), return_inverse=True)
    bulk_count = np.bincount(inverse, weights=c_n, minlength=bins.size).astype(np.int64)
    bulk_sum = np.bincount(inverse, weights=np.asarray(c_s, dtype=np.float64), minlength=bins.size)
    bins, bulk_count, bulk_sum = bins[::-1], bulk_count[::-1], bulk_sum[::-1]

    kept_obs = np.sort(k_nlp)[::-1]
    kept_rank = np.arange(1, n_kept + 1, dtype=np.float64)
    first_rank = n_kept + np.concatenate([[0], np.cumsum(bulk_count)[:-1]]) + 1
    mid_rank = first_rank + (bulk_count - 1) / 2.0
    ranks = np.concatenate([kept_rank, mid_rank])
    if n_tests:
        expected = np.log10(float(n_tests)) - np.log10(ranks - 0.5)
    else:
        expected = np.empty(0, dtype=np.float64)
    observed = np.concatenate([kept_obs, bulk_sum / np.maximum(bulk_count, 1)])
    qq_count = np.concatenate([np.ones(n_kept, dtype=np.int64), bulk_count])

    return PlotPoints(
        phenotype=phenotype,
        chrom=chrom,
        chrom_index=chrom_index,
        pos=pos,
        neg_log10_p=y,
        exact=exact,
        qq_expected=expected,
        qq_observed=observed,
        qq_count=qq_count,
        bulk_bin=bins,
        bulk_count=bulk_count,
        n_tests=n_tests,
        n_kept=n_kept,
        keep_above=float(keep_above),
        bins_per_unit=bins_per_unit,
        pos_bin_bp=int(pos_bin_bp),
        chromosomes=chromosomes,
    )


# ----------------------------------------------------------------------------------------------
# the same reductions on results held by the driver (an Arrow table, no Spark)


def _table_rows(table, phenotype: str):
    """``(rows of phenotype, valid-tested mask)`` of an Arrow results table."""
    import pyarrow.compute as pc

    missing = [c for c in _REQUIRED + _TOP_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            f"results: missing column(s) {', '.join(missing)}; expected the scan output columns, "
            f"found {', '.join(table.column_names)}. Pass the table produced by the scan."
        )
    rows = table.filter(pc.equal(table["phenotype"], phenotype))
    if rows.num_rows == 0:
        names = sorted(str(n) for n in pc.unique(table["phenotype"]).drop_null().to_pylist())
        shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
        raise InputError(
            f"results: no rows for phenotype {phenotype!r}; expected one of the scanned phenotypes, "
            f"found {shown or 'none'}.{did_you_mean(phenotype, names)}"
        )
    p = rows["p"].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    nlp = rows["neg_log10_p"].to_numpy(zero_copy_only=False).astype(np.float64)
    tested = pc.fill_null(pc.equal(rows["errcode"], TESTED), False).to_numpy(zero_copy_only=False)
    return rows, tested & ~np.isnan(p) & ~np.isnan(nlp)


def summarize_table(table, phenotype: str, *, top_n: int = 10) -> PhenotypeSummary:
    """:func:`summarize_phenotype` of an Arrow results table held by the driver (no Spark).

    Same fields and definitions; the median p is always exact (``median_method`` ``"exact"``,
    linear interpolation between the two middle values, as Spark ``percentile``).
    """
    import pyarrow.compute as pc

    if top_n < 0:
        raise InputError(f"summarize_phenotype: top_n must be >= 0; found {top_n}.")
    rows, valid = _table_rows(table, phenotype)
    nlp = rows["neg_log10_p"].to_numpy(zero_copy_only=False).astype(np.float64)
    top = rows.filter(_pa(valid & (nlp >= top_cut(nlp[valid], top_n)))) if valid.any() and top_n else None
    return summarize_parts(phenotype, rows["p"].to_numpy(zero_copy_only=False).astype(np.float64), nlp,
                           pc.fill_null(rows["errcode"], _NULL_ERRCODE).value_counts(), valid, top, top_n=top_n)


def top_cut(nlp_valid: np.ndarray, top_n: int) -> float:
    """The -log10 p of the ``top_n``-th strongest valid test (every test at or above it is a top-hit
    candidate: ties are kept); ``inf`` when there is none."""
    if top_n <= 0 or nlp_valid.size == 0:
        return math.inf
    return float(np.sort(nlp_valid)[::-1][min(top_n, nlp_valid.size) - 1])


def summarize_parts(phenotype: str, p: np.ndarray, nlp: np.ndarray, code_counts, valid: np.ndarray, top,
                    *, top_n: int = 10) -> PhenotypeSummary:
    """A :class:`PhenotypeSummary` from one phenotype's p and -log10 p [shape: (rows,)], its error
    codes' counts (a mapping, or Arrow's ``value_counts``; nulls as ``"NA"``), the valid tests' mask and ``top``: an Arrow table
    holding at least every valid row at or above :func:`top_cut` (more rows may be there, e.g.
    the candidates that tasks kept; ``None`` when there is no valid test)."""
    if isinstance(code_counts, Mapping):
        counts = {str(v): int(n) for v, n in code_counts.items()}
    else:
        counts = {str(v): int(n) for v, n in zip(code_counts.field("values").to_pylist(),
                                                code_counts.field("counts").to_pylist())}
    if not valid.any():
        return _summary(phenotype, counts, None, math.nan, None, [], top_n)
    ps = np.sort(p[valid])
    lo, hi = ps[(ps.size - 1) // 2], ps[ps.size // 2]
    return _summary(phenotype, counts, float(0.5 * lo + 0.5 * hi), float(nlp[valid].max()), top,
                    nlp[valid], top_n)


def _summary(phenotype: str, counts: dict, median_p: float | None, max_nlp: float, top, nlp_valid,
             top_n: int) -> PhenotypeSummary:
    """The summary from the error codes' ``counts`` (including "."), the exact median valid p
    (None: no valid test), the strongest test's -log10 p, and the top-hit rows ``top`` with the
    valid -log10 p that set the top-hit cut."""
    counts = dict(counts)
    n_tests = counts.pop(TESTED, 0)
    errcode_counts = {k: counts[k] for k in sorted(counts)}
    top_hits: list[dict[str, Any]] = []
    if median_p is not None and top_n > 0 and n_tests > 0 and top is not None:
        top_hits = _top_hits(top, top_cut(nlp_valid, top_n), top_n)
    median = math.nan if median_p is None else median_p
    return PhenotypeSummary(
        phenotype=phenotype,
        n_tests=n_tests,
        n_errors=sum(errcode_counts.values()),
        errcode_counts=errcode_counts,
        median_p=median,
        median_method="none" if median_p is None else "exact",
        lambda_gc=lambda_gc_from_median_p(median),
        min_p_neg_log10=max_nlp,
        top_hits=top_hits,
    )


def _top_hits(top, cut: float, top_n: int) -> list[dict[str, Any]]:
    """The ``top_n`` strongest rows of ``top`` at or above ``cut`` (ties at the cut kept), in Spark's
    order: -log10 p descending, then chrom, pos, id ascending (nulls first)."""
    best = [r for r in top.select(list(_TOP_COLUMNS)).to_pylist() if r["neg_log10_p"] >= cut]
    best.sort(key=lambda r: (-r["neg_log10_p"], *((r[c] is not None, r[c]) for c in ("chrom", "pos", "id"))))
    return best[:top_n]


def summarize_sums(phenotype: str, code_counts: dict, median_p: float | None, top, *,
                   top_n: int = 10) -> PhenotypeSummary:
    """A :class:`PhenotypeSummary` from sums the tasks added up (no row read): the error codes'
    counts (``"NA"`` for nulls), the exact median of the valid p-values (None: no valid test) and
    ``top``, the tasks' top-hit candidates (every valid row at or above each part's ``top_n``-th
    strongest, so they hold the strongest test and the whole top ``top_n``, ties included)."""
    counts = {str(k): int(v) for k, v in code_counts.items()}
    if median_p is None or top is None or not top.num_rows:
        return _summary(phenotype, counts, None, math.nan, None, None, top_n)
    nlp = top.column("neg_log10_p").to_numpy(zero_copy_only=False).astype(np.float64)
    return _summary(phenotype, counts, float(median_p), float(nlp.max()), top, nlp, top_n)


def plot_points_table(
    table,
    phenotype: str,
    *,
    keep_above: float = 3.0,
    bins_per_unit: int = 50,
    pos_bin_bp: int = 100_000,
) -> PlotPoints:
    """:func:`plot_points` of an Arrow results table held by the driver (no Spark)."""
    import pyarrow as pa

    bins_per_unit = _check_plot_args(keep_above, bins_per_unit, pos_bin_bp)
    rows, valid = _table_rows(table, phenotype)
    valid &= ~(rows["chrom"].is_null().to_numpy(zero_copy_only=False)
               | rows["pos"].is_null().to_numpy(zero_copy_only=False))
    rows = rows.filter(_pa(valid))
    chrom = rows["chrom"].cast(pa.string()).combine_chunks()
    pos = rows["pos"].to_numpy(zero_copy_only=False).astype(np.int64)
    nlp = rows["neg_log10_p"].to_numpy(zero_copy_only=False).astype(np.float64)
    keep = nlp >= keep_above
    kept = pa.table({"chrom": chrom.filter(_pa(keep)), "pos": pos[keep], "nlp": nlp[keep]})
    # cells of the bulk: (chrom, pos bin, -log10 p bin) -> the row with the largest -log10 p, count, sum
    bulk = ~keep
    b_chrom = chrom.filter(_pa(bulk)).dictionary_encode()
    code = b_chrom.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    b_pos, b_nlp = pos[bulk], nlp[bulk]
    pbin = np.floor(b_pos / float(pos_bin_bp)).astype(np.int64)
    ybin = np.maximum(np.floor(b_nlp * float(bins_per_unit)), 0).astype(np.int64)
    order = np.lexsort((-b_nlp, ybin, pbin, code))
    key = np.stack([code[order], pbin[order], ybin[order]])
    first = np.flatnonzero(np.concatenate([[True], (key[:, 1:] != key[:, :-1]).any(axis=0)])) if order.size else order
    top = order[first]
    cells = pa.table({
        "chrom": b_chrom.dictionary.take(_pa(code[top])),
        "pos": b_pos[top], "nlp": b_nlp[top], "ybin": ybin[top],
        "n": np.diff(np.append(first, order.size)).astype(np.int64),
        "s": np.add.reduceat(b_nlp[order], first) if order.size else np.empty(0),
    })
    return _assemble_plot_points(phenotype, kept, cells, keep_above=keep_above,
                                 bins_per_unit=bins_per_unit, pos_bin_bp=pos_bin_bp)


def _pa(values):
    import pyarrow as pa

    return pa.array(values)


# ----------------------------------------------------------------------------------------------
# plots


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path, dpi: int) -> str:
    """Write ``fig`` to ``path`` atomically (``path + '.tmp.png'`` then ``os.replace``)."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    finally:
        fig.clear()
    return path


def _chrom_layout(points: PlotPoints) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """x coordinate of every Manhattan point and (chrom, centre) per chromosome, in plot order.

    Chromosomes follow one another, each spanning its smallest to largest plotted position,
    separated by gaps of 1% of the total span.
    """
    n_chrom = len(points.chromosomes)
    idx = points.chrom_index
    lo = np.full(n_chrom, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n_chrom, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, idx, points.pos)
    np.maximum.at(hi, idx, points.pos)
    present = hi >= lo
    width = np.where(present, np.maximum(hi - lo, 1), 0).astype(np.float64)
    gap = 0.01 * max(float(width.sum()), 1.0)
    start = np.concatenate([[0.0], np.cumsum(width + np.where(present, gap, 0.0))[:-1]])
    x = start[idx] + (points.pos - lo[idx]).astype(np.float64)
    layout = [
        (c, float(start[i] + width[i] / 2.0))
        for i, c in enumerate(points.chromosomes)
        if present[i]
    ]
    return x, layout


def plot_manhattan(
    points: PlotPoints,
    path,
    *,
    title: str,
    genome_wide: float = 5e-8,
    suggestive: float = 1e-5,
    dpi: int = 120,
) -> str:
    """Write a Manhattan plot PNG (10 x 4 in) of ``points``; returns the path written."""
    fig = _new_figure(10.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    colours = ("#1f4e79", "#6fa8dc")
    y_top = -math.log10(genome_wide)
    if points.pos.size:
        x, layout = _chrom_layout(points)
        parity = points.chrom_index % 2
        for k in (0, 1):
            sel = parity == k
            if sel.any():
                ax.plot(
                    x[sel], points.neg_log10_p[sel], linestyle="none", marker="o",
                    markersize=2.0, markeredgewidth=0, color=colours[k],
                )
        ax.set_xticks([centre for _c, centre in layout])
        many = len(layout) > 26
        ax.set_xticklabels(
            [c for c, _centre in layout], fontsize=7 if many else 8, rotation=90 if many else 0
        )
        ax.set_xlim(float(x.min()) - 0.01 * float(np.ptp(x) or 1.0),
                    float(x.max()) + 0.01 * float(np.ptp(x) or 1.0))
        y_top = max(y_top, float(points.neg_log10_p.max()))
    else:
        ax.set_xticks([])
        ax.text(0.5, 0.5, "no tested variants", ha="center", va="center", transform=ax.transAxes)
    for threshold, colour, label in (
        (genome_wide, "#c0392b", f"genome-wide ({genome_wide:g})"),
        (suggestive, "#7f8c8d", f"suggestive ({suggestive:g})"),
    ):
        ax.axhline(-math.log10(threshold), linestyle="--", linewidth=0.8, color=colour, label=label)
    ax.set_ylim(0.0, y_top * 1.05 + 0.5)
    ax.set_xlabel("chromosome")
    ax.set_ylabel("-log10(p)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.14, top=0.9)
    return _save_png(fig, path, dpi)


def plot_qq(points: PlotPoints, path, *, title: str, lambda_gc: float, dpi: int = 120) -> str:
    """Write a QQ plot PNG (5 x 5 in): expected vs observed -log10 p with the y = x line."""
    fig = _new_figure(5.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    x_top = y_top = 1.0
    if points.qq_expected.size:
        x_top = max(float(points.qq_expected.max()), 1.0)
        y_top = max(float(points.qq_observed.max()), x_top)
        ax.plot([0.0, x_top], [0.0, x_top], color="#c0392b", linewidth=0.8)
        ax.plot(
            points.qq_expected, points.qq_observed, linestyle="none", marker="o", markersize=2.5,
            markeredgewidth=0, color="#1f4e79",
        )
    else:
        ax.text(0.5, 0.5, "no tested variants", ha="center", va="center", transform=ax.transAxes)
    lam = "NA" if lambda_gc is None or not math.isfinite(lambda_gc) else f"{lambda_gc:.4f}"
    # lower right stays empty: observed values do not fall far below expected ones
    ax.text(
        0.96, 0.04, f"$\\lambda_{{GC}}$ = {lam}\nn = {points.n_tests:,}", transform=ax.transAxes,
        ha="right", va="bottom", fontsize=9,
    )
    ax.set_xlim(0.0, x_top * 1.05)
    ax.set_ylim(0.0, y_top * 1.05)
    ax.set_xlabel("expected -log10(p)")
    ax.set_ylabel("observed -log10(p)")
    ax.set_title(title)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.92)
    return _save_png(fig, path, dpi)


def plot_phewas(summaries: dict, path, *, threshold: float = 5e-8, dpi: int = 120) -> str | None:
    """Write a PheWAS overview PNG: each phenotype's smallest p (-log10, its top hit labelled when
    below ``threshold``), phenotypes in their order; None (nothing written) with < 2 phenotypes."""
    names = [n for n, s in summaries.items() if s.n_tests > 0 and math.isfinite(s.min_p_neg_log10)]
    if len(names) < 2:
        return None
    y = np.array([summaries[n].min_p_neg_log10 for n in names])
    fig = _new_figure(min(max(6.0, 4.0 + 0.12 * len(names)), 24.0), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    line = -math.log10(threshold)
    hit = y >= line
    ax.scatter(x[~hit], y[~hit], s=14, color="#1f4e79", linewidths=0)
    ax.scatter(x[hit], y[hit], s=18, color="#c0392b", linewidths=0)
    ax.axhline(line, color="#c0392b", linewidth=0.8, linestyle="--")
    if len(names) <= 60:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(names):,} phenotypes (in order)")
    for i in np.flatnonzero(hit)[:40]:
        top = summaries[names[i]].top_hits[:1]
        if top:
            ax.annotate(str(top[0].get("id", "")), (x[i], y[i]), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
    ax.set_ylabel("top hit -log10(p)")
    ax.set_ylim(0.0, max(float(y.max()), line) * 1.08)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_title(f"top hit per phenotype: {int(hit.sum()):,} of {len(names):,} below p = {threshold:g}", fontsize=10)
    fig.tight_layout()
    return _save_png(fig, path, dpi)


# ----------------------------------------------------------------------------------------------
# files and console


def _json_safe(value: Any) -> Any:
    kind = type(value)
    if kind is float:  # (the common leaves first: a summary of 1,000 phenotypes has 100,000 of them)
        return value if math.isfinite(value) else None
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if is_dataclass(value) and not isinstance(value, type):  # (field by field: asdict would deep-copy first)
        return {f.name: _json_safe(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    value = _py(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _tsv_float(x: float, fmt: str) -> str:
    return "NA" if x is None or not math.isfinite(x) else format(x, fmt)


def write_summary(
    summaries: Mapping[str, PhenotypeSummary], path, *, extra: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """Write ``summary.tsv`` and ``summary.json``; returns their paths.

    ``path`` is either a directory (created if needed; the files go inside it) or a file name
    ending in ``.tsv`` (the JSON goes beside it with the suffix ``.json``). The TSV has one row per
    phenotype: ``phenotype n_tests n_errors lambda_gc min_p top_id`` (``NA`` where undefined;
    ``min_p`` is formatted from -log10 p, so it stays exact below float64's range). The JSON holds
    every summary field, ``min_p`` as text, the top hits and ``extra``; NaN/inf become null.
    """
    path = os.fspath(path)
    if path.endswith(".tsv"):
        tsv_path = path
        json_path = path[: -len(".tsv")] + ".json"
    else:
        tsv_path = os.path.join(path, "summary.tsv")
        json_path = os.path.join(path, "summary.json")
    os.makedirs(os.path.dirname(os.path.abspath(tsv_path)), exist_ok=True)

    lines = ["phenotype\tn_tests\tn_errors\tlambda_gc\tmin_p\ttop_id"]
    phenos: dict[str, Any] = {}
    for name, s in summaries.items():
        top_id = s.top_hits[0]["id"] if s.top_hits and s.top_hits[0].get("id") is not None else "NA"
        min_p = format_p(s.min_p_neg_log10) if math.isfinite(s.min_p_neg_log10) else "NA"
        lam = _tsv_float(s.lambda_gc, ".5f")
        lines.append(f"{name}\t{s.n_tests}\t{s.n_errors}\t{lam}\t{min_p}\t{top_id}")
        record = _json_safe(s)
        record["min_p"] = None if min_p == "NA" else min_p
        phenos[str(name)] = record
    doc = {"phenotypes": phenos, "extra": _json_safe(dict(extra or {}))}
    _atomic_write_text(tsv_path, "\n".join(lines) + "\n")
    _atomic_write_text(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return tsv_path, json_path


def _num(x: Any, fmt: str = ".4g") -> str:
    x = _py(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    return format(x, fmt) if isinstance(x, float) else str(x)


def format_top_hits(summary: PhenotypeSummary) -> str:
    """A small aligned text table of the top hits, headed by the phenotype's counts and lambda."""
    lam = _tsv_float(summary.lambda_gc, ".4f")
    head = (
        f"{summary.phenotype}: {summary.n_tests:,} tests, {summary.n_errors:,} skipped, "
        f"lambda_GC = {lam}"
    )
    if not summary.top_hits:
        return head + "\n  (no tested variants)"
    header = ("#", "ID", "CHROM", "POS", "A1", "BETA", "SE", "P", "OBS_CT")
    left = {"ID", "CHROM", "A1"}
    rows = [
        (
            str(i),
            _num(h.get("id")),
            _num(h.get("chrom")),
            _num(h.get("pos")),
            _num(h.get("a1")),
            _num(h.get("beta")),
            _num(h.get("se")),
            format_p(_py(h.get("neg_log10_p"))),
            _num(h.get("obs_ct")),
        )
        for i, h in enumerate(summary.top_hits, 1)
    ]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def fmt(row):
        cells = [
            cell.ljust(w) if name in left else cell.rjust(w)
            for cell, w, name in zip(row, widths, header)
        ]
        return "  " + "  ".join(cells).rstrip()

    return "\n".join([head, fmt(header), *(fmt(r) for r in rows)])
