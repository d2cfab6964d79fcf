"""Per-phenotype summary sums that the tasks add up, so that the driver never reads every result row.

A scan's summaries need, per phenotype, its error codes' counts, the exact median of its valid
p-values (lambda_GC), its strongest test and its top hits. The top hits and the strongest test come
from the tasks' top-hit candidates (:func:`dash_spark.outputs.writers.top_candidates`). The counts
and the median come from :class:`SummarySums`: every task adds, for each result batch it writes,
the error codes' counts and a histogram of the valid p-values over equal bins of [0, 1]
(:func:`first_bins`: from :data:`BINS` for thousands of phenotypes to :data:`MAX_BINS` for a
few, so that the median's bin usually holds few enough values to collect at once); Spark adds
the tasks' sums in a tree. The median's exact value then takes one more pass
over the result files in the executors (:func:`median_pass`): each returns, per phenotype, the
valid p-values inside the bin that holds the median's two middle ranks, or, when that bin holds
more than :data:`COLLECT_LIMIT` of them, a finer histogram of that bin (and the pass repeats). The
driver handles phenotypes x bins numbers and at most :data:`COLLECT_LIMIT` values per phenotype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .report import TESTED  # (the error code of a test that ran)

#: the fewest bins of a pass's histogram (the first over [0, 1], then within the median's bin)
BINS = 64
#: the most bins of a phenotype's first histogram (:func:`first_bins`)
MAX_BINS = 4096
#: the most phenotypes x bins a task's first histograms hold (2 MB of counts)
HIST_CELLS = 1 << 18
#: a median's bin with at most this many valid p-values has them collected; more: a finer pass
COLLECT_LIMIT = 4096
#: an error code that is null in the results counts as this
NULL_CODE = "NA"


class ValidTests(NamedTuple):
    """What the summaries' sums, the median passes and the top-hit candidates read of a results
    table: each row's phenotype as an index into ``names`` (the table's dictionary of them), p and
    -log10 p as float64, ``tested`` (error code ".") and ``valid`` (tested, with both p and -log10 p)."""

    codes: np.ndarray
    names: list
    p: np.ndarray
    nlp: np.ndarray
    tested: np.ndarray
    valid: np.ndarray


def valid_tests(table, phenotype=None) -> ValidTests:
    """:class:`ValidTests` of a results table (``phenotype``: its phenotype column's dictionary
    encoding, when the caller has it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    phen = phenotype if phenotype is not None else pc.dictionary_encode(table.column("phenotype")).combine_chunks()
    codes = phen.indices.to_numpy(zero_copy_only=False)
    names = phen.dictionary.cast(pa.string()).to_pylist()
    p = np.asarray(table.column("p").to_numpy(zero_copy_only=False), dtype=np.float64)
    nlp = np.asarray(table.column("neg_log10_p").to_numpy(zero_copy_only=False), dtype=np.float64)
    tested = pc.fill_null(pc.equal(table.column("errcode"), TESTED), False).to_numpy(zero_copy_only=False)
    return ValidTests(codes, names, p, nlp, tested, tested & ~np.isnan(p) & ~np.isnan(nlp))


def _bins(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin: ``edges[b] <= p < edges[b + 1]`` (the last edge is +inf)."""
    return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)


def first_bins(n_phenotypes: int) -> int:
    """Histogram bins per phenotype for a scan of ``n_phenotypes``: a power of two (so that
    ``p * bins`` is exact), :data:`MAX_BINS` up to 64 phenotypes, fewer beyond so that the
    histograms stay :data:`HIST_CELLS` counts, at least :data:`BINS`."""
    bins = MAX_BINS
    while bins > BINS and bins * max(1, n_phenotypes) > HIST_CELLS:
        bins //= 2
    return bins


def first_edges(bins: int = BINS) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    edges[-1] = np.inf  # (p = 1 falls in the last bin)
    return edges


@dataclass
class SummarySums:
    """Per phenotype: error-code counts ``{code: n}`` and the valid p-values' histogram over
    :func:`first_edges` [shape: (bins,)]. Additive (:meth:`merged`, with the same ``bins``); a
    task fills one with :meth:`add` for each result batch it writes."""

    counts: dict = field(default_factory=dict)
    hist: dict = field(default_factory=dict)
    bins: int = BINS

    def add(self, table, tests: ValidTests | None = None) -> None:
        """The counts and histograms of a results ``table`` added (``tests``: its
        :func:`valid_tests`, when the caller has them)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return
        codes, names, p, _, tested, valid = tests if tests is not None else valid_tests(table)
        codes = codes.astype(np.int64)
        # "." by a count per phenotype; the other codes (a few rows) through their own encoding
        n_tested = np.bincount(codes[tested], minlength=len(names))
        for t in np.flatnonzero(n_tested):
            c = self.counts.setdefault(names[t], {})
            c[TESTED] = c.get(TESTED, 0) + int(n_tested[t])
        other = np.flatnonzero(~tested)
        if len(other):
            err = pc.dictionary_encode(pc.fill_null(table.column("errcode").take(pa.array(other)), NULL_CODE))
            err = err.combine_chunks() if isinstance(err, pa.ChunkedArray) else err
            labels = err.dictionary.cast(pa.string()).to_pylist()
            pairs = np.bincount(codes[other] * len(labels) + err.indices.to_numpy(zero_copy_only=False),
                                minlength=len(names) * len(labels))
            for flat in np.flatnonzero(pairs):
                c = self.counts.setdefault(names[flat // len(labels)], {})
                label = labels[flat % len(labels)]
                c[label] = c.get(label, 0) + int(pairs[flat])
        # the first bins are k/bins .. (k+1)/bins: p * bins (a power of two) is exact, so its floor
        # is the bin of first_edges(bins)
        nb = self.bins
        first = np.minimum((p[valid] * nb).astype(np.int64), nb - 1)
        h = np.bincount(codes[valid] * nb + first, minlength=len(names) * nb).reshape(len(names), nb)
        for t in np.flatnonzero(h.sum(axis=1)):
            self.hist[names[t]] = self.hist.get(names[t], 0) + h[t]

    def merged(self, other: SummarySums) -> SummarySums:
        if other.bins != self.bins:
            raise ValueError(f"SummarySums: cannot add histograms of {self.bins} and {other.bins} bins")
        out = SummarySums({k: dict(v) for k, v in self.counts.items()}, dict(self.hist), self.bins)
        for name, c in other.counts.items():
            mine = out.counts.setdefault(name, {})
            for label, n in c.items():
                mine[label] = mine.get(label, 0) + n
        for name, h in other.hist.items():
            out.hist[name] = out.hist.get(name, 0) + h
        return out


@dataclass(frozen=True)
class MedianSearch:
    """One phenotype's search for the median of its ``n`` valid p-values: the two middle ranks
    (0-based, in ascending order), the interval ``[lo, hi)`` that holds both (``hi`` may be +inf),
    how many values lie below it and how many inside; ``tight``: the interval was last cut to the
    values' own range (the bins had not split them); ``force``: the bins did not split them
    within that range either, so the next pass collects them whatever their number; ``bins``:
    of each pass's histogram."""

    n: int
    ranks: tuple[int, int]
    lo: float
    hi: float
    below: int
    inside: int
    tight: bool = False
    force: bool = False
    bins: int = BINS

    @classmethod
    def start(cls, hist: np.ndarray) -> MedianSearch:
        """The search after the tasks' histogram over :func:`first_edges` (its length: the bins)."""
        n = int(hist.sum())
        search = cls(n, ((n - 1) // 2, n // 2), 0.0, math.inf, 0, n, bins=len(hist))
        return search.narrowed(first_edges(len(hist)), hist)

    def narrowed(self, edges: np.ndarray, hist: np.ndarray) -> MedianSearch:
        """The search inside the bins (of ``edges``, which split ``[lo, hi)``) that hold both ranks."""
        cum = self.below + np.cumsum(hist)
        first = int(np.searchsorted(cum, self.ranks[0], side="right"))
        last = int(np.searchsorted(cum, self.ranks[1], side="right"))
        below = self.below + int(np.sum(hist[:first]))
        return MedianSearch(self.n, self.ranks, float(edges[first]), float(edges[last + 1]), below,
                            int(np.sum(hist[first : last + 1])), bins=self.bins)

    def edges(self) -> np.ndarray:
        """``bins`` bins splitting ``[lo, hi)`` (a last bin open to +inf stays so)."""
        top = 1.0 if math.isinf(self.hi) else self.hi
        edges = np.linspace(self.lo, top, self.bins + 1)
        edges[0], edges[-1] = self.lo, self.hi
        return edges

    def median(self, values: np.ndarray) -> float:
        """The median from the valid p-values inside the interval: ``numpy.median`` of all of them."""
        v = np.sort(values)
        return float(0.5 * v[self.ranks[0] - self.below] + 0.5 * v[self.ranks[1] - self.below])


def median_pass(path: str, searches: dict, collect: frozenset) -> dict:
    """Executor side, over one results Parquet file: for each phenotype of ``searches`` (name ->
    :class:`MedianSearch`), its valid p-values inside the search's interval (names in ``collect``),
    else ``(histogram over MedianSearch.edges, smallest, largest)`` of them."""
    import pyarrow.parquet as pq

    # (one file: ParquetFile reads it without loading pyarrow's dataset module, ~0.4 s a worker)
    table = pq.ParquetFile(path, read_dictionary=["phenotype", "errcode"]).read(
        columns=["phenotype", "p", "neg_log10_p", "errcode"])
    from .writers import phenotype_groups

    out: dict = {}
    if table.num_rows == 0:
        return out
    tests = valid_tests(table)
    p, valid = tests.p, tests.valid
    order, starts = phenotype_groups(table.column("phenotype"), tests.names)
    for t, name in enumerate(tests.names):
        search = searches.get(name)
        if search is None:
            continue
        rows = order[starts[t] : starts[t + 1]]
        v = p[rows[valid[rows]]]
        v = v[(v >= search.lo) & (v < search.hi)]
        if name in collect:
            out[name] = v
        elif len(v):
            out[name] = (np.bincount(_bins(v, search.edges()), minlength=search.bins), float(v.min()), float(v.max()))
    return out


def merge_pass(a: dict, b: dict) -> dict:
    """Two files' :func:`median_pass` results added (values put together; histograms summed,
    ranges widened)."""
    out = dict(a)
    for name, x in b.items():
        y = out.get(name)
        if y is None:
            out[name] = x
        elif isinstance(x, tuple):
            out[name] = (y[0] + x[0], min(y[1], x[1]), max(y[2], x[2]))
        else:
            out[name] = np.concatenate([y, x])
    return out


def exact_medians(sums: SummarySums, run_pass) -> dict[str, float]:
    """Each phenotype's exact median valid p (that of ``numpy.median``), by passes
    ``run_pass(searches, collect)``: the merged :func:`median_pass` of every results file.
    Phenotypes without a valid test are left out."""
    searches = {name: MedianSearch.start(np.asarray(h)) for name, h in sums.hist.items() if np.sum(h) > 0}
    done: dict[str, float] = {}
    while searches:
        collect = frozenset(n for n, s in searches.items() if s.inside <= COLLECT_LIMIT or s.force)
        found = run_pass(searches, collect)
        nxt = {}
        for name, s in searches.items():
            if name in collect:
                done[name] = s.median(found.get(name, np.zeros(0)))
                continue
            hist, vmin, vmax = found[name]
            if vmin == vmax:  # every value inside is the same: both middle values are it
                done[name] = vmin
                continue
            narrowed = s.narrowed(s.edges(), hist)
            if narrowed.inside < s.inside:
                nxt[name] = narrowed
            else:  # the bins did not split the values: cut the interval to their own range (once)
                nxt[name] = MedianSearch(s.n, s.ranks, vmin, float(np.nextafter(vmax, np.inf)), s.below, s.inside,
                                         tight=True, force=s.tight, bins=s.bins)
        searches = nxt
    return done
