"""Reading .bed rows into a task's reused buffer gives the same bytes as fresh reads; the .fam's fast
reader gives what the line-by-line reader gives."""

from __future__ import annotations

import numpy as np
import pytest

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


@pytest.mark.parametrize("text,fast", [
    ("F1 I1 0 0 1 -9\nF2 I2 F1 0 2 1\nF3 I3 0 0 M 2\nF4 I4 0 0 f 0\nF5 I5 0 0 0 -9\n", True),
    ("F1\tI1\t0\t0\t1\t-9\nF2\tI2\t0\tX\tF\t1\n", True),
    ("F1 I1 0 0 m -9\nF2 I2 0 0 NA 1", True),  # no line end at the end
    ("F1  I1 0 0 1 -9\n", False),  # two spaces: Python's split reads it
    ("F1\tI1 0 0 1 -9\n", False),  # tabs and spaces
    ("F1 I1 0 0 1 -9\n\nF2 I2 0 0 2 1\n", False),  # an empty line
    ("F1 I1\x1f 0 0 1 -9\n", False),  # \x1f: whitespace to Python's split, not to a CSV reader
    ("F1 I1 0 0 1 -9\r\nF2 I2 0 0 2 1\r\n", False),  # Windows line ends
])
def test_fam_fast_reader_equals_the_line_reader(tmp_path, monkeypatch, text, fast):
    """A plain .fam is read by Arrow's CSV reader; every field (FIDs, IIDs, founders, sex codes)
    equals the line-by-line reader's, and files it does not take are read line by line."""
    from dash_spark.io import plink

    path = tmp_path / "x.fam"
    path.write_text(text)
    assert (plink._parse_fam_arrow(text) is not None) == fast
    got = plink.read_fam(str(path))
    monkeypatch.setattr(plink, "_parse_fam_arrow", lambda _text: None)
    want = plink.read_fam(str(path))
    assert (got.fids, got.iids) == (want.fids, want.iids)
    for a, b in ((got.founder, want.founder), (got.sex, want.sex)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_fam_fast_reader_leaves_errors_to_the_line_reader(tmp_path):
    """A duplicate IID or a line of 5 fields in an otherwise plain .fam: the line reader's message."""
    from dash_spark.errors import InputError
    from dash_spark.io.plink import read_fam

    dup = tmp_path / "dup.fam"
    dup.write_text("F1 I1 0 0 1 -9\nF2 I1 0 0 2 1\n")
    with pytest.raises(InputError, match=r"dup.fam:2: duplicate sample ID 'I1' \(first on line 1\)"):
        read_fam(str(dup))
    short = tmp_path / "short.fam"
    short.write_text("F1 I1 0 0 1 -9\nF2 I2 0 0 2\n")
    with pytest.raises(InputError, match=r"short.fam:2: expected 6 fields"):
        read_fam(str(short))
