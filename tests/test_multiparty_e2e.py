"""DASH end to end through the CLI: separate party processes, masked shares, combine."""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.cli import main
from dash_spark.multiparty.exchange import locate_manifest
from dash_spark.scanner.pipeline import ScanConfig, run_scan

from .oracle_data import make_split_files
from .party_flow import Study, run_subprocess

PARTIES = ("alice", "bob", "carol")
_cli = run_subprocess


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    files, _, prefixes = make_split_files(tmp, 21, PARTIES, [0.5, 0.3, 0.2], n=420, m=300)
    st = Study(tmp, list(PARTIES) + ["dave", "erin"])
    return files, tmp, prefixes, st


@pytest.mark.slow
def test_three_party_scan_equals_pooled_scan(study, spark):
    files, tmp, prefixes, st = study
    manifest = st.manifest("--bim", files.bfile + ".bim", parties=PARTIES)
    st.join(manifest, PARTIES)
    for p in PARTIES:  # one after another: separate Spark applications in separate processes
        code, out, err = _cli("party", "compress", *st.party(p, manifest), "--pheno", files.pheno, "--covar",
                              files.covar, "--bfile", prefixes[p], "--master", "local[2]")
        assert code == 0, err[-3000:]
    st.finish(manifest, tmp / "combined", "--no-plots")
    pooled = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp / "pooled_out"),
                                 plots=False), spark=spark)
    key = [("phenotype", "ascending"), ("variant_index", "ascending")]
    a = pq.read_table(pooled.results_path).sort_by(key).to_pydict()
    b = pq.read_table(str(tmp / "combined" / "results.parquet")).sort_by(key).to_pydict()
    for col in ("variant_index", "id", "a1", "obs_ct", "errcode", "phenotype"):
        assert a[col] == b[col], col
    assert len(set(a["obs_ct"])) > 10  # missing calls: each variant its own complete cases
    se = np.array(a["se"], dtype=float)
    ok = ~np.isnan(se)
    beta_a, beta_b = np.array(a["beta"], dtype=float)[ok], np.array(b["beta"], dtype=float)[ok]
    assert np.all(np.abs(beta_a - beta_b) <= 1e-9 * np.maximum(np.abs(beta_a), se[ok]))
    np.testing.assert_allclose(np.array(b["se"], dtype=float)[ok], se[ok], rtol=1e-9)
    np.testing.assert_allclose(np.array(b["neg_log10_p"], dtype=float)[ok],
                               np.array(a["neg_log10_p"], dtype=float)[ok], rtol=1e-9, atol=1e-11)
    assert (tmp / "combined" / "pheno1.glm.linear").exists()

    # a share alone looks uniform: chi-square on the byte values of one party's masked words
    from scipy import stats

    share_dir = os.path.dirname(manifest) + "/shares/alice"
    parts = sorted(glob.glob(os.path.join(share_dir, "variants@*.npy")))  # the tasks' row parts
    assert parts and not os.path.exists(os.path.join(share_dir, "variants.npy"))
    words = np.concatenate([np.load(p) for p in parts])
    counts = np.bincount(words.view(np.uint8).ravel(), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert abs(np.unpackbits(words.view(np.uint8)).mean() - 0.5) < 0.01


def _section2(st, tmp, files, parties, name):
    lines = open(files.pheno).read().splitlines()
    manifest = st.manifest(parties=parties)
    st.join(manifest, parties)
    for i, p in enumerate(parties):
        path = tmp / f"{name}.{p}.pheno"
        path.write_text("\n".join([lines[0]] + lines[1 + i :: len(parties)]) + "\n")
        assert main(["-q", "party", "compress", *st.party(p, manifest), "--pheno", str(path),
                     "--covar", files.covar]) == 0
    st.finish(manifest, tmp / name, "--allow-small-release")
    return manifest


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_section2_regression_equals_statsmodels(study, n_parties):
    import pandas as pd
    import statsmodels.api as sm

    files, tmp, _, st = study
    parties = list(PARTIES) + ["dave", "erin"]
    _section2(st, tmp, files, parties[:n_parties], f"s2_{n_parties}")
    ph = pd.read_csv(files.pheno, sep="\t", na_values=["NA", "nan", "-9"], keep_default_na=False).set_index("IID")
    cv = pd.read_csv(files.covar, sep=" ", na_values=["NA"], keep_default_na=False).set_index("IID")
    d = ph.join(cv[["age", "sex", "PC1"]], how="inner")[["pheno2", "age", "sex", "PC1"]].dropna()
    fit = sm.OLS(d["pheno2"].to_numpy(), sm.add_constant(d[["age", "sex", "PC1"]].to_numpy())).fit()
    got = pd.read_csv(tmp / f"s2_{n_parties}" / "pheno2.coefficients.tsv", sep="\t")
    assert list(got["covariate"]) == ["(intercept)", "age", "sex", "PC1"]
    np.testing.assert_allclose(got["beta"], fit.params, rtol=1e-9)
    np.testing.assert_allclose(got["se"], fit.bse, rtol=1e-9)
    np.testing.assert_allclose(got["p"], fit.pvalues, rtol=1e-8)


def test_combine_rejects_missing_party_tampering_and_replay(study, capsys):
    files, tmp, _, st = study
    manifest = st.manifest(parties=PARTIES)
    st.join(manifest, PARTIES)
    lines = open(files.pheno).read().splitlines()
    for i, p in enumerate(PARTIES[:2]):
        path = tmp / f"rej.{p}.pheno"
        path.write_text("\n".join([lines[0]] + lines[1 + i :: 3]) + "\n")
        assert main(["-q", "party", "compress", *st.party(p, manifest), "--pheno", str(path),
                     "--covar", files.covar]) == 0
    capsys.readouterr()
    out = tmp / "rej_out"
    assert main(["-q", "combine", "--manifest", manifest, "--out", str(out), "--sign-key", st.coord]) == 2
    err = capsys.readouterr().err
    assert "carol" in err and "missing" in err and not out.exists()
    # the third party publishes, then one byte of bob's share is flipped: bob is named
    path = tmp / "rej.carol.pheno"
    path.write_text("\n".join([lines[0]] + lines[3::3]) + "\n")
    assert main(["-q", "party", "compress", *st.party("carol", manifest), "--pheno", str(path),
                 "--covar", files.covar]) == 0
    stat = os.path.join(os.path.dirname(manifest), "shares", "bob", "t0.CtC.npy")
    data = bytearray(open(stat, "rb").read())
    data[-1] ^= 1
    open(stat, "wb").write(bytes(data))
    capsys.readouterr()
    # closing the round checks the signed headers; the survivors unmask; combine checks every file
    assert main(["-q", "combine", "--manifest", manifest, "--out", str(out), "--sign-key", st.coord]) == 0
    # (these keys released the same parties' data in this module's other tests: the guard is overridden)
    st.unmask(manifest, PARTIES, "--allow-small-release")
    capsys.readouterr()
    assert main(["-q", "combine", "--manifest", manifest, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bob" in err and "does not match the signed header" in err and not out.exists()
    # a share replayed from this round into a new round is rejected, naming the party
    manifest2 = st.manifest(parties=PARTIES)
    for p in PARTIES:
        shutil.copytree(os.path.join(os.path.dirname(manifest), "shares", "alice" if p == "alice" else p),
                        os.path.join(os.path.dirname(manifest2), "shares", p))
    capsys.readouterr()
    assert main(["-q", "combine", "--manifest", manifest2, "--out", str(out), "--sign-key", st.coord]) == 2
    err = capsys.readouterr().err
    assert "alice" in err and not out.exists()


def test_party_with_different_phenotypes_is_stopped_before_publishing(study, capsys):
    files, tmp, _, st = study
    manifest = st.manifest("--pheno-name", "pheno1,pheno2", parties=PARTIES)
    st.join(manifest, PARTIES)
    lines = [ln.split("\t") for ln in open(files.pheno).read().splitlines()]
    path = tmp / "other.pheno"
    path.write_text("\n".join("\t".join(r[:2] + [r[3], r[2]]) for r in lines) + "\n")  # swapped columns named
    text = path.read_text().replace("pheno2\tpheno1", "pheno1x\tpheno2", 1)
    path.write_text(text)
    capsys.readouterr()
    code = main(["-q", "party", "compress", *map(str, st.party("bob", manifest)), "--pheno", str(path),
                 "--covar", files.covar])
    err = capsys.readouterr().err
    assert code == 2 and "pheno1" in err
    assert not os.path.exists(os.path.join(os.path.dirname(manifest), "shares", "bob"))


@pytest.mark.slow
def test_five_parties_two_drop_after_the_others_published(tmp_path, spark):
    """Five parties join; three publish and two drop (the default threshold of 3 survivors). The
    round is closed with the three, they unmask, and combine equals the pooled scan of their
    samples (1e-9); the dropped parties' late shares stay hidden from everything on the exchange."""
    from .party_flow import Study
    from .test_multiparty_adversary import recover

    names = ["p1", "p2", "p3", "p4", "p5"]
    files, parts, prefixes = make_split_files(tmp_path, 61, names, [0.3, 0.25, 0.2, 0.15, 0.1], n=500, m=240)
    st = Study(tmp_path, names)
    manifest = st.manifest("--bim", files.bfile + ".bim")
    st.join(manifest)
    for p in names[:3]:
        code, _, err = st.compress(manifest, p, "--pheno", files.pheno, "--covar", files.covar, "--bfile", prefixes[p])
        assert code == 0, err[-3000:]
    st.finish(manifest, tmp_path / "combined", "--no-plots", allow_dropouts=True)
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    (tmp_path / "survivors.txt").write_text("".join(f"{iids[i]}\n" for p in names[:3] for i in parts[p]))
    pooled = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, plots=False,
                                 keep=str(tmp_path / "survivors.txt"), out=str(tmp_path / "pooled")), spark=spark)
    key = [("phenotype", "ascending"), ("variant_index", "ascending")]
    a = pq.read_table(pooled.results_path).sort_by(key).to_pydict()
    b = pq.read_table(str(tmp_path / "combined" / "results.parquet")).sort_by(key).to_pydict()
    for col in ("variant_index", "id", "a1", "obs_ct", "errcode", "phenotype"):
        assert a[col] == b[col], col
    se = np.array(a["se"], dtype=float)
    ok = ~np.isnan(se)
    beta_a, beta_b = np.array(a["beta"], dtype=float)[ok], np.array(b["beta"], dtype=float)[ok]
    assert np.all(np.abs(beta_a - beta_b) <= 1e-9 * np.maximum(np.abs(beta_a), se[ok]))
    np.testing.assert_allclose(np.array(b["neg_log10_p"], dtype=float)[ok],
                               np.array(a["neg_log10_p"], dtype=float)[ok], rtol=1e-9, atol=1e-11)
    # the dropped parties may neither publish late nor reveal their self-mask seeds
    for p in names[3:]:
        code, _, err = st.compress(manifest, p, "--pheno", files.pheno, "--covar", files.covar, "--bfile",
                                   prefixes[p])
        assert code == 2 and "closed" in err
        code, _, err = st.run("party", "unmask", *st.party(p, manifest))
        assert code == 2 and "dropped" in err and len(err.splitlines()) == 1
    # p4's share written anyway (its survivors file hidden while it published): nothing on the
    # exchange unmasks it
    uri, m = locate_manifest(manifest)
    surv = os.path.join(os.path.dirname(manifest), "survivors.json")
    kept = open(surv, "rb").read()
    os.remove(surv)
    code, _, err = st.compress(manifest, "p4", "--pheno", files.pheno, "--covar", files.covar, "--bfile",
                               prefixes["p4"])
    open(surv, "wb").write(kept)
    assert code == 0, err[-2000:]
    # everything revealed removes p4's pair masks with the survivors, never its self-mask: its sample
    # count (and so every other statistic) is still noise
    n4 = recover(uri, m, "p4", names=("t0.n", "guard.counts"))
    truth = len(parts["p4"])
    assert abs(float(n4["t0.n"][0]) - truth) > 1e6 and np.all(np.abs(n4["guard.counts"] - truth) > 1e6)
    assert pq.read_table(str(tmp_path / "combined" / "results.parquet")).num_rows == len(a["beta"])
