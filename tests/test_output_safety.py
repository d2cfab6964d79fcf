"""No command deletes or changes anything it did not write: --out may not be, contain or lie inside
an input or a store, --overwrite replaces only dash-spark output directories, and a killed run's
staging directory is cleaned by the next run (and nothing else is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dash_spark.outputs.staging import MARKER, STAGE_MARKER, clean_stale_stages, write_marker

from .helpers import snapshot
from .test_bad_input import Inputs, run_cli, staging_dirs




def _one_error_line(rc, err, *needles) -> str:
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dash-spark: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("where", ["inputs_dir", "parent_of_inputs"])
def test_scan_out_over_its_inputs_is_refused_with_overwrite(tmp_path, capsys, where):
    data = tmp_path / "data"
    data.mkdir()
    inp = Inputs(data)
    out = {"inputs_dir": data, "parent_of_inputs": tmp_path}[where]
    write_marker(str(out), "scan")  # even a directory that looks like an earlier output
    before = snapshot(tmp_path)
    rc, _, err = run_cli(capsys, ["-q", "scan", "--bfile", inp.bfile, "--pheno", inp.pheno, "--covar", inp.covar,
                                  "--out", str(out), "--overwrite"])
    line = _one_error_line(rc, err, str(out))
    assert "input" in line
    assert snapshot(tmp_path) == before  # nothing deleted or written
    assert staging_dirs(str(out)) == []


def test_overwrite_refuses_a_directory_dash_spark_did_not_write(tmp_path, capsys):
    inp = Inputs(tmp_path)
    os.makedirs(inp.out)
    (tmp_path / "results" / "thesis.tex").write_text("years of work\n")
    rc, _, err = run_cli(capsys, inp.argv("--overwrite"))
    _one_error_line(rc, err, inp.out, "not written by dash-spark", MARKER)
    assert (tmp_path / "results" / "thesis.tex").read_text() == "years of work\n"


def test_out_under_a_file_or_unwritable_place(tmp_path, capsys):
    inp = Inputs(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc, _, err = run_cli(capsys, inp.argv()[:6] + ["--out", str(blocker / "sub" / "out")])
    _one_error_line(rc, err, "is a file")
    rc, _, err = run_cli(capsys, inp.argv()[:6] + ["--out", str(blocker)])
    _one_error_line(rc, err, "not a directory")
    assert blocker.read_text() == "x"
    # a read-only filesystem (root can write anywhere else): the error comes before Spark starts
    rc, _, err = run_cli(capsys, inp.argv()[:6] + ["--out", "/proc/dash-spark-out"])
    _one_error_line(rc, err, "/proc/dash-spark-out")


def test_stale_staging_directories_are_cleaned_and_only_those(tmp_path):
    out = str(tmp_path / "res")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    import socket

    def stage(name, info):
        path = tmp_path / name
        path.mkdir()
        (path / "part").write_text("data")
        if info is not None:
            (path / STAGE_MARKER).write_text(json.dumps(info))
        return path

    host = socket.gethostname()
    killed = stage("res.tmp-dead0001", {"pid": int(dead), "host": host})
    alive = stage("res.tmp-live0001", {"pid": os.getpid(), "host": host})
    foreign = stage("res.tmp-user0001", None)  # looks like ours, but has no stage marker
    other_host = stage("res.tmp-host0001", {"pid": int(dead), "host": host + "-elsewhere"})
    assert clean_stale_stages(out) == 1
    assert not killed.exists()
    assert alive.exists() and foreign.exists() and other_host.exists()


@pytest.mark.slow
def test_refresh_out_equal_to_the_store_is_refused(tmp_path, capsys, spark):
    from dash_spark.studies.store import run_compress

    (tmp_path / "in").mkdir()
    inp = Inputs(tmp_path / "in")
    store = tmp_path / "store"
    run_compress(str(store), "wave1", {"bfile": inp.bfile, "pheno": inp.pheno, "covar": inp.covar}, spark=spark)
    before = snapshot(tmp_path)
    for out in (store, store / "results", tmp_path, tmp_path / "in"):
        rc, _, err = run_cli(capsys, ["-q", "refresh", "--store", str(store), "--out", str(out), "--overwrite"])
        _one_error_line(rc, err, str(out))
        rc, _, err = run_cli(capsys, ["-q", "select", "--store", str(store), "--out", str(out), "--overwrite"])
        _one_error_line(rc, err, str(out))
    assert snapshot(tmp_path) == before
    assert not (store / ".lock").exists()


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_output_and_marks_every_output(tmp_path, capsys, spark):
    from dash_spark.scanner.pipeline import ScanConfig, run_scan

    inp = Inputs(tmp_path)
    cfg = ScanConfig(bfile=inp.bfile, pheno=inp.pheno, covar=inp.covar, out=inp.out, plots=False)
    first = run_scan(cfg, spark=spark)
    assert os.path.isfile(os.path.join(first.out, MARKER))
    (tmp_path / "results" / "stale.txt").write_text("from the first run")
    with pytest.raises(Exception, match="exists"):
        run_scan(cfg, spark=spark)
    import dataclasses

    second = run_scan(dataclasses.replace(cfg, overwrite=True), spark=spark)
    assert not os.path.exists(os.path.join(second.out, "stale.txt"))
    assert os.path.isfile(os.path.join(second.out, MARKER))
    assert staging_dirs(inp.out) == [] and not [f for f in os.listdir(tmp_path) if ".old-" in f]


def test_marker_says_what_wrote_it(tmp_path):
    write_marker(str(tmp_path), "scan")
    info = json.loads((tmp_path / MARKER).read_text())
    assert info["tool"] == "dash-spark" and info["command"] == "scan"


def test_text_chunks_are_put_in_place_by_parts(tmp_path):
    """The executors' join of a scan's text files: the driver writes each header and sizes each
    file, then each range part's copies (every phenotype's chunk of that part, in any task order)
    fill disjoint byte ranges; the files equal header + chunks in range order, empty chunks and a
    phenotype without chunks included; a chunk that changed after the plan is an OutputError."""
    from types import SimpleNamespace

    import numpy as np

    from dash_spark.errors import OutputError
    from dash_spark.outputs import writers

    stage = tmp_path / "stage"
    model = SimpleNamespace(phenotypes=("a", "b", "c"), text_outputs=True, logistic_phenotypes=(),
                            score_phenotypes=(), regenie_outputs=False)
    writers.prepare_result_dirs(str(stage), model.phenotypes)
    rng = np.random.default_rng(3)
    expected = {}
    for i, name in enumerate(("a", "b")):  # c: no chunk at all
        body = b""
        for part in (2, 0, 10, 1):  # listed out of order; part 10 sorts after 2 (numerically)
            data = bytes(rng.integers(32, 127, int(rng.integers(0, 5000)), dtype=np.uint8)) if part != 1 else b""
            (stage / "_glm_parts" / str(i) / f"part-{part:05d}.txt").write_bytes(data)
        for part in (0, 1, 2, 10):
            body += (stage / "_glm_parts" / str(i) / f"part-{part:05d}.txt").read_bytes()
        expected[name] = (writers.glm_header(model, name) + "\n").encode() + body
    (stage / "_glm_parts" / "0" / ".part-00003.txt.dead").write_bytes(b"left by a killed task")
    copies = writers.text_join_plan(str(stage), model)
    assert sorted(copies) == [0, 1, 2, 10]
    for part in (10, 0, 2, 1):  # tasks finish in any order
        writers.copy_text_chunks(copies[part])
    for name in ("a", "b"):
        assert (stage / writers.glm_file(model, name)).read_bytes() == expected[name]
    assert (stage / writers.glm_file(model, "c")).read_bytes() == (writers.glm_header(model, "c") + "\n").encode()
    copies = writers.text_join_plan(str(stage), model)
    (stage / "_glm_parts" / "1" / "part-00002.txt").write_bytes(b"x")
    with pytest.raises(OutputError, match="the chunk changed after the scan's tasks wrote it"):
        writers.copy_text_chunks(copies[2])
