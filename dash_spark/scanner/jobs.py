"""Spark jobs over variant ranges: one partition per range, one broadcast, what the tasks yield out.

What runs where:

- driver: plans ranges of variants (one Spark partition each; :mod:`dash_spark.scanner.tasks`) and
  broadcasts the per-sample weight matrix ``W = [A | B]`` (covariate bases Q, phenotypes Y and
  sample masks; see :mod:`dash_spark.stats.kernel`) once. It never reads genotype bytes and
  collects nothing per variant unless the caller asks for statistics (a party, a store batch).
- each task: runs a Spark-free function of :mod:`dash_spark.scanner.tasks` on its range rows: it reads its
  own variants (the paths must be readable by executors), walks its range in sub-blocks sized from
  the memory budget, and yields Arrow record batches, statistics blocks, or written file counts.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import DashError, tag_task_error, translate_task_error
from ..outputs.sums import BINS, SummarySums
from .tasks import RangeRow

#: from this many partitions on, :func:`run_ranges` adds the tasks' results in a tree of executors
TREE_REDUCE_FROM = 256
RANGE_SCHEMA_DDL = "part int, start long, stop long, bim_start long, bim_stop long, rows array<int>"


def map_ranges(spark, W: np.ndarray | tuple[np.ndarray, ...], ranges: list[RangeRow], per_ranges, schema_ddl: str):
    """A DataFrame with one partition per range row: ``per_ranges(W, rows)`` yields its Arrow batches.

    ``W`` is broadcast once; the function and its small arguments travel with the task closure.
    Returns ``(DataFrame, broadcast)``; destroy the broadcast when the DataFrame is consumed.
    """
    sc = spark.sparkContext
    W_bc = sc.broadcast(W)

    def task(batches):
        W_local = W_bc.value
        try:
            for batch in batches:
                d = batch.to_pydict()
                yield from per_ranges(W_local, zip(d["part"], d["start"], d["stop"], d["bim_start"],
                                                   d["bim_stop"], d["rows"]))
        except DashError as exc:  # the driver reads the tag (translate_task_error)
            raise tag_task_error(exc) from exc

    ranges_df = spark.createDataFrame(sc.parallelize(ranges, len(ranges)), RANGE_SCHEMA_DDL)
    return ranges_df.mapInArrow(task, schema_ddl), W_bc


def run_ranges(spark, value, ranges: list[RangeRow], per_ranges, reduce=None, partitions: int | None = None):
    """A plain RDD job with one partition per range row (or ``partitions`` partitions of
    consecutive rows): each runs ``per_ranges(value, rows)`` (``value`` broadcast once) and what
    the tasks yield is collected, or, with ``reduce(a, b)``, added up (each partition's in its
    task; across partitions on the driver, or from :data:`TREE_REDUCE_FROM` partitions on in a
    tree of executors; None without rows).
    After a failure it waits for the job's cancelled tasks before re-raising, since they may still
    be writing files the caller is about to remove; one of our errors raised in a task is re-raised
    as such (one line)."""
    from ..spark.session import wait_for_running_tasks

    sc = spark.sparkContext
    bc = sc.broadcast(value)

    def task(rows):
        try:
            yield from per_ranges(bc.value, rows)
        except DashError as exc:
            raise tag_task_error(exc) from exc

    try:
        n_parts = max(1, min(len(ranges), partitions or len(ranges)))
        rdd = sc.parallelize(ranges, n_parts).mapPartitions(task)
        if reduce is None:
            return rdd.collect()
        if not ranges:
            return None
        # a few hundred partitions' results are added on the driver (no shuffle); more, in a tree
        return rdd.reduce(reduce) if n_parts <= TREE_REDUCE_FROM else rdd.treeReduce(reduce, depth=2)
    except BaseException as exc:
        wait_for_running_tasks(spark)
        if isinstance(exc, Exception):
            translate_task_error(exc)  # one of our errors as a one-line error, else exc itself
        raise
    finally:
        bc.destroy()


class RangesWritten(NamedTuple):
    """What :func:`write_ranges` wrote: the result rows, and the tasks' summary sums added up
    (:class:`~dash_spark.outputs.sums.SummarySums`: error-code counts, valid p histograms)."""

    rows: int
    sums: SummarySums


def _add_written(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], max(a[1], b[1]), a[2].merged(b[2])


def write_ranges(spark, value, ranges: list[RangeRow], per_ranges, stage: str, phenotypes,
                 timings: dict | None = None, bins: int = BINS) -> RangesWritten:
    """Every range row in its own task: ``per_ranges(value, [row])`` yields the row's result batches,
    which the task writes under ``stage`` with :func:`dash_spark.outputs.writers.write_result_parts`
    (:func:`run_ranges`; row counts and summary sums, with p histograms of ``bins`` bins
    (:func:`~dash_spark.outputs.sums.first_bins`), come back, added up in the executors). With
    ``timings``, its ``kernel_task_seconds`` is set to the tasks' time in the kernels (summed) and
    ``worker_peak_rss_mb`` to the largest peak resident memory of the executors' Python workers."""
    from . import tasks
    from ..outputs.writers import prepare_result_dirs, write_result_parts

    prepare_result_dirs(stage, phenotypes)
    kernel = spark.sparkContext.accumulator(0.0)

    def write(v, rows):
        import resource

        for row in rows:
            before = tasks.KERNEL_SECONDS[0]
            sums = SummarySums(bins=bins)
            n = write_result_parts(stage, phenotypes, row[0], per_ranges(v, [row]), sums=sums)
            kernel.add(tasks.KERNEL_SECONDS[0] - before)
            # the Python worker's peak resident memory so far (KiB on Linux)
            yield n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sums

    n_rows, rss, sums = run_ranges(spark, value, ranges, write, reduce=_add_written) or (0, 0, SummarySums(bins=bins))
    if timings is not None:
        timings["kernel_task_seconds"] = round(float(kernel.value), 6)
        timings["worker_peak_rss_mb"] = round(rss / 1024, 1)
    return RangesWritten(int(n_rows), sums)
