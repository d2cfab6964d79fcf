"""Start and stop a throwaway Spark standalone cluster (one master, N workers) on 127.0.0.1.

Used by the slow cluster test; every process is started here, in its own process group, and every
process group is ended on exit (TERM, then KILL after a grace period), even when the body raised.
The workers' executors and Python workers are their children, so they end with them.

Layout under ``workdir``: ``master.log``, ``worker-<i>.log`` and each worker's ``--work-dir`` at
``worker-<i>/work`` (Spark puts one ``app-*`` directory per application that ran an executor there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
#: short-lived JVMs on a small machine: C1 only and one GC thread start faster and steal less CPU
QUICK_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@dataclass(frozen=True)
class Cluster:
    url: str  #: spark://127.0.0.1:<port>
    master_log: Path
    worker_logs: tuple[Path, ...]
    worker_dirs: tuple[Path, ...]  #: each worker's --work-dir
    master_webui_port: int


def spark_script(name: str) -> str:
    """``spark-class``/``spark-submit`` of this interpreter's pyspark (venv bin, PATH, package bin)."""
    candidates = [Path(sys.executable).parent / name]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    try:
        import pyspark

        candidates.append(Path(pyspark.__file__).parent / "bin" / name)
    except ImportError:  # pragma: no cover
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise FileNotFoundError(f"{name}: not found next to {sys.executable}, on PATH or in pyspark/bin")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (sockets held together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable, SPARK_DAEMON_JAVA_OPTS=QUICK_JVM_OPTS)
    # do not let a caller's spark-submit/pyspark settings leak into the daemons
    for key in ("PYSPARK_SUBMIT_ARGS", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_ENV_LOADED"):
        env.pop(key, None)
    return env


def log_tail(path: Path, n_lines: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<{path}: {exc.strerror}>"
    return "\n".join(lines[-n_lines:])


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # we made each process the leader of its own group


def stop_all(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """TERM every process group, wait up to ``grace`` seconds, then KILL what is left of them.

    The KILL goes to the groups even when the leader has exited: its children (executors, Python
    workers) may still be alive in the group.
    """
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)


@contextlib.contextmanager
def standalone_cluster(workdir, n_workers: int = 2, cores_per_worker: int = 1, memory: str = "1g",
                       startup_timeout: float = STARTUP_TIMEOUT_S):
    """Run a standalone master and ``n_workers`` workers; yield a :class:`Cluster`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spark_class = spark_script("spark-class")
    env = cluster_env()
    port, webui, *worker_webuis = free_ports(2 + n_workers)
    url = f"spark://127.0.0.1:{port}"
    master_log = workdir / "master.log"
    worker_logs = tuple(workdir / f"worker-{i}.log" for i in range(n_workers))
    worker_dirs = tuple(workdir / f"worker-{i}" / "work" for i in range(n_workers))
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log_path: Path) -> subprocess.Popen:
        with open(log_path, "wb") as fh:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=workdir, start_new_session=True)
        procs.append(proc)
        return proc

    def failure(msg: str) -> RuntimeError:
        parts = [msg]
        for p in (master_log, *worker_logs):
            if p.exists():
                parts.append(f"--- tail of {p} ---\n{log_tail(p)}")
        return RuntimeError("\n".join(parts))

    try:
        start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
               "--port", str(port), "--webui-port", str(webui)], master_log)
        for i in range(n_workers):
            worker_dirs[i].mkdir(parents=True, exist_ok=True)
            start([spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                   "--cores", str(cores_per_worker), "--memory", memory,
                   "--webui-port", str(worker_webuis[i]), "--work-dir", str(worker_dirs[i])],
                  worker_logs[i])
        deadline = time.monotonic() + startup_timeout
        while True:
            # Count the workers that say they are registered. The master's own "Registering worker"
            # line is not enough: a worker that reaches the master before it has been elected leader is
            # logged there but answered "in standby", and only joins after a retry ~8 s later.
            registered = sum(
                "Successfully registered with master" in p.read_text(errors="replace")
                for p in worker_logs if p.exists()
            )
            if registered >= n_workers:
                break
            dead = [(p.args[1], p.returncode) for p in procs if p.poll() is not None]
            if dead:
                raise failure(f"standalone cluster: process exited during startup: {dead}")
            if time.monotonic() > deadline:
                raise failure(f"standalone cluster: {registered} of {n_workers} workers registered with "
                              f"{url} after {startup_timeout:.0f} s")
            time.sleep(0.25)
        yield Cluster(url=url, master_log=master_log, worker_logs=worker_logs, worker_dirs=worker_dirs,
                      master_webui_port=webui)
    finally:
        stop_all(procs)
