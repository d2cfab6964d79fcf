"""A party's compress step on Spark: per-variant additive statistics instead of finalized results.

Same shape as the scan (one partition per variant range, ``W`` broadcast once, tasks read their own
.bed bytes); each task yields ``(first_variant_index, sums)`` blocks whose columns follow
:func:`dash_spark.multiparty.study.per_variant_layout`. The party's driver gathers them because it
must encode, mask and sign them as one share; their size is variants x statistics, independent of
the number of samples. They travel as pickled numpy blocks through a plain RDD job: no SQL plan or
Arrow conversion in the JVM, which on a cold JVM costs seconds for nothing here.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..multiparty.study import party_block_sums
from .scan import read_block, run_ranges


def compress_ranges(plan, W: np.ndarray, ranges):
    """Yield ``(first variant index, sums [shape: (variants, width)])`` per sub-block (executor side)."""
    for _part, start, stop, _bs, _be, rows in ranges:
        offsets = np.arange(stop - start) if not rows else np.asarray(rows, dtype=np.int64)
        for a in range(0, len(offsets), plan.sub_block):
            sub = offsets[a : a + plan.sub_block]
            block, _ = read_block(plan, start + sub)
            yield int(start + sub[0]), party_block_sums(plan, W, block)


def collect_ranges(spark, W, ranges: list[tuple], per_ranges) -> np.ndarray:
    """Run ``per_ranges(W, rows)`` (yielding ``(first index, block)``) over the ranges, one
    partition each, with ``W`` broadcast once; return the blocks stacked in variant order."""
    blocks = run_ranges(spark, W, ranges, per_ranges)
    blocks.sort(key=lambda b: b[0])
    return np.vstack([b for _, b in blocks]) if blocks else np.zeros((0, 0))


def run_compress_job(spark, plan, W: np.ndarray, ranges: list[tuple]) -> np.ndarray:
    """Per-variant statistics [shape: (m, width)] in variant order, computed by Spark tasks."""
    return collect_ranges(spark, W, ranges, partial(compress_ranges, plan))
