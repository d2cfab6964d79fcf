"""Shared fixtures: one SparkSession for the whole run, a printed RNG seed."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

SEED = int(os.environ.get("DASH_TEST_SEED", "20261124"))


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
