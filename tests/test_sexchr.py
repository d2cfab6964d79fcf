"""Sex chromosomes as plink2 2.00a3.5's ``--glm`` treats them, checked against plink2 run in the test.

A fileset with autosomes, X, Y, MT and XY (the pseudo-autosomal region) variants; males, females and
samples of unknown sex; male X/Y and all MT calls haploid (stored 0/2), a few heterozygous male X
calls, missing calls, a phenotype missing for some samples: A1, OBS_CT, A1_FREQ, BETA, SE, T_STAT and
P agree with plink2 (to its printed digits) under ``--xchr-model`` 2 (the default), 1 and 0.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from dash_spark.bench.run import read_plink2_glm
from dash_spark.bench.simulate import write_bed
from dash_spark.scanner.pipeline import ScanConfig, run_scan

CHROMS = ["1"] * 30 + ["X"] * 40 + ["Y"] * 20 + ["MT"] * 20 + ["XY"] * 20


@pytest.fixture(scope="module")
def sexdata(tmp_path_factory):
    if shutil.which("plink2") is None:
        pytest.fail("plink2 is not installed; `make test` installs Debian's plink2 package")
    tmp = tmp_path_factory.mktemp("sexchr")
    rng = np.random.default_rng(2026)
    n, m = 500, len(CHROMS)
    sex = rng.choice([1, 2, 0], n, p=[0.47, 0.45, 0.08])
    G = rng.binomial(2, rng.uniform(0.05, 0.95, m), size=(n, m)).astype(np.int8)
    for j, c in enumerate(CHROMS):
        hap = (sex == 1) if c in ("X", "Y") else (np.ones(n, bool) if c == "MT" else np.zeros(n, bool))
        G[hap, j] = 2 * rng.binomial(1, rng.uniform(0.1, 0.9), hap.sum())
    males = np.flatnonzero(sex == 1)
    G[males[:3], 35] = 1  # heterozygous male X calls (kept, as plink2 keeps them)
    G[rng.random((n, m)) < 0.03] = -1
    iids = [f"s{i}" for i in range(n)]
    prefix = str(tmp / "sx")
    write_bed(prefix, n, [G], iids=iids, chrom=CHROMS, pos=list(range(100, 100 + 10 * m, 10)),
              ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["G"] * m)
    with open(prefix + ".fam") as fh:
        fam = [line.split() for line in fh if line.strip()]
    with open(prefix + ".fam", "w") as fh:
        for f, s in zip(fam, sex):
            f[4] = str(s)
            fh.write(" ".join(f) + "\n")
    Gf = np.where(G < 0, 0, G).astype(float)
    y1 = Gf[:, [3, 40, 75, 95]] @ np.array([0.3, 0.4, 0.3, 0.2]) + 0.5 * (sex == 1) + rng.normal(size=n)
    y2 = rng.normal(size=n) + 0.2 * Gf[:, 50]
    c1 = rng.normal(size=n)
    with open(tmp / "p.tsv", "w") as fh:
        fh.write("#FID\tIID\ty1\ty2\n")
        for i in range(n):
            fh.write(f"{iids[i]}\t{iids[i]}\t{float(y1[i])!r}\t{'NA' if i % 17 == 0 else repr(float(y2[i]))}\n")
    with open(tmp / "c.tsv", "w") as fh:
        fh.write("#FID\tIID\tc1\n")
        for i in range(n):
            fh.write(f"{iids[i]}\t{iids[i]}\t{float(c1[i])!r}\n")
    return tmp, prefix, str(tmp / "p.tsv"), str(tmp / "c.tsv")


@pytest.mark.parametrize("model", [2, 1, 0])
def test_sex_chromosomes_match_plink2(sexdata, model, spark):
    tmp, prefix, pheno, covar = sexdata
    out = tmp / f"plink{model}"
    proc = subprocess.run(["plink2", "--bfile", prefix, "--pheno", pheno, "--covar", covar, "--glm", "hide-covar",
                           "cols=+a1freq", "--xchr-model", str(model), "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    res = run_scan(ScanConfig(bfile=prefix, pheno=pheno, covar=covar, out=str(tmp / f"ours{model}"), plots=False,
                              xchr_model=model), spark=spark)
    import pyarrow.parquet as pq

    tbl = pq.read_table(res.results_path).to_pandas()
    for phen in ("y1", "y2"):
        theirs = read_plink2_glm(f"{out}.{phen}.glm.linear")
        ours = tbl[tbl.phenotype == phen].sort_values("variant_index")
        assert list(ours.id) == [str(v) for v in theirs["ID"]]
        chroms = set(ours.chrom)
        assert ("X" in chroms) == (model != 0) and {"Y", "MT", "XY", "1"} <= chroms
        assert list(ours.a1) == [str(v) for v in theirs["A1"]]
        assert list(ours.obs_ct) == list(theirs["OBS_CT"])
        ok = theirs["ERRCODE"] == "."
        assert ok.sum() > len(ok) - 3
        for mine, col in (("a1_freq", "A1_FREQ"), ("beta", "BETA"), ("se", "SE"), ("t_stat", "T_STAT"), ("p", "P")):
            a = ours[mine].to_numpy()[ok].astype(float)
            b = theirs[col][ok].astype(float)
            np.testing.assert_allclose(a, b, rtol=6e-6, atol=1e-300, err_msg=f"{phen} {col}")
        # the cases are really there: X without the unknown-sex samples, Y on males only
        obs = dict(zip(ours.chrom, ours.obs_ct))
        assert obs["Y"] < obs["MT"] / 2 + 20 and (model == 0 or obs["X"] < obs["XY"])


def test_chr_accepts_plink2_names():
    """--chr X = 23, Y = 24, XY = 25, MT = 26, with or without 'chr', in names and in ranges."""
    from types import SimpleNamespace

    from dash_spark.scanner.filters import variant_mask

    bim = SimpleNamespace(chrom=np.array(["1", "2", "X", "23", "Y", "chrMT", "XY", "25", "GL000"]), n_variants=9,
                          path="t.bim")

    def picked(spec):
        return variant_mask(bim, chr_spec=spec).astype(int).tolist()

    assert picked("X") == picked("23") == picked("chrX") == [0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert picked("24-26") == [0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert picked("MT,XY") == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert picked("1-2,GL000") == [1, 1, 0, 0, 0, 0, 0, 0, 1]


def test_phenotype_of_one_sex_drops_sex_covariate_on_x(sexdata, spark):
    """A phenotype measured in females only next to one measured in both: plink2 leaves the (then
    constant) SEX covariate out of the first one's chrX model only (chrY excluded: plink2 stops on a
    phenotype without males there)."""
    tmp, prefix, pheno, covar = sexdata
    sex = {ln.split()[1]: ln.split()[4] for ln in open(prefix + ".fam")}
    lines = open(pheno).read().splitlines()
    with open(tmp / "pf.tsv", "w") as fh:
        fh.write("#FID\tIID\tboth\tfemales\n")
        for ln in lines[1:]:
            f = ln.split("\t")
            fh.write(f"{f[0]}\t{f[1]}\t{f[2]}\t{f[2] if sex[f[1]] == '2' else 'NA'}\n")
    out = tmp / "plink-f"
    proc = subprocess.run(["plink2", "--bfile", prefix, "--pheno", str(tmp / "pf.tsv"), "--covar", covar, "--glm",
                           "hide-covar", "--not-chr", "Y", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    res = run_scan(ScanConfig(bfile=prefix, pheno=str(tmp / "pf.tsv"), covar=covar, chr="1,X,MT,XY",
                              out=str(tmp / "ours-f"), plots=False), spark=spark)
    import pyarrow.parquet as pq

    tbl = pq.read_table(res.results_path).to_pandas()
    for phen in ("both", "females"):
        theirs = read_plink2_glm(f"{out}.{phen}.glm.linear")
        ours = tbl[tbl.phenotype == phen].sort_values("variant_index")
        assert list(ours.id) == [str(v) for v in theirs["ID"]] and list(ours.obs_ct) == list(theirs["OBS_CT"])
        ok = theirs["ERRCODE"] == "."
        for mine, col in (("beta", "BETA"), ("se", "SE"), ("p", "P")):
            np.testing.assert_allclose(ours[mine].to_numpy()[ok].astype(float), theirs[col][ok].astype(float),
                                       rtol=6e-6, atol=1e-300, err_msg=f"{phen} {col}")
    x_obs = tbl[(tbl.phenotype == "females") & (tbl.chrom == "X")].obs_ct
    assert x_obs.max() < 300  # females only
