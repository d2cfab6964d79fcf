"""Build (or reuse) a SparkSession whose Python workers run the driver's interpreter."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: Settings that make a small local session start fast; a cluster's own properties win over them.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.python.worker.reuse": "true",
    # workers fork from a daemon that has loaded the kernels (see dash_spark.spark.daemon)
    "spark.python.daemon.module": "dash_spark.spark.daemon",
    "spark.driver.memory": "4g",
    "spark.ui.enabled": "false",
}


def read_properties(path: str) -> dict[str, str]:
    """Read a spark-defaults style file (``key value`` or ``key=value`` per line, ``#`` comments)."""
    from ..errors import ConfigError, utf8_lines

    props: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, raw in enumerate(utf8_lines(fh, path, "Spark properties file"), 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if "=" in line.split(None, 1)[0]:
                    key, _, value = line.partition("=")
                else:
                    parts = line.split(None, 1)
                    if len(parts) != 2:
                        raise ConfigError(
                            f"{path}:{lineno}: expected 'key value' or 'key=value', found {line!r}"
                        )
                    key, value = parts
                props[key.strip()] = value.strip()
                check_spark_conf({key.strip(): value.strip()}, where=f"{path}:{lineno}")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read Spark properties ({exc.strerror})") from None
    return props


#: Settings Spark reads as byte sizes: digits and an optional unit (b, k, m, g, t, p, optionally
#: followed by b), case-insensitive: 512m, 4g, 64kb.
_BYTE_SIZE_KEY = re.compile(
    r"spark\.(?:[\w.-]+\.memory|[\w.-]+\.memoryOverhead|memory\.offHeap\.size|driver\.maxResultSize"
    r"|kryoserializer\.buffer(?:\.max)?|reducer\.maxSizeInFlight|shuffle\.file\.buffer|broadcast\.blockSize)"
)
_BYTE_SIZE = re.compile(r"\d+[kmgtp]?b?", re.IGNORECASE)
#: spark.driver.memory is passed to the driver JVM as -Xmx<value>: the JVM's syntax, with a unit
#: (a bare number would be bytes there, while Spark reads it as MiB)
_HEAP_SIZE = re.compile(r"[1-9]\d*[kmgt]", re.IGNORECASE)
#: Integer settings and their smallest value
_COUNT_KEYS = {"spark.executor.cores": 1, "spark.driver.cores": 1, "spark.default.parallelism": 1,
               "spark.sql.shuffle.partitions": 1, "spark.task.cpus": 1, "spark.executor.instances": 0}
#: Master URLs Spark accepts (SparkContext's and spark-submit's forms)
_MASTER = re.compile(r"local(?:\[\s*(?:\*|[1-9]\d*)\s*(?:,\s*\d+\s*)?\])?"
                     r"|local-cluster\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]|yarn|(?:spark|k8s)://\S+")


def check_master(master: str, where: str = "--master") -> None:
    """Refuse a Spark master URL that Spark would reject, before the JVM starts."""
    from ..errors import ConfigError

    if not _MASTER.fullmatch(master.strip()):
        at = f"{where} {master}" if where == "--master" else where
        raise ConfigError(
            f"{at}: not a Spark master URL; expected local, local[N], local[*], yarn, "
            f"spark://HOST:PORT or k8s://URL, found {master!r}. Fix the master URL (or leave it out for local[*])"
        )


def check_spark_conf(conf: Mapping[str, str], where: str = "--conf") -> None:
    """Check Spark settings before the JVM starts (a malformed one fails there with a Java error).

    Keys must be Spark properties (``spark.*``); byte sizes (``spark.*.memory``, ``.memoryOverhead``,
    ``spark.driver.maxResultSize`` ...) need Spark's size syntax, ``spark.driver.memory`` a JVM
    heap size with a unit, counts (``spark.executor.cores``, ``spark.sql.shuffle.partitions`` ...)
    a positive integer, ``spark.master`` a master URL. ``where`` names the source in messages.
    """
    from ..errors import ConfigError, did_you_mean

    fix = "Fix it with --conf, in the --properties-file or in the job config's [spark] table"
    for key, value in conf.items():
        key, value = str(key).strip(), str(value).strip()
        at = f"{where} {key}={value}" if where == "--conf" else f"{where}: {key}"
        if not key.startswith("spark."):
            known = list(LOCAL_DEFAULTS) + list(_COUNT_KEYS) + ["spark.driver.memory", "spark.executor.memory"]
            hint = did_you_mean(key, known) or did_you_mean("spark." + key, known)
            raise ConfigError(
                f"{at}: not a Spark property; expected a key starting with 'spark.', found {key!r}."
                f"{hint} Hadoop settings go in as spark.hadoop.<key>"
            )
        if key == "spark.driver.memory":
            if not _HEAP_SIZE.fullmatch(value):
                raise ConfigError(
                    f"{at}: not a JVM heap size; expected a number with a unit k, m, g or t (e.g. 4g, 512m), "
                    f"found {value!r}. {fix}"
                )
        elif _BYTE_SIZE_KEY.fullmatch(key):
            if not _BYTE_SIZE.fullmatch(value):
                raise ConfigError(
                    f"{at}: not a byte size; expected digits with an optional unit k, m, g, t or p "
                    f"(e.g. 4g, 512m), found {value!r}. {fix}"
                )
        elif key in _COUNT_KEYS:
            least = _COUNT_KEYS[key]
            if not re.fullmatch(r"\d+", value) or int(value) < least:
                what = "a positive integer" if least else "a non-negative integer"
                raise ConfigError(f"{at}: not a count; expected {what}, found {value!r}. {fix}")
        elif key == "spark.master":
            check_master(value, where=at)


def _first_line(exc: BaseException) -> str:
    """The Java exception's class and message (a Py4J error), else the first line of ``exc``."""
    java = getattr(exc, "java_exception", None)
    text = str(exc)
    if java is not None:
        try:
            text = str(java.toString())
        except Exception:  # noqa: BLE001 - the JVM may be gone
            pass
    lines = [line.strip().removeprefix(": ") for line in text.splitlines()
             if line.strip() and not line.startswith("\tat ") and not line.startswith("An error occurred while calling")]
    return lines[0] if lines else type(exc).__name__


def _submitted_properties() -> set[str]:
    """Names of the Spark properties spark-submit already gave this driver, else an empty set.

    Under spark-submit the driver JVM is running before Python starts (``PYSPARK_GATEWAY_PORT`` is
    set) and holds its ``--conf``/``--properties-file``/``spark-defaults.conf`` values as system
    properties; :data:`LOCAL_DEFAULTS` must not override them.
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return set()
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; getOrCreate would anyway
    return {key for key, _ in SparkConf().getAll()}


def _cds_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dash-spark", "jvm")


def _cds_key() -> str:
    """Identify the JVM + Spark install an archive belongs to (java binary, pyspark's jars)."""
    import hashlib
    import shutil

    import pyspark

    parts = [pyspark.__version__]
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    jars = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    for path in (java and os.path.realpath(java), jars):
        if path and os.path.exists(path):
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def driver_jvm_options() -> str:
    """JVM options that make a driver JVM we launch ourselves start fast.

    - ``-XX:TieredStopAtLevel=1``: the client JIT only; the driver's JVM work is short.
    - AppCDS: the first run writes a class-data archive of Spark's classes (about 180 MB under
      ``~/.cache/dash-spark/jvm``, keyed by the Java and pyspark install); later runs map it and
      skip most class loading. Together they cut Spark's cold start here from ~12 s to ~5 s
      (session plus first job). An archive that does not match is ignored by the JVM.
      ``DASH_SPARK_JVM_CDS=0`` turns the archive off.
    """
    opts = ["-XX:TieredStopAtLevel=1"]
    if os.environ.get("DASH_SPARK_JVM_CDS", "1") == "0":
        return " ".join(opts)
    try:
        folder = _cds_dir()
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, f"spark-{_cds_key()}.jsa")
        if not os.path.exists(final):
            _promote_archive(folder, final)
        if os.path.exists(final):
            opts.append(f"-XX:SharedArchiveFile={final}")
        else:
            opts.append(f"-XX:ArchiveClassesAtExit={final}.tmp-{os.getpid()}")
        opts.append("-Xshare:auto")
        opts.append("-Xlog:cds=off,cds+dynamic=off")
    except OSError:  # no writable cache: start without an archive
        pass
    return " ".join(opts)


def _promote_archive(folder: str, final: str) -> None:
    """Adopt an archive an earlier run's JVM wrote at exit: its run is over (pid gone) and the
    file has not changed for 30 s (the JVM writes it after the Python process has ended)."""
    import time

    prefix = os.path.basename(final) + ".tmp-"
    done = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(prefix) and not _pid_alive(name[len(prefix):]):
            if time.time() - os.path.getmtime(path) > 30 and os.path.getsize(path) > 0:
                done.append(path)
    if done:
        done.sort(key=os.path.getmtime)
        os.replace(done[-1], final)
        for path in done[:-1]:
            os.remove(path)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def get_session(
    app_name: str = "dash-spark",
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
):
    """Return a SparkSession, creating it if needed.

    ``master`` defaults to whatever spark-submit set, else ``local[*]``. ``conf`` entries are applied
    on top of :data:`LOCAL_DEFAULTS` (defaults are only used for settings nobody else has set).
    ``PYSPARK_PYTHON`` is pinned to this interpreter so executors import the same packages.
    """
    check_spark_conf(conf or {})
    if master:
        check_master(master)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    submitted = "spark.master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or os.environ.get(
        "SPARK_ENV_LOADED"
    )
    if master:
        builder = builder.master(master)
    elif not submitted:
        builder = builder.master("local[*]")
    preset = _submitted_properties()
    settings = {k: v for k, v in LOCAL_DEFAULTS.items() if k not in preset}
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # we launch the driver JVM ourselves
        settings["spark.driver.extraJavaOptions"] = driver_jvm_options()
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - a setting Spark refuses, a JVM that does not start
        from ..errors import ConfigError

        log.debug("Spark session failed to start", exc_info=True)
        raise ConfigError(
            f"Spark session: cannot start Spark; expected settings Spark accepts, found the error "
            f"{_first_line(exc)}. Check --master, --conf / --properties-file and the job config's [spark] table"
        ) from None
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "Spark session: master=%s, default parallelism=%d",
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    return spark


#: events of the starters waiting for the JVM's process, and the Popen pyspark had before the hook
_SPAWN_WAITERS: list = []
_SPAWN_HOOK: dict = {}
_SPAWN_LOCK = threading.Lock()


def _notify_jvm_spawn(event):
    """Make pyspark's JVM launch set ``event`` right after the JVM's process is created (the event
    is set at once when no JVM will be launched: one runs already, or spark-submit provides it).
    Returns the function that undoes it. Starters of one process share one hook, which sets every
    waiting starter's event (pyspark launches one JVM) and is removed when the last one is done."""
    from pyspark import SparkContext
    from pyspark import java_gateway

    if "PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._gateway is not None:
        event.set()
        return lambda: None
    lock = _SPAWN_LOCK
    with lock:
        if not _SPAWN_WAITERS:
            real = java_gateway.Popen

            def popen(*args, **kwargs):
                try:
                    proc = real(*args, **kwargs)
                    _SPAWNED.append(proc)
                    return proc
                finally:
                    with lock:
                        for waiter in _SPAWN_WAITERS:
                            waiter.set()

            _SPAWN_HOOK.update(real=real, popen=popen)
            java_gateway.Popen = popen
        _SPAWN_WAITERS.append(event)

    def restore():
        with lock:
            if event in _SPAWN_WAITERS:
                _SPAWN_WAITERS.remove(event)
            if not _SPAWN_WAITERS and java_gateway.Popen is _SPAWN_HOOK.get("popen"):
                java_gateway.Popen = _SPAWN_HOOK["real"]

    return restore


#: The JVM processes this process launched through a :class:`SessionStarter` (see :func:`stop_own_jvm`)
_SPAWNED: list = []


def stop_own_jvm(timeout: float = 10.0) -> None:
    """Stop the JVM this process launched (the command's own ``local`` Spark), and wait until it has
    exited, so that a command's last message is the last thing on its stderr: a JVM still starting
    prints its start-up lines after the command has failed otherwise. Only for a command that ends
    its process (``dash-spark`` itself); SIGTERM lets Spark's shutdown hooks remove its temporary
    folders. A JVM given by spark-submit (the parent of this process) is never touched."""
    import signal

    from pyspark import SparkContext

    procs = list(_SPAWNED)
    gateway = SparkContext._gateway
    if gateway is not None and getattr(gateway, "proc", None) is not None and gateway.proc not in procs:
        procs.append(gateway.proc)
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except Exception:  # noqa: BLE001 - best effort: the message is printed anyway
                pass


class SessionStarter:
    """The Spark session, started in a background thread while the driver reads its inputs.

    Once the session is up, a tiny job warms the executors' Python workers (they import the
    kernels and load their compiled code), so the first real job does not pay for it. Python
    workers are reused between jobs (``spark.python.worker.reuse``, on by default). ``get()``
    waits for both and returns the session, or raises what starting it raised. ``share``: the
    workers also load what a party's tasks mask and stage shares with (the ring encoding's
    compiled code, the stream cipher).
    """

    def __init__(self, master: str | None = None, conf: Mapping[str, str] | None = None, *, warm: bool = True,
                 share: bool = False):
        import threading

        check_spark_conf(conf or {})  # here, not in the thread: a bad setting fails before any work
        if master:
            check_master(master)
        self._box: dict = {}
        self._spawned = threading.Event()
        restore = _notify_jvm_spawn(self._spawned)
        self._share = share
        self._thread = threading.Thread(target=self._start, args=(master, conf, warm, restore), daemon=True)
        self._thread.start()
        # pyspark starts the JVM with fork() (its Popen has a preexec_fn), which runs OpenBLAS's
        # pre-fork handler: a linear-algebra call running meanwhile in this thread (the model's QR)
        # can then wait forever for BLAS threads that handler stopped. So the caller goes on only
        # once the JVM's process exists (milliseconds; the JVM itself then starts in parallel).
        self._spawned.wait(timeout=60)

    def _start(self, master, conf, warm, restore) -> None:
        try:
            self._box["spark"] = spark = get_session(master=master, conf=conf)
        except BaseException as exc:  # noqa: BLE001 - re-raised by get()
            self._box["error"] = exc
            return
        finally:
            restore()
            self._spawned.set()
        if warm:
            try:
                sc = spark.sparkContext
                work = _warm_share_worker if self._share else _warm_worker
                sc.parallelize(range(sc.defaultParallelism), sc.defaultParallelism).foreach(work)
            except Exception as exc:  # noqa: BLE001 - only a head start; a real job reports real errors
                log.debug("worker warm-up failed: %s", exc)

    def get(self):
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["spark"]


def resolve_session(spark):
    """``spark`` itself, or the session of a :class:`SessionStarter`."""
    return spark.get() if isinstance(spark, SessionStarter) else spark


def wait_for_running_tasks(spark, timeout: float = 30.0) -> None:
    """After a failed job, wait (at most ``timeout`` s) until no executor runs a task, then a moment
    more for their Python workers: the job's cancelled tasks must stop writing before the driver
    removes what they were writing into."""
    import time

    try:
        tracker = spark.sparkContext._jsc.sc().statusTracker()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(e.numRunningTasks() for e in tracker.getExecutorInfos()):
            time.sleep(0.1)
        time.sleep(0.2)
    except Exception as exc:  # noqa: BLE001 - best effort; the job's own error is what matters
        log.debug("could not wait for running tasks: %s", exc)


def _warm_worker(_) -> None:
    """Executor side: the kernels loaded (already done when the worker forked from
    :mod:`dash_spark.spark.daemon`, else here) and the task modules imported."""
    import importlib

    from dash_spark.spark.daemon import preload

    preload()
    importlib.import_module("dash_spark.scanner.tasks")  # pyarrow and the statistics' helpers


def _warm_share_worker(_) -> None:
    """:func:`_warm_worker`, and what a party's share tasks use: the ring encoding and the stream cipher."""
    import numpy as np

    from dash_spark.multiparty.masking import mask_stream
    from dash_spark.multiparty.rounds import PartWriter  # noqa: F401 - the share's writer and its imports

    _warm_worker(_)
    from dash_spark.multiparty.encoding import add_into, encode

    x = encode(np.zeros(2))
    add_into(x, mask_stream(bytes(32), "warm", 2))
