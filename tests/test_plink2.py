"""plink2 --glm parity: plink2 runs in the test on the same files; numbers agree to its printed digits."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from dash_spark.bench.run import read_plink2_glm
from dash_spark.scanner.pipeline import ScanConfig, run_scan

from .oracle_data import PHENOS, make_files


def _plink2() -> str:
    exe = shutil.which("plink2")
    if exe is None:
        pytest.fail("plink2 is not installed; `make test` installs Debian's plink2 package (or apt-get install plink2)")
    return exe


def _read_ours(path):
    cols = {}
    with open(path) as fh:
        header = fh.readline().rstrip("\n").lstrip("#").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in fh]
    for i, name in enumerate(header):
        cols[name] = np.array([r[i] for r in rows], dtype=object)
    return cols


@pytest.fixture(scope="module", params=[0.0, 0.03], ids=["complete", "missing-calls"])
def both(request, tmp_path_factory, spark):
    """plink2 and our default (drop) mode on the same files, without and with missing calls."""
    tmp = tmp_path_factory.mktemp("plink2")
    files = make_files(tmp, np.random.default_rng(7), n=500, m=400, missing=request.param, name="p")
    out = tmp / "plink"
    proc = subprocess.run([_plink2(), "--bfile", files.bfile, "--pheno", files.pheno, "--covar", files.covar,
                           "--glm", "hide-covar", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar,
                              out=str(tmp / "ours"), plots=False), spark=spark)
    return files, out, res, request.param


@pytest.mark.parametrize("phenotype", PHENOS)
def test_glm_linear_matches_plink2(both, phenotype):
    files, out, res, _ = both
    theirs = read_plink2_glm(f"{out}.{phenotype}.glm.linear")
    ours = _read_ours(res.glm_paths[phenotype])
    assert list(ours["ID"]) == list(theirs["ID"])
    for col in ("CHROM", "REF", "ALT", "A1", "ERRCODE"):
        assert list(ours[col]) == [str(v) for v in theirs[col]], col
    assert np.array_equal(ours["POS"].astype(np.int64), theirs["POS"])
    assert np.array_equal(ours["OBS_CT"].astype(np.int64), theirs["OBS_CT"])
    ok = theirs["ERRCODE"] == "."
    assert ok.sum() >= files.m - 3
    for col in ("BETA", "SE", "T_STAT", "P"):
        a = ours[col][ok].astype(float)
        b = theirs[col][ok].astype(float)
        # plink2 prints 6 significant digits: agreement to half a unit in the 6th digit
        np.testing.assert_allclose(a, b, rtol=6e-6, atol=1e-300, err_msg=col)
        assert np.all(ours[col][~ok] == "NA")


def test_parity_covers_awkward_cases(both):
    """The files really contain what the parity claims: missing phenotypes, dropped samples, errors."""
    files, out, _, missing_rate = both
    counts = {p: set(read_plink2_glm(f"{out}.{p}.glm.linear")["OBS_CT"].tolist()) for p in PHENOS}
    assert counts["pheno1"] != counts["pheno2"]
    assert max(max(v) for v in counts.values()) < files.n
    glm = read_plink2_glm(f"{out}.pheno1.glm.linear")
    assert (glm["ERRCODE"] != ".").sum() >= 2
    n_distinct = len(set(glm["OBS_CT"].tolist()))
    if missing_rate:  # each variant's own complete cases: OBS_CT varies
        assert n_distinct > 10
    else:
        assert n_distinct == 1


def test_collinearity_error_codes_match_plink2(tmp_path, spark):
    """Variants increasingly correlated with a covariate: plink2's CORR_TOO_HIGH / VIF_TOO_HIGH cut-offs."""
    from dash_spark.bench.simulate import write_bed

    rng = np.random.default_rng(3)
    n = 500
    sex = rng.integers(0, 2, n)
    age = rng.uniform(40, 70, n)
    pc = rng.normal(size=n)
    cols = []
    for flips in (0, 1, 2, 3, 5, 8, 12, 20, 40):  # corr with sex from 1 down to ~0.96
        x = (2 * sex).astype(np.int8)
        x[rng.choice(n, flips, replace=False)] = 1
        cols.append(x)
    tie = np.repeat(np.array([2, 0, 1, 1], dtype=np.int8), n // 4)  # ALT frequency exactly 1/2
    cols.append(rng.permutation(tie))
    # a tie among 428 calls (72 missing): plink2's float arithmetic makes ALT major here
    tie_missing = np.concatenate([np.full(107, 2), np.full(214, 1), np.full(107, 0), np.full(72, -1)])
    cols.append(rng.permutation(tie_missing).astype(np.int8))
    G = np.column_stack(cols)
    m = G.shape[1]
    iid = [f"s{i}" for i in range(n)]
    write_bed(str(tmp_path / "v"), n, [G], iids=iid, chrom=["1"] * m, pos=list(range(1, m + 1)),
              ids=[f"f{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    y = rng.normal(size=n) + sex
    (tmp_path / "v.pheno").write_text("#FID\tIID\ty\n" + "".join(f"{i}\t{i}\t{v!r}\n" for i, v in zip(iid, y.tolist())))
    (tmp_path / "v.covar").write_text("#FID\tIID\tage\tsex\tpc\n" + "".join(
        f"{i}\t{i}\t{a!r}\t{s}\t{p!r}\n" for i, a, s, p in zip(iid, age.tolist(), sex.tolist(), pc.tolist())))
    out = tmp_path / "plink"
    proc = subprocess.run([_plink2(), "--bfile", str(tmp_path / "v"), "--pheno", str(tmp_path / "v.pheno"),
                           "--covar", str(tmp_path / "v.covar"), "--glm", "hide-covar", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    theirs = read_plink2_glm(f"{out}.y.glm.linear")
    res = run_scan(ScanConfig(bfile=str(tmp_path / "v"), pheno=str(tmp_path / "v.pheno"),
                              covar=str(tmp_path / "v.covar"), out=str(tmp_path / "ours"), plots=False), spark=spark)
    ours = _read_ours(res.glm_paths["y"])
    assert list(ours["ERRCODE"]) == [str(e) for e in theirs["ERRCODE"]]
    assert list(ours["A1"]) == [str(a) for a in theirs["A1"]]  # the last two variants are exact ties
    assert list(ours["A1"][-2:]) == ["A", "C"]  # ALT for the complete tie, REF for the 428-call one
    assert {"CORR_TOO_HIGH", "VIF_TOO_HIGH", "."} <= set(ours["ERRCODE"])
    ok = theirs["ERRCODE"] == "."
    np.testing.assert_allclose(ours["BETA"][ok].astype(float), theirs["BETA"][ok].astype(float), rtol=6e-6)
