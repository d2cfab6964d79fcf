"""The code passes ruff's pyflakes checks (unused or undefined names, shadowed imports, syntax
errors, mutable default arguments): rules in pyproject.toml's [tool.ruff]."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:  # pragma: no cover - installed with the test extras
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([ruff, "check", "--no-cache", "dash_spark", "tests", "jobs"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_checks_the_core_packages(tmp_path):
    """mypy type-checks the statistics, the readers, the multi-party layer, the Python API (the
    code that runs everywhere: executors, parties, notebooks), the settings and the model builders."""
    pytest.importorskip("mypy", reason="mypy is a test dependency (pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "cache"), "dash_spark/stats", "dash_spark/io",
                           "dash_spark/multiparty", "dash_spark/api.py", "dash_spark/config.py",
                           "dash_spark/scanner/model.py"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
