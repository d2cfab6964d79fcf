"""--features: real-valued features from Parquet give the same statistics as the same values in a .bed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dash_spark.errors import InputError
from dash_spark.scanner.pipeline import ScanConfig, run_scan
from dash_spark.scanner.model import scan_model

from .oracle_data import make_files


def _table(path):
    t = pq.read_table(path).sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


@pytest.fixture(scope="module")
def feature_files(tmp_path_factory):
    from bed_reader import open_bed

    tmp = tmp_path_factory.mktemp("features")
    files = make_files(tmp, np.random.default_rng(31), n=300, m=300, missing=0.03, name="g")
    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        X = bed.read(dtype="float64")
        iids = list(bed.iid)
    order = np.random.default_rng(32).permutation(len(iids))  # values in another sample order
    (tmp / "samples.txt").write_text("".join(f"{iids[i]}\n" for i in order))
    bim = [line.split() for line in open(files.bfile + ".bim")]
    values = [[None if np.isnan(v) else float(v) for v in X[order, j]] for j in range(X.shape[1])]
    pq.write_table(pa.table({"id": [b[1] for b in bim], "chrom": [b[0] for b in bim],
                             "pos": [int(b[3]) for b in bim], "values": values}),
                   tmp / "features.parquet", row_group_size=70)
    return files, tmp


@pytest.mark.parametrize("mode", ["drop", "mean"])
def test_features_equal_the_bed_scan(feature_files, spark, mode):
    files, tmp = feature_files
    bed = _table(run_scan(ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, plots=False,
                                     out=str(tmp / f"bed_{mode}"), missing_genotypes=mode), spark=spark).results_path)
    feat = _table(run_scan(ScanConfig(features=str(tmp / "features.parquet"), feature_samples=str(tmp / "samples.txt"),
                                      pheno=files.pheno, covar=files.covar, plots=False, block_variants=110,
                                      out=str(tmp / f"feat_{mode}"), missing_genotypes=mode), spark=spark).results_path)
    for col in ("variant_index", "id", "chrom", "pos", "obs_ct", "errcode", "phenotype"):
        assert np.array_equal(feat[col], bed[col]), col
    assert set(feat["a1"]) == {"."}
    ok = bed["errcode"] == "."
    sign = np.where(bed["a1"] != bed["alt"], -1.0, 1.0)  # features are in the ALT dosage's orientation
    se = bed["se"][ok]
    assert np.all(np.abs(feat["beta"][ok] - sign[ok] * bed["beta"][ok]) <= 1e-9 * np.maximum(se, np.abs(bed["beta"][ok])))
    np.testing.assert_allclose(feat["se"][ok], se, rtol=1e-9)
    np.testing.assert_allclose(feat["neg_log10_p"][ok], bed["neg_log10_p"][ok], rtol=1e-9, atol=1e-11)


def test_wrong_value_count_names_the_file(feature_files, tmp_path):
    files, tmp = feature_files
    pq.write_table(pa.table({"id": ["a"], "values": [[1.0, 2.0]]}), tmp_path / "short.parquet")
    with pytest.raises(InputError, match=r"short.parquet: row 1 has 2 values, but the sample-ID file lists 300"):
        scan_model(ScanConfig(features=str(tmp_path / "short.parquet"), feature_samples=str(tmp / "samples.txt"),
                               pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o")))
    pq.write_table(pa.table({"name": ["a"]}), tmp_path / "nocols.parquet")
    with pytest.raises(InputError, match="features need columns 'id' and 'values'; found name"):
        scan_model(ScanConfig(features=str(tmp_path / "nocols.parquet"), feature_samples=str(tmp / "samples.txt"),
                               pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o")))


def test_two_parties_with_features_equal_the_pooled_feature_scan(feature_files, spark):
    files, tmp = feature_files
    table = pq.read_table(tmp / "features.parquet")
    samples = (tmp / "samples.txt").read_text().split()
    halves = {"ann": slice(0, 170), "ben": slice(170, None)}  # unequal parties, each its own files
    for name, sl in halves.items():
        vals = [v[sl] for v in table.column("values").to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("values"), "values", pa.array(vals)),
                       tmp / f"{name}.parquet")
        (tmp / f"{name}.samples").write_text("\n".join(samples[sl]) + "\n")
    from .party_flow import Study

    st = Study(tmp, list(halves), name="f")
    manifest = st.manifest(exchange=tmp / "ex")
    st.join(manifest)
    for name in halves:
        code, _, err = st.compress(manifest, name, "--pheno", files.pheno, "--covar", files.covar,
                                   "--features", tmp / f"{name}.parquet", "--feature-samples", tmp / f"{name}.samples")
        assert code == 0, err
    st.finish(manifest, tmp / "combined", "--no-plots")
    pooled = _table(run_scan(ScanConfig(features=str(tmp / "features.parquet"), feature_samples=str(tmp / "samples.txt"),
                                        pheno=files.pheno, covar=files.covar, plots=False,
                                        out=str(tmp / "pooled")), spark=spark).results_path)
    got = _table(str(tmp / "combined" / "results.parquet"))
    for col in ("id", "obs_ct", "errcode", "a1"):
        assert np.array_equal(got[col], pooled[col]), col
    ok = pooled["errcode"] == "."
    np.testing.assert_allclose(got["se"][ok], pooled["se"][ok], rtol=1e-9)
    assert np.all(np.abs(got["beta"][ok] - pooled["beta"][ok]) <= 1e-9 * np.maximum(pooled["se"][ok], np.abs(pooled["beta"][ok])))


@pytest.mark.slow
def test_feature_store_refresh_and_select(feature_files, spark):
    """A store of --features batches finalizes to the features scan, and selects what a .bed store selects."""
    from dash_spark.studies.select import run_select
    from dash_spark.studies.store import run_compress, run_refresh

    files, tmp = feature_files
    src = {"features": str(tmp / "features.parquet"), "feature_samples": str(tmp / "samples.txt"),
           "pheno": files.pheno, "covar": files.covar}
    run_compress(str(tmp / "fstore"), "all", src, spark=spark)
    res = run_refresh(str(tmp / "fstore"), str(tmp / "fstore_out"), plots=False, spark=spark)
    scan = _table(run_scan(ScanConfig(features=src["features"], feature_samples=src["feature_samples"],
                                      pheno=files.pheno, covar=files.covar, plots=False, out=str(tmp / "fscan")),
                           spark=spark).results_path)
    got = _table(f"{res.out}/results.parquet")
    for col in ("variant_index", "obs_ct", "errcode", "a1"):
        assert np.array_equal(got[col], scan[col]), col
    ok = scan["errcode"] == "."
    np.testing.assert_allclose(got["se"][ok], scan["se"][ok], rtol=1e-9)
    run_compress(str(tmp / "bstore"), "all", {"bfile": files.bfile, "pheno": files.pheno, "covar": files.covar},
                 spark=spark)
    a = run_select(str(tmp / "fstore"), str(tmp / "fsel"), pheno_name="pheno2", p_threshold=1.0, max_steps=2,
                   spark=spark)
    b = run_select(str(tmp / "bstore"), str(tmp / "bsel"), pheno_name="pheno2", p_threshold=1.0, max_steps=2,
                   spark=spark)
    assert [r["id"] for r in a.selected] == [r["id"] for r in b.selected]
    for x, y in zip(a.selected, b.selected):
        assert x["se"] == pytest.approx(y["se"], rel=1e-9) and x["p"] == pytest.approx(y["p"], rel=1e-8)
