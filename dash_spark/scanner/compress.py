"""Statistics jobs: tasks yield ``(first variant index, per-variant statistics)`` blocks, the
driver stacks them in variant order.

Used where the driver must hold a source's additive statistics as one matrix (a party encodes,
masks and signs them as one share; the API's ``compress`` returns them): their size is variants x
statistics, independent of the number of samples. They travel as pickled numpy blocks through a
plain RDD job: no SQL plan or Arrow conversion in the JVM, which on a cold JVM costs seconds for
nothing here.
"""

from __future__ import annotations

import numpy as np

from .jobs import run_ranges
from .tasks import RangeRow


def collect_ranges(spark, W, ranges: list[RangeRow], per_ranges) -> np.ndarray:
    """Run ``per_ranges(W, rows)`` (yielding ``(first index, block)``) over the ranges, one
    partition each, with ``W`` broadcast once; return the blocks stacked in variant order."""
    blocks = run_ranges(spark, W, ranges, per_ranges)
    blocks.sort(key=lambda b: b[0])
    return np.vstack([b for _, b in blocks]) if blocks else np.zeros((0, 0))
