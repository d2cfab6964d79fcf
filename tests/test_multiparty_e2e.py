"""DASH end to end through the CLI: separate party processes, masked shares, combine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.cli import main
from dash_spark.pipeline import ScanConfig, run_scan

from .oracle_data import make_split_files

PARTIES = ("alice", "bob", "carol")


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", *args], capture_output=True, text=True,
                          env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    files, _, prefixes = make_split_files(tmp, 21, PARTIES, [0.5, 0.3, 0.2], n=420, m=300)
    for name in PARTIES:
        code, _, err = _cli("party", "keygen", "--out", str(tmp / "keys" / name))
        assert code == 0, err
    return files, tmp, prefixes


def _manifest(tmp, parties, *extra):
    code, out, err = _cli("party", "manifest", "--study", "t", "--exchange", str(tmp / "exchange"),
                          *[x for p in parties for x in ("--party", f"{p}={tmp / 'keys' / p}.pub")], *extra)
    assert code == 0, err
    return out


@pytest.mark.slow
def test_three_party_scan_equals_pooled_scan(study, spark):
    files, tmp, prefixes = study
    manifest = _manifest(tmp, PARTIES, "--bim", files.bfile + ".bim")
    for p in PARTIES:  # one after another: separate Spark applications in separate processes
        code, out, err = _cli("party", "compress", "--manifest", manifest, "--party", p, "--key",
                              f"{tmp / 'keys' / p}.key", "--pheno", files.pheno, "--covar", files.covar,
                              "--bfile", prefixes[p], "--master", "local[2]")
        assert code == 0, err[-3000:]
    code, out, err = _cli("combine", "--manifest", manifest, "--out", str(tmp / "combined"), "--no-plots")
    assert code == 0, err[-3000:]
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
    words = np.load(os.path.join(share_dir, "variants.npy"))
    counts = np.bincount(words.view(np.uint8).ravel(), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert abs(np.unpackbits(words.view(np.uint8)).mean() - 0.5) < 0.01


def _section2(tmp, files, parties, name):
    lines = open(files.pheno).read().splitlines()
    manifest = _manifest(tmp, parties)
    for i, p in enumerate(parties):
        path = tmp / f"{name}.{p}.pheno"
        path.write_text("\n".join([lines[0]] + lines[1 + i :: len(parties)]) + "\n")
        assert main(["-q", "party", "compress", "--manifest", manifest, "--party", p, "--key",
                     f"{tmp / 'keys' / p}.key", "--pheno", str(path), "--covar", files.covar]) == 0
    assert main(["-q", "combine", "--manifest", manifest, "--out", str(tmp / name)]) == 0
    return manifest


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_section2_regression_equals_statsmodels(study, n_parties):
    import pandas as pd
    import statsmodels.api as sm

    files, tmp, _ = study
    parties = list(PARTIES) + ["dave", "erin"]
    for p in parties[3:]:
        if not (tmp / "keys" / f"{p}.pub").exists():
            assert main(["-q", "party", "keygen", "--out", str(tmp / "keys" / p)]) == 0
    _section2(tmp, files, parties[:n_parties], f"s2_{n_parties}")
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
    files, tmp, _ = study
    manifest = _manifest(tmp, PARTIES)
    lines = open(files.pheno).read().splitlines()
    for i, p in enumerate(PARTIES[:2]):
        path = tmp / f"rej.{p}.pheno"
        path.write_text("\n".join([lines[0]] + lines[1 + i :: 3]) + "\n")
        assert main(["-q", "party", "compress", "--manifest", manifest, "--party", p, "--key",
                     f"{tmp / 'keys' / p}.key", "--pheno", str(path), "--covar", files.covar]) == 0
    capsys.readouterr()
    out = tmp / "rej_out"
    assert main(["-q", "combine", "--manifest", manifest, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "carol" in err and "missing" in err and not out.exists()
    # the third party publishes, then one byte of bob's share is flipped: bob is named
    path = tmp / "rej.carol.pheno"
    path.write_text("\n".join([lines[0]] + lines[3::3]) + "\n")
    assert main(["-q", "party", "compress", "--manifest", manifest, "--party", "carol", "--key",
                 f"{tmp / 'keys' / 'carol'}.key", "--pheno", str(path), "--covar", files.covar]) == 0
    stat = os.path.join(os.path.dirname(manifest), "shares", "bob", "t0.CtC.npy")
    data = bytearray(open(stat, "rb").read())
    data[-1] ^= 1
    open(stat, "wb").write(bytes(data))
    capsys.readouterr()
    assert main(["-q", "combine", "--manifest", manifest, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bob" in err and not out.exists()
    # a share replayed from this round into a new round is rejected, naming the party
    manifest2 = _manifest(tmp, PARTIES)
    for p in PARTIES:
        shutil.copytree(os.path.join(os.path.dirname(manifest), "shares", "alice" if p == "alice" else p),
                        os.path.join(os.path.dirname(manifest2), "shares", p))
    capsys.readouterr()
    assert main(["-q", "combine", "--manifest", manifest2, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "alice" in err and not out.exists()


def test_party_with_different_phenotypes_is_stopped_before_publishing(study, capsys):
    files, tmp, _ = study
    manifest = _manifest(tmp, PARTIES, "--pheno-name", "pheno1,pheno2")
    lines = [ln.split("\t") for ln in open(files.pheno).read().splitlines()]
    path = tmp / "other.pheno"
    path.write_text("\n".join("\t".join(r[:2] + [r[3], r[2]]) for r in lines) + "\n")  # swapped columns named
    text = path.read_text().replace("pheno2\tpheno1", "pheno1x\tpheno2", 1)
    path.write_text(text)
    capsys.readouterr()
    code = main(["-q", "party", "compress", "--manifest", manifest, "--party", "bob", "--key",
                 f"{tmp / 'keys' / 'bob'}.key", "--pheno", str(path), "--covar", files.covar])
    err = capsys.readouterr().err
    assert code == 2 and "pheno1" in err
    assert not os.path.exists(os.path.join(os.path.dirname(manifest), "shares", "bob"))
