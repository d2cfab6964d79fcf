"""Filters and categorical covariates against plink2 with the same flags on the same files."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from dash_spark.bench.run import read_plink2_glm
from dash_spark.cli import main
from dash_spark.errors import ConfigError, InputError, ModelError
from dash_spark.scanner.filters import parse_chr_spec
from dash_spark.scanner.pipeline import ScanConfig, run_scan

from .oracle_data import make_files
from .test_plink2 import _plink2, _read_ours


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("filters")
    f = make_files(tmp, np.random.default_rng(11), n=400, m=300, missing=0.04, name="f")
    rng = np.random.default_rng(12)
    iids = [line.split()[1] for line in open(f.bfile + ".fam")]
    keep = rng.choice(iids, 330, replace=False).tolist()
    (tmp / "keep.txt").write_text("#FID\tIID\n" + "".join(f"{i}\t{i}\n" for i in keep) + "nobody\tnobody\n")
    (tmp / "remove.txt").write_text("".join(f"{i} {i}\n" for i in keep[:15]))  # FID IID: plink2 2.00a3.5 reads a bare column as FID
    ids = [f"rs{j}" for j in range(300)]
    (tmp / "extract.txt").write_text("\n".join(ids[::2] + ["rs_unknown"]) + "\n")
    (tmp / "exclude.txt").write_text("\n".join(ids[::6]) + "\n")
    # a categorical covariate (site) next to the numeric ones
    lines = open(f.covar).read().splitlines()
    sites = ["siteA", "siteB", "siteC"]
    cat = [lines[0] + " site"] + [ln + " " + sites[i % 3] for i, ln in enumerate(lines[1:])]
    (tmp / "cat.covar").write_text("\n".join(cat) + "\n")
    return f, tmp


FLAG_SETS = {
    "maf-geno-chr": ["--maf", "0.1", "--geno", "0.05", "--chr", "2"],
    "keep-remove-extract-exclude": ["--keep", "{tmp}/keep.txt", "--remove", "{tmp}/remove.txt",
                                    "--extract", "{tmp}/extract.txt", "--exclude", "{tmp}/exclude.txt"],
    "mac-range": ["--mac", "40", "--chr", "1", "--from-bp", "5000", "--to-bp", "12000"],
}


@pytest.mark.parametrize("name", sorted(FLAG_SETS))
def test_filters_match_plink2(files, tmp_path, spark, name):
    f, tmp = files
    flags = [x.format(tmp=tmp) for x in FLAG_SETS[name]]
    out = tmp_path / "plink"
    proc = subprocess.run([_plink2(), "--bfile", f.bfile, "--pheno", f.pheno, "--pheno-name", "pheno1",
                           "--covar", f.covar, "--glm", "hide-covar", "--out", str(out), *flags],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    theirs = read_plink2_glm(f"{out}.pheno1.glm.linear")
    opts = {}
    it = iter(flags)
    for flag in it:
        key = flag.lstrip("-").replace("-", "_")
        val = next(it)
        opts[key] = val if key in ("keep", "remove", "extract", "exclude", "chr") else (
            int(val) if key in ("from_bp", "to_bp") else float(val))
    res = run_scan(ScanConfig(bfile=f.bfile, pheno=f.pheno, covar=f.covar, pheno_name=("pheno1",),
                              out=str(tmp_path / "ours"), plots=False, **opts), spark=spark)
    ours = _read_ours(res.glm_paths["pheno1"])
    assert 10 < len(theirs["ID"]) < f.m  # the filters did something, and left something
    assert list(ours["ID"]) == [str(v) for v in theirs["ID"]]
    assert list(ours["ERRCODE"]) == [str(v) for v in theirs["ERRCODE"]]
    assert np.array_equal(ours["OBS_CT"].astype(int), theirs["OBS_CT"])
    ok = theirs["ERRCODE"] == "."
    for col in ("BETA", "SE", "P"):
        np.testing.assert_allclose(ours[col][ok].astype(float), theirs[col][ok].astype(float), rtol=6e-6)


def test_categorical_covariate_matches_plink2(files, tmp_path, spark):
    f, tmp = files
    out = tmp_path / "plink"
    proc = subprocess.run([_plink2(), "--bfile", f.bfile, "--pheno", f.pheno, "--pheno-name", "pheno2",
                           "--covar", str(tmp / "cat.covar"), "--glm", "hide-covar", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    theirs = read_plink2_glm(f"{out}.pheno2.glm.linear")
    res = run_scan(ScanConfig(bfile=f.bfile, pheno=f.pheno, covar=str(tmp / "cat.covar"), pheno_name=("pheno2",),
                              out=str(tmp_path / "ours"), plots=False), spark=spark)
    ours = _read_ours(res.glm_paths["pheno2"])
    assert list(ours["ERRCODE"]) == [str(v) for v in theirs["ERRCODE"]]
    ok = theirs["ERRCODE"] == "."
    np.testing.assert_allclose(ours["BETA"][ok].astype(float), theirs["BETA"][ok].astype(float), rtol=6e-6)
    np.testing.assert_allclose(ours["SE"][ok].astype(float), theirs["SE"][ok].astype(float), rtol=6e-6)
    # and the site effect really entered the model: results differ from the scan without it
    plain = _read_ours(run_scan(ScanConfig(bfile=f.bfile, pheno=f.pheno, covar=f.covar, pheno_name=("pheno2",),
                                           out=str(tmp_path / "plain"), plots=False), spark=spark).glm_paths["pheno2"])
    assert not np.allclose(plain["SE"][ok].astype(float), ours["SE"][ok].astype(float), rtol=1e-9)


def test_covar_variance_standardize_leaves_add_results_unchanged(files, tmp_path, spark):
    f, _ = files
    a = run_scan(ScanConfig(bfile=f.bfile, pheno=f.pheno, covar=f.covar, out=str(tmp_path / "a"), plots=False,
                            covar_variance_standardize=True), spark=spark)
    b = run_scan(ScanConfig(bfile=f.bfile, pheno=f.pheno, covar=f.covar, out=str(tmp_path / "b"), plots=False),
                 spark=spark)
    ga, gb = _read_ours(a.glm_paths["pheno1"]), _read_ours(b.glm_paths["pheno1"])
    ok = ga["ERRCODE"] == "."
    np.testing.assert_allclose(ga["BETA"][ok].astype(float), gb["BETA"][ok].astype(float), rtol=1e-10)


def test_chr_spec_parsing():
    assert parse_chr_spec("1-3,X, chr5") == ({"X", "5"}, [(1, 3)])
    with pytest.raises(ConfigError, match="runs backwards"):
        parse_chr_spec("5-2")


def test_chr_naming_no_variant_is_an_error(files, capsys):
    f, tmp = files
    code = main(["-q", "scan", "--bfile", f.bfile, "--pheno", f.pheno, "--covar", f.covar,
                 "--out", str(tmp / "never"), "--chr", "7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "f.bim" in err[0] and "--chr 7 names no variant" in err[0] and "chromosomes 1, 2" in err[0]
    assert not (tmp / "never").exists()


def test_keep_leaving_too_few_samples_names_the_numbers(files, tmp_path):
    f, _ = files
    iids = [line.split()[1] for line in open(f.bfile + ".fam")][:4]
    (tmp_path / "few.txt").write_text("\n".join(iids) + "\n")
    from dash_spark.scanner.model import scan_model

    with pytest.raises(ModelError, match=r"samples with complete data, but 4 covariates need at least 6"):
        scan_model(ScanConfig(bfile=f.bfile, pheno=f.pheno, covar=f.covar, out=str(tmp_path / "o"),
                               keep=str(tmp_path / "few.txt")))


def test_unknown_ids_in_filter_files_are_counted_and_warned(files, tmp_path, caplog):
    import logging

    from dash_spark.io.plink import read_bim
    from dash_spark.scanner.filters import variant_mask

    f, tmp = files
    with caplog.at_level(logging.WARNING, logger="dash_spark"):
        sel = variant_mask(read_bim(f.bfile + ".bim"), extract=str(tmp / "extract.txt"))
    assert sel.sum() == 150
    assert any("1 of 151 variant IDs are not in" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match="no variant is left"):
        (tmp_path / "none.txt").write_text("rs_nothing\n")
        variant_mask(read_bim(f.bfile + ".bim"), extract=str(tmp_path / "none.txt"))
