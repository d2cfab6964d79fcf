"""plink2-style text files, plots and the run summary, all from the results Parquet.

``<phenotype>.glm.linear`` follows plink2 ``--glm hide-covar``'s layout::

    #CHROM POS ID REF ALT A1 TEST OBS_CT BETA SE T_STAT P ERRCODE

Spark writes the lines (one part file, ordered by variant), then the part file is renamed; numbers
are printed with full float64 precision (plink2 prints 6 significant digits), ``NA`` where a
statistic is missing, and P below float64's range is printed from ``neg_log10_p``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from urllib.parse import unquote

log = logging.getLogger("dash_spark")

GLM_HEADER = "#CHROM\tPOS\tID\tREF\tALT\tA1\tTEST\tOBS_CT\tBETA\tSE\tT_STAT\tP\tERRCODE"


def _num(col: str) -> str:
    return f"coalesce(cast({col} as string), 'NA')"


def _p_expr() -> str:
    # p underflows to 0 below ~1e-308: print mantissa and exponent from -log10 p instead
    return (
        "CASE WHEN p IS NULL THEN 'NA' "
        "WHEN p > 0 THEN cast(p as string) "
        "WHEN neg_log10_p = double('inf') THEN '0' "
        "ELSE concat(format_string('%.6f', pow(10D, ceil(neg_log10_p) - neg_log10_p)), "
        "'E-', cast(cast(ceil(neg_log10_p) as long) as string)) END"
    )


def glm_lines_sql() -> str:
    return (
        "concat_ws('\t', chrom, cast(pos as string), id, ref, alt, a1, 'ADD', cast(obs_ct as string), "
        f"{_num('beta')}, {_num('se')}, {_num('t_stat')}, {_p_expr()}, errcode) AS value"
    )


def write_glm_linear(spark, fs, results, phenotypes, stage: str) -> dict[str, str]:
    """Write every phenotype's ``<phenotype>.glm.linear`` under ``stage`` in one Spark job.

    Rows are partitioned by phenotype and sorted by variant index within each partition, so each
    phenotype's lines (header first) land in exactly one part file, which is then renamed.
    """
    from pyspark.sql import functions as F

    lines = results.select("phenotype", "variant_index", F.expr(glm_lines_sql()))
    headers = spark.createDataFrame([(p, -1, GLM_HEADER) for p in phenotypes],
                                    "phenotype string, variant_index long, value string")
    tmp = f"{stage}/_glm_parts"
    (headers.unionByName(lines)
        .repartition(len(phenotypes), "phenotype")
        .sortWithinPartitions("phenotype", "variant_index")
        .drop("variant_index")
        .write.partitionBy("phenotype").text(tmp))
    # Spark %-escapes special characters in partition directory names
    folders = {unquote(d.removeprefix("phenotype=")): d for d in fs.list(tmp) if d.startswith("phenotype=")}
    paths = {}
    for name in phenotypes:
        folder = f"{tmp}/{folders[name]}"
        parts = [p for p in fs.list(folder) if p.startswith("part-")]
        if len(parts) != 1:  # pragma: no cover - one phenotype per shuffle partition
            raise RuntimeError(f"{folder}: expected one part file, found {len(parts)}")
        path = f"{stage}/{safe_name(name)}.glm.linear"
        fs.rename(f"{folder}/{parts[0]}", path)
        paths[name] = path
    fs.delete(tmp)
    fs.delete_crc_files(stage)
    return paths


def safe_name(phenotype: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in phenotype)


def write_reports(spark, fs, stage: str, model, *, plots: bool = True):
    """Text files, summary and plots for every phenotype of a finished scan under ``stage``."""
    from . import report

    from concurrent.futures import ThreadPoolExecutor

    results = spark.read.parquet(f"{stage}/results.parquet")
    summaries = {}
    local = "://" not in stage or stage.startswith("file://")
    tmpdir = None if local else tempfile.mkdtemp(prefix="dash-spark-")
    n_rows = len(model.variants)
    # the text files and the summaries are independent small Spark jobs: run them side by side
    with ThreadPoolExecutor(max_workers=1) as pool:
        glm_future = pool.submit(write_glm_linear, spark, fs, results, list(model.phenotypes), stage)
        for name in model.phenotypes:
            summ = report.summarize_phenotype(results, name, n_rows_hint=n_rows)
            summaries[name] = summ
            log.info("phenotype %s: %d tests, %d with an error code, lambda_GC = %.4f",
                     name, summ.n_tests, summ.n_errors, summ.lambda_gc)
            if plots and summ.n_tests > 0:
                points = report.plot_points(results, name)
                for kind in ("manhattan", "qq"):
                    fname = f"{safe_name(name)}.{kind}.png"
                    target = os.path.join(tmpdir, fname) if tmpdir else f"{stage.removeprefix('file://')}/{fname}"
                    if kind == "manhattan":
                        report.plot_manhattan(points, target, title=f"{name}: {summ.n_tests:,} variants")
                    else:
                        report.plot_qq(points, target, title=name, lambda_gc=summ.lambda_gc)
                    if tmpdir:
                        fs.put(target, f"{stage}/{fname}")
        glm_paths = glm_future.result()
    summary_local = os.path.join(tmpdir, "summary.tsv") if tmpdir else f"{stage.removeprefix('file://')}/summary.tsv"
    report.write_summary(summaries, summary_local, extra={"counts": model.counts,
                                                          "n_variants": int(len(model.variants)),
                                                          "covariates": list(model.covariates)})
    if tmpdir:
        for fname in ("summary.tsv", "summary.json"):
            fs.put(os.path.join(tmpdir, fname), f"{stage}/{fname}")
    return glm_paths, summaries
