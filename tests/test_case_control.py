"""Case/control phenotypes are never analysed linearly by accident.

plink2 reads a phenotype column whose values are all 1/2 (0, -9 and NA missing), or 0/1 with
``--1``, as case/control and fits it by logistic regression. dash-spark does the same (the fit
itself is checked in ``test_logistic.py``) and says which model each phenotype got; the statistics
of stores and studies, which are linear, refuse such a phenotype with one line naming it, unless
``--linear-for-binary`` asks for linear regression, which then follows plink2's missing codes
(checked against statsmodels). Which columns are case/control is checked against plink2's own
reading of the same file (the phenotypes it writes a ``.glm.logistic.hybrid`` for).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.cli import main
from dash_spark.errors import ConfigError
from dash_spark.scanner.pipeline import ScanConfig, run_scan
from dash_spark.scanner.model import case_control_columns

from .oracle_data import make_files
from .test_bad_input import assert_input_error, run_cli

COLUMNS = {
    "cc12": lambda r, n: r.choice(["1", "2"], n),
    "cc_missing": lambda r, n: r.choice(["1", "2", "0", "-9", "NA"], n),
    "zero_one": lambda r, n: r.choice(["0", "1"], n, p=[0.3, 0.7]),
    "three": lambda r, n: r.choice(["1", "2", "3"], n),
    "halves": lambda r, n: r.choice(["1", "2", "1.5"], n),
    "quant": lambda r, n: np.round(r.normal(size=n), 4).astype(str),
}


@pytest.fixture(scope="module")
def cc_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cc")
    files = make_files(tmp, np.random.default_rng(5), n=240, m=220, missing=0.02)
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    rng = np.random.default_rng(6)
    cols = {name: make(rng, len(iids)) for name, make in COLUMNS.items()}
    pheno = tmp / "cc.pheno"
    with open(pheno, "w") as fh:
        fh.write("#FID\tIID\t" + "\t".join(COLUMNS) + "\n")
        for i, iid in enumerate(iids):
            fh.write(f"{iid}\t{iid}\t" + "\t".join(cols[c][i] for c in COLUMNS) + "\n")
    return tmp, files, str(pheno), cols


def _plink2_binary(tmp, files, pheno, *extra) -> set[str]:
    out = tmp / ("plink" + "".join(extra).replace("-", ""))
    subprocess.run(["plink2", "--bfile", files.bfile, "--pheno", pheno, *extra, "--glm", "allow-no-covars",
                    "--out", str(out), "--threads", "1"], capture_output=True, text=True)
    binary = {p.name[len(out.name) + 1:].split(".glm.")[0] for p in tmp.glob(out.name + ".*.glm.logistic*")}
    log = (tmp / (out.name + ".log")).read_text()
    assert "binary" in log  # plink2 says how many it read as binary (it may stop on an all-control one)
    return binary | ({"zero_one"} if "'zero_one' are controls" in log else set())


@pytest.mark.parametrize("ones", [False, True], ids=["1/2 coding", "--1"])
def test_detection_agrees_with_plink2(cc_files, ones):
    tmp, files, pheno, cols = cc_files
    theirs = _plink2_binary(tmp, files, pheno, *(["--1"] if ones else []))
    values = np.array([[np.nan if v in ("NA", "-9") else float(v) for v in cols[c]] for c in COLUMNS]).T
    ours = {c for c, b in zip(COLUMNS, case_control_columns(values, ones)) if b}
    assert ours == theirs, (ours, theirs)
    assert ours == ({"zero_one"} if ones else {"cc12", "cc_missing", "zero_one"})


def test_case_control_gets_logistic_and_statistics_refuse(cc_files, capsys, tmp_path):
    """A scan fits them by logistic regression, with plink2's file names, and logs each one's model;
    a store batch or party (linear sums) refuses them before any Spark work, naming them."""
    _, files, pheno, _ = cc_files
    out = tmp_path / "o"
    # (zero_one, 1/2-coded, has no case: plink2 stops on it, and so do we, see test_logistic.py)
    rc, _, said = run_cli(capsys, ["scan", "--bfile", files.bfile, "--pheno", pheno, "--pheno-name",
                                   "cc12,cc_missing,three,halves,quant", "--out", str(out), "--no-plots"])
    assert rc == 0, said
    assert sorted(p.name for p in out.glob("*.glm.*")) == [
        "cc12.glm.logistic.hybrid", "cc_missing.glm.logistic.hybrid", "halves.glm.linear", "quant.glm.linear",
        "three.glm.linear"]
    assert "3 phenotype(s) quantitative (linear regression), 2 case/control (logistic regression" in said
    assert "phenotype cc12: case/control" in said and "logistic regression, Firth fallback" in said
    rc, _, err = run_cli(capsys, ["-q", "compress", "--store", str(tmp_path / "s"), "--batch", "a", "--bfile",
                                  files.bfile, "--pheno", pheno])
    line = assert_input_error(rc, err, str(tmp_path / "s"), "cc12, cc_missing, zero_one are case/control as plink2 "
                              "reads them", "--linear-for-binary", "logistic")
    assert "quant" not in line.split("are case/control")[0]
    from dash_spark.api import compress
    from dash_spark.scanner.sources import open_bfile

    with pytest.raises(ConfigError, match="case/control"):
        compress(None, open_bfile(files.bfile), pheno)  # a batch or party refuses before any Spark work


def test_linear_for_binary_equals_statsmodels(cc_files, spark, tmp_path):
    """--linear-for-binary: OLS of the 1/2 values with 0, -9 and NA missing, as statsmodels fits it."""
    import statsmodels.api as sm
    from bed_reader import open_bed

    _, files, pheno, cols = cc_files
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=pheno, covar=files.covar, pheno_name=("cc_missing",),
                              linear_for_binary=True, out=str(tmp_path / "o"), plots=False), spark=spark)
    got = pq.read_table(res.results_path).to_pandas().sort_values("variant_index")
    with open_bed(files.bfile + ".bed", count_A1=True) as bed:  # ALT (.bim column 5) dosages
        X = bed.read(dtype="float64")
    y = np.array([np.nan if v in ("NA", "-9", "0") else float(v) for v in cols["cc_missing"]])
    lines = [ln.split() for ln in open(files.covar) if ln.strip()]
    rows = {r[1]: [np.nan if v == "NA" else float(v) for v in r[2:]] for r in lines[1:]}
    iids = [ln.split()[1] for ln in open(files.bfile + ".fam")]
    C = np.array([rows.get(i, [np.nan] * (len(lines[0]) - 2)) for i in iids])
    checked = 0
    for j, row in enumerate(got.itertuples()):
        x = X[:, j]
        ok = ~np.isnan(y) & ~np.isnan(x) & ~np.isnan(C).any(axis=1)
        if np.ptp(x[ok]) == 0 or row.errcode != ".":  # no fit (constant, or collinear with sex)
            continue
        fit = sm.OLS(y[ok], np.column_stack([x[ok], np.ones(ok.sum()), C[ok]])).fit()
        sign = 1.0 if row.a1 == row.alt else -1.0
        assert row.obs_ct == ok.sum()
        np.testing.assert_allclose(sign * row.beta, fit.params[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(row.se, fit.bse[0], rtol=1e-9)
        checked += 1
    assert checked > 50


def test_store_records_the_flag(cc_files, spark, tmp_path):
    """A store fixes --linear-for-binary at creation: its batches are analysed alike."""
    from dash_spark.studies.store import open_store

    _, files, pheno, _ = cc_files
    store = str(tmp_path / "store")
    assert main(["-q", "compress", "--store", store, "--batch", "a", "--bfile", files.bfile, "--pheno", pheno,
                 "--pheno-name", "cc12,quant", "--linear-for-binary"]) == 0
    assert open_store(store).settings.model.linear_for_binary is True
