"""Build (or reuse) a SparkSession whose Python workers run the driver's interpreter."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: Settings that make a small local session start fast; a cluster's own properties win over them.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.python.worker.reuse": "true",
    "spark.driver.memory": "4g",
    "spark.ui.enabled": "false",
}


def read_properties(path: str) -> dict[str, str]:
    """Read a spark-defaults style file (``key value`` or ``key=value`` per line, ``#`` comments)."""
    from ..errors import ConfigError

    props: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, 1):
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
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read Spark properties ({exc.strerror})") from None
    return props


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
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "Spark session: master=%s, default parallelism=%d",
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    return spark
