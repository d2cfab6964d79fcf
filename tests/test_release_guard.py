"""A store's release guard and its safety under concurrent or killed runs: a release one sample away
from an earlier one is refused (and changes nothing), a lock left by a dead process is taken over,
batch directories of a killed run are cleaned, and two first compresses never both succeed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dash_spark.cli import main
from dash_spark.studies.store import LOCK_FILE, open_store, run_compress

from .helpers import snapshot
from .oracle_data import make_split_files




@pytest.fixture(scope="module")
def store(tmp_path_factory, spark):
    tmp = tmp_path_factory.mktemp("guard")
    files, parts, prefixes = make_split_files(tmp, 71, ("w1", "w2"), [0.6, 0.4], n=260, m=220)
    root = str(tmp / "store")
    for w in ("w1", "w2"):
        run_compress(root, w, {"bfile": prefixes[w], "pheno": files.pheno, "covar": files.covar}, spark=spark)
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    return tmp, root, [iids[i] for i in parts["w1"]]


def test_a_release_one_sample_away_is_refused(store, capsys):
    tmp, root, w1 = store
    assert main(["-q", "refresh", "--store", root, "--out", str(tmp / "r1"), "--no-plots"]) == 0
    log = json.loads(open(os.path.join(root, "releases.json")).read())
    assert len(log) == 1 and log[0]["n_samples"] == 260
    (tmp / "one.txt").write_text(w1[0] + "\n")
    before = snapshot(root)
    capsys.readouterr()
    code = main(["-q", "refresh", "--store", root, "--out", str(tmp / "r2"), "--withdraw", str(tmp / "one.txt"),
                 "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and "by 1 sample(s), fewer than 20" in err and "--allow-small-release" in err
    assert snapshot(root) == before and not (tmp / "r2").exists()
    # the same on select, and then deliberately with the override (logged, recorded)
    code = main(["-q", "refresh", "--store", root, "--out", str(tmp / "r2"), "--withdraw", str(tmp / "one.txt"),
                 "--no-plots", "--allow-small-release"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    log = json.loads(open(os.path.join(root, "releases.json")).read())
    assert [e["n_samples"] for e in log] == [260, 259] and log[1]["overridden"]
    assert w1[0] in open_store(root).batch("w1").withdrawn


def test_a_dead_runs_lock_is_taken_over_and_its_batches_cleaned(store, spark, capsys):
    tmp, root, _ = store
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    with open(os.path.join(root, LOCK_FILE), "w") as fh:
        fh.write(f"pid {dead} on {socket.gethostname()} since 2026-12-01T00:00:00+00:00\n")
    orphan = os.path.join(root, "batches", "w9-0123456789ab")
    os.makedirs(os.path.join(orphan, "blocks"))
    keep = os.path.join(root, "batches", "notes")  # not a batch directory of ours: never touched
    os.makedirs(keep)
    code = main(["-q", "refresh", "--store", root, "--out", str(tmp / "r3"), "--no-plots"])
    assert code == 0, capsys.readouterr().err
    assert not os.path.exists(orphan) and os.path.isdir(keep)
    assert not os.path.exists(os.path.join(root, LOCK_FILE))
    # a lock of a live process is respected
    with open(os.path.join(root, LOCK_FILE), "w") as fh:
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since 2026-12-01T00:00:00+00:00\n")
    capsys.readouterr()
    assert main(["-q", "refresh", "--store", root, "--out", str(tmp / "r4"), "--no-plots"]) == 2
    assert "in use" in capsys.readouterr().err
    os.remove(os.path.join(root, LOCK_FILE))


def test_creating_a_store_takes_its_lock(tmp_path, capsys):
    from .test_bad_input import Inputs

    inp = Inputs(tmp_path)
    root = tmp_path / "new_store"
    root.mkdir()
    with open(root / LOCK_FILE, "w") as fh:  # another first compress holds it
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since 2026-12-01T00:00:00+00:00\n")
    code = main(["-q", "compress", "--store", str(root), "--batch", "b1", "--bfile", inp.bfile, "--pheno",
                 inp.pheno, "--covar", inp.covar])
    assert code == 2 and "in use" in capsys.readouterr().err
    assert sorted(os.listdir(root)) == [LOCK_FILE]  # nothing created beside the other run's lock
    np.testing.assert_equal(open(root / LOCK_FILE).read().split()[1], str(os.getpid()))
