"""More bad inputs through the ``dash-spark`` command line: text that is not UTF-8, malformed Spark
settings, call filters that leave no variant, phenotype names whose output files collide, and our
errors raised inside Spark tasks.

As in :mod:`tests.test_bad_input`: exit status 2, one line ``dash-spark: error: <message>`` on
stderr naming the file or option, no traceback, and neither OUTDIR nor a staging directory left.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dash_spark.errors import ConfigError, DashError, InputError, ModelError, translate_task_error
from dash_spark.spark import session

from .test_bad_input import Inputs, assert_input_error, run_cli, write_pheno

LATIN1 = b"\xe9"  # 'e' with an acute accent in Latin-1; never valid on its own in UTF-8


def _replace_line(path: str, lineno: int, edit) -> None:
    """Rewrite line ``lineno`` (1-based) of a file as bytes: ``edit(line) -> new line``."""
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    with open(path, "wb") as fh:
        fh.write(b"\n".join(lines))


def _assert_no_traceback(err: str) -> None:
    assert "Traceback" not in err and "Py4J" not in err and "java." not in err, err


# ---------------------------------------------------------------------------------- not UTF-8


@pytest.mark.parametrize("which", ["fam", "bim", "pheno"])
def test_not_utf8_inputs(tmp_path, capsys, which):
    inp = Inputs(tmp_path)
    path, lineno = {"fam": (inp.fam, 5), "bim": (inp.bim, 7), "pheno": (inp.pheno, 3)}[which]
    _replace_line(path, lineno, lambda line: line.replace(b"S", b"S" + LATIN1, 1) if which != "bim"
                  else line.replace(b"rs", b"rs" + LATIN1, 1))
    rc, _, err = run_cli(capsys, inp.argv())
    _assert_no_traceback(err)
    assert_input_error(rc, err, inp.out, os.path.basename(path), "not UTF-8 text",
                       f"at line {lineno} (byte 0xe9)")


@pytest.mark.parametrize("option", ["--extract", "--exclude", "--keep", "--remove"])
def test_not_utf8_filter_files(tmp_path, capsys, option):
    inp = Inputs(tmp_path)
    listed = tmp_path / "listed.txt"
    ids = [b"rs1", b"rs2", b"rs" + LATIN1 + b"3"] if option in ("--extract", "--exclude") else \
        [b"S001", b"S002", b"S" + LATIN1 + b"003"]
    listed.write_bytes(b"\n".join(ids) + b"\n")
    rc, _, err = run_cli(capsys, inp.argv(option, str(listed)))
    _assert_no_traceback(err)
    assert_input_error(rc, err, inp.out, "listed.txt", "not UTF-8 text", "at line 3 (byte 0xe9)")


def test_not_utf8_bim_range_read_by_a_task(tmp_path):
    """The executors' .bim reader names the line in the whole file, not in its range."""
    from dash_spark.io.plink import read_bim, read_bim_range

    inp = Inputs(tmp_path)
    bim = read_bim(inp.bim)
    _replace_line(inp.bim, 33, lambda line: line.replace(b"rs", b"rs" + LATIN1, 1))
    start, stop = 30, 40
    with pytest.raises(InputError, match=r"geno\.bim: not UTF-8 text at line 33 \(byte 0xe9\)"):
        read_bim_range(inp.bim, int(bim.line_offsets[start]), int(bim.line_offsets[stop]) + 1, start + 1)


def test_not_utf8_properties_file(tmp_path, capsys):
    inp = Inputs(tmp_path)
    props = tmp_path / "spark.properties"
    props.write_bytes(b"spark.sql.shuffle.partitions 2\nspark.app.name caf" + LATIN1 + b"\n")
    rc, _, err = run_cli(capsys, inp.argv("--properties-file", str(props)))
    _assert_no_traceback(err)
    assert_input_error(rc, err, inp.out, "spark.properties", "not UTF-8 text", "at line 2 (byte 0xe9)")


# ---------------------------------------------------------------------------------- Spark settings


@pytest.mark.parametrize("extra, needles", [
    (["--conf", "spark.driver.memory=lots"], ["--conf spark.driver.memory=lots", "heap size", "'lots'"]),
    (["--conf", "spark.executor.memory=4 GB"], ["--conf spark.executor.memory=4 GB", "byte size"]),
    (["--conf", "spark.executor.cores=two"], ["--conf spark.executor.cores=two", "positive integer"]),
    (["--conf", "spark.sql.shuffle.partitions=0"], ["spark.sql.shuffle.partitions", "positive integer"]),
    (["--conf", "driver.memory=4g"], ["--conf driver.memory=4g", "'spark.'", "Did you mean 'spark.driver.memory'?"]),
    (["--conf", "hadoop.fs.defaultFS=x"], ["hadoop.fs.defaultFS", "not a Spark property", "spark.hadoop."]),
    (["--master", "nonsense"], ["--master nonsense", "not a Spark master URL"]),
    (["--conf", "spark.master=local[0]"], ["spark.master", "not a Spark master URL"]),
])
def test_bad_spark_settings_fail_before_spark(tmp_path, capsys, extra, needles):
    inp = Inputs(tmp_path)
    t0 = time.monotonic()
    rc, _, err = run_cli(capsys, inp.argv(*extra))
    assert time.monotonic() - t0 < 10, "the settings must be refused before a JVM starts"
    _assert_no_traceback(err)
    assert_input_error(rc, err, inp.out, *needles)


def test_bad_setting_in_properties_file_names_the_line(tmp_path, capsys):
    inp = Inputs(tmp_path)
    props = tmp_path / "bad.properties"
    props.write_text("# local\nspark.sql.shuffle.partitions 2\nspark.driver.maxResultSize  lots\n")
    rc, _, err = run_cli(capsys, inp.argv("--properties-file", str(props)))
    assert_input_error(rc, err, inp.out, "bad.properties:3", "spark.driver.maxResultSize", "byte size")


def test_good_spark_settings_pass():
    session.check_spark_conf(session.LOCAL_DEFAULTS)
    session.check_spark_conf({"spark.executor.memory": "4gb", "spark.driver.memory": "512M",
                              "spark.executor.memoryOverhead": "1024", "spark.driver.maxResultSize": "0",
                              "spark.executor.instances": "0", "spark.task.cpus": "1",
                              "spark.hadoop.fs.s3a.endpoint": "http://x", "spark.master": "local[*, 3]"})
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("local.properties", "cluster.properties"):
        session.read_properties(os.path.join(repo, "conf", "spark", name))  # checks every line


def test_spark_start_failure_is_one_config_error(monkeypatch):
    """A value Spark refuses at start (not caught up front) becomes one ConfigError line."""
    from pyspark.sql import SparkSession

    def refuse(self):
        raise RuntimeError("An error occurred while calling None.org.apache.spark.api.java.JavaSparkContext.\n"
                           ": java.lang.IllegalArgumentException: spark.foo.bar must be 'x'\n\tat org.apache.Foo(F.java:1)")

    monkeypatch.setenv("DASH_SPARK_JVM_CDS", "0")
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", refuse)
    with pytest.raises(ConfigError) as excinfo:
        session.get_session(master="local[1]", conf={"spark.foo.bar": "y"})
    message = str(excinfo.value)
    assert "\n" not in message
    assert "IllegalArgumentException: spark.foo.bar must be 'x'" in message
    assert "--conf / --properties-file" in message


# ---------------------------------------------------------------------------------- call filters


@pytest.mark.slow
def test_call_filters_remove_every_variant(tmp_path, capsys, spark):
    inp = Inputs(tmp_path)
    rc, _, err = run_cli(capsys, inp.argv("--maf", "0.6", "--geno", "0.5", "--no-plots", "--master", "local[1]",
                                          covar=False))
    _assert_no_traceback(err)
    assert_input_error(rc, err, inp.out, "--maf 0.6, --geno 0.5", "no variant passes the call filters",
                       "40 of 40 variants removed", "Relax")


# ---------------------------------------------------------------------------------- output names


@pytest.mark.parametrize("columns, needles", [
    (("t/1", "t_1"), ["'t/1' and 't_1'", "t_1.glm.linear"]),
    (("height", ".."), ["'..'", "Rename the column"]),
])
def test_phenotype_names_sharing_an_output_file(tmp_path, capsys, columns, needles):
    inp = Inputs(tmp_path)
    inp.pheno = write_pheno(tmp_path, inp.iids, columns=columns, name="clash.pheno")
    rc, _, err = run_cli(capsys, inp.argv())
    assert_input_error(rc, err, inp.out, "clash.pheno", *needles)


# ---------------------------------------------------------------------------------- task side


def test_task_error_reaches_the_driver_as_itself(spark):
    from dash_spark.scanner.jobs import run_ranges

    def per_ranges(value, rows):
        for row in rows:
            if row[0] == 1:
                raise InputError("x.bed: boom")
            yield row[0]

    ranges = [(p, 0, 1, 0, 0, []) for p in range(3)]
    with pytest.raises(InputError) as excinfo:
        run_ranges(spark, None, ranges, per_ranges)
    assert type(excinfo.value) is InputError
    assert str(excinfo.value) == "x.bed: boom"

    def model_error(value, rows):
        raise ModelError("y.covar: collinear")
        yield

    with pytest.raises(ModelError, match=r"^y\.covar: collinear$"):
        run_ranges(spark, None, ranges[:1], model_error)


def test_task_error_of_a_dataframe_job_is_tagged(spark):
    from dash_spark.scanner.jobs import map_ranges

    def per_ranges(W, rows):
        for row in rows:
            raise InputError(f"z.parquet: row {row[0]} is bad")
        yield

    df, bc = map_ranges(spark, np.zeros(2), [(0, 0, 1, 0, 0, [])], per_ranges, "x long")
    try:
        with pytest.raises(InputError, match=r"^z\.parquet: row 0 is bad$"):
            try:
                df.collect()
            except Exception as exc:  # noqa: BLE001
                translate_task_error(exc)
    finally:
        bc.destroy()


def test_translate_task_error_text():
    from dash_spark.studies.store import StoreError

    with pytest.raises(StoreError, match=r"^s/blocks/1: checksum differs$"):
        translate_task_error(RuntimeError("Traceback ...\nRuntimeError: [dash-spark StoreError] s/blocks/1: checksum differs\n"))
    with pytest.raises(InputError, match=r"^a: b$") as excinfo:  # unknown on the driver: an InputError
        translate_task_error(RuntimeError("[dash-spark NoSuchError] a: b"))
    assert type(excinfo.value) is InputError
    with pytest.raises(ConfigError, match=r"^--x: bad$"):  # untagged, as a traceback ends
        translate_task_error(RuntimeError("  File ...\ndash_spark.errors.ConfigError: --x: bad\n"))
    plain = ValueError("something else")
    with pytest.raises(ValueError) as excinfo:
        translate_task_error(plain)
    assert excinfo.value is plain
    mine = DashError("as is")
    with pytest.raises(DashError) as excinfo:
        translate_task_error(mine)
    assert excinfo.value is mine


@pytest.mark.slow
def test_features_row_of_wrong_length_found_in_a_task(tmp_path, capsys, spark):
    """Row 1 is checked by the driver; a later row with too few values is found by its task."""
    inp = Inputs(tmp_path)
    samples = tmp_path / "samples.txt"
    samples.write_text("".join(f"{s}\n" for s in inp.iids))
    rng = np.random.default_rng(5)
    values = [rng.integers(0, 3, len(inp.iids)).astype(float).tolist() for _ in range(40)]
    values[25] = values[25][:-1]
    path = tmp_path / "features.parquet"
    pq.write_table(pa.table({"id": [f"f{j}" for j in range(40)], "values": values}), path, row_group_size=10)
    argv = ["-q", "scan", "--features", str(path), "--feature-samples", str(samples), "--pheno", inp.pheno,
            "--out", inp.out, "--block-variants", "10", "--no-plots", "--master", "local[1]"]
    rc, _, err = run_cli(capsys, argv)
    _assert_no_traceback(err)
    assert_input_error(rc, err, inp.out, "features.parquet", "row 26 has 60 values; expected 61")


_BIM_CASES = [
    b"1\trs1\t0\t5\tA\tC\n2\trs2\t0.5\t7\tG\tT\n",
    b"1\trs1\t0\t5\tA\tC",  # no final newline
    b"1\trs1\t0\t5\tA\tC\r\n2\trs2\t0\t7\tG\tT\r\n",
    "X\trs\u00e9\t0\t5\tAT\tC\n".encode(),
    b"1\t\"rs1\"\t0\t5\tA\tC\n",  # quotes are characters of the ID
    b"1 rs1 0 5 A C\n1  rs2\t0 6 A C\n",  # spaces: the line parser's whitespace
    b"1\trs1\t0\t+5\tA\tC\n",
    b"1\trs1\t0\t5\tA\tC\t\n",  # a trailing tab
    b"1\trs1\t0\t5\tA\n",
    b"1\trs1\t0\tx\tA\tC\n",
    b"1\trs1\t0\tNA\tA\tC\n",
    b"1\trs1\t0\t\tA\tC\n",
    b"1\t\t0\t5\tA\tC\n",
    b"1\trs1\t0\t5\tA\tC\n\n",
    b"\n1\trs1\t0\t5\tA\tC\n",
    b"1\trs1\t0\t5\tA\tC\n2\trs2\t0\t5\tA\n",
    b"1\trs1\t0\t99999999999999999999\tA\tC\n",
    b"1\trs\xff\t0\t5\tA\tC\n",
    "1\trs\u00851\t0\t5\tA\tC\n".encode(),  # NEL: a line break to Python's splitlines
    b"1\trs\x0c1\t0\t5\tA\tC\n",  # form feed: whitespace to split(), a line break to splitlines
    b"\xef\xbb\xbf1\trs1\t0\t5\tA\tC\n",  # a byte-order mark
    b"1\trs1\t0\t5\tA\tC\r2\trs2\t0\t6\tA\tC\r",  # old Mac line ends
]


@pytest.mark.parametrize("text", _BIM_CASES)
def test_bim_fast_parser_equals_the_line_parser(monkeypatch, text):
    """Arrow's reader takes the common .bim; whatever it would read differently, the line parser
    reads (and names the bad line of)."""
    from dash_spark.io import plink

    def parse():
        try:
            return plink._parse_bim_text(text, "x.bim", 1), None
        except InputError as exc:
            return None, str(exc)

    fast, fast_err = parse()
    monkeypatch.setattr(plink, "_parse_bim_arrow", lambda data: None)
    slow, slow_err = parse()
    assert fast_err == slow_err
    if slow is not None:
        for a, b in zip(fast, slow):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_bim_fast_parser_takes_the_common_file():
    from dash_spark.io import plink

    text = b"".join(b"%d\trs%d\t0\t%d\tA\tG\n" % (1 + i % 22, i, 1000 + i) for i in range(500))
    parsed = plink._parse_bim_arrow(text)
    assert parsed is not None and len(parsed[1]) == 500 and parsed[2][-1] == 1499 and parsed[0].dtype == object


def test_console_command_message_is_the_last_line(tmp_path):
    """``dash-spark`` itself starts Spark's JVM while it reads the inputs; on an input error that JVM
    is stopped before the message is printed, so none of Spark's start-up lines follow the message
    (they used to, after the process had already exited). The whole output is read: the JVM shares
    the pipe, so reading ends only when it is gone."""
    import subprocess
    import sys

    inp = Inputs(tmp_path)
    bad = tmp_path / "bad.pheno"
    bad.write_text("#FID\tIID\theight\nS001\tS001\ttall\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "dash_spark.cli", "scan", "--bfile", inp.bfile, "--pheno", str(bad),
            "--out", inp.out]
    for _ in range(2):  # the JVM's start-up timing varies; a late line would show in either run
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr
        assert lines[-1].startswith("dash-spark: error: ") and "bad.pheno:2" in lines[-1], proc.stderr
        assert not os.path.exists(inp.out)


@pytest.mark.parametrize("tree_from", [256, 2])
def test_run_ranges_adds_the_tasks_results(spark, monkeypatch, tree_from):
    """run_ranges with a reduce adds every task's results once, on the driver or (from
    TREE_REDUCE_FROM partitions on) in a tree of executors; no range: None."""
    from dash_spark.scanner import jobs

    monkeypatch.setattr(jobs, "TREE_REDUCE_FROM", tree_from)

    def per_ranges(value, rows):
        for row in rows:
            yield (row[0] + value, {row[0]})

    ranges = [(p, 0, 1, 0, 0, []) for p in range(7)]
    total = jobs.run_ranges(spark, 10, ranges, per_ranges, reduce=lambda a, b: (a[0] + b[0], a[1] | b[1]))
    assert total == (sum(range(7)) + 70, set(range(7)))
    assert jobs.run_ranges(spark, 10, [], per_ranges, reduce=lambda a, b: a) is None
