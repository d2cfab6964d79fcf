"""The scan gives the same results on a Spark standalone cluster (via spark-submit) as on local Spark.

The slow test starts a throwaway master and two one-core workers on 127.0.0.1 (tests/cluster.py),
submits ``jobs/scan.py`` to it with ``spark-submit`` and, while that runs, scans the same files
in-process on the local test session with a different partitioning; the outputs must agree.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .cluster import QUICK_JVM_OPTS, cluster_env, log_tail, spark_script, standalone_cluster, stop_all

REPO = Path(__file__).resolve().parents[1]
SCAN_JOB = REPO / "jobs" / "scan.py"
SUBMIT_TIMEOUT_S = 300
#: a LOCAL_DEFAULTS key given a different value on the spark-submit line: the submitted value must win
PROBE_KEY, PROBE_VALUE = "spark.sql.shuffle.partitions", "2"


def read_results(out_dir: Path) -> pa.Table:
    table = pq.read_table(out_dir / "results.parquet")
    return table.sort_by([("phenotype", "ascending"), ("variant_index", "ascending")])


def glm_rows(path: Path) -> tuple[str, list[list[str]]]:
    header, *lines = path.read_text().splitlines()
    return header, [line.split("\t") for line in lines]


def as_float(field: str) -> float:
    return math.nan if field == "NA" else float(field)


def spark_properties(event_log_dir: Path, app_id: str) -> dict[str, str]:
    """``Spark Properties`` of the application's environment-update event (uncompressed event log)."""
    files = sorted(p for p in event_log_dir.rglob(f"*{app_id}*") if p.is_file() and not p.name.endswith(".crc"))
    assert files, f"no event log for {app_id} under {event_log_dir}: {list(event_log_dir.rglob('*'))}"
    for path in files:
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event.get("Event") == "SparkListenerEnvironmentUpdate":
                props = event["Spark Properties"]
                return dict(props) if isinstance(props, list) else props
    raise AssertionError(f"no SparkListenerEnvironmentUpdate in {files}")


@pytest.mark.slow
def test_standalone_cluster_matches_local(tmp_path_factory, spark):
    from dash_spark.bench.simulate import simulate_cohort
    from dash_spark.scanner.pipeline import ScanConfig, run_scan

    t0 = time.monotonic()
    data = tmp_path_factory.mktemp("cluster-cohort")
    cohort = simulate_cohort(data, n_samples=400, n_variants=3000, n_covariates=3, n_phenotypes=2,
                             missing_rate=0.01, pheno_missing_rate=0.05, n_monomorphic=2, seed=5)
    work = tmp_path_factory.mktemp("cluster-run")
    out_cluster, out_local = work / "out-cluster", work / "out-local"
    event_logs = work / "event-logs"
    event_logs.mkdir()
    submit_log = work / "spark-submit.log"
    inputs = ["--bfile", str(cohort.bfile), "--pheno", str(cohort.pheno), "--covar", str(cohort.covar)]

    with standalone_cluster(work / "cluster", n_workers=2, cores_per_worker=1, memory="1g") as cluster:
        t_up = time.monotonic()
        env = cluster_env()  # PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP=127.0.0.1
        cmd = [
            spark_script("spark-submit"), "--master", cluster.url,
            "--conf", "spark.executor.cores=1",
            "--driver-java-options", QUICK_JVM_OPTS,
            "--conf", f"spark.executor.extraJavaOptions={QUICK_JVM_OPTS}",
            "--conf", "spark.pyspark.python=" + sys.executable,
            "--conf", f"{PROBE_KEY}={PROBE_VALUE}",
            "--conf", "spark.eventLog.enabled=true",
            "--conf", f"spark.eventLog.dir={event_logs.as_uri()}",
            "--conf", "spark.eventLog.compress=false",
            str(SCAN_JOB), *inputs, "--out", str(out_cluster), "--block-variants", "700", "--no-plots",
        ]
        with open(submit_log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=work, start_new_session=True)
        try:
            # the local scan runs while the cluster application starts up and runs
            run_scan(ScanConfig(bfile=cohort.bfile, pheno=cohort.pheno, covar=cohort.covar, out=str(out_local),
                                block_variants=1100, plots=False), spark=spark)
            t_local = time.monotonic()
            rc = proc.wait(timeout=SUBMIT_TIMEOUT_S)
        finally:  # on any failure, end the driver JVM and its Python process (their own group)
            stop_all([proc], grace=5)
        t_submit = time.monotonic()
        assert rc == 0, f"spark-submit exited with {rc}; tail of its output:\n{log_tail(submit_log, 60)}"
        master_text = cluster.master_log.read_text(errors="replace")

    # --- the application really ran on the cluster, with the submitted settings
    app_ids = re.findall(r"Registered app dash-spark with ID (app-[0-9-]+)", master_text)
    assert len(app_ids) == 1, f"master log registered apps {app_ids}:\n{log_tail(cluster.master_log)}"
    app_id = app_ids[0]
    for wdir in cluster.worker_dirs:  # one executor per one-core worker, each with its own directory
        executors = list((wdir / app_id).glob("*"))
        assert executors, (f"{wdir}: no executor directory for {app_id}: {sorted(os.listdir(wdir))}\n"
                           f"master log:\n{log_tail(cluster.master_log)}")
    props = spark_properties(event_logs, app_id)
    assert props["spark.master"] == cluster.url
    assert props[PROBE_KEY] == PROBE_VALUE, "spark-submit's --conf was overridden by the session defaults"

    # --- results.parquet: same rows, exact keys/strings/ints, floats to 1e-12 relative
    got, want = read_results(out_cluster), read_results(out_local)
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows == 2 * 3000
    for name in want.column_names:
        a, b = got.column(name).to_numpy(), want.column(name).to_numpy()
        if pa.types.is_floating(want.schema.field(name).type):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, equal_nan=True, err_msg=name)
        else:
            assert a.tolist() == b.tolist(), f"column {name} differs"

    # --- plink2-style text: identical non-numeric columns, numbers to 1e-12 relative
    glms = sorted(p.name for p in out_local.glob("*.glm.linear"))
    assert glms == sorted(p.name for p in out_cluster.glob("*.glm.linear")) == ["pheno1.glm.linear",
                                                                                 "pheno2.glm.linear"]
    for name in glms:
        (h_got, rows_got), (h_want, rows_want) = glm_rows(out_cluster / name), glm_rows(out_local / name)
        assert h_got == h_want
        assert len(rows_got) == len(rows_want) == 3000
        assert [r[:8] + r[-1:] for r in rows_got] == [r[:8] + r[-1:] for r in rows_want], name
        nums_got = np.array([[as_float(x) for x in r[8:12]] for r in rows_got])
        nums_want = np.array([[as_float(x) for x in r[8:12]] for r in rows_want])
        np.testing.assert_allclose(nums_got, nums_want, rtol=1e-12, atol=0, equal_nan=True, err_msg=name)

    print(f"\ncluster test: cluster up {t_up - t0:.1f} s, local scan {t_local - t_up:.1f} s, "
          f"spark-submit done {t_submit - t_up:.1f} s after submission, total {time.monotonic() - t0:.1f} s")


def test_scan_job_is_thin(monkeypatch):
    """jobs/scan.py only imports dash_spark.cli.main and calls it as ``main(["scan", *argv])``."""
    tree = ast.parse(SCAN_JOB.read_text())
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imports |= {f"{node.module}.{a.name}" for a in node.names}
    assert imports == {"sys", "dash_spark.cli.main"}
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not functions, "jobs/scan.py should hold no logic of its own"

    import dash_spark.cli

    calls = []
    monkeypatch.setattr(dash_spark.cli, "main", lambda argv=None: calls.append(argv) or 7)
    monkeypatch.setattr(sys, "argv", [str(SCAN_JOB), "--config", "job.toml", "--overwrite"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SCAN_JOB), run_name="__main__")
    assert exc.value.code == 7
    assert calls == [["scan", "--config", "job.toml", "--overwrite"]]
