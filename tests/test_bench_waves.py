"""The refresh benchmark's wave generator: valid PLINK files whose waves are the union's samples."""

from __future__ import annotations

import numpy as np
import pytest

from dash_spark.bench.waves import simulate_waves
from dash_spark.io.tables import read_sample_table


def test_waves_are_the_union_split_by_samples(tmp_path):
    from bed_reader import open_bed

    n, m = 2000, 300
    paths = simulate_waves(str(tmp_path / "w"), n, m, 3, missing_rate=0.02, seed=5)
    with open_bed(paths["cohort"] + ".bed") as bed:
        G = bed.read(dtype="float64")  # samples x variants, ALT (.bim column 5) counted, NaN missing
        iids = list(bed.iid)
    n_new = 200
    for name, rows in (("wave1", slice(0, n - n_new)), ("wave2", slice(n - n_new, n))):
        with open_bed(paths[name] + ".bed") as bed:
            np.testing.assert_array_equal(bed.read(dtype="float64"), G[rows])
            assert list(bed.iid) == iids[rows]
        ph = read_sample_table(paths[name] + ".pheno", kind="pheno")
        cv = read_sample_table(paths[name] + ".covar", kind="covar")
        assert list(ph.iids) == list(cv.iids) == iids[rows]
        assert cv.values.shape == (len(iids[rows]), 3) and list(ph.names) == ["pheno1"]
    miss = np.isnan(G).mean()
    assert 0.015 < miss < 0.025
    freq = np.nanmean(G, axis=0) / 2
    assert freq.min() > 0.01 and freq.max() < 0.99 and abs(freq.mean() - 0.5) < 0.05
    # Hardy-Weinberg: heterozygote share close to 2f(1-f) over all variants
    het = np.nanmean(G == 1, axis=0)
    assert abs(het.mean() - (2 * freq * (1 - freq)).mean()) < 0.01
    # the phenotype carries the planted signal: some variant explains far more than chance
    y = read_sample_table(paths["cohort"] + ".pheno", kind="pheno").values[:, 0]
    X = np.where(np.isnan(G), np.nanmean(G, axis=0), G)
    r = np.abs([np.corrcoef(X[:, j], y)[0, 1] for j in range(m)])
    assert r.max() > 0.15 and np.median(r) < 0.05
    # a pure function of its arguments
    again = simulate_waves(str(tmp_path / "again"), n, m, 3, missing_rate=0.02, seed=5)
    for name in paths:
        for ext in (".bed", ".bim", ".fam", ".pheno", ".covar"):
            assert open(paths[name] + ext, "rb").read() == open(again[name] + ext, "rb").read()


def test_parties_split_the_union_in_order(tmp_path):
    from bed_reader import open_bed

    parts = (("alice", 0.45), ("bob", 0.35), ("carol", 0.20))
    paths = simulate_waves(str(tmp_path / "p"), 1000, 40, 2, parts=parts, seed=3)
    with open_bed(paths["cohort"] + ".bed") as bed:
        G = bed.read(dtype="float64")
    start = 0
    for name, size in (("alice", 448), ("bob", 352), ("carol", 200)):  # shares of n/4 bytes, rounded
        with open_bed(paths[name] + ".bed") as bed:
            np.testing.assert_array_equal(bed.read(dtype="float64"), G[start : start + size])
        start += size
    assert start == 1000


def test_waves_need_a_sample_count_divisible_by_four(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        simulate_waves(str(tmp_path / "w"), 1002, 10, 2)
    with pytest.raises(ValueError, match="every part non-empty"):
        simulate_waves(str(tmp_path / "w"), 8, 10, 2, parts=(("a", 0.99), ("b", 0.01)))
    with pytest.raises(ValueError, match="at least one covariate"):
        simulate_waves(str(tmp_path / "w"), 400, 10, 0)
