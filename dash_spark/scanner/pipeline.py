"""One scan from its settings to its files, and the Spark jobs of a statistics model (shared by
the CLI, the API and jobs/): :func:`run_scan` builds the model (:mod:`.model`), plans the tasks'
ranges, runs the Spark job that writes the result rows, and writes the outputs; a party, a store
and the API's ``compress`` run a statistics model's job with :func:`compress_model` or
:func:`stage_model_share`. The missing-data rules of a scan are stated in :mod:`.model`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np

from ..config import ScanConfig, object_store_out, tasks_can_write
from ..errors import OutputError
from ..stats.results import RESULT_SCHEMA_DDL
from ..stats.sufficient import SufficientStats
from ..outputs.sums import exact_medians, first_bins
from .filters import CallFilters
from .jobs import map_ranges, write_ranges
from .model import Model, named_source, scan_model
from .sources import BedSource, qualify
from .tasks import GroupedPlan, RangeRow, ScanPlan, default_block_variants, plan_ranges, scan_ranges, sub_block_size

log = logging.getLogger("dash_spark")


@dataclass(frozen=True)
class ScanResult:
    """What :func:`run_scan` wrote: the output directory, ``results.parquet``, each phenotype's text
    file (``.glm.linear``, ``.glm.logistic.hybrid`` or ``.regenie``), each phenotype's summary
    (:class:`dash_spark.outputs.report.PhenotypeSummary`: tests, error codes, lambda_GC, top hits) and the
    wall time in seconds.

    Examples
    --------
    >>> import os, tempfile
    >>> from dash_spark.api import example_data
    >>> data = example_data()
    >>> res = run_scan(ScanConfig(bfile=data.bfile, pheno=data.pheno, covar=data.covar, plots=False,
    ...                           out=os.path.join(tempfile.mkdtemp(), "out")), spark=spark)
    >>> sorted(os.path.basename(p) for p in res.glm_paths.values())
    ['pheno1.glm.linear', 'pheno2.glm.linear']
    >>> res.summaries["pheno1"].n_tests
    120
    """

    out: str
    results_path: str
    glm_paths: dict[str, str]
    summaries: dict
    seconds: float


def config_inputs(cfg: ScanConfig) -> tuple[str, ...]:
    """Every file a scan reads (what its --out may never be, contain or lie inside)."""
    paths = list(named_source(cfg).input_paths())
    paths += [cfg.pheno, cfg.covar, cfg.keep, cfg.remove, cfg.extract, cfg.exclude, cfg.pred]
    return tuple(p for p in paths if p)


class ScanPlanning(NamedTuple):
    """What :func:`plan_scan` returns: the tasks' plan, one range per Spark partition, and the
    variants per range it aimed at."""

    plan: ScanPlan | GroupedPlan
    ranges: list[RangeRow]
    block_variants: int


def plan_scan(cfg: ScanConfig, model: Model, parallelism: int) -> ScanPlanning:
    """The tasks' plan and the partition ranges of a model (shared by the scan and a party's compress).

    A grouped model's plan (``--pred``, sex chromosomes) is a
    :class:`~dash_spark.scanner.tasks.GroupedPlan` (one plan per chromosome; ``model.W`` is the tuple of
    their weight matrices) whose ranges never span two chromosomes.
    """
    bv = cfg.block_variants or default_block_variants(len(model.variants), parallelism)
    width = (model.W[0] if model.groups else model.W).shape[1]
    plan = ScanPlan(
        reader=model.source.reader(), n_samples=model.n_samples,
        n_a=model.n_a, n_freq=model.n_freq, n_kept=model.n_kept, patterns=model.patterns, shared=model.shared,
        filters=CallFilters(maf=cfg.maf, mac=cfg.mac, geno=cfg.geno, mach_r2=cfg.mach_r2_filter),
        sub_block=sub_block_size(model.n_samples, width + _shared_gram_width(model), cfg.task_memory_mb << 20,
                                 dense=not isinstance(model.source, BedSource),
                                 result_rows=0 if model.moments is not None else len(model.phenotypes)),
        count_alt=cfg.count_alt or model.source.count_alt, missing_genotypes=model.missing_genotypes,
        a1freq_floor=cfg.a1freq_lower_limit,
    )
    if not model.groups:
        return ScanPlanning(plan, plan_ranges(model.variants, bv, model.bim.line_offsets), bv)
    plans, ranges = [], []
    group = np.full(model.bim.n_variants, -1, dtype=np.int64)
    for g, grp in enumerate(model.groups):
        sub = plan.sub_block
        if grp.dosage_scale is not None:  # a sex chromosome's blocks are decoded to float64 in the task
            sub = sub_block_size(model.n_samples, model.W[g].shape[1], cfg.task_memory_mb << 20, dense=True,
                                 result_rows=0 if model.moments is not None else len(model.phenotypes))
        plans.append(dataclasses.replace(plan, patterns=tuple(grp.patterns), regenie=grp.regenie, n_a=grp.n_a,
                                         dosage_scale=grp.dosage_scale, hemi=grp.hemi, sub_block=sub))
        group[grp.variants] = g
        # ranges never span another group's variants: a statistics job stacks its blocks in
        # variant order by their first variant (chrX between chr22 and XY, say)
        pos = np.searchsorted(model.variants, grp.variants)
        for run in np.split(grp.variants, np.flatnonzero(np.diff(pos) != 1) + 1):
            if len(run):
                ranges += [row._replace(part=len(ranges) + i)
                           for i, row in enumerate(plan_ranges(run, bv, model.bim.line_offsets))]
    # parts in variant order (the text files join the parts' lines in part order, as plink2 writes
    # variants in .bim order: chrX between chr22 and XY, not after the autosomes' group)
    ranges = [row._replace(part=i) for i, row in enumerate(sorted(ranges, key=lambda r: r.start))]
    # each variant's group, as runs of .bim rows (chromosomes are mostly contiguous: a few runs)
    starts = np.flatnonzero(np.diff(group, prepend=-2) != 0)
    return ScanPlanning(GroupedPlan(tuple(plans), starts, group[starts]), ranges, bv)


def _shared_gram_width(model: Model) -> int:
    """Per-variant columns a shared-basis task holds besides the kernel's: the missing calls'
    ``Q'Y`` (k x p) of all phenotypes, and one pattern's ``Q'Q`` (k x k)."""
    sh = model.shared
    return 0 if sh is None or model.missing_genotypes == "mean" else (sh.k * sh.p + sh.k * sh.k) // 3 + 1


def run_scan(cfg: ScanConfig, spark=None) -> ScanResult:
    """Run a scan end to end; outputs appear under ``cfg.out`` only if everything succeeded
    (``ds.scan``, the ``dash-spark scan`` command).

    Parameters
    ----------
    cfg : ScanConfig
        The scan's settings.
    spark : pyspark.sql.SparkSession, optional
        The session to run on (default: one started for the scan, as the command does).

    Returns
    -------
    ScanResult
        The files written and each phenotype's summary (see :class:`ScanResult`).

    Examples
    --------
    >>> import os, tempfile
    >>> from dash_spark.api import example_data
    >>> data = example_data()
    >>> out = os.path.join(tempfile.mkdtemp(), "out")
    >>> res = run_scan(ScanConfig(bfile=data.bfile, pheno=data.pheno, pheno_name=("pheno2",), out=out,
    ...                           plots=False), spark=spark)
    >>> sorted(os.listdir(out))[:3]
    ['.dash-spark-output', 'pheno2.glm.linear', 'results.parquet']

    A local (or shared, ``file://``) ``--out`` is staged by :func:`dash_spark.outputs.staging.staged_output`
    and the tasks write their own parts; another filesystem (hdfs://, s3a:// ...) goes through
    Spark's writer and Hadoop's FileSystem API, with the same rules (marker, no overwrite of what
    dash-spark did not write).
    """
    from ..spark.session import SessionStarter
    from ..outputs.staging import staged_output

    t0 = time.time()
    early = spark if isinstance(spark, SessionStarter) else None  # started by the CLI before its imports
    spark = None if early is not None else spark
    if not tasks_can_write(cfg.out):
        starter = early or (SessionStarter(cfg.master, cfg.spark_conf) if spark is None else None)
        if object_store_out(cfg.out):
            from ..outputs.staging import ObjectStage

            stage = ObjectStage(cfg.out, overwrite=cfg.overwrite, inputs=config_inputs(cfg))  # refuses before work
            model = scan_model(cfg)
            return _run_scan_object_store(cfg, spark if starter is None else starter.get(), model, stage, t0)
        model = scan_model(cfg)
        return _run_scan_hadoop(cfg, spark if starter is None else starter.get(), model, t0)
    with staged_output(cfg.out, overwrite=cfg.overwrite, inputs=config_inputs(cfg), command="scan") as stage:
        from ..outputs.writers import finish_local_outputs, text_phenotypes

        # the JVM starts (and warms its Python workers) while the driver builds the model
        starter = early or (SessionStarter(cfg.master, cfg.spark_conf) if spark is None else None)
        model = scan_model(cfg)
        phases = {"model_seconds": round(time.time() - t0, 2)}
        if starter is not None:
            spark = starter.get()
        phases["session_ready_seconds"] = round(time.time() - t0, 2)
        plan, ranges = _log_plan(cfg, model, spark)
        t_stage = time.time()
        # a local (or shared) directory: tasks write their own parts, no SQL job
        written = write_ranges(spark, model.W, ranges, partial(scan_ranges, plan), stage.path,
                               text_phenotypes(model), timings=phases, bins=first_bins(len(model.phenotypes)))
        n_rows = written.rows
        phases["scan_stage_seconds"] = round(time.time() - t_stage, 2)
        if n_rows == 0 and plan.filters.active:  # --maf/--mac/--geno removed every variant
            raise plan.filters.none_passed(model.n_variants)
        log.info("scan: results written (%.1f s since start)", time.time() - t0)
        t_out = time.time()
        joined, medians = texts_and_medians(spark, stage.path, model, written.sums)
        glm, summaries = finish_local_outputs(stage.path, model, plots=cfg.plots, plots_top=cfg.plots_top,
                                              texts_joined=joined, sums=written.sums, medians=medians)
        phases["outputs_seconds"] = round(time.time() - t_out, 2)
        final = {k: stage.final(v) for k, v in glm.items()}
    out = stage.out
    phases["total_seconds"] = round(time.time() - t0, 2)
    import resource

    # the driver's Python process (a local session's JVM and Python workers are other processes)
    phases["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    # one JSON line, read by `dash-spark bench` (kernel: the tasks' seconds in the kernels, summed)
    log.info("phases: %s", json.dumps(phases))
    log.info("done in %.1f s: %s", time.time() - t0, out)
    return ScanResult(out=out, results_path=f"{out}/results.parquet", glm_paths=final,
                      summaries=summaries, seconds=time.time() - t0)


def median_job(spark, stage: str, searches: dict, collect: frozenset, copies: dict | None = None) -> dict:
    """One pass of :func:`~dash_spark.outputs.sums.exact_medians` in the executors over the
    results Parquet parts, their answers added up in a tree (the driver gets, per phenotype, a
    histogram or the few values of its median's bin). ``copies``: the text parts' chunk copies
    (:func:`~dash_spark.outputs.writers.text_join_plan`), done in the same job. The parts and
    copies are shared among as many tasks as the session has cores (each task's start costs about
    as much as a part's pass)."""
    from ..outputs.sums import median_pass, merge_pass
    from ..outputs.writers import copy_text_chunks, result_part_files
    from .jobs import run_ranges

    files = result_part_files(stage)
    copies = copies or {}

    def per_ranges(value, rows):
        for row in rows:
            if row[1]:  # (part, 1, 0): a text part's copies
                copy_text_chunks(value[2][row[0]])
                yield {}
            else:
                yield median_pass(files[row[0]], value[0], value[1])

    passes = [RangeRow(i, 0, 0) for i in range(len(files))]
    copying = [RangeRow(part, 1, 0) for part in sorted(copies)]
    # interleaved, so that each task gets some of both
    rows = [r for pair in zip(passes, copying) for r in pair] + passes[len(copying):] + copying[len(passes):]
    found = run_ranges(spark, (searches, collect, copies), rows, per_ranges, reduce=merge_pass,
                       partitions=spark.sparkContext.defaultParallelism)
    return found or {}


def texts_and_medians(spark, stage: str, model, sums) -> tuple[bool, dict]:
    """Each phenotype's text chunks put in place in its file, and its exact median p, by jobs in the
    executors: the driver lays the text files out (header, size:
    :func:`~dash_spark.outputs.writers.text_join_plan`), and the tasks of the first median pass's
    job (:func:`median_job`) also copy each part's chunks (every phenotype's) to their offsets;
    where no pass runs (no valid test), a job of its own copies them. Returns ``(whether there
    were texts, medians)``."""
    from ..outputs.writers import text_join_plan, text_phenotypes

    texts = bool(text_phenotypes(model))
    pending = [text_join_plan(stage, model)] if texts else []

    def run_pass(searches, collect):
        return median_job(spark, stage, searches, collect, pending.pop() if pending else None)

    medians = exact_medians(sums, run_pass)
    if pending and pending[0]:
        median_job(spark, stage, {}, frozenset(), pending.pop())
    return texts, medians


def _log_plan(cfg: ScanConfig, model: Model, spark):
    plan, ranges, bv = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    log.info("scan: %d variants in %d partitions of <= %d variants, sub-blocks of %d; "
             "missing genotype calls: %s", model.n_variants, len(ranges), bv, plan.sub_block,
             "sample dropped for that variant (plink2)" if cfg.missing_genotypes == "drop"
             else "mean-imputed per variant (Hail/REGENIE)")
    return plan, ranges


def _run_scan_object_store(cfg: ScanConfig, spark, model: Model, stage, t0: float) -> ScanResult:
    """A scan whose --out is in object storage (s3://, gs://): the tasks write their parts under
    the stage prefix themselves; the driver reads them back into a local temporary folder, finishes
    the outputs there as for a local --out, puts them under the stage and commits it
    (:class:`dash_spark.outputs.staging.ObjectStage`)."""
    import tempfile

    from ..outputs.writers import finish_local_outputs, text_phenotypes

    try:
        plan, ranges = _log_plan(cfg, model, spark)
        n_rows = write_ranges(spark, model.W, ranges, partial(scan_ranges, plan), stage.path,
                              text_phenotypes(model)).rows
        if n_rows == 0 and plan.filters.active:
            raise plan.filters.none_passed(model.n_variants)
        log.info("scan: results written to %s (%.1f s since start)", stage.path, time.time() - t0)
        with tempfile.TemporaryDirectory(prefix="dash-spark-out-") as local:
            stage.download(local)
            glm, summaries = finish_local_outputs(local, model, plots=cfg.plots, plots_top=cfg.plots_top)
            stage.upload(local, "scan")
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    out = stage.out
    final = {k: f"{out}/{os.path.basename(v)}" for k, v in glm.items()}
    log.info("done in %.1f s: %s", time.time() - t0, out)
    return ScanResult(out=out, results_path=f"{out}/results.parquet", glm_paths=final,
                      summaries=summaries, seconds=time.time() - t0)


def _run_scan_hadoop(cfg: ScanConfig, spark, model: Model, t0: float) -> ScanResult:
    """A scan whose --out is on a Hadoop filesystem (hdfs://, s3a:// ...): Spark writes the files."""
    import tempfile

    from ..errors import translate_task_error
    from ..outputs.writers import write_reports
    from .fs import HadoopFS
    from ..outputs.staging import MARKER, write_marker

    fs = HadoopFS(spark, cfg.out)
    out = qualify(cfg.out).rstrip("/")
    if fs.exists(out):
        if not cfg.overwrite:
            raise OutputError(f"{out}: output directory exists; pass --overwrite to replace it or choose another --out")
        if not fs.exists(f"{out}/{MARKER}"):
            raise OutputError(f"--out {out}: exists and was not written by dash-spark (no {MARKER} in it); "
                              "--overwrite replaces only dash-spark output directories")
    stage = fs.staging_dir(out)
    try:
        fs.mkdirs(stage)
        plan, ranges = _log_plan(cfg, model, spark)
        results, W_bc = map_ranges(spark, model.W, ranges, partial(scan_ranges, plan), RESULT_SCHEMA_DDL)
        try:
            results.write.parquet(f"{stage}/results.parquet")
        except Exception as exc:  # noqa: BLE001 - our errors from the tasks as one line
            translate_task_error(exc)
        W_bc.destroy()
        log.info("scan: results written (%.1f s since start)", time.time() - t0)
        glm, summaries = write_reports(spark, fs, stage, model, plots=cfg.plots)
        with tempfile.TemporaryDirectory(prefix="dash-spark-") as tmp:
            write_marker(tmp, "scan")
            fs.put(os.path.join(tmp, MARKER), f"{stage}/{MARKER}")
        if fs.exists(out):
            fs.delete(out)
        fs.rename(stage, out)
    except BaseException:
        try:
            fs.delete(stage)
        except Exception:  # pragma: no cover - best effort cleanup
            if "://" not in stage:
                shutil.rmtree(stage, ignore_errors=True)
        raise
    final = {k: v.replace(stage, out) for k, v in glm.items()}
    log.info("done in %.1f s: %s", time.time() - t0, out)
    return ScanResult(out=out, results_path=f"{out}/results.parquet", glm_paths=final,
                      summaries=summaries, seconds=time.time() - t0)


def model_statistics(model: Model, per_variant: np.ndarray | None) -> SufficientStats:
    """``S`` of a statistics model: its global moments with the given per-variant rows."""
    return SufficientStats(phenotypes=model.phenotypes, covariates=model.covariates,
                           mode=model.missing_genotypes, moments=model.moments, n_freq=model.n_freq,
                           per_variant=per_variant, offsets=model.offset_moments, sexchr=model.sexchr_stats,
                           regenie=model.regenie_sums)


def compress_model(spark, cfg: ScanConfig, model: Model) -> SufficientStats:
    """Run a statistics model's Spark job: ``S`` of every selected variant, gathered on the driver
    (variants x statistics, independent of the number of samples)."""
    from .compress import collect_ranges
    from .tasks import statistics_ranges

    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    V = collect_ranges(spark, model.W, ranges, partial(statistics_ranges, plan))
    if V.shape[0] != len(model.variants):  # pragma: no cover - one row per variant
        raise OutputError(f"compress: {V.shape[0]} statistics rows for {len(model.variants)} variants")
    return model_statistics(model, V.reshape(len(model.variants), -1))


def stage_model_share(spark, cfg: ScanConfig, model: Model, writer) -> list[dict]:
    """Run a statistics model's Spark job for a party's share: each task encodes, masks and stages
    its rows of the per-variant statistics (``writer``: a
    :class:`~dash_spark.multiparty.rounds.PartWriter`); only the parts' header entries come back."""
    from .jobs import run_ranges
    from .tasks import share_ranges

    plan, ranges, _ = plan_scan(cfg, model, spark.sparkContext.defaultParallelism)
    parts = sorted(run_ranges(spark, model.W, ranges, partial(share_ranges, plan, writer)), key=lambda p: p["start"])
    if sum(p["stop"] - p["start"] for p in parts) != len(model.variants):  # pragma: no cover - one row per variant
        raise OutputError(f"share: {sum(p['stop'] - p['start'] for p in parts)} statistics rows for "
                          f"{len(model.variants)} variants")
    return parts
