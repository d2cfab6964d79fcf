"""The shipped benchmarks run end to end on a tiny cohort and check their own results (plink2 is
installed by `make test`, as for the parity tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _bench(tmp_path, *flags) -> dict:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "dash_spark.cli", "-q", "bench", *flags, "--samples", "400",
                           "--variants", "600", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_refresh_bench(tmp_path):
    figures = _bench(tmp_path, "--refresh")
    assert figures["max_rel_diff_vs_full_scan"] < 1e-9
    assert all(figures[k] > 0 for k in ("full_scan", "full_store", "refresh_add"))
    # the times are printed to 0.01 s and the ratio (to 0.001) from the unrounded times
    a, b = figures["refresh_add"], figures["full_scan"]
    slack = (a / b) * (0.005 / a + 0.005 / b) + 5e-4
    assert figures["refresh_over_full_scan"] == pytest.approx(a / b, abs=slack)


@pytest.mark.slow
def test_parties_bench(tmp_path):
    figures = _bench(tmp_path, "--parties")
    assert figures["max_rel_diff_vs_pooled"] < 1e-9
    parties = ("alice", "bob", "carol")
    critical = max(figures[f"compress_{p}"] for p in parties) + figures["finish"]
    assert figures["critical_path"] == pytest.approx(critical, abs=0.05)
    assert figures["critical_path_with_join_over_pooled"] > figures["critical_path_over_pooled"]
    dropped = _bench(tmp_path / "dropout", "--parties", "--dropout")  # dave joins and drops: 3 of 4 close
    assert dropped["dropout"] and dropped["max_rel_diff_vs_pooled"] < 1e-9 and "join_dave" in dropped


@pytest.mark.slow
def test_plink2_bench(tmp_path):
    figures = _bench(tmp_path, "--missing-rate", "0.02", "--scaling")
    check = figures["checks"]["pheno1"]
    assert check["variants"] == 600
    assert check["a1_mismatch"] == check["obs_ct_mismatch"] == check["na_mismatch"] == 0
    assert max(check[f"{c}_max_rel"] for c in ("beta", "se", "t_stat", "p")) < 1e-5  # plink2 prints 6 digits
    assert figures["ratio"] > 0 and figures["ours_seconds"] > 0 and figures["plink2_seconds"] > 0
    phases = figures["ours_phases"]  # the scan's own phase split
    assert 0 < phases["kernel_task_seconds"] and 0 < phases["scan_stage_seconds"] <= phases["total_seconds"]
    assert phases["session_ready_seconds"] <= phases["total_seconds"] < figures["ours_seconds"]
    # the scale model: local[1] and local[2] runs, Amdahl's projection from their phases
    sc = figures["scaling"]
    assert sc["phases_local1"]["scan_stage_seconds"] == sc["stage_seconds_local1"] > 0
    assert sc["driver_serial_seconds"] == pytest.approx(
        sc["phases_local2"]["total_seconds"] - sc["phases_local2"]["scan_stage_seconds"], abs=0.011)
    eff = sc["stage_efficiency_1_to_2"]
    assert eff == pytest.approx(sc["stage_seconds_local1"] / (2 * sc["stage_seconds_local2"]), abs=0.01)
    assert sc["projected_seconds_64_cores"] == pytest.approx(
        sc["driver_serial_seconds"] + sc["stage_seconds_local1"] / (64 * eff), rel=0.02, abs=0.02)


@pytest.mark.slow
def test_dosage_bench(tmp_path):
    figures = _bench(tmp_path, "--dosage", "--missing-rate", "0.02")
    for kind in ("pgen", "bgen"):
        check = figures["checks"][f"{kind}:pheno1"]
        assert check["variants"] == 600
        assert check["a1_mismatch"] == check["obs_ct_mismatch"] == check["na_mismatch"] == 0
        assert max(check[f"{c}_max_rel"] for c in ("beta", "se", "t_stat", "p")) < 1e-5
        assert figures[f"{kind}_ratio"] > 0 and figures[f"{kind}_plink2_seconds"] > 0


@pytest.mark.slow
def test_case_control_bench_both_builds(tmp_path):
    """--case-control: both plink2 builds and ours on a 1/2-coded phenotype (logistic, Firth fallback),
    alternating runs, medians, the ratio against the faster build, the host's CPU named."""
    from .test_logistic import PLINK2_A74, _a74_runs

    extra = ["--plink2-also", str(PLINK2_A74)] if _a74_runs() else []
    figures = _bench(tmp_path, "--case-control", "0.1", "--repeat", "2", "--missing-rate", "0.02", *extra)
    assert figures["case_control"] == 0.1 and figures["repeats"] == 2 and "cores" in figures["host_cpu"]
    builds = figures["plink2_builds"]
    assert len(builds) == 1 + bool(extra) and all(len(b["runs"]) == 2 for b in builds.values())
    assert figures["plink2_seconds"] == min(b["median_seconds"] for b in builds.values())
    assert len(figures["ours_runs"]) == 2
    for name, check in figures["checks"].items():
        assert check["variants"] == 600
        assert check["a1_mismatch"] == check["obs_ct_mismatch"] == check["na_mismatch"] == 0, name
    if extra:  # the newest build fits as we do: its printed digits but for the rows its carried state
        # moves (test_logistic.py reruns such rows alone)
        check = next(c for name, c in figures["checks"].items() if "#2" in name)
        assert check["rows_beyond_printed_digits"] <= 6, check
