"""A party's compress step on Spark: per-variant additive statistics instead of finalized results.

Same shape as the scan (one partition per variant range, ``W`` broadcast once, tasks read their own
.bed bytes); each task yields ``(variant_index, sums)`` rows whose ``sums`` follow
:func:`dash_spark.multiparty.study.per_variant_layout`. The party's driver gathers them because it
must encode, mask and sign them as one share; their size is variants x statistics, independent of
the number of samples.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa

from ..multiparty.study import party_block_sums
from .scan import map_ranges, read_block

SUMS_SCHEMA_DDL = "variant_index long, sums array<double>"


def compress_ranges(plan, W: np.ndarray, ranges):
    """Yield Arrow batches of per-variant statistics for range rows (executor side, no Spark)."""
    for _part, start, stop, _bs, _be, rows in ranges:
        offsets = np.arange(stop - start) if not rows else np.asarray(rows, dtype=np.int64)
        for a in range(0, len(offsets), plan.sub_block):
            sub = offsets[a : a + plan.sub_block]
            block, _ = read_block(plan, start + sub)
            sums = party_block_sums(plan, W, block)
            flat = pa.array(sums.ravel(), type=pa.float64())
            lists = pa.FixedSizeListArray.from_arrays(flat, sums.shape[1]).cast(pa.list_(pa.float64()))
            yield pa.RecordBatch.from_arrays([pa.array(start + sub, type=pa.int64()), lists],
                                             names=["variant_index", "sums"])


def run_compress_job(spark, plan, W: np.ndarray, ranges: list[tuple]) -> np.ndarray:
    """Per-variant statistics [shape: (m, width)] in variant order, computed by Spark tasks."""
    df, W_bc = map_ranges(spark, W, ranges, partial(compress_ranges, plan), SUMS_SCHEMA_DDL)
    table = df.toArrow().sort_by("variant_index")
    W_bc.destroy()
    sums = table.column("sums").combine_chunks()
    width = len(sums[0]) if len(sums) else 0
    return sums.flatten().to_numpy(zero_copy_only=False).reshape(len(table), width)
