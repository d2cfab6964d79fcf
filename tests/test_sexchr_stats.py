"""chrX, chrY and chrMT in stores and multi-party studies, as plink2 models them.

A store batch or a party sums its own samples without knowing the pooled ones, so it keeps chrX's
sums over its samples of known sex with a SEX column, chrY's over its males, and the moments of
those sample sets; finalize decides from the pooled sums what plink2 decides from the pooled samples
(SEX in the chrX model where a phenotype's samples have both sexes; chrY only with males). Checked:
batches of one sex each, refreshed and withdrawn, and a three-party study equal the pooled scan (1e-9)
and plink2 ``--glm`` on the pooled files (its printed digits); pooled samples of one sex.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from dash_spark.bench.run import read_plink2_glm
from dash_spark.errors import ModelError
from dash_spark.scanner.pipeline import ScanConfig, run_scan
from dash_spark.studies.store import run_compress, run_refresh

from .oracle_data import split_bed
from .test_sexchr import sexdata  # noqa: F401 - the fixture
from .test_store import assert_same_results


def _sex(prefix: str) -> np.ndarray:
    return np.array([int(line.split()[4]) for line in open(prefix + ".fam") if line.strip()])


def _same_as_plink2(results: str, plink_prefix: str) -> None:
    tbl = pq.read_table(results).to_pandas()
    for phen in ("y1", "y2"):
        theirs = read_plink2_glm(f"{plink_prefix}.{phen}.glm.linear")
        ours = tbl[tbl.phenotype == phen].sort_values("variant_index")
        assert list(ours.id) == [str(v) for v in theirs["ID"]]
        assert list(ours.a1) == [str(v) for v in theirs["A1"]]
        assert list(ours.obs_ct) == list(theirs["OBS_CT"])
        ok = theirs["ERRCODE"] == "."
        assert ok.sum() > len(ok) - 3
        for mine, col in (("a1_freq", "A1_FREQ"), ("beta", "BETA"), ("se", "SE"), ("p", "P")):
            np.testing.assert_allclose(ours[mine].to_numpy()[ok].astype(float), theirs[col][ok].astype(float),
                                       rtol=6e-6, atol=1e-300, err_msg=f"{phen} {col}")
        assert {"X", "Y", "MT", "XY", "1"} <= set(ours.chrom)


@pytest.fixture(scope="module")
def pooled(sexdata, spark):  # noqa: F811
    tmp, prefix, pheno, covar = sexdata
    res = run_scan(ScanConfig(bfile=prefix, pheno=pheno, covar=covar, out=str(tmp / "pooled-scan"), plots=False),
                   spark=spark)
    out = tmp / "plink-pooled"
    proc = subprocess.run(["plink2", "--bfile", prefix, "--pheno", pheno, "--covar", covar, "--glm", "hide-covar",
                           "cols=+a1freq", "--threads", "1", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    return res.results_path, str(out)


def test_store_of_one_sex_per_batch_equals_pooled_scan_and_plink2(sexdata, pooled, spark):  # noqa: F811
    """Batch ``f``: the females and the samples of unknown sex; batch ``m``: the males. Neither batch
    alone has both sexes; the refreshed store has, and gives plink2's pooled answer. A withdrawal of
    samples of both sexes equals the scan without them."""
    tmp, prefix, pheno, covar = sexdata
    sex = _sex(prefix)
    parts = split_bed(prefix, tmp, {"bf": np.flatnonzero(sex != 1), "bm": np.flatnonzero(sex == 1)})
    store = str(tmp / "store")
    run_compress(store, "f", {"bfile": parts["bf"], "pheno": pheno, "covar": covar}, spark=spark)
    out = str(tmp / "store-out")
    run_refresh(store, out, add=("m", {"bfile": parts["bm"], "pheno": pheno, "covar": covar}), spark=spark,
                plots=False)
    assert_same_results(pooled[0], f"{out}/results.parquet")
    _same_as_plink2(f"{out}/results.parquet", pooled[1])
    iids = [line.split()[1] for line in open(prefix + ".fam")]
    gone = tmp / "gone.txt"
    gone.write_text("".join(f"{iids[i]}\n" for i in range(0, 200, 4)))  # 50 samples, both sexes
    out_w = str(tmp / "store-withdrawn")
    run_refresh(store, out_w, withdraw=str(gone), spark=spark, plots=False)
    expect = run_scan(ScanConfig(bfile=prefix, pheno=pheno, covar=covar, remove=str(gone), plots=False,
                                 out=str(tmp / "scan-removed")), spark=spark)
    assert_same_results(expect.results_path, f"{out_w}/results.parquet")
    # forward selection does not condition these models yet: refused, nothing written
    from dash_spark.studies.select import run_select

    with pytest.raises(ModelError, match="chrX/Y/MT variants, which forward selection does not model"):
        run_select(store, str(tmp / "selected"), pheno_name="y1", spark=spark)
    assert not (tmp / "selected").exists()


def test_three_party_study_equals_pooled_scan(sexdata, pooled, tmp_path):  # noqa: F811
    from .party_flow import Study

    _, prefix, pheno, covar = sexdata
    sex = _sex(prefix)
    parties = ("alice", "bob", "carol")
    # alice has no males, bob no females: the pooled samples decide, not any party's
    idx = {"alice": np.flatnonzero(sex != 1)[::2], "bob": np.flatnonzero(sex == 1)[::2]}
    idx["carol"] = np.setdiff1d(np.arange(len(sex)), np.concatenate(list(idx.values())))
    files = split_bed(prefix, tmp_path, idx)
    st = Study(tmp_path, parties)
    manifest = st.manifest(parties=parties)
    st.join(manifest, parties)
    for p in parties:
        code, _, err = st.compress(manifest, p, "--pheno", pheno, "--covar", covar, "--bfile", files[p])
        assert code == 0, err[-3000:]
    st.finish(manifest, tmp_path / "combined", "--no-plots")
    assert_same_results(pooled[0], str(tmp_path / "combined" / "results.parquet"))
    _same_as_plink2(str(tmp_path / "combined" / "results.parquet"), pooled[1])


def test_pooled_samples_of_one_sex(sexdata, spark, tmp_path):  # noqa: F811
    """Females only: chrX without SEX and no chrY, as the scan of the same samples (and plink2);
    females with samples of unknown sex: plink2 would test chrX on the unknown-sex samples too, whose
    sums a statistics model leaves out, so finalize refuses and says why."""
    from dash_spark.api import compress

    _, prefix, pheno, covar = sexdata
    sex = _sex(prefix)
    parts = split_bed(prefix, tmp_path, {"f": np.flatnonzero(sex == 2), "fu": np.flatnonzero(sex != 1)})
    scan = run_scan(ScanConfig(bfile=parts["f"], pheno=pheno, covar=covar, out=str(tmp_path / "scan-f"),
                               plots=False), spark=spark)
    import dash_spark as ds

    S = compress(spark, ds.open_bfile(parts["f"]), pheno, covar)
    got = S.finalize()
    pq.write_table(got, tmp_path / "f.parquet")
    assert_same_results(scan.results_path, str(tmp_path / "f.parquet"))
    assert "Y" not in set(got.column("chrom").to_pylist()) and "X" in set(got.column("chrom").to_pylist())
    S2 = compress(spark, ds.open_bfile(parts["fu"]), pheno, covar)
    with pytest.raises(ModelError, match="not of both sexes.*of unknown sex"):
        S2.finalize()
