"""Shared fixtures: one SparkSession for the whole run, a printed RNG seed."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

SEED = int(os.environ.get("DASH_TEST_SEED", "20261124"))

#: indexes of BGEN files without a .bgi go to a cache of this run (set before any Spark session
#: starts, so that its Python workers see the same folder), never to the user's ~/.cache
if "DASH_SPARK_CACHE" not in os.environ:
    import tempfile

    _CACHE = os.environ["DASH_SPARK_CACHE"] = tempfile.mkdtemp(prefix="dash-spark-test-cache-")

    def pytest_sessionfinish(session, exitstatus):
        import shutil

        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_report_header(config):
    return f"dash-spark test seed: {SEED} (set DASH_TEST_SEED to change)"


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


@pytest.fixture(scope="session")
def spark():
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from dash_spark.spark.session import get_session

    session = get_session(
        "dash-spark-tests",
        master="local[2]",
        conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"},
    )
    yield session
    session.stop()
