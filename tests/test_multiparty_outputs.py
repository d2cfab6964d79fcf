"""Outputs written without Spark SQL (combine's driver-side writer, and the tasks' own parts for local
outputs): the same files, byte for byte, as the Spark writer used for hdfs:// or s3a:// outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dash_spark.outputs import report
from dash_spark.outputs.writers import (
    OutputModel,
    _java_fixed6,
    finish_local_outputs,
    java_double,
    prepare_result_dirs,
    write_outputs_local,
    write_reports,
    write_result_parts,
)


def _results(rng, phenotypes=("trait", "other trait"), logistic=()) -> pa.Table:
    """Result rows with awkward numbers; the ``logistic`` phenotypes' rows carry FIRTH? flags."""
    m = 400
    chrom = rng.choice(["1", "2", "10", "X"], m).astype(object)
    pos = rng.integers(1, 3_000_000, m)
    cols: dict[str, list] = {k: [] for k in ("variant_index", "chrom", "pos", "id", "ref", "alt", "a1", "a1_freq",
                                             "mach_r2", "obs_ct", "beta", "se", "t_stat", "p", "neg_log10_p", "phenotype",
                                             "errcode", "firth")}
    for name in phenotypes:
        beta = rng.standard_normal(m) * np.exp(rng.uniform(-25, 25, m))
        se = np.abs(rng.standard_normal(m)) * np.exp(rng.uniform(-12, 18, m))
        nlp = np.exp(rng.uniform(-8, 6.5, m))
        p = 10.0 ** -nlp
        err = np.array(["."] * m, dtype=object)
        err[:7] = "CONST_OMITTED_ALLELE"
        beta[:7] = se[:7] = p[:7] = nlp[:7] = np.nan  # -> null
        nlp[7:10] = [345.18765, 400.0000005, np.inf]  # p underflows to 0
        p[7:10] = 0.0
        nlp[10:14] = nlp[20]  # ties in -log10 p, ordered by chrom, pos, id
        p[10:14] = p[20]
        beta[14:18] = [1e-3, 9.999999999999999e-4, 1e7, -9999999.999999998]
        cols["variant_index"].append(np.arange(m))
        cols["chrom"].append(chrom)
        cols["pos"].append(pos)
        cols["id"].append(np.array([f"rs{i}" for i in range(m)], dtype=object))
        cols["ref"].append(np.array(["A"] * m, dtype=object))
        cols["alt"].append(np.array(["G"] * m, dtype=object))
        cols["a1"].append(np.array(["G"] * m, dtype=object))
        cols["a1_freq"].append(rng.uniform(0, 1, m))
        cols["mach_r2"].append(rng.uniform(0.3, 1.2, m))
        cols["obs_ct"].append(rng.integers(100, 200, m))
        cols["beta"].append(beta)
        cols["se"].append(se)
        cols["t_stat"].append(beta / se)
        cols["p"].append(p)
        cols["neg_log10_p"].append(nlp)
        cols["phenotype"].append(np.array([name] * m, dtype=object))
        cols["errcode"].append(err)
        cols["firth"].append(rng.random(m) < 0.1 if name in logistic else np.full(m, None, dtype=object))
    arrays = {}
    for k, parts in cols.items():
        v = np.concatenate(parts)
        arrays[k] = (pa.array(v, type=pa.bool_()) if k == "firth" else
                     pa.array(v, type=pa.string()) if v.dtype == object else
                     pa.array(v, type=pa.float64(), from_pandas=True) if v.dtype.kind == "f" else
                     pa.array(v, type=pa.int64()))
    table = pa.table(arrays)
    return table


def test_java_double_and_fixed6_match_spark(spark, rng):
    from pyspark.sql import functions as F

    values = np.concatenate([
        rng.standard_normal(3000) * np.exp(rng.uniform(-700, 700, 3000)),
        [0.0, -0.0, 1e-3, 9.999999999999999e-4, 1e7, 9999999.999999998, 1e16, 1.5e300, 5e-324, 1.0, -2.5e-5,
         123456.789, 1e21, 1e22, 1e23, 2.0**-1074, np.nan, np.inf, -np.inf]])
    df = spark.createDataFrame([(float(v),) for v in values], "x double")
    got = [r["s"] for r in df.select(F.expr("cast(x as string)").alias("s")).collect()]
    ours = [java_double(float(v)) for v in values]
    # Java 17's Double.toString prints some integral doubles of magnitude 1e16..1e19 (and a rare few
    # beyond) with more digits than needed (fixed in Java 19): same double, longer text
    same = ~(np.abs(values) >= 1e16)
    diff = [(v, o, g) for v, o, g, s in zip(values, ours, got, same) if s and o != g]
    assert not diff, diff[:5]
    assert all(float(o.replace("Infinity", "inf")) == float(g.replace("Infinity", "inf")) or o == g == "NaN"
               for o, g in zip(ours, got))
    assert java_double(None) is None
    fixed = np.concatenate([1 + rng.uniform(0, 9, 2000), [1.0000005, 2.5000005, 9.9999995, 1.0000015, 9.99999949]])
    df = spark.createDataFrame([(float(v),) for v in fixed], "x double")
    got = df.select(F.expr("format_string('%.6f', x)").alias("s")).collect()
    assert [_java_fixed6(float(v)) for v in fixed] == [r["s"] for r in got]


def test_local_outputs_equal_spark_outputs(spark, rng, tmp_path):
    from dash_spark.scanner.fs import HadoopFS

    table = _results(rng, logistic=("other trait",))
    model = OutputModel(phenotypes=("trait", "other trait"), covariates=("(intercept)", "age"),
                        n_variants=400, counts={"pooled_samples": {"trait": 150}, "parties": 3},
                        logistic_phenotypes=("other trait",))
    a, b = tmp_path / "spark", tmp_path / "local"
    a.mkdir()
    b.mkdir()
    pq.write_table(table, a / "results.parquet")
    glm_a, summ_a = write_reports(spark, HadoopFS(spark, str(a)), str(a), model, plots=False)
    glm_b, summ_b = write_outputs_local(str(b), table, model, plots=False)
    assert sorted(p.rsplit("/", 1)[1] for p in glm_a.values()) == sorted(p.rsplit("/", 1)[1] for p in glm_b.values()) \
        == ["other_trait.glm.logistic.hybrid", "trait.glm.linear"]
    for name in model.phenotypes:
        text_a, text_b = open(glm_a[name]).read(), open(glm_b[name]).read()
        assert text_a == text_b, name
        assert "E-346" in text_b and "\tNA\t" in text_b and "E-5" in text_b
    for f in ("summary.tsv", "summary.json"):
        assert (a / f).read_text() == (b / f).read_text(), f
    assert json.loads((b / "summary.json").read_text())["phenotypes"]["trait"]["median_method"] == "exact"
    assert summ_a == summ_b
    back = pq.read_table(b / "results.parquet")
    assert back.schema.remove_metadata() == table.schema and back.equals(table)
    assert (b / "results.parquet" / "_SUCCESS").exists()

    # tasks' own parts: three variant ranges, each phenotype-major as a scan task yields them
    c = tmp_path / "parts"
    c.mkdir()
    prepare_result_dirs(str(c), list(model.phenotypes))
    for part, (lo, hi) in enumerate(((0, 150), (150, 150), (150, 400))):  # several batches, or none
        rows = table.filter(pc.and_(pc.greater_equal(table["variant_index"], lo), pc.less(table["variant_index"], hi)))
        assert write_result_parts(str(c), list(model.phenotypes), part, rows.to_batches(max_chunksize=60)) \
            == rows.num_rows
    glm_c, summ_c = finish_local_outputs(str(c), model, plots=False)
    for name in model.phenotypes:
        assert open(glm_c[name]).read() == open(glm_a[name]).read(), name
    for f in ("summary.tsv", "summary.json"):
        assert (c / f).read_text() == (a / f).read_text(), f
    assert summ_c == summ_a
    assert sorted(p.name for p in c.iterdir()) == sorted(p.name for p in b.iterdir())  # no leftovers
    back = pq.read_table(c / "results.parquet").sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])
    assert back.equals(table.sort_by([("phenotype", "ascending"), ("variant_index", "ascending")]))
    both = spark.read.parquet(str(c / "results.parquet"))  # Spark reads the tasks' parts
    assert both.count() == table.num_rows

    df = spark.read.parquet(str(a / "results.parquet"))
    for name in model.phenotypes:
        pa_, pb = report.plot_points(df, name), report.plot_points_table(table, name)
        for field in ("chrom", "chrom_index", "pos", "neg_log10_p", "exact", "qq_count", "bulk_bin", "bulk_count",
                      "chromosomes", "n_tests", "n_kept"):
            assert np.array_equal(np.asarray(getattr(pa_, field)), np.asarray(getattr(pb, field))), field
        np.testing.assert_allclose(pb.qq_observed, pa_.qq_observed, rtol=1e-12)
        np.testing.assert_allclose(pb.qq_expected, pa_.qq_expected, rtol=1e-12)
    with pytest.raises(Exception, match="no rows for phenotype 'trial'.*'trait'"):
        report.summarize_table(table, "trial")


def test_local_plots_are_written(rng, tmp_path):
    import pyarrow.compute as pc

    table = _results(rng, phenotypes=("trait",))
    table = table.filter(pc.fill_null(pc.is_finite(table["neg_log10_p"]), True))  # an infinite axis cannot be drawn
    model = OutputModel(phenotypes=("trait",), covariates=(), n_variants=400, counts={})
    write_outputs_local(str(tmp_path / "o"), table, model, plots=True)
    for f in ("trait.manhattan.png", "trait.qq.png", "trait.glm.linear", "summary.tsv"):
        assert (tmp_path / "o" / f).stat().st_size > 0
    assert not math.isnan(report.summarize_table(table, "trait").lambda_gc)


def glm_lines(rows) -> list[str]:
    """The .glm.linear lines built one value at a time with java_double and _glm_p (Spark's
    concat_ws skips nulls): the oracle of the column-wise writer."""
    from dash_spark.outputs.writers import _glm_p, java_double

    def text(values):
        return [None if v is None else str(v) for v in values]

    def floats(values):
        return ["NA" if v is None else java_double(v) for v in values]

    p_field = [_glm_p(p, nlp) for p, nlp in zip(rows["p"], rows["neg_log10_p"])]
    columns = (rows["chrom"], text(rows["pos"]), rows["id"], rows["ref"], rows["alt"], rows["a1"],
               ["ADD"] * len(p_field), text(rows["obs_ct"]), floats(rows["beta"]), floats(rows["se"]),
               floats(rows["t_stat"]), p_field, rows["errcode"])
    return ["\t".join(f for f in fields if f is not None) for fields in zip(*columns)]


def test_glm_text_is_glm_lines_byte_for_byte(rng):
    """The tasks' column-wise formatter (Arrow) writes exactly the lines of the per-value one, on
    values of every magnitude, integral values, zeros of both signs, NaN, infinities, nulls and
    p-values that underflow."""
    from dash_spark.outputs.writers import glm_text

    table = _results(rng)
    m = table.num_rows
    wild = np.concatenate([rng.standard_normal(m // 2) * 10.0 ** rng.integers(-12, 12, m // 2),
                           rng.integers(-10**6, 10**6, m - m // 2).astype(float)])
    wild[:12] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-3, 9.999999999999998e-4, 1e7, 9999999.999999998,
                 5e-324, 1.7976931348623157e308, 123.0]
    table = table.set_column(table.schema.get_field_index("beta"), "beta", pa.array(wild, type=pa.float64()))
    table = table.set_column(table.schema.get_field_index("se"), "se",
                             pa.array([None if i % 13 == 0 else v for i, v in enumerate(np.abs(wild))], type=pa.float64()))
    expected = "".join(line + "\n" for line in glm_lines(table.to_pydict())).encode()
    assert glm_text(table) == expected
    assert glm_text(table.slice(5, 100)) == "".join(
        line + "\n" for line in glm_lines(table.slice(5, 100).to_pydict())).encode()  # an offset slice
    assert glm_text(table.slice(0, 0)) == b""


def test_spark_writer_without_text_files(spark, rng, tmp_path):
    """The Spark writer (hdfs://, s3a:// outputs) with no text phenotype (--no-text): summaries only."""
    from dash_spark.scanner.fs import HadoopFS

    table = _results(rng, phenotypes=("trait",))
    model = OutputModel(phenotypes=("trait",), covariates=("(intercept)",), n_variants=400, text_outputs=False)
    pq.write_table(table, tmp_path / "results.parquet")
    glm, summ = write_reports(spark, HadoopFS(spark, str(tmp_path)), str(tmp_path), model, plots=False)
    assert glm == {} and summ["trait"].n_tests > 0 and not list(tmp_path.glob("*.glm.*"))
