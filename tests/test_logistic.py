"""Case/control phenotypes get plink2's logistic --glm (logistic regression, Firth fallback).

Oracles, none sharing code with dash_spark:

- plink2 v2.0.0-a.7.4 (``../shared/tools/plink2-a7.4``, the newest build) on the same files, row by
  row to its printed digits (6 significant), ``FIRTH?`` and ``ERRCODE`` included;
- Debian's plink2 (2.00a3.5, an older logistic fit): the same file layout, error codes and Firth
  flags, numbers within 1e-3;
- statsmodels' ``Logit`` (the converged MLE) for the logistic rows, and a direct maximisation of
  Firth's penalised likelihood (scipy) for the Firth rows.

The data has missing calls, a phenotype missing for some samples (NA, -9 and 0 in plink2's 1/2
coding), a monomorphic variant, a variant collinear with a covariate, a variant with one carrier
and a variant whose carriers are all cases (both Firth), and a phenotype separated by a covariate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.cli import main
from dash_spark.scanner.pipeline import ScanConfig, run_scan

from .oracle_data import make_files
from .test_sexchr import sexdata  # noqa: F401 - the sex-chromosome fileset fixture

REPO = Path(__file__).resolve().parents[1]
PLINK2_A74 = REPO.parent / "shared" / "tools" / "plink2-a7.4" / "plink2"


def _a74_runs() -> bool:
    if not PLINK2_A74.is_file():
        return False
    return subprocess.run([str(PLINK2_A74), "--version"], capture_output=True).returncode == 0


needs_a74 = pytest.mark.skipif(not _a74_runs(), reason="../shared/tools/plink2-a7.4/plink2 is not here or cannot run")

PHENOS = ("cc", "cc2", "ccsep", "q")


@pytest.fixture(scope="module")
def cc_data(tmp_path_factory):
    from bed_reader import open_bed

    tmp = tmp_path_factory.mktemp("logistic")
    files = make_files(tmp, np.random.default_rng(3), n=600, m=300, missing=0.02)
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")  # ALT dosages (.bim column 5), NaN missing
    rng = np.random.default_rng(9)
    n = len(iids)
    cc = rng.choice(["1", "2"], n, p=[0.8, 0.2]).astype(object)
    # a variant whose carriers are all cases: Firth by plink2's separation rule
    carriers = np.nansum(G, axis=0)
    sep = int(np.argsort(np.where(carriers > 3, carriers, np.inf))[0])
    cc[np.nan_to_num(G[:, sep]) > 0] = "2"
    cc[rng.random(n) < 0.05] = "NA"
    cc[rng.random(n) < 0.03] = "0"
    cc[rng.random(n) < 0.03] = "-9"
    cc2 = rng.choice(["1", "2"], n).astype(object)
    # quasi-separated by the covariate sex (cases only where sex is 1): Firth for every variant
    covar = {ln.split()[1]: ln.split()[2:] for ln in list(open(files.covar))[1:]}
    sex = np.array([float(covar[i][1]) if i in covar else np.nan for i in iids])
    ccsep = np.where((sex == 1) & (rng.random(n) < 0.4), "2", "1").astype(object)
    q = np.round(rng.normal(size=n), 4).astype(str)
    pheno = tmp / "cc.pheno"
    with open(pheno, "w") as fh:
        fh.write("#FID\tIID\t" + "\t".join(PHENOS) + "\n")
        for i, iid in enumerate(iids):
            fh.write(f"{iid}\t{iid}\t{cc[i]}\t{cc2[i]}\t{ccsep[i]}\t{q[i]}\n")
    return tmp, files, str(pheno), G, sep


@pytest.fixture(scope="module")
def ours(cc_data, tmp_path_factory, spark):
    tmp, files, pheno, _, _ = cc_data
    out = tmp_path_factory.mktemp("ours") / "o"
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=pheno, covar=files.covar, out=str(out), plots=False),
                   spark=spark)
    return res, out


def _table(path):
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in fh]
    return header, {r[header.index("ID")]: dict(zip(header, r)) for r in rows}, [r[header.index("ID")] for r in rows]


def _plink2(binary, tmp, files, pheno, out_name, *extra):
    out = tmp / out_name
    run = subprocess.run([str(binary), "--bfile", files.bfile, "--pheno", pheno, "--covar", files.covar,
                          "--glm", "hide-covar", "--out", str(out), "--threads", "1", *extra],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    return out


def _printed_equal(ours: str, theirs: str) -> bool:
    """plink2 prints 6 significant digits: our full-precision number printed its way."""
    if ours == theirs:
        return True
    try:
        a, b = float(ours), float(theirs)
    except ValueError:
        return False
    return float(f"{a:.6g}") == b or abs(a - b) <= 5e-6 * abs(b) + 1e-300


def test_files_and_models(ours, caplog):
    res, out = ours
    names = sorted(p.name for p in out.glob("*.glm.*"))
    assert names == ["cc.glm.logistic.hybrid", "cc2.glm.logistic.hybrid", "ccsep.glm.logistic.hybrid",
                     "q.glm.linear"]
    results = pq.read_table(res.results_path).to_pandas()
    assert results.loc[results.phenotype == "q", "firth"].isna().all()
    assert results.loc[results.phenotype != "q", "firth"].notna().all()
    sep = results[(results.phenotype == "ccsep") & (results.errcode == ".")]
    assert len(sep) > 250 and sep.firth.all()  # quasi-separated by sex: every fitted row is Firth
    assert results.loc[results.phenotype == "cc", "firth"].sum() >= 2  # one carrier; carriers all cases


@needs_a74
@pytest.mark.parametrize("pheno_name", ["cc", "cc2", "ccsep"])
def test_equals_newest_plink2(cc_data, ours, pheno_name):
    """Every row and column of ``.glm.logistic.hybrid`` to plink2 a7.4's printed digits.

    plink2 a7.4 carries a little state from one variant into the next one's fit (seen after a variant
    it skips with CORR_TOO_HIGH, and into a Firth fit after a logistic one): the same variant alone,
    ``--extract``, gives our numbers. A row that differs is compared with plink2's run on that
    variant alone; few may need it."""
    tmp, files, pheno, _, _ = cc_data
    _, out = ours
    theirs = _plink2(PLINK2_A74, tmp, files, pheno, "a74", "--pheno-name", pheno_name)
    header, mine, order = _table(out / f"{pheno_name}.glm.logistic.hybrid")
    their_header, rows, their_order = _table(f"{theirs}.{pheno_name}.glm.logistic.hybrid")
    assert order == their_order
    assert set(header) <= set(their_header)
    firth = alone = 0
    for vid in order:
        ok = all(_printed_equal(mine[vid][c], rows[vid][c]) for c in header)
        if not ok:
            alone += 1
            ids = tmp / f"one-{vid}"
            ids.write_text(vid + "\n")
            single = _plink2(PLINK2_A74, tmp, files, pheno, f"a74-{vid}", "--pheno-name", pheno_name,
                             "--extract", str(ids))
            rows[vid] = _table(f"{single}.{pheno_name}.glm.logistic.hybrid")[1][vid]
            ok = all(_printed_equal(mine[vid][c], rows[vid][c]) for c in header)
        assert ok, (vid, mine[vid], rows[vid])
        firth += rows[vid]["FIRTH?"] == "Y"
    assert firth >= (len(order) - 5 if pheno_name == "ccsep" else 1)
    assert alone <= 3


def test_layout_and_flags_as_debian_plink2(cc_data, ours):
    """Debian's plink2 (2.00a3.5) writes the same layout, FIRTH? flags and error codes; its older
    logistic fit stops at other points, so its numbers are compared within 1e-3 (and for Firth rows,
    whose standard errors it took from another matrix, and for the variant after one plink2 skips for
    CORR_TOO_HIGH, see :func:`test_equals_newest_plink2`, the odds ratio only)."""
    tmp, files, pheno, _, _ = cc_data
    _, out = ours
    theirs = _plink2("plink2", tmp, files, pheno, "debian", "--pheno-name", "cc")
    header, mine, order = _table(out / "cc.glm.logistic.hybrid")
    their_header, rows, their_order = _table(f"{theirs}.cc.glm.logistic.hybrid")
    assert header == their_header and order == their_order
    for i, vid in enumerate(order):
        a, b = mine[vid], rows[vid]
        for c in ("#CHROM", "POS", "ID", "REF", "ALT", "A1", "FIRTH?", "TEST", "OBS_CT", "ERRCODE"):
            assert a[c] == b[c], (vid, c, a[c], b[c])
        after_skip = i and rows[order[i - 1]]["ERRCODE"] in ("CORR_TOO_HIGH", "VIF_TOO_HIGH")
        for c in ("OR",) if b["FIRTH?"] == "Y" or after_skip else ("OR", "LOG(OR)_SE", "Z_STAT", "P"):
            if b[c] == "NA":
                assert a[c] == "NA"
            else:
                np.testing.assert_allclose(float(a[c]), float(b[c]), rtol=1e-3, atol=1e-6, err_msg=f"{vid} {c}")


def _analysed(cc_data, pheno_name):
    """The phenotype (0/1), covariates with intercept and the analysed samples, read independently."""
    tmp, files, pheno, G, _ = cc_data
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    header = open(pheno).readline().split()
    col = header.index(pheno_name)
    vals = {ln.split()[1]: ln.split()[col] for ln in list(open(pheno))[1:]}
    y = np.array([{"1": 0.0, "2": 1.0}.get(vals.get(i, "NA"), np.nan) for i in iids])
    cov = {ln.split()[1]: ln.split()[2:] for ln in list(open(files.covar))[1:]}
    C = np.array([[np.nan if v == "NA" else float(v) for v in cov.get(i, ["NA"] * 3)] for i in iids])
    C = np.column_stack([np.ones(len(iids)), C])
    return y, C, ~np.isnan(y) & ~np.isnan(C).any(axis=1), G


def _firth_oracle(D, y):
    """Firth's estimate by maximising the penalised log-likelihood directly (BFGS on its gradient)."""
    from scipy.optimize import minimize

    def neg(beta):
        p = 1.0 / (1.0 + np.exp(-D @ beta))
        info = D.T @ (D * (p * (1 - p))[:, None])
        sign, logdet = np.linalg.slogdet(info)
        return -(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)) + 0.5 * logdet)

    def grad(beta):
        p = 1.0 / (1.0 + np.exp(-D @ beta))
        w = p * (1 - p)
        info_inv = np.linalg.inv(D.T @ (D * w[:, None]))
        h = w * np.einsum("ni,ij,nj->n", D, info_inv, D)
        return -(D.T @ (y - p + h * (0.5 - p)))

    fit = minimize(neg, np.zeros(D.shape[1]), jac=grad, method="BFGS", options={"gtol": 1e-10, "maxiter": 10_000})
    return fit.x


def test_logistic_rows_equal_statsmodels_and_firth_rows_a_direct_fit(cc_data, ours):
    import statsmodels.api as sm

    res, _ = ours
    got = pq.read_table(res.results_path).to_pandas()
    got = got[got.phenotype == "cc"].sort_values("variant_index")
    y, C, base, G = _analysed(cc_data, "cc")
    n_logit = n_firth = 0
    for row in got.itertuples():
        if row.errcode != ".":
            continue
        x = G[:, row.variant_index]
        ok = base & ~np.isnan(x)
        assert row.obs_ct == ok.sum()
        a1 = x[ok] if row.a1 == row.alt else 2.0 - x[ok]
        D = np.column_stack([C[ok], a1])
        if row.firth:
            beta = _firth_oracle(D, y[ok])[-1]
            np.testing.assert_allclose(row.beta, beta, rtol=1e-4, atol=1e-5)
            n_firth += 1
        else:
            fit = sm.Logit(y[ok], D).fit(disp=0, tol=1e-12, maxiter=200)
            np.testing.assert_allclose(row.beta, fit.params[-1], rtol=1e-6, atol=1e-9)
            # plink2 reports the SE of the Hessian one Newton step before convergence
            np.testing.assert_allclose(row.se, fit.bse[-1], rtol=2e-3)
            np.testing.assert_allclose(row.p, 2 * __import__("scipy").stats.norm.sf(abs(row.beta / row.se)),
                                       rtol=1e-9)
            n_logit += 1
    assert n_logit > 250 and n_firth >= 2


def test_error_codes_of_the_awkward_variants(cc_data, ours):
    res, _ = ours
    got = pq.read_table(res.results_path).to_pandas()
    got = got[got.phenotype == "cc"].set_index("id")
    assert got.loc["rs10", "errcode"] == "CONST_OMITTED_ALLELE"  # monomorphic
    assert got.loc["rs40", "errcode"] == "CORR_TOO_HIGH"  # 2 x sex
    assert got.loc["rs30", "firth"]  # one carrier
    _, _, _, _, sep = cc_data
    assert got.loc[f"rs{sep}", "firth"]  # carriers all cases


def test_pheno_01_and_all_controls(cc_data, tmp_path, capsys):
    """--1: 0 control, 1 case; a phenotype with no case stops with plink2's reason."""
    from .test_bad_input import assert_input_error, run_cli

    tmp, files, pheno, _, _ = cc_data
    lines = open(pheno).read().splitlines()
    recoded = tmp_path / "p01.pheno"
    with open(recoded, "w") as fh:
        fh.write("#FID\tIID\tcc01\tnone\n")
        for ln in lines[1:]:
            f = ln.split("\t")
            v = {"1": "0", "2": "1"}.get(f[2], "NA")
            fh.write(f"{f[0]}\t{f[1]}\t{v}\t0\n")
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, ["-q", "scan", "--bfile", files.bfile, "--pheno", str(recoded), "--covar",
                                  files.covar, "--1", "--out", str(out), "--no-plots"])
    assert_input_error(rc, err, str(out), "'none'", "are controls")
    assert main(["-q", "scan", "--bfile", files.bfile, "--pheno", str(recoded), "--pheno-name", "cc01", "--covar",
                 files.covar, "--1", "--out", str(out), "--no-plots"]) == 0
    a = (out / "cc01.glm.logistic.hybrid").read_text()
    assert a.split("\n", 1)[1] == _ours_text(cc_data, "cc")


def _ours_text(cc_data, name):
    tmp, files, pheno, _, _ = cc_data
    out = tmp / f"again-{name}"
    if not out.exists():
        assert main(["-q", "scan", "--bfile", files.bfile, "--pheno", pheno, "--pheno-name", name, "--covar",
                     files.covar, "--out", str(out), "--no-plots"]) == 0
    return (out / f"{name}.glm.logistic.hybrid").read_text().split("\n", 1)[1]


def test_mean_imputation_fits_every_sample(cc_data, spark, tmp_path):
    """--missing-genotypes mean: a missing call takes the variant's mean on the phenotype's samples."""
    import statsmodels.api as sm

    tmp, files, pheno, _, _ = cc_data
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=pheno, pheno_name=("cc2",), covar=files.covar,
                              missing_genotypes="mean", out=str(tmp_path / "m"), plots=False), spark=spark)
    got = pq.read_table(res.results_path).to_pandas().sort_values("variant_index")
    y, C, base, G = _analysed(cc_data, "cc2")
    checked = 0
    for row in got.itertuples():
        if row.errcode != "." or row.firth:
            continue
        x = G[base, row.variant_index].copy()
        x[np.isnan(x)] = np.nanmean(x)
        assert row.obs_ct == base.sum()
        a1 = x if row.a1 == row.alt else 2.0 - x
        fit = sm.Logit(y[base], np.column_stack([C[base], a1])).fit(disp=0, tol=1e-12, maxiter=200)
        np.testing.assert_allclose(row.beta, fit.params[-1], rtol=1e-6, atol=1e-9)
        checked += 1
        if checked == 40:
            break
    assert checked == 40


def test_statistics_models_refuse_case_control(cc_data, tmp_path, capsys):
    """Stores and studies add linear sums: a case/control phenotype is refused there, with the fix."""
    from .test_bad_input import run_cli

    _, files, pheno, _, _ = cc_data
    store = tmp_path / "store"
    rc, _, err = run_cli(capsys, ["-q", "compress", "--store", str(store), "--batch", "a", "--bfile", files.bfile,
                                  "--pheno", pheno, "--pheno-name", "cc,q"])
    assert rc == 2 and "cc are case/control" in err and "--linear-for-binary" in err
    assert not store.exists()



def test_api_logistic_regression_equals_the_scan(cc_data, ours, spark):
    """``ds.logistic_regression`` gives the scan's rows; each API function refuses the other's phenotypes."""
    import dash_spark as ds
    from dash_spark.errors import ConfigError

    _, files, pheno, _, _ = cc_data
    res, _ = ours
    geno = ds.open_bfile(files.bfile)
    df = ds.logistic_regression(spark, geno, pheno, files.covar, pheno_names=["cc", "cc2"])
    got = df.toPandas().sort_values(["phenotype", "variant_index"]).reset_index(drop=True)
    want = pq.read_table(res.results_path).to_pandas()
    want = want[want.phenotype.isin(["cc", "cc2"])].sort_values(["phenotype", "variant_index"]).reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    import pandas as pd

    for c in got.columns:  # the same values (Spark's toPandas keeps booleans as objects)
        pd.testing.assert_series_equal(got[c], want[c], check_dtype=False, obj=c)
    with pytest.raises(ConfigError, match="cc are case/control.*logistic_regression"):
        ds.linear_regression(spark, geno, pheno, files.covar, pheno_names="cc")
    with pytest.raises(ConfigError, match="q are not case/control.*linear_regression"):
        ds.logistic_regression(spark, geno, pheno, files.covar, pheno_names=["cc", "q"])


@needs_a74
@pytest.mark.parametrize("model", [2, 1])
def test_sex_chromosomes_equal_newest_plink2(sexdata, model, spark, tmp_path):  # noqa: F811
    """chrX (SEX covariate, males 0..2 or 0..1), MT and XY under the logistic model: every row to
    plink2 a7.4's printed digits (rows it prints otherwise rerun alone). chrY: a7.4 tests it on the
    samples that are not female (males and unknown sex), Debian's 2.00a3.5, which the linear tests
    follow, on males only, as we do: there only the allele columns are compared."""
    tmp, prefix, pheno, covar = sexdata
    rows = [ln.split("\t") for ln in open(pheno).read().splitlines()]
    y1 = np.array([float(r[2]) for r in rows[1:]])
    cut = np.quantile(y1, 0.7)
    cc = tmp_path / "cc.tsv"
    cc.write_text("#FID\tIID\tcc\n" + "".join(f"{r[0]}\t{r[1]}\t{2 if float(r[2]) > cut else 1}\n" for r in rows[1:]))
    files = type("F", (), {"bfile": prefix, "covar": covar})
    theirs = _plink2(PLINK2_A74, tmp_path, files, str(cc), f"a74x{model}", "--xchr-model", str(model))
    run_scan(ScanConfig(bfile=prefix, pheno=str(cc), covar=covar, xchr_model=model, out=str(tmp_path / "o"),
                        plots=False), spark=spark)
    header, mine, order = _table(tmp_path / "o" / "cc.glm.logistic.hybrid")
    _, theirs_rows, their_order = _table(f"{theirs}.cc.glm.logistic.hybrid")
    assert order == their_order
    alone = 0
    for vid in order:
        if mine[vid]["#CHROM"] == "Y":
            assert all(mine[vid][c] == theirs_rows[vid][c] for c in ("POS", "REF", "ALT", "A1")), vid
            continue
        if all(_printed_equal(mine[vid][c], theirs_rows[vid][c]) for c in header):
            continue
        alone += 1
        ids = tmp_path / f"one-{vid}"
        ids.write_text(vid + "\n")
        single = _plink2(PLINK2_A74, tmp_path, files, str(cc), f"a74x{model}-{vid}", "--xchr-model", str(model),
                         "--extract", str(ids))
        row = _table(f"{single}.cc.glm.logistic.hybrid")[1][vid]
        assert all(_printed_equal(mine[vid][c], row[c]) for c in header), (vid, mine[vid], row)
    assert alone <= 3
    chroms = {mine[v]["#CHROM"] for v in order}
    assert {"X", "Y", "MT", "XY"} <= chroms


def test_no_text_writes_the_same_results_without_text_files(cc_data, ours, spark, tmp_path):
    """--no-text (large runs): results.parquet and the summaries as before, no per-phenotype text file."""
    from dash_spark.cli import main

    _, files, pheno, _, _ = cc_data
    res, out = ours
    quiet = tmp_path / "o"
    assert main(["-q", "scan", "--bfile", files.bfile, "--pheno", pheno, "--covar", files.covar, "--out", str(quiet),
                 "--no-plots", "--no-text"]) == 0
    assert not list(quiet.glob("*.glm.*")) and not list(quiet.glob("*.regenie"))
    a = pq.read_table(quiet / "results.parquet").sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    b = pq.read_table(res.results_path).sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    assert a.equals(b)
    assert (quiet / "summary.tsv").read_text() == (out / "summary.tsv").read_text()
