"""The Spark scan end to end against statsmodels (per variant) and its own invariances."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.scanner.pipeline import ScanConfig, run_scan

from .oracle_data import PHENOS, make_files, statsmodels_oracle


def _assert_same(other, base):
    for col in base:
        if base[col].dtype.kind == "f":
            np.testing.assert_allclose(other[col], base[col], rtol=1e-12, atol=0)
        else:
            assert np.array_equal(other[col], base[col]), col


def _table(path):
    t = pq.read_table(path).sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, spark):
    tmp = tmp_path_factory.mktemp("oracle")
    rng = np.random.default_rng(20261124)
    files = make_files(tmp, rng)
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar,
                              out=str(tmp / "out"), plots=True, missing_genotypes="mean"), spark=spark)
    return files, res, _table(res.results_path)


@pytest.fixture(scope="module")
def scanned_drop(scanned, spark, tmp_path_factory):
    files = scanned[0]
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, plots=False,
                              out=str(tmp_path_factory.mktemp("drop") / "out")), spark=spark)
    return files, res, _table(res.results_path)


def _downdated(files, spark, folder, mode):
    """The same scan with each pattern's missing samples downdated from one shared basis (forced:
    these files have 2 patterns, below the automatic rule's 3)."""
    os.environ["DASH_SPARK_PHENO_DOWNDATE"] = "on"
    try:
        res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, plots=False,
                                  missing_genotypes=mode, out=str(folder / "out")), spark=spark)
    finally:
        del os.environ["DASH_SPARK_PHENO_DOWNDATE"]
    return files, res, _table(res.results_path)


@pytest.fixture(scope="module")
def scanned_downdated(scanned, spark, tmp_path_factory):
    return _downdated(scanned[0], spark, tmp_path_factory.mktemp("dd-mean"), "mean")


@pytest.fixture(scope="module")
def scanned_drop_downdated(scanned, spark, tmp_path_factory):
    return _downdated(scanned[0], spark, tmp_path_factory.mktemp("dd-drop"), "drop")


@pytest.mark.parametrize("basis", ["per-pattern", "downdated"])
@pytest.mark.parametrize("mode", ["mean", "drop"])
@pytest.mark.parametrize("phenotype", PHENOS)
def test_matches_statsmodels_per_variant(request, mode, phenotype, basis):
    name = ("scanned" if mode == "mean" else "scanned_drop") + ("_downdated" if basis == "downdated" else "")
    files, _, tbl = request.getfixturevalue(name)
    sel = tbl["phenotype"] == phenotype
    ours = {k: v[sel] for k, v in tbl.items()}
    assert np.array_equal(ours["variant_index"], np.arange(files.m))
    ref = statsmodels_oracle(files, phenotype, mode)
    sign = np.where(ours["a1"] == ours["alt"], 1.0, -1.0)  # oracle is in ALT orientation
    tested = ~ref["const"] & ~np.isnan(ref["beta"])
    assert tested.sum() > 280
    beta = sign * ours["beta"]
    # beta near zero is known to float64's precision relative to its standard error
    assert np.all(np.abs(beta[tested] - ref["beta"][tested])
                  <= 1e-9 * np.maximum(np.abs(ref["beta"][tested]), ref["se"][tested]))
    np.testing.assert_allclose(ours["se"][tested], ref["se"][tested], rtol=1e-9)
    assert np.all(np.abs(sign[tested] * ours["t_stat"][tested] - ref["t"][tested])
                  <= 1e-9 * np.maximum(np.abs(ref["t"][tested]), 1.0))
    np.testing.assert_allclose(ours["p"][tested], ref["p"][tested], rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(ours["neg_log10_p"][tested], -np.log10(ref["p"][tested]), rtol=1e-9, atol=1e-11)
    assert np.all(ours["obs_ct"] == ref["n"])
    assert np.all(ours["errcode"][tested] == ".")
    if mode == "drop":  # the test really covers variants with different OBS_CT
        assert len(set(ours["obs_ct"].tolist())) > 10


@pytest.mark.parametrize("block_variants,task_memory_mb", [(29, 16)])
def test_drop_mode_invariant_to_partitioning(scanned_drop, spark, tmp_path, block_variants, task_memory_mb):
    files, _, base = scanned_drop
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"),
                              block_variants=block_variants, task_memory_mb=task_memory_mb, plots=False),
                   spark=spark)
    _assert_same(_table(res.results_path), base)


def test_phenotype_specific_samples(scanned):
    files, _, tbl = scanned
    n_by = {p: set(tbl["obs_ct"][tbl["phenotype"] == p]) for p in PHENOS}
    assert all(len(v) == 1 for v in n_by.values())
    assert n_by["pheno1"] == n_by["pheno3"] != n_by["pheno2"]
    assert max(n_by["pheno1"]) < files.n - 5  # covariate-missing and phenotype-missing samples dropped


def test_degenerate_variants_get_error_codes_not_noise(scanned):
    files, _, tbl = scanned
    for p in PHENOS:
        sel = tbl["phenotype"] == p
        err = tbl["errcode"][sel]
        for j in (files.special["mono0"], files.special["mono2"]):
            assert err[j] == "CONST_OMITTED_ALLELE"
        assert err[files.special["sexlinked"]] == "CORR_TOO_HIGH"
        bad = err != "."
        for col in ("beta", "se", "t_stat", "p", "neg_log10_p"):
            assert np.all(np.isnan(tbl[col][sel][bad].astype(float)))
        assert bad.sum() == 3


def test_a1_is_the_non_major_allele_over_all_founders(scanned):
    """plink2's rule: A1 is REF where ALT's frequency among the .fam's founders exceeds 1/2."""
    from bed_reader import open_bed

    files, _, tbl = scanned
    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        alt_freq = np.nanmean(bed.read(dtype="float64"), axis=0) / 2
    for p in PHENOS:
        sel = tbl["phenotype"] == p
        flipped = tbl["a1"][sel] != tbl["alt"][sel]
        assert np.array_equal(flipped, alt_freq > 0.5)
        assert np.all(tbl["a1"][sel][flipped] == tbl["ref"][sel][flipped])
        assert 0.2 < flipped.mean() < 0.8


def test_outputs_written(scanned):
    import os

    _, res, _ = scanned
    names = set(os.listdir(res.out))
    for p in PHENOS:
        assert {f"{p}.glm.linear", f"{p}.manhattan.png", f"{p}.qq.png"} <= names
    assert {"results.parquet", "summary.tsv", "summary.json"} <= names
    assert not [n for n in names if n.endswith(".crc") or ".tmp" in n]
    with open(res.glm_paths["pheno1"]) as fh:
        lines = fh.read().splitlines()
    assert lines[0] == "#CHROM\tPOS\tID\tREF\tALT\tA1\tTEST\tOBS_CT\tBETA\tSE\tT_STAT\tP\tERRCODE"
    assert len(lines) == 301
    assert [ln.split("\t")[2] for ln in lines[1:]] == [f"rs{j}" for j in range(300)]
    assert lines[11].split("\t")[8:] == ["NA", "NA", "NA", "NA", "CONST_OMITTED_ALLELE"]


def test_spark_writer_branch_writes_the_same_files(scanned_drop, spark, tmp_path, monkeypatch):
    """Outputs on hdfs:// or s3a:// go through Spark's writer and reports; forced here on a local path,
    they are the tasks' files byte for byte (text, summaries) and the same rows."""
    import os

    from dash_spark.scanner import pipeline

    files, res, base = scanned_drop
    monkeypatch.setattr(pipeline, "tasks_can_write", lambda uri: False)
    other = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, plots=False,
                                out=str(tmp_path / "o")), spark=spark)
    _assert_same(_table(other.results_path), base)
    for name in ("summary.tsv", "summary.json", *(os.path.basename(p) for p in res.glm_paths.values())):
        assert open(os.path.join(other.out, name)).read() == open(os.path.join(res.out, name)).read(), name
    assert sorted(os.listdir(other.out)) == sorted(os.listdir(res.out))
    parts = [n for n in os.listdir(other.results_path) if n.startswith("part-")]
    assert parts and all("-c000" in n for n in parts)  # Spark's own part names: that branch ran


@pytest.mark.parametrize("block_variants,task_memory_mb", [(37, 16), (1000, 512)])
def test_invariant_to_partitioning_and_subblocks(scanned, spark, tmp_path, block_variants, task_memory_mb):
    files, _, base = scanned
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"),
                              block_variants=block_variants, task_memory_mb=task_memory_mb, plots=False,
                              missing_genotypes="mean"),
                   spark=spark)
    _assert_same(_table(res.results_path), base)


def test_intercept_only_drop_mode_matches_statsmodels(scanned, spark, tmp_path):
    """No --covar: nothing to be collinear with; variants with missing calls still fit (regression test)."""
    import statsmodels.api as sm
    from bed_reader import open_bed

    files = scanned[0]
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, pheno_name=("pheno2",), out=str(tmp_path / "o"),
                              plots=False), spark=spark)
    tbl = _table(res.results_path)
    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        X = bed.read(dtype="float64")
        iids = list(bed.iid)
    values = {}
    for line in open(files.pheno).read().splitlines()[1:]:
        parts = line.split("\t")
        values[parts[1]] = np.nan if parts[3] in ("NA", "nan", "-9") else float(parts[3])
    y = np.array([values.get(i, np.nan) for i in iids])
    checked = 0
    for j in np.flatnonzero(tbl["errcode"] == ".")[:40]:
        rows = ~np.isnan(y) & ~np.isnan(X[:, j])
        fit = sm.OLS(y[rows], sm.add_constant(X[rows, j])).fit()
        sign = -1.0 if tbl["a1"][j] != tbl["alt"][j] else 1.0
        assert tbl["obs_ct"][j] == rows.sum()
        assert abs(sign * tbl["beta"][j] - fit.params[1]) <= 1e-9 * max(abs(fit.params[1]), fit.bse[1])
        assert tbl["se"][j] == pytest.approx(fit.bse[1], rel=1e-9)
        checked += rows.sum() < (~np.isnan(y)).sum()
    assert checked > 10  # variants with missing calls were among those checked
