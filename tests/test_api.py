"""The Python API as a notebook user drives it: pandas tables in, a lazy Spark DataFrame out; the
additive statistics of sample batches summed and finalized; Glow-style feature DataFrames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import dash_spark as ds
from dash_spark.cli import main

from .oracle_data import PHENOS, make_files, statsmodels_oracle


def _sorted(table_or_df):
    t = table_or_df if hasattr(table_or_df, "sort_by") else table_or_df
    t = t.sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def _arrow(df):
    import pyarrow as pa

    return pa.Table.from_pandas(df.toPandas(), preserve_index=False)


def _close(a, b, rtol=1e-9):
    for col in ("variant_index", "id", "a1", "obs_ct", "errcode", "phenotype"):
        assert np.array_equal(a[col], b[col]), col
    ok = b["errcode"] == "."
    assert ok.sum() > 0
    se = b["se"][ok]
    assert np.all(np.abs(a["beta"][ok] - b["beta"][ok]) <= rtol * np.maximum(se, np.abs(b["beta"][ok])))
    np.testing.assert_allclose(a["se"][ok], se, rtol=rtol)
    np.testing.assert_allclose(a["neg_log10_p"][ok], b["neg_log10_p"][ok], rtol=rtol, atol=1e-11)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    files = make_files(tmp, np.random.default_rng(41), n=360, m=240, missing=0.03, name="a")
    return files, tmp


def _pandas_tables(files):
    ph = pd.read_csv(files.pheno, sep="\t", na_values=["NA", "nan", "-9"], keep_default_na=False)
    ph = ph.rename(columns={"#FID": "FID"})
    cv = pd.read_csv(files.covar, sep=" ", na_values=["NA"], keep_default_na=False)
    return ph, cv.drop(columns=["FID"])  # covariates with IID only


def test_linear_regression_on_pandas_equals_the_cli(cohort, spark, tmp_path):
    files, _ = cohort
    out = tmp_path / "cli"
    assert main(["-q", "scan", "--bfile", files.bfile, "--pheno", files.pheno, "--covar", files.covar,
                 "--out", str(out), "--no-plots", "--master", "local[2]"]) == 0
    cli = _sorted(pq.read_table(out / "results.parquet"))
    ph, cv = _pandas_tables(files)
    df = ds.linear_regression(spark, ds.open_bfile(files.bfile), phenotypes=ph, covariates=cv)
    assert df.columns == list(cli)  # the results.parquet columns, in order
    ours = _sorted(_arrow(df))
    _close(ours, cli, rtol=1e-12)


@pytest.mark.parametrize("mode", ["drop", "mean"])
def test_compressed_batches_add_up_to_the_pooled_scan(cohort, spark, tmp_path, mode):
    files, tmp = cohort
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    keeps = []
    for s in range(2):
        path = tmp / f"batch{s}_{mode}.txt"
        path.write_text("".join(f"{i}\n" for j, i in enumerate(iids) if (j % 3 == 0) == (s == 0)))
        keeps.append(str(path))
    geno = ds.open_bfile(files.bfile)
    S1, S2 = (ds.compress(spark, geno, files.pheno, files.covar, missing_genotypes=mode, keep=k) for k in keeps)
    assert S1.n_samples("pheno1") + S2.n_samples("pheno1") == (S1 + S2).n_samples("pheno1")
    pooled = _sorted((S1 + S2).finalize())
    scan = _sorted(_arrow(ds.linear_regression(spark, geno, files.pheno, files.covar, missing_genotypes=mode)))
    _close(pooled, scan, rtol=1e-9)
    # and withdrawing a batch leaves the other one's statistics
    alone = _sorted(((S1 + S2) - S2).finalize())
    _close(alone, _sorted(S1.finalize()), rtol=1e-8)


def test_spark_dataframe_of_features_matches_statsmodels(cohort, spark, tmp_path):
    from bed_reader import open_bed

    files, _ = cohort
    with open_bed(files.bfile + ".bed", count_A1=True) as bed:
        X = bed.read(dtype="float64")
        iids = list(bed.iid)
    ids = [line.split()[1] for line in open(files.bfile + ".bim")]
    rows = [(ids[j], "1", j + 1, [None if np.isnan(v) else float(v) for v in X[:, j]]) for j in range(X.shape[1])]
    feats = spark.createDataFrame(rows, "id string, chrom string, pos long, values array<double>").repartition(3)
    source = ds.open_features(feats, iids, stage_dir=str(tmp_path))
    table = _arrow(ds.linear_regression(spark, source, files.pheno, files.covar, missing_genotypes="drop"))
    t = _sorted(table)
    assert set(t["a1"]) == {"."}
    order = {name: i for i, name in enumerate(ids)}
    for phenotype in PHENOS:
        sel = t["phenotype"] == phenotype
        j = np.array([order[i] for i in t["id"][sel]])
        ref = statsmodels_oracle(files, phenotype, "drop")
        ok = ~ref["const"][j] & ~np.isnan(ref["beta"][j])
        assert ok.sum() > 200
        np.testing.assert_allclose(t["beta"][sel][ok], ref["beta"][j][ok], rtol=1e-8, atol=1e-9 * ref["se"][j][ok].max())
        np.testing.assert_allclose(t["se"][sel][ok], ref["se"][j][ok], rtol=1e-9)
        assert np.array_equal(t["obs_ct"][sel], ref["n"][j])


def test_public_surface():
    assert {"open_bfile", "open_features", "linear_regression", "compress", "SufficientStats", "scan",
            "ScanConfig", "DashError", "__version__"} <= set(ds.__all__)
    assert all(hasattr(ds, name) for name in ds.__all__)
    for name in ("linear_regression", "compress"):
        doc = getattr(ds, name).__doc__ + ds.api.__doc__
        for col in ("variant_index", "obs_ct", "neg_log10_p", "errcode", "a1_freq"):
            assert col in doc, (name, col)


def test_bad_table_is_one_clear_error(cohort, spark):
    files, _ = cohort
    with pytest.raises(ds.DashError, match="IID"):
        ds.linear_regression(spark, ds.open_bfile(files.bfile), pd.DataFrame({"id": ["x"], "y": [1.0]}))
    with pytest.raises(ds.DashError, match="genotypes"):
        ds.compress(spark, 42, files.pheno)


def test_tables_as_notebooks_have_them(cohort, spark):
    """pandas read plink2's file the plain way ('#FID' column), IID as the index, a pyarrow Table,
    one phenotype name as a string, keep= as a list: the same numbers as the files; a bad cell
    names the argument, never the temporary file it was written to."""
    import pyarrow as pa

    files, _ = cohort
    geno = ds.open_bfile(files.bfile)
    ph = pd.read_csv(files.pheno, sep="\t")  # columns '#FID', 'IID', ...; NA read as NaN
    assert "#FID" in ph.columns
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    want = _sorted(ds.compress(spark, geno, files.pheno, files.covar, pheno_names=["pheno1"],
                               keep=str(_keep_file(files, iids[:200]))).finalize())
    for table in (ph, ph.drop(columns=["#FID"]).set_index("IID"), pa.Table.from_pandas(ph, preserve_index=False)):
        got = _sorted(ds.compress(spark, geno, table, files.covar, pheno_names="pheno1", keep=iids[:200]).finalize())
        _close(got, want, rtol=1e-12)
    bad = ph.copy()
    bad["pheno1"] = bad["pheno1"].astype(object)
    bad.loc[3, "pheno1"] = "tall"
    with pytest.raises(ds.DashError) as err:
        ds.compress(spark, geno, bad, files.covar, pheno_names="pheno1")
    assert "phenotypes (the table given)" in str(err.value) and "dash-spark-table" not in str(err.value)
    # booleans: case/control in a phenotype (refused unless asked for a linear fit), 0/1 in a covariate
    flags = ph[["IID"]].assign(affected=[bool(i % 3) for i in range(len(ph))])
    with pytest.raises(ds.DashError, match="case/control"):
        ds.compress(spark, geno, flags, files.covar)
    S = ds.compress(spark, geno, flags, files.covar, linear_for_binary=True)
    assert S.moments[0].Cty[0] == pytest.approx(sum(2.0 if f else 1.0 for f, i in zip(flags.affected, flags.IID)
                                                    if i in _covar_complete(files)))


def _keep_file(files, ids):
    import os

    path = os.path.join(os.path.dirname(files.pheno), "keep200.txt")
    with open(path, "w") as fh:
        fh.write("".join(f"{i}\n" for i in ids))
    return path


def _covar_complete(files) -> set:
    rows = [ln.split() for ln in open(files.covar) if ln.strip()][1:]
    return {r[1] for r in rows if "NA" not in r[2:]}


def test_same_batch_twice_is_refused_and_repr_is_one_line(cohort, spark):
    files, _ = cohort
    geno = ds.open_bfile(files.bfile)
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    S1 = ds.compress(spark, geno, files.pheno, files.covar, keep=iids[:180])
    S2 = ds.compress(spark, geno, files.pheno, files.covar, keep=iids[180:])
    with pytest.raises(ds.DashError, match="same batch"):
        S1 + S1
    with pytest.raises(ds.DashError, match="same batch"):
        (S1 + S2) + S2
    again = ((S1 + S2) - S2) + S2  # a batch withdrawn whole may come back
    assert again.n_samples("pheno1") == (S1 + S2).n_samples("pheno1")
    text = repr(S1 + S2)
    assert "\n" not in text and len(text) < 300 and "240 variants" in text and "2 batch(es)" in text


def test_session_returns_the_active_session_checked(spark, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="dash_spark"):
        assert ds.session() is spark
    assert not caplog.records  # the tests' workers run this interpreter


def test_readme_python_section_runs_as_written(spark, tmp_path, monkeypatch, capsys):
    """The README's Python block, as written, on a small simulated cohort where it expects
    `make demo`'s (a fresh notebook gets its session from ds.session(): here the tests' one)."""
    import re
    from pathlib import Path

    from dash_spark.bench.simulate import simulate_cohort

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    simulate_cohort(str(tmp_path / "demo_out-data"), n_samples=1200, n_variants=150, n_covariates=2,
                    n_phenotypes=2, n_causal=3, missing_rate=0.01, pheno_missing_rate=0.03, seed=3)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["table"].num_rows == 300 and scope["remaining"].num_rows == 300  # 2 phenotypes x 150
    _close(_sorted(scope["remaining"]), _sorted(scope["S1"].finalize()), rtol=1e-8)
    assert "SufficientStats(" in capsys.readouterr().out


def test_docstring_examples_run(spark):
    """The examples in the API's docstrings run as written (doctest), with the tests' session."""
    import doctest

    import dash_spark.api as api

    import dash_spark.stats.sufficient as sufficient

    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    res = doctest.testmod(api, extraglobs={"spark": spark}, optionflags=flags, verbose=False)
    assert res.attempted >= 12 and res.failed == 0, res
    res = doctest.testmod(sufficient, optionflags=flags, verbose=False,
                          extraglobs={"spark": spark, "compress": api.compress, "example_data": api.example_data,
                                      "open_bfile": api.open_bfile})
    assert res.attempted >= 6 and res.failed == 0, res
    import dash_spark.config as config
    import dash_spark.errors as errors
    import dash_spark.scanner.pipeline as pipeline
    import dash_spark.scanner.sources as sources
    import dash_spark.spark.frames as frames

    for module, least in ((sources, 8), (config, 3), (pipeline, 4), (errors, 2), (frames, 2)):
        res = doctest.testmod(module, extraglobs={"spark": spark}, optionflags=flags, verbose=False)
        assert res.attempted >= least and res.failed == 0, (module.__name__, res)


def test_every_exported_name_has_an_example():
    """numpy-style docstrings on every public name: an Examples section (run by the doctest test),
    and Parameters or Returns for the functions."""
    import inspect

    import dash_spark as ds

    missing = []
    for name in ds._EXPORTS:
        obj = getattr(ds, name)
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc or "Examples" not in doc:
            missing.append(f"{name}: no Examples")
        if inspect.isfunction(obj) and "Parameters" not in doc and "Returns" not in doc:
            missing.append(f"{name}: no Parameters/Returns")
    assert not missing, missing


def test_a_task_error_reaches_the_user_as_our_error(tmp_path, spark):
    """A .bed truncated after linear_regression() checked it fails inside a Spark task at the
    DataFrame's first action: the user gets the InputError the command line prints (one line naming
    the file), from the frame itself, from frames derived from it, and from its writer; a frame
    built outside it gets the same through ds.task_errors()."""
    import os
    import shutil

    files = make_files(tmp_path, np.random.default_rng(5), n=80, m=240, missing=0.0, name="t")
    df = ds.linear_regression(spark, ds.open_bfile(files.bfile), files.pheno, files.covar, pheno_names="pheno1",
                              block_variants=40)
    bed = files.bfile + ".bed"
    with open(bed, "r+b") as fh:
        fh.truncate(os.path.getsize(bed) - 7)
    try:
        actions = {"toPandas": lambda: df.toPandas(), "count": lambda: df.count(),
                   "filter.collect": lambda: df.filter("p < 0.5").collect(),
                   "groupBy.agg": lambda: df.groupBy("phenotype").count().collect(),
                   "write.parquet": lambda: df.write.mode("overwrite").parquet(str(tmp_path / "w.parquet")),
                   "toLocalIterator": lambda: list(df.select("id").toLocalIterator())}
        for what, action in actions.items():
            with pytest.raises(ds.DashError) as excinfo:
                action()
            assert type(excinfo.value).__name__ == "InputError", what
            message = str(excinfo.value)
            assert "\n" not in message and bed in message and "truncated" in message, (what, message)
        df.createOrReplaceTempView("t_results")
        with pytest.raises(ds.DashError, match="truncated"):
            with ds.task_errors():
                spark.sql("SELECT count(*) FROM t_results").collect()
        with pytest.raises(ValueError, match="^plain$"):  # any other error passes as it is
            with ds.task_errors():
                raise ValueError("plain")
    finally:
        ds.unpersist(df)
        shutil.rmtree(tmp_path / "w.parquet", ignore_errors=True)


def test_a_result_frame_behaves_as_a_dataframe(cohort, spark):
    """The frame linear_regression() returns is a PySpark DataFrame in every way a user sees:
    isinstance, columns and schema, derived frames, joins with plain frames, pandas."""
    from pyspark.sql import DataFrame

    files, _ = cohort
    df = ds.linear_regression(spark, ds.open_bfile(files.bfile), files.pheno, files.covar, pheno_names="pheno1")
    try:
        assert isinstance(df, DataFrame) and "p" in df.columns and df.schema["p"].dataType.simpleString() == "double"
        ids = spark.createDataFrame([(i,) for i in df.select("id").limit(5).toPandas()["id"]], "id string")
        joined = df.join(ids, on="id")
        assert joined.count() == 5 and isinstance(ids.join(df, on="id"), DataFrame)
        top = df.where("p IS NOT NULL").orderBy("p").limit(3).toPandas()
        assert list(top["p"]) == sorted(top["p"]) and len(top) == 3
        assert df.na.drop().count() <= df.count() == 240
        assert df.stat.approxQuantile("p", [0.5], 0.0)[0] > 0
    finally:
        ds.unpersist(df)


def test_unpersist_frees_the_broadcast(cohort, spark):
    """unpersist(df) destroys the per-sample matrix the DataFrame broadcast: the DataFrame can no longer
    run (its tasks find the broadcast gone), and a second release does nothing."""
    files, _ = cohort
    df = ds.linear_regression(spark, ds.open_bfile(files.bfile), files.pheno, files.covar, pheno_names="pheno1")
    assert df.count() == 240
    ds.unpersist(df)
    with pytest.raises(Exception):  # noqa: B017 - Spark's own error for a destroyed broadcast
        df.count()
    ds.unpersist(df)
    ds.unpersist(df.filter("p < 0.5"))  # a derived DataFrame holds no broadcast of its own
