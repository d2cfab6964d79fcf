"""Reading .bed rows into a task's reused buffer gives the same bytes as fresh reads."""

from __future__ import annotations

import numpy as np

from dash_spark.io.plink import read_bed_rows
from dash_spark.bench.simulate import write_bed


def test_reused_buffer_reads_equal_fresh_reads(tmp_path):
    rng = np.random.default_rng(4)
    n, m = 37, 50
    G = rng.integers(-1, 3, (n, m)).astype(np.int8)
    write_bed(str(tmp_path / "d"), n, [G], iids=[f"s{i}" for i in range(n)], chrom="1", pos=list(range(1, m + 1)),
              ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    bed = str(tmp_path / "d.bed")
    for variants in (np.arange(0, 20), np.arange(20, 50), np.array([1, 2, 5, 9]), np.arange(3, 4)):
        fresh = read_bed_rows(bed, n, variants)
        reused = read_bed_rows(bed, n, variants, reuse=True)
        assert np.array_equal(reused, fresh)
    first = read_bed_rows(bed, n, np.arange(0, 10), reuse=True)
    kept = first.copy()
    read_bed_rows(bed, n, np.arange(10, 20), reuse=True)  # the buffer is this thread's: overwritten
    assert not np.array_equal(first, kept) and np.array_equal(kept, read_bed_rows(bed, n, np.arange(0, 10)))
