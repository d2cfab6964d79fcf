"""plink2's error codes on very sparse variants, the models plink2 or Hail accept (y ~ 0 + x, constant
covariates), a constant phenotype, ``--report-covariates`` and ``--gwas-ssf`` (checked by the GWAS
Catalog's own validator when its venv exists)."""

from __future__ import annotations

import gzip
import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dash_spark.bench.run import read_plink2_glm
from dash_spark.errors import ConfigError, InputError
from dash_spark.bench.simulate import write_bed
from dash_spark.scanner.pipeline import ScanConfig, run_scan
from dash_spark.scanner.model import scan_model
from dash_spark.stats.regression import ERRCODES

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "peer-data"
SSF_VENV = REPO / ".venv-ssf"


def _plink2() -> str:
    exe = shutil.which("plink2")
    if exe is None:
        pytest.fail("plink2 is not installed; `make test` installs Debian's plink2 package (or apt-get install plink2)")
    return exe


def _read_glm(path) -> dict[str, np.ndarray]:
    with open(path) as fh:
        header = fh.readline().rstrip("\n").lstrip("#").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in fh]
    return {name: np.array([r[i] for r in rows], dtype=object) for i, name in enumerate(header)}


def _write_table(path, iids, columns: dict[str, list]) -> str:
    """A plink2-style table (#FID IID ...); None is written NA."""
    with open(path, "w") as fh:
        fh.write("#FID\tIID\t" + "\t".join(columns) + "\n")
        for i, iid in enumerate(iids):
            vals = ["NA" if c[i] is None else repr(c[i]) for c in columns.values()]
            fh.write(f"{iid}\t{iid}\t" + "\t".join(vals) + "\n")
    return str(path)


def _run_plink2(bfile, pheno, covar, out) -> None:
    args = [_plink2(), "--bfile", bfile, "--pheno", pheno, "--glm", "hide-covar", "--threads", "1", "--out", out]
    if covar:
        args[5:5] = ["--covar", covar]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def _assert_same_as_plink2(ours_path, theirs_path):
    ours, theirs = _read_glm(ours_path), read_plink2_glm(theirs_path)
    assert list(ours["ID"]) == [str(v) for v in theirs["ID"]]
    assert list(ours["ERRCODE"]) == [str(e) for e in theirs["ERRCODE"]], \
        [(i, a, b) for i, a, b in zip(ours["ID"], ours["ERRCODE"], theirs["ERRCODE"]) if a != b]
    assert np.array_equal(ours["OBS_CT"].astype(np.int64), theirs["OBS_CT"])
    ok = theirs["ERRCODE"] == "."
    for col in ("BETA", "SE", "P"):
        np.testing.assert_allclose(ours[col][ok].astype(float), theirs[col][ok].astype(float), rtol=6e-6,
                                   atol=1e-300, err_msg=col)
    return ours


# -- plink2's error codes -----------------------------------------------------------------------


def _sparse_files(tmp: Path, rng) -> tuple[str, str, str, list[str]]:
    """60 samples, covariates age and sex (k = 3 with the intercept: 4 predictors with the
    variant); variants with as many calls as predictors, fewer, none, sparse and constant at
    once, monomorphic, one non-zero call, collinear with sex (also on its own calls only)."""
    n = 60
    iids = [f"s{i:02d}" for i in range(n)]
    sex = rng.integers(0, 2, n)
    sex[:6] = [0, 1, 0, 1, 0, 1]
    age = rng.uniform(40, 70, n)

    def sparse(values, rows):
        x = np.full(n, -1, dtype=np.int8)
        x[rows] = values
        return x

    females = np.flatnonzero(sex == 0)
    cases = {
        "normal1": rng.integers(0, 3, n), "normal2": rng.integers(0, 3, n),
        "mono0": np.zeros(n), "mono2": np.full(n, 2), "single": np.eye(n, dtype=np.int8)[7],
        "sexlinked": 2 * sex,
        "obs4": sparse([0, 1, 2, 1], [0, 1, 2, 3]),  # as many calls as predictors
        "obs4_const": sparse([1, 1, 1, 1], [0, 1, 2, 3]),  # too sparse and constant at once
        "obs3": sparse([0, 2, 1], [0, 1, 2]),
        "obs2_const": sparse([2, 2], [4, 5]),
        "obs0": np.full(n, -1),
        "obs5": sparse([0, 1, 2, 1, 0], [0, 1, 2, 3, 4]),  # one residual degree of freedom
        "obs6": sparse([0, 1, 2, 1, 0, 2], [0, 1, 2, 3, 4, 5]),
        "obs8_females": sparse([0, 1, 2, 1, 0, 2, 1, 1], females[:8]),  # sex constant on its calls
        "obs5_const": sparse([0, 0, 0, 0, 0], [10, 11, 12, 13, 14]),
        "obs10_single": sparse([0] * 9 + [1], list(range(20, 30))),
        "sex_on_calls": np.where(rng.random(n) < 0.3, -1, 2 * sex),
    }
    names = list(cases)
    G = np.column_stack([np.asarray(cases[k], dtype=np.int8) for k in names])
    bfile = str(tmp / "sparse")
    write_bed(bfile, n, [G], iids=iids, chrom=["1"] * len(names), pos=list(range(100, 100 * len(names) + 1, 100)),
              ids=names, alt=["A"] * len(names), ref=["G"] * len(names))
    y = 0.03 * age + 0.5 * sex + rng.normal(size=n)
    y2 = [None if i in (3, 17, 40) else float(v) for i, v in enumerate(y + rng.normal(size=n))]
    pheno = _write_table(tmp / "sparse.pheno", iids, {"y": [float(v) for v in y], "y2": y2})
    covar = _write_table(tmp / "sparse.covar", iids, {"age": [float(a) for a in age], "sex": [int(s) for s in sex]})
    return bfile, pheno, covar, names


def test_errcode_names_and_order_are_plink2s():
    """The codes we write are plink2's (its ``kGlmErrcodeStrs``, in its order), and UNFINISHED, which
    plink2 prints in ERRCODE for a fit that reached its iteration limit."""
    plink2 = ("", "SAMPLE_CT<=PREDICTOR_CT", "CONST_OMITTED_ALLELE", "CONST_ALLELE", "CORR_TOO_HIGH", "VIF_INFINITE",
              "VIF_TOO_HIGH", "SEPARATION", "RANK_DEFICIENT", "LOGISTIC_CONVERGE_FAIL", "FIRTH_CONVERGE_FAIL",
              "INVALID_RESULT")
    assert ERRCODES[0] == "." and ERRCODES[-1] == "UNFINISHED"
    positions = [plink2.index(code) for code in ERRCODES[1:-1]]
    assert positions == sorted(positions)


def test_sparse_variant_errcodes_match_plink2(tmp_path, spark, rng):
    bfile, pheno, covar, _ = _sparse_files(tmp_path, rng)
    _run_plink2(bfile, pheno, covar, str(tmp_path / "plink"))
    res = run_scan(ScanConfig(bfile=bfile, pheno=pheno, covar=covar, out=str(tmp_path / "ours"), plots=False),
                   spark=spark)
    for ph in ("y", "y2"):
        ours = _assert_same_as_plink2(res.glm_paths[ph], tmp_path / f"plink.{ph}.glm.linear")
        err = dict(zip(ours["ID"], ours["ERRCODE"]))
        for case in ("obs4", "obs4_const", "obs3", "obs2_const", "obs0"):
            assert err[case] == "SAMPLE_CT<=PREDICTOR_CT", (ph, case)
        for case in ("mono0", "mono2", "obs5_const"):
            assert err[case] == "CONST_OMITTED_ALLELE", (ph, case)
        # obs5 has one residual degree of freedom for y, none for y2 (one of its samples lacks y2)
        assert err["normal1"] == "." and err["obs5"] == ("SAMPLE_CT<=PREDICTOR_CT" if ph == "y2" else ".")


def _hail_linreg_bed(tmp: Path) -> tuple[str, list[str]]:
    """Hail's regressionLinear.vcf as a .bed (ALT dosage; ./. missing), read with a plain parser."""
    text = (PEER / "hail-linreg" / "regressionLinear.vcf").read_text().splitlines()
    lines = [ln.split("\t") for ln in text if not ln.startswith("##")]
    iids = lines[0][9:]
    rows = lines[1:]
    G = np.array([[-1 if g.split(":")[0].startswith(".") else sum(int(a) for a in g.split(":")[0].split("/"))
                   for g in r[9:]] for r in rows], dtype=np.int8).T
    bfile = str(tmp / "hail")
    write_bed(bfile, len(iids), [G], iids=iids, chrom=[r[0] for r in rows], pos=[int(r[1]) for r in rows],
              ids=[f"v{r[1]}" for r in rows], alt=[r[4] for r in rows], ref=[r[3] for r in rows])
    return bfile, iids


def _hail_tables(tmp: Path, iids, shift: float = 0.0) -> tuple[str, str]:
    """Hail's phenotype (0 = missing, as Hail reads it; plus ``shift``: plink2 reads a phenotype of
    1s and 2s as case/control) and covariates for the .fam's samples."""
    def read(name):
        with open(PEER / "hail-linreg" / name) as fh:
            head = fh.readline().split()
            return head[1:], {r[0]: r[1:] for r in (ln.split() for ln in fh)}

    _, ph = read("regressionLinear.pheno")
    cnames, cv = read("regressionLinear.cov")
    pheno = {"Pheno": [None if iid not in ph or float(ph[iid][0]) == 0 else float(ph[iid][0]) + shift
                       for iid in iids]}
    covar = {c: [float(cv[iid][j]) if iid in cv else None for iid in iids] for j, c in enumerate(cnames)}
    return _write_table(tmp / "hail.pheno", iids, pheno), _write_table(tmp / "hail.covar", iids, covar)


@pytest.mark.skipif(not (PEER / "hail-linreg").is_dir(), reason="../shared/peer-data/hail-linreg is not here")
def test_hail_linreg_errcodes_match_plink2(tmp_path, spark):
    """Hail's 10-variant test file (6 analysed samples, 2 covariates): most variants are sparse."""
    bfile, iids = _hail_linreg_bed(tmp_path)
    pheno, covar = _hail_tables(tmp_path, iids, shift=0.5)  # the intercept absorbs the shift
    _run_plink2(bfile, pheno, covar, str(tmp_path / "plink"))
    res = run_scan(ScanConfig(bfile=bfile, pheno=pheno, covar=covar, out=str(tmp_path / "ours"), plots=False),
                   spark=spark)
    ours = _assert_same_as_plink2(res.glm_paths["Pheno"], tmp_path / "plink.Pheno.glm.linear")
    assert "SAMPLE_CT<=PREDICTOR_CT" in set(ours["ERRCODE"])


# -- y ~ 0 + x -------------------------------------------------------------------------------------


@pytest.mark.skipif(not (PEER / "hail-linreg").is_dir(), reason="../shared/peer-data/hail-linreg is not here")
def test_no_intercept_no_covariates_matches_hail(tmp_path, spark):
    """Hail's test_linear_regression_without_intercept (covariates=[]): its values for position 1
    (R's lm(y ~ 0 + x)), with Hail's mean imputation. Its phenotype is coded 1/2, which plink2 reads
    as case/control (and fits by logistic regression, as we do without the flag): Hail and R fit it
    linearly, so the test asks for that (--linear-for-binary)."""
    bfile, iids = _hail_linreg_bed(tmp_path)
    pheno, _ = _hail_tables(tmp_path, iids)
    logistic = run_scan(ScanConfig(bfile=bfile, pheno=pheno, no_intercept=True, missing_genotypes="mean",
                                   out=str(tmp_path / "logistic"), plots=False), spark=spark)
    assert [p.rsplit(".glm.", 1)[1] for p in logistic.glm_paths.values()] == ["logistic.hybrid"]
    res = run_scan(ScanConfig(bfile=bfile, pheno=pheno, no_intercept=True, missing_genotypes="mean",
                              linear_for_binary=True, out=str(tmp_path / "ours"), plots=False), spark=spark)
    import pyarrow.parquet as pq

    tbl = pq.read_table(res.results_path).sort_by("variant_index").to_pylist()
    row = next(r for r in tbl if r["pos"] == 1)
    assert row["a1"] == "T" and row["obs_ct"] == 6
    assert row["beta"] == pytest.approx(1.5, abs=1e-6)
    assert row["se"] == pytest.approx(1.161895, abs=1e-6)
    assert row["t_stat"] == pytest.approx(1.290994, abs=1e-6)
    assert row["p"] == pytest.approx(0.25317, abs=1e-6)


@pytest.mark.parametrize("mode", ["drop", "mean"])
def test_no_intercept_no_covariates_matches_statsmodels(tmp_path, spark, rng, mode):
    """y ~ 0 + x (k = 0) on data with missing calls and missing phenotype values, both modes."""
    import pyarrow.parquet as pq
    import statsmodels.api as sm

    n, m = 150, 60
    iids = [f"i{i}" for i in range(n)]
    G = rng.binomial(2, rng.uniform(0.1, 0.9, m), size=(n, m)).astype(np.int8)
    G[rng.random((n, m)) < 0.05] = -1
    G[:, 5] = 0  # monomorphic: CONST_OMITTED_ALLELE
    write_bed(str(tmp_path / "g"), n, [G], iids=iids, chrom=["1"] * m, pos=list(range(1, m + 1)),
              ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    y = 2.0 + 0.3 * np.where(G[:, 3] < 0, 0, G[:, 3]) + rng.normal(size=n)
    ymiss = rng.random(n) < 0.1
    pheno = _write_table(tmp_path / "g.pheno", iids, {"y": [None if b else float(v) for v, b in zip(y, ymiss)]})
    res = run_scan(ScanConfig(bfile=str(tmp_path / "g"), pheno=pheno, no_intercept=True, missing_genotypes=mode,
                              count_alt=True, out=str(tmp_path / "ours"), plots=False), spark=spark)
    tbl = pq.read_table(res.results_path).sort_by("variant_index").to_pydict()
    assert tbl["errcode"][5] == "CONST_OMITTED_ALLELE"
    yv = y[~ymiss]
    for j in range(m):
        if j == 5:
            continue
        x = G[~ymiss, j].astype(float)
        x[x < 0] = np.nan
        rows = ~np.isnan(x)
        if mode == "mean":
            x = np.where(rows, x, np.nanmean(x))
            rows = np.ones(len(x), bool)
        fit = sm.OLS(yv[rows], x[rows]).fit()  # no constant: the regression through the origin
        assert tbl["errcode"][j] == "."
        assert tbl["obs_ct"][j] == rows.sum()
        np.testing.assert_allclose([tbl["beta"][j], tbl["se"][j], tbl["t_stat"][j], tbl["p"][j]],
                                   [fit.params[0], fit.bse[0], fit.tvalues[0], fit.pvalues[0]], rtol=1e-9)
    # the additive statistics (stores, parties, the API's compress) with k = 0 give the same
    from dash_spark.api import compress

    S = compress(spark, str(tmp_path / "g"), pheno, intercept=False, missing_genotypes=mode)
    fin = S.finalize(count_alt=True).sort_by("variant_index").to_pydict()
    assert fin["errcode"] == tbl["errcode"]
    for col in ("beta", "se", "p"):
        np.testing.assert_allclose(np.array(fin[col], dtype=float), np.array(tbl[col], dtype=float), rtol=1e-9)


# -- constant phenotype, constant or empty covariates -----------------------------------------------


def _small_files(tmp: Path, rng, *, y=None, covar=None):
    n, m = 40, 5
    iids = [f"i{i}" for i in range(n)]
    G = rng.integers(0, 3, (n, m)).astype(np.int8)
    write_bed(str(tmp / "s"), n, [G], iids=iids, chrom=["1"] * m, pos=list(range(1, m + 1)),
              ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    y = {"y": [float(v) for v in rng.normal(size=n)]} if y is None else y
    pheno = _write_table(tmp / "s.pheno", iids, y)
    cov = _write_table(tmp / "s.covar", iids, covar(n)) if covar else None
    return str(tmp / "s"), pheno, cov, iids


def test_constant_phenotype_is_refused(tmp_path, rng):
    n = 40
    vals = [None if i % 7 == 0 else 1.5 for i in range(n)]  # constant once the missing values are dropped
    bfile, pheno, _, _ = _small_files(tmp_path, rng, y={"ok": [float(v) for v in rng.normal(size=n)], "flat": vals})
    with pytest.raises(InputError) as exc:
        scan_model(ScanConfig(bfile=bfile, pheno=pheno, out=str(tmp_path / "o")))
    msg = str(exc.value)
    assert "'flat'" in msg and pheno in msg and "1.5" not in msg and "\n" not in msg


def test_constant_and_empty_covariates_are_excluded_with_a_warning(tmp_path, spark, rng, caplog):
    def covar(n):
        return {"age": [float(a) for a in rng.uniform(40, 70, n)], "empty": [None] * n, "batch": [3.0] * n,
                "pc1": [float(v) for v in rng.normal(size=n)]}

    bfile, pheno, cov, _ = _small_files(tmp_path, rng, covar=covar)
    with caplog.at_level(logging.WARNING, logger="dash_spark"):
        res = run_scan(ScanConfig(bfile=bfile, pheno=pheno, covar=cov, out=str(tmp_path / "a"), plots=False,
                                  report_covariates=True), spark=spark)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'empty'" in warned and "'batch'" in warned and "'age'" not in warned
    ref = run_scan(ScanConfig(bfile=bfile, pheno=pheno, covar=cov, covar_name=("age", "pc1"),
                              out=str(tmp_path / "b"), plots=False), spark=spark)
    assert Path(res.glm_paths["y"]).read_text() == Path(ref.glm_paths["y"]).read_text()
    lines = (Path(res.out) / "y.covariates.tsv").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines[1:]] == ["(intercept)", "age", "pc1"]


def test_no_intercept_keeps_a_constant_covariate(tmp_path, rng):
    """Without an intercept a constant covariate is the intercept: kept (an all-zero one is not)."""
    def covar(n):
        return {"one": [1.0] * n, "zero": [0.0] * n, "age": [float(a) for a in rng.uniform(40, 70, n)]}

    bfile, pheno, cov, _ = _small_files(tmp_path, rng, covar=covar)
    model = scan_model(ScanConfig(bfile=bfile, pheno=pheno, covar=cov, no_intercept=True, out=str(tmp_path / "o")))
    assert model.covariates == ("one", "age")


# -- --report-covariates ----------------------------------------------------------------------------


def test_report_covariates_matches_statsmodels(tmp_path, spark):
    import pandas as pd
    import statsmodels.api as sm

    from .oracle_data import COVARS, PHENOS, make_files

    files = make_files(tmp_path, np.random.default_rng(11), n=300, m=220, name="rc")
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"),
                              plots=False, report_covariates=True), spark=spark)
    fam = [ln.split()[1] for ln in Path(files.bfile + ".fam").read_text().splitlines()]
    ph = pd.read_csv(files.pheno, sep="\t", na_values=["NA", "nan", "-9"], keep_default_na=False).set_index("IID")
    cv = pd.read_csv(files.covar, sep=" ", na_values=["NA"], keep_default_na=False).set_index("IID")
    for name in PHENOS:
        df = pd.DataFrame(index=fam).join(ph[[name]]).join(cv[list(COVARS)]).dropna()
        fit = sm.OLS(df[name].to_numpy(), sm.add_constant(df[list(COVARS)].to_numpy(), prepend=True)).fit()
        got = pd.read_csv(Path(res.out) / f"{name}.covariates.tsv", sep="\t")
        assert list(got.columns) == ["covariate", "beta", "se", "t_stat", "p", "obs_ct"]
        assert list(got["covariate"]) == ["(intercept)", *COVARS]
        assert (got["obs_ct"] == len(df)).all()
        for col, ref in (("beta", fit.params), ("se", fit.bse), ("t_stat", fit.tvalues), ("p", fit.pvalues)):
            np.testing.assert_allclose(got[col].to_numpy(), ref, rtol=1e-9, err_msg=f"{name} {col}")


# -- --gwas-ssf -------------------------------------------------------------------------------------


def test_gwas_ssf_options_are_checked(tmp_path):
    base = dict(bfile="x", pheno="p", out=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--genome-assembly"):
        ScanConfig(**base, gwas_ssf=True)
    with pytest.raises(ConfigError, match="Name the assembly"):
        ScanConfig(**base, gwas_ssf=True, genome_assembly="GRCh99")
    with pytest.raises(ConfigError, match="only used by --gwas-ssf"):
        ScanConfig(**base, genome_assembly="GRCh38")
    ScanConfig(**base, gwas_ssf=True, genome_assembly="GRCh37")
    with pytest.raises(ConfigError, match="--features"):
        ScanConfig(features="f.parquet", feature_samples="s.txt", pheno="p", out=base["out"], gwas_ssf=True,
                   genome_assembly="GRCh38")
    for extra in (dict(gwas_ssf=True, genome_assembly="GRCh38"), dict(report_covariates=True)):
        with pytest.raises(ConfigError, match="local --out"):
            ScanConfig(bfile="x", pheno="p", out="hdfs://nn/results", **extra)


def test_ssf_chromosome_codes():
    from dash_spark.outputs.gwas_ssf import ssf_chromosomes

    names = np.array(["1", "chr22", "X", "chrX", "23", "XY", "25", "Y", "24", "MT", "chrM", "26", "GL000192.1", "0"])
    assert ssf_chromosomes(names).tolist() == [1, 22, 23, 23, 23, 23, 23, 24, 24, 25, 25, 25, 0, 0]


def _ssf_validate(path: Path, *options: str) -> subprocess.CompletedProcess:
    """The GWAS Catalog's validator, strict: ``gwas-ssf validate`` without ``-i`` (which would allow
    p-values of 0 because the metadata names the analysis software)."""
    exe = SSF_VENV / "bin" / "gwas-ssf"
    return subprocess.run([str(exe), "validate", *options, str(path)], capture_output=True, text=True, timeout=600)


_META_CHECK = """
import sys, yaml
from gwas_sumstats_tools.schema.metadata import SumStatsMetadata
doc = yaml.safe_load(open(sys.argv[1]))
m = (getattr(SumStatsMetadata, "model_validate", None) or SumStatsMetadata.parse_obj)(doc)
assert str(m.genome_assembly) == doc["genome_assembly"] and m.samples[0].sample_size > 0
print("metadata ok")
"""


def _ssf_meta_validate(path: Path) -> None:
    """The metadata file against the Catalog tools' own metadata model (pydantic)."""
    proc = subprocess.run([str(SSF_VENV / "bin" / "python"), "-c", _META_CHECK, f"{path}-meta.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "metadata ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def _read_ssf(path: Path) -> tuple[list[str], list[list[str]]]:
    with gzip.open(path, "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        return header, [ln.rstrip("\n").split("\t") for ln in fh]


def test_gwas_ssf_underflow_uses_neg_log10_column(tmp_path):
    """A p-value below float64's range switches column 8 to neg_log_10_p_value for the file; untested
    variants and unrepresentable contigs or alleles are left out; rows sorted by chromosome, position."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dash_spark.outputs.gwas_ssf import ExtraOutputs, write_ssf
    from dash_spark.stats.results import RESULT_SCHEMA

    rows = [  # chrom, pos, id, ref, alt, a1, p, nlp, errcode
        ("X", 50, "rs7", "A", "G", "G", 0.5, 0.30103, "."),
        ("2", 10, "v2", "C", "T", "C", 0.0, 400.5, "."),
        ("2", 5, "rs12", "C", "T", "T", 1e-10, 10.0, "."),
        ("2", 7, "v3", "C", "T", "T", None, None, "CONST_OMITTED_ALLELE"),
        ("GL1", 7, "v4", "C", "T", "T", 0.1, 1.0, "."),
        ("3", 7, "v5", "C", "<DEL>", "C", 0.1, 1.0, "."),
        ("4", 9, "rs9", "a", "g", "g", 0.01, 2.0, "."),  # lower-case bases are written upper-case
    ]
    # one tested variant on every autosome (the Catalog's validator wants all 22)
    rows += [(str(c), 1, f"f{c}", "A", "C", "C", 0.5, 0.30103, ".") for c in range(1, 23)]
    cols = {f.name: [] for f in RESULT_SCHEMA}
    for i, (chrom, pos, vid, ref, alt, a1, p, nlp, err) in enumerate(rows):
        tested = err == "."
        vals = dict(variant_index=i, chrom=chrom, pos=pos, id=vid, ref=ref, alt=alt, a1=a1, a1_freq=0.25, mach_r2=0.9,
                    obs_ct=100, beta=0.5 if tested else None, se=0.1 if tested else None,
                    t_stat=5.0 if tested else None, p=p, neg_log10_p=nlp, phenotype="y", errcode=err, firth=None)
        for k, v in vals.items():
            cols[k].append(v)
    (tmp_path / "r").mkdir()
    pq.write_table(pa.table(cols, schema=RESULT_SCHEMA), tmp_path / "r" / "part-0.parquet")
    extra = ExtraOutputs(gwas_ssf=True, genome_assembly="GRCh37", covariates=("(intercept)", "age"),
                         sample_sizes={"y": 100}, a1freq_floor=0.01)
    out = tmp_path / "y.ssf.tsv.gz"
    write_ssf(str(out), str(tmp_path / "r"), "y", extra)
    header, body = _read_ssf(out)
    assert header == ["chromosome", "base_pair_location", "effect_allele", "other_allele", "beta", "standard_error",
                      "effect_allele_frequency", "neg_log_10_p_value", "variant_id", "rsid", "n"]
    assert [(int(r[0]), int(r[1])) for r in body] == sorted((int(r[0]), int(r[1])) for r in body)
    assert len(body) == 4 + 22
    body = [r for r in body if not r[8].endswith("_A_C")]
    assert [r[:4] for r in body] == [["2", "5", "T", "C"], ["2", "10", "C", "T"], ["4", "9", "G", "A"],
                                     ["23", "50", "G", "A"]]
    assert [r[7] for r in body] == ["10", "400.5", "2", "0.30103"]
    assert [r[8:] for r in body] == [["2_5_C_T", "rs12", "100"], ["2_10_C_T", "#NA", "100"], ["4_9_A_G", "rs9", "100"],
                                     ["23_50_A_G", "rs7", "100"]]
    meta = (tmp_path / "y.ssf.tsv.gz-meta.yaml").read_text()
    for line in ('genome_assembly: "GRCh37"', 'coordinate_system: "1-based"', "- sample_size: 100",
                 "is_sorted: true", '- "age"', 'data_file_name: "y.ssf.tsv.gz"', "minor_allele_freq_lower_limit: 0.01"):
        assert line in meta
    assert "(intercept)" not in meta
    if (SSF_VENV / "bin" / "gwas-ssf").exists():
        proc = _ssf_validate(out, "--min-rows", "1")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        _ssf_meta_validate(out)


def test_gwas_ssf_of_a_100k_variant_scan_passes_the_catalog_validator(tmp_path, spark):
    """200 samples x 100,000 variants (missing calls, monomorphic variants), two phenotypes."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dash_spark.bench.simulate import simulate_cohort

    # the validator wants >= 100,000 rows and all 22 autosomes; ~2% of variants are untested
    co = simulate_cohort(tmp_path / "data", n_samples=200, n_variants=104_000, n_phenotypes=2, n_chrom=22,
                         missing_rate=0.01, pheno_missing_rate=0.05, n_monomorphic=20, seed=5)
    t0 = time.time()
    res = run_scan(ScanConfig(bfile=co.bfile, pheno=co.pheno, covar=co.covar, out=str(tmp_path / "o"), plots=False,
                              gwas_ssf=True, genome_assembly="GRCh38"), spark=spark)
    scan_s = time.time() - t0
    tbl = pq.read_table(res.results_path)
    for name in co.pheno_names:
        path = Path(res.out) / f"{name}.ssf.tsv.gz"
        header, body = _read_ssf(path)
        assert header[:8] == ["chromosome", "base_pair_location", "effect_allele", "other_allele", "beta",
                              "standard_error", "effect_allele_frequency", "p_value"]
        mine = tbl.filter(pc.equal(tbl["phenotype"], name))
        tested = mine.filter(pc.equal(mine["errcode"], "."))
        assert len(body) == tested.num_rows >= 100_000
        key = np.array([(int(r[0]), int(r[1])) for r in body])
        assert np.all(np.diff(key[:, 0] * 10**10 + key[:, 1]) > 0)  # sorted
        assert all(len(r) == 11 and "" not in r for r in body)
        meta = Path(f"{path}-meta.yaml").read_text()
        assert f"- sample_size: {max(tested['obs_ct'].to_pylist())}" in meta
        if not (SSF_VENV / "bin" / "gwas-ssf").exists():
            continue
        t1 = time.time()
        proc = _ssf_validate(path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        _ssf_meta_validate(path)
        logging.getLogger("dash_spark").info("gwas-ssf validate %s: %.1f s (scan %.1f s)", name,
                                             time.time() - t1, scan_s)
    if not (SSF_VENV / "bin" / "gwas-ssf").exists():
        pytest.skip(f"the GWAS Catalog validator is not installed ({SSF_VENV}/bin/gwas-ssf; `make test` "
                    "creates it with pip install gwas-sumstats-tools when the network allows); the file checks passed")
