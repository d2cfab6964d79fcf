"""Session helpers: spark-defaults parsing and the driver JVM's class-data archive handling."""

from __future__ import annotations

import os
import time

import pytest

from dash_spark.errors import ConfigError
from dash_spark.spark import session


def test_read_properties_both_syntaxes(tmp_path):
    path = tmp_path / "p.properties"
    path.write_text("# comment\nspark.a  1\nspark.b=two words\n\nspark.c\t3\n")
    assert session.read_properties(str(path)) == {"spark.a": "1", "spark.b": "two words", "spark.c": "3"}
    path.write_text("lonely\n")
    with pytest.raises(ConfigError, match="p.properties:1"):
        session.read_properties(str(path))


def test_archive_is_written_then_adopted(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("DASH_SPARK_JVM_CDS", raising=False)
    first = session.driver_jvm_options()
    assert "-XX:TieredStopAtLevel=1" in first
    target = next(o for o in first.split() if o.startswith("-XX:ArchiveClassesAtExit="))
    tmp = target.split("=", 1)[1]
    assert tmp.endswith(f".tmp-{os.getpid()}")
    # a finished run's archive (pid gone) that is still fresh is not adopted: its JVM may be writing
    dead = tmp.rsplit("-", 1)[0] + "-999999999"
    with open(dead, "wb") as fh:
        fh.write(b"x" * 10)
    assert "ArchiveClassesAtExit" in session.driver_jvm_options()
    old = time.time() - 120
    os.utime(dead, (old, old))
    adopted = session.driver_jvm_options()
    final = dead.rsplit(".tmp-", 1)[0]
    assert f"-XX:SharedArchiveFile={final}" in adopted.split()
    assert os.path.exists(final) and not os.path.exists(dead)


def test_archive_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("DASH_SPARK_JVM_CDS", "0")
    assert session.driver_jvm_options() == "-XX:TieredStopAtLevel=1"
    assert not (tmp_path / "dash-spark").exists()


def test_session_starter_waits_only_for_the_jvm_process(monkeypatch):
    """pyspark forks the JVM from the starter's thread; the caller goes on once that process exists
    (so no BLAS call of the caller's runs across the fork). The hook sets its event when pyspark's
    Popen returns, and is removed afterwards; with a JVM already there it is not installed."""
    import subprocess
    import threading

    from pyspark import SparkContext, java_gateway

    from dash_spark.spark.session import _notify_jvm_spawn

    import time

    deadline = time.monotonic() + 60  # a starter of an earlier test (a refused scan) may still be starting
    while java_gateway.Popen is not subprocess.Popen and time.monotonic() < deadline:
        time.sleep(0.1)
    monkeypatch.setattr(SparkContext, "_gateway", None)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    event = threading.Event()
    restore = _notify_jvm_spawn(event)
    assert java_gateway.Popen is not subprocess.Popen and not event.is_set()
    java_gateway.Popen(["true"]).wait()
    assert event.is_set()
    restore()
    assert java_gateway.Popen is subprocess.Popen
    monkeypatch.setattr(SparkContext, "_gateway", object())  # a JVM runs already: nothing to wait for
    event = threading.Event()
    _notify_jvm_spawn(event)()
    assert event.is_set() and java_gateway.Popen is subprocess.Popen


def test_daemon_prefers_the_installed_pyspark_only_for_its_own_zip(tmp_path):
    from dash_spark.spark.daemon import prefer_installed_pyspark

    site = tmp_path / "site-packages"
    (site / "pyspark" / "python" / "lib").mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    own = str(site / "pyspark" / "python" / "lib" / "pyspark.zip")
    py4j = str(site / "pyspark" / "python" / "lib" / "py4j-0.10.9.9-src.zip")
    other = str(tmp_path / "spark-home" / "python" / "lib" / "pyspark.zip")  # a cluster's SPARK_HOME
    assert prefer_installed_pyspark([own, py4j, str(site)]) == [py4j, str(site)]
    assert prefer_installed_pyspark([other, py4j, str(site)]) == [other, py4j, str(site)]
    # the installed package is not on the path: the zip is all there is
    assert prefer_installed_pyspark([own, "/usr/lib/python3"]) == [own, "/usr/lib/python3"]
    (site / "pyspark" / "__init__.py").unlink()  # not a package: keep the zip
    assert prefer_installed_pyspark([own, str(site)]) == [own, str(site)]


def test_workers_fork_from_a_daemon_with_the_kernels_loaded(spark):
    """The executors' Python workers get pyspark's compiled modules and the loaded kernels from
    the daemon (``spark.python.daemon.module``): nothing here imports them in the task."""

    def probe(_):
        import sys

        import pyspark

        yield pyspark.__file__, "dash_spark.stats.kernel" in sys.modules, "numba" in sys.modules

    sc = spark.sparkContext
    assert sc.getConf().get("spark.python.daemon.module") == "dash_spark.spark.daemon"
    for path, kernel, numba in sc.parallelize(range(2), 2).mapPartitions(probe).collect():
        assert ".zip" not in path, path
        assert kernel and numba
