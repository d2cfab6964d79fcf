"""Stored statistics: compress --store, refresh (add / remove / withdraw) equal a full scan."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.cli import main
from dash_spark.errors import DashError
from dash_spark.scanner.pipeline import ScanConfig, run_scan
from dash_spark.studies.store import open_store, run_compress, run_refresh

from .oracle_data import make_split_files

WAVES = ("w1", "w2", "w3")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    files, parts, prefixes = make_split_files(tmp, 31, WAVES, [0.5, 0.3, 0.2], n=420, m=300)
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    return files, tmp, prefixes, {w: [iids[i] for i in idx] for w, idx in parts.items()}


def _src(files, prefix):
    return {"bfile": prefix, "pheno": files.pheno, "covar": files.covar}


def _remove_file(tmp, name, iids):
    path = tmp / name
    path.write_text("".join(f"{i} {i}\n" for i in iids))  # FID IID (make_files uses FID = IID)
    return str(path)


def assert_same_results(expected_path, got_path):
    key = [("phenotype", "ascending"), ("variant_index", "ascending")]
    a = pq.read_table(expected_path).sort_by(key).to_pydict()
    b = pq.read_table(got_path).sort_by(key).to_pydict()
    for col in ("variant_index", "id", "a1", "obs_ct", "errcode", "phenotype"):
        assert a[col] == b[col], col
    se = np.array(a["se"], dtype=float)
    ok = ~np.isnan(se)
    assert ok.sum() > 0.9 * len(se)
    assert np.array_equal(np.isnan(np.array(b["se"], dtype=float)), ~ok)
    beta_a, beta_b = np.array(a["beta"], dtype=float)[ok], np.array(b["beta"], dtype=float)[ok]
    assert np.all(np.abs(beta_a - beta_b) <= 1e-9 * np.maximum(np.abs(beta_a), se[ok]))
    np.testing.assert_allclose(np.array(b["se"], dtype=float)[ok], se[ok], rtol=1e-9)
    np.testing.assert_allclose(np.array(b["a1_freq"], dtype=float), np.array(a["a1_freq"], dtype=float),
                               rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(np.array(b["neg_log10_p"], dtype=float)[ok],
                               np.array(a["neg_log10_p"], dtype=float)[ok], rtol=1e-9, atol=1e-11)


def _full_scan(spark, files, out, mode, remove=None):
    return run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(out), plots=False,
                               missing_genotypes=mode, remove=remove, overwrite=True), spark=spark)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drop", "mean"])
def test_refresh_add_remove_withdraw_equal_full_scans(cohort, spark, mode):
    files, tmp, prefixes, members = cohort
    store = str(tmp / f"store_{mode}")
    run_compress(store, "w1", _src(files, prefixes["w1"]), missing_genotypes=mode, spark=spark)
    run_compress(store, "w2", _src(files, prefixes["w2"]), spark=spark)  # an existing store: added, not finalized
    assert [b.name for b in open_store(store).batches] == ["w1", "w2"]
    res = run_refresh(store, str(tmp / f"all_{mode}"), add=("w3", _src(files, prefixes["w3"])), plots=False,
                      spark=spark)
    assert res.batches == list(WAVES)
    full = _full_scan(spark, files, tmp / f"full_{mode}", mode)
    assert_same_results(full.results_path, f"{res.out}/results.parquet")
    assert os.path.exists(f"{res.out}/pheno1.glm.linear")

    # a batch removed: the scan of the other two
    res = run_refresh(store, str(tmp / f"no_w2_{mode}"), remove="w2", plots=False, spark=spark)
    assert res.batches == ["w1", "w3"]
    rm = _remove_file(tmp, f"w2_{mode}.txt", members["w2"])
    assert_same_results(_full_scan(spark, files, tmp / f"full_no_w2_{mode}", mode, remove=rm).results_path,
                        f"{res.out}/results.parquet")
    assert len(os.listdir(os.path.join(store, "batches"))) == 2  # w2's statistics are gone

    # samples withdrawn from two batches (some without a phenotype or covariates)
    gone = members["w1"][:7] + members["w3"][-4:]
    wfile = tmp / f"withdraw_{mode}.txt"
    wfile.write_text("\n".join(gone) + "\n")
    # (11 samples fewer than the last release: past the release guard, which test_release_guard.py tests)
    res = run_refresh(store, str(tmp / f"withdrawn_{mode}"), withdraw=str(wfile), plots=False, spark=spark,
                      allow_small_release=True)
    rm = _remove_file(tmp, f"w2_and_gone_{mode}.txt", members["w2"] + gone)
    assert_same_results(_full_scan(spark, files, tmp / f"full_gone_{mode}", mode, remove=rm).results_path,
                        f"{res.out}/results.parquet")
    st = open_store(store)
    assert sorted(st.batch("w1").withdrawn) == sorted(members["w1"][:7])
    # withdrawing the same samples again is refused: they are no longer in the store
    with pytest.raises(DashError, match="not in the store.*withdrawn before"):
        run_refresh(store, str(tmp / f"again_{mode}"), withdraw=str(wfile), plots=False, spark=spark)
    # and a withdrawn sample may not come back in a new batch
    with pytest.raises(DashError, match="already in the store"):
        run_refresh(store, str(tmp / f"back_{mode}"), add=("w1b", _src(files, prefixes["w1"])), plots=False,
                    spark=spark)


@pytest.mark.slow
def test_withdrawing_a_sample_without_phenotype_or_covariates(cohort, spark):
    """Such a sample still counts in the allele frequencies (A1, A1_FREQ): they must change too."""
    files, tmp, prefixes, members = cohort
    with_cov = {line.split()[1] for line in open(files.covar).read().splitlines()[1:]}
    lone = [iid for iid in members["w1"] if iid not in with_cov][:1]
    assert lone, "the cohort has samples without covariates in w1"
    store = str(tmp / "store_lone")
    run_compress(store, "w1", _src(files, prefixes["w1"]), spark=spark)
    wfile = tmp / "lone.txt"
    wfile.write_text(lone[0] + "\n")
    res = run_refresh(store, str(tmp / "lone_out"), withdraw=str(wfile), plots=False, spark=spark)
    rm = _remove_file(tmp, "lone_rm.txt", members["w2"] + members["w3"] + lone)
    assert_same_results(_full_scan(spark, files, tmp / "lone_full", "drop", remove=rm).results_path,
                        f"{res.out}/results.parquet")


def _snapshot(store):
    out = {}
    for dirpath, _, names in os.walk(store):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, store)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def small_store(cohort, spark):
    files, tmp, prefixes, _ = cohort
    store = str(tmp / "refusals")
    run_compress(store, "w1", _src(files, prefixes["w1"]), spark=spark)
    return store


def test_refusals_leave_the_store_as_it_was(cohort, small_store, spark, capsys):
    files, tmp, prefixes, members = cohort
    store = small_store
    before = _snapshot(store)
    out = str(tmp / "refused_out")

    def refused(*args, match):
        capsys.readouterr()
        assert main(["-q", "refresh", "--store", store, "--out", out, "--no-plots", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dash-spark: error:") and len(err.splitlines()) == 1, err
        assert match in err, err
        assert not os.path.exists(out)
        assert _snapshot(store) == before
        return err

    # the same batch twice, by name and by samples
    refused("--add-batch", "w1", "--bfile", prefixes["w1"], "--pheno", files.pheno, "--covar", files.covar,
            match="already in the store")
    refused("--add-batch", "again", "--bfile", prefixes["w1"], "--pheno", files.pheno, "--covar", files.covar,
            match="already in the store")
    # different covariates, phenotypes, variants
    cov = tmp / "fewer.covar"
    rows = [ln.split(" ") for ln in open(files.covar).read().splitlines()]
    cov.write_text("\n".join(" ".join(r[:-1]) for r in rows) + "\n")
    refused("--add-batch", "w2", "--bfile", prefixes["w2"], "--pheno", files.pheno, "--covar", str(cov),
            match="covariates differ")
    ph = tmp / "more.pheno"
    prow = [ln.split("\t") for ln in open(files.pheno).read().splitlines()]
    ph.write_text("\n".join("\t".join(r + ([r[-1] + "x"] if i == 0 else [r[-1]])) for i, r in enumerate(prow)) + "\n")
    refused("--add-batch", "w2", "--bfile", prefixes["w2"], "--pheno", str(ph), "--covar", files.covar,
            match="phenotypes differ")
    other = tmp / "w2_other"
    for ext in (".bed", ".fam"):
        shutil.copy(prefixes["w2"] + ext, str(other) + ext)
    bim = open(prefixes["w2"] + ".bim").read().splitlines()
    bim[5] = bim[5].replace(bim[5].split("\t")[1], "renamed", 1)
    (tmp / "w2_other.bim").write_text("\n".join(bim) + "\n")
    refused("--add-batch", "w2", "--bfile", str(other), "--pheno", files.pheno, "--covar", files.covar,
            match="variants")
    # withdrawal of unknown samples; removal of an unknown batch
    wf = tmp / "unknown.txt"
    wf.write_text(f"{members['w1'][0]}\nnobody\n")
    refused("--withdraw", str(wf), match="nobody")
    refused("--remove-batch", "w9", match="no batch named 'w9'")
    # a damaged block: refused when it is read, nothing changes (the new batch is not kept)
    bdir = open_store(store).batches[0].dir
    block = os.path.join(bdir, "blocks", "block-00000.parquet")
    good = open(block, "rb").read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    open(block, "wb").write(bytes(bad))
    before = _snapshot(store)
    refused("--add-batch", "w2", "--bfile", prefixes["w2"], "--pheno", files.pheno, "--covar", files.covar,
            match="checksum mismatch")
    open(block, "wb").write(good)
    # a damaged index
    index = os.path.join(store, "store.json")
    doc = json.load(open(index))
    doc["settings"]["covariates"][1] = "AGE"
    text = open(index).read()
    open(index, "w").write(json.dumps(doc))
    before = _snapshot(store)
    refused(match="store.json: checksum mismatch")
    # a store written by another format version (a consistent index, as that version wrote it)
    from dash_spark.studies.store import _canonical, _sha256

    doc = {k: v for k, v in json.loads(text).items() if k != "checksum"}
    doc["format"] = 1
    doc["checksum"] = _sha256(_canonical(doc))
    open(index, "w").write(json.dumps(doc))
    before = _snapshot(store)
    refused(match="store format 1; this dash-spark reads format 2. Recompress")
    open(index, "w").write(text)
    # a store in use by another run
    lock = os.path.join(store, ".lock")
    open(lock, "w").write("pid 1 on elsewhere since 2026-11-24T00:00:00+00:00\n")
    before = _snapshot(store)
    refused(match="the store is in use (pid 1 on elsewhere")
    os.remove(lock)
    # model settings are fixed when the store is created
    capsys.readouterr()
    assert main(["-q", "compress", "--store", store, "--batch", "w2", "--bfile", prefixes["w2"], "--pheno",
                 files.pheno, "--covar", files.covar, "--missing-genotypes", "mean"]) == 2
    assert "missing_genotypes" in capsys.readouterr().err


@pytest.mark.slow
def test_spark_submit_store_job_refreshes(cohort, small_store, spark):
    """``spark-submit jobs/store.py refresh`` (a separate Spark application) gives the in-process results."""
    import subprocess
    import sys
    from pathlib import Path

    from .cluster import spark_script

    files, tmp, _, _ = cohort
    job = Path(__file__).resolve().parents[1] / "jobs" / "store.py"
    out = tmp / "submitted"
    proc = subprocess.run([spark_script("spark-submit"), "--master", "local[2]", "--conf",
                           f"spark.pyspark.python={sys.executable}", str(job), "refresh", "--store", small_store,
                           "--out", str(out), "--no-plots"], capture_output=True, text=True,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = run_refresh(small_store, str(tmp / "in_process"), plots=False, spark=spark)
    assert_same_results(f"{res.out}/results.parquet", str(out / "results.parquet"))
    assert (out / "pheno2.glm.linear").read_text() == (tmp / "in_process" / "pheno2.glm.linear").read_text()


def test_store_settings_are_read_checked(cohort, spark, tmp_path, capsys):
    """store.json's settings are a typed record read back checked: a store whose settings were
    rewritten (checksum recomputed, so only their content can tell) with a wrong kind of value or an
    inconsistent width is refused with one line naming store.json, exit 2, and nothing is changed;
    a store made before a key existed (no ``sexchr``) reads with its default."""
    import json

    from dash_spark.config import ModelSettings
    from dash_spark.errors import ConfigError
    from dash_spark.studies.store import STORE_FILE, StoreError, StoreSettings, _canonical, _sha256, open_store

    with pytest.raises(ConfigError, match=r"^s\.json: missing_genotypes: expected one of drop, mean, found 'zero'$"):
        ModelSettings.from_json({"missing_genotypes": "zero"}, where="s.json")
    with pytest.raises(ConfigError, match=r"^s\.json: intercept: expected true or false, found 'yes'$"):
        ModelSettings.from_json({"intercept": "yes"}, where="s.json")
    with pytest.raises(ConfigError, match=r"^s\.json: pheno_names: expected a list of column names"):
        ModelSettings.from_json({"pheno_names": "bmi"}, where="s.json")
    m = ModelSettings(pheno_names=("a", "b"), pheno_01=True)
    assert ModelSettings.from_json(m.to_json(), where="x") == m
    doc = {**m.to_json(), "phenotypes": ["a"], "covariates": ["(intercept)"], "variant_hash": "h", "n_variants": 3}
    old = StoreSettings.from_json({**doc, "width": StoreSettings(m, ("a",), ("(intercept)",), "h", 3).width},
                                  where="x")
    assert old.sexchr is False and old.pred is False and old.source_kind == "bfile"

    files, _, prefixes, _ = cohort
    root = str(tmp_path / "s")
    run_compress(root, "w1", _src(files, prefixes["w1"]), spark=spark)
    path = os.path.join(root, STORE_FILE)
    good = open(path, "rb").read()
    for change, message in (({"intercept": "yes"}, "intercept: expected true or false"),
                            ({"width": 3}, "incomplete or inconsistent"),
                            ({"phenotypes": None}, "incomplete or inconsistent")):
        d = json.loads(good)
        d["settings"].update(change)
        body = {k: v for k, v in d.items() if k != "checksum"}
        d["checksum"] = _sha256(_canonical(body))
        with open(path, "w") as fh:
            json.dump(d, fh)
        forged = open(path, "rb").read()
        with pytest.raises((StoreError, ConfigError), match=message):
            open_store(root)
        code = main(["-q", "refresh", "--store", root, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "store.json" in err and len(err.strip().splitlines()) == 1, err
        assert open(path, "rb").read() == forged and not (tmp_path / "o").exists()
    with open(path, "wb") as fh:
        fh.write(good)
    assert open_store(root).settings.phenotypes
