"""``dash-spark bench --refresh``: adding a batch of new samples vs recomputing the union.

The cohort is simulated once (cached under ``--workdir``, see :mod:`dash_spark.bench.waves`): the
union, its first 90% of samples (``wave1``) and its last 10% (``wave2``), each fileset with its own
phenotype and covariate tables. Untimed set-up: a store holding ``wave1`` (copied fresh for every
timed refresh, since a refresh changes its store). Timed, each a fresh process, one after the
other so they do not share the cores:

- ``full_scan``: ``dash-spark scan`` of the union (the fastest full recompute we have);
- ``full_store``: ``compress --store`` of the union as one batch, then ``refresh`` (the full
  recompute in the store workflow);
- ``refresh_add``: ``refresh --add-batch`` of the 10% wave on the stored ``wave1``.

All three write the same outputs (results Parquet, ``.glm.linear``, summaries; no plots), and
the refreshed results are checked against the full scan's.
"""

from __future__ import annotations

import os
import shutil
import sys



def run_refresh_bench(args) -> int:
    from .run import timed, compare_results, emit_figures
    from .waves import WAVES, cached_split

    data = cached_split(args, "waves", WAVES)
    cli = [sys.executable, "-m", "dash_spark.cli"]

    def fileset(name):
        prefix = os.path.join(data, name)
        return ["--bfile", prefix, "--pheno", prefix + ".pheno", "--covar", prefix + ".covar"]

    base_store = os.path.join(data, "store_base")
    if not _usable(base_store):  # missing, or written by another format version
        shutil.rmtree(base_store, ignore_errors=True)
        timed(cli + ["compress", "--store", base_store, "--batch", "wave1", *fileset("wave1")],
               os.path.join(data, "setup.log"))
    for name in ("full_out", "full_store_out", "refresh_out"):  # the bench's own outputs (of any version)
        shutil.rmtree(os.path.join(data, name), ignore_errors=True)
    times: dict[str, float] = {}
    times["full_scan"] = timed(cli + ["scan", *fileset("cohort"), "--out", os.path.join(data, "full_out"),
                                       "--overwrite", "--no-plots"], os.path.join(data, "full_scan.log"))
    store = os.path.join(data, "store_full")
    shutil.rmtree(store, ignore_errors=True)
    t_compress = timed(cli + ["compress", "--store", store, "--batch", "all", *fileset("cohort")],
                        os.path.join(data, "full_store_compress.log"))
    t_final = timed(cli + ["refresh", "--store", store, "--out", os.path.join(data, "full_store_out"),
                            "--overwrite", "--no-plots"], os.path.join(data, "full_store_refresh.log"))
    times["full_store"] = t_compress + t_final
    shutil.rmtree(store, ignore_errors=True)
    store = os.path.join(data, "store_refresh")
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base_store, store)
    out = os.path.join(data, "refresh_out")
    times["refresh_add"] = timed(cli + ["refresh", "--store", store, "--add-batch", "wave2", *fileset("wave2"),
                                         "--out", out, "--overwrite", "--no-plots"], os.path.join(data, "refresh.log"))
    shutil.rmtree(store, ignore_errors=True)
    agree = compare_results(os.path.join(data, "full_out", "results.parquet"), os.path.join(out, "results.parquet"))
    figures = {k: round(v, 2) for k, v in times.items()}
    figures["refresh_over_full_scan"] = round(times["refresh_add"] / times["full_scan"], 3)
    figures["refresh_over_full_store"] = round(times["refresh_add"] / times["full_store"], 3)
    figures["max_rel_diff_vs_full_scan"] = agree
    emit_figures(figures, f"{args.samples:,} samples x {args.variants:,} variants; adding a 10% batch: refresh "
                          f"{times['refresh_add']:.1f} s vs full scan {times['full_scan']:.1f} s (ratio "
                          f"{figures['refresh_over_full_scan']:.2f}) and vs full store recompute "
                          f"{times['full_store']:.1f} s (ratio {figures['refresh_over_full_store']:.2f}); "
                          f"results agree to {agree:.1e}", args.json)
    return 0


def _usable(store: str) -> bool:
    from ..studies.store import StoreError, open_store

    try:
        open_store(store)
    except StoreError:
        return False
    return True
