"""plink2-style text files, plots and the run summary, all from the results Parquet.

Three writers make the same files:

- :func:`write_result_parts` + :func:`finish_local_outputs` (local output directories): each Spark
  task writes its range's results Parquet part and its ``.glm.linear`` lines itself; the driver
  joins the line chunks in variant order and summarises each phenotype from the Parquet with
  pyarrow. No SQL job runs: on a fresh JVM those cost seconds for what is a file copy.
- :func:`write_reports` (Spark, for outputs on hdfs://, s3a:// ...): from the results Parquet a
  scan's executors wrote through Spark.
- :func:`write_outputs_local` (results already held by the driver as one Arrow table, as in
  ``combine``: no Spark).

Same text everywhere: every writer formats lines with :func:`_glm_lines` (the Spark writer in its
tasks), numbers printed as Java prints doubles (see :func:`java_double`).

``<phenotype>.glm.linear`` follows plink2 ``--glm hide-covar``'s layout::

    #CHROM POS ID REF ALT A1 TEST OBS_CT BETA SE T_STAT P ERRCODE

and a case/control phenotype's ``<phenotype>.glm.logistic.hybrid`` plink2's logistic one (OR is
exp(beta); FIRTH? says whether Firth regression gave the row)::

    #CHROM POS ID REF ALT A1 FIRTH? TEST OBS_CT OR LOG(OR)_SE Z_STAT P ERRCODE

numbers are printed with full float64 precision (plink2 prints 6 significant digits), ``NA`` where
a statistic is missing, and P below float64's range is printed from ``neg_log10_p``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import uuid
from decimal import ROUND_HALF_UP, Decimal
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np

from ..errors import OutputError
from ..io.files import is_uri
from ..stats.results import RESULT_SCHEMA

log = logging.getLogger("dash_spark")

@dataclass(frozen=True)
class OutputModel:
    """What the writers need to know of a run besides its results: phenotype and covariate
    names, the number of variants tested, and counts for ``summary.json``."""

    phenotypes: tuple[str, ...]
    covariates: tuple[str, ...]
    n_variants: int
    counts: dict = field(default_factory=dict)
    #: also write ``<phenotype>.regenie`` (REGENIE's test)
    regenie_outputs: bool = False
    #: case/control phenotypes (logistic --glm): ``<phenotype>.glm.logistic.hybrid``
    logistic_phenotypes: tuple[str, ...] = ()
    #: ... of those, the ones tested by the score test: ``<phenotype>.regenie`` only
    score_phenotypes: tuple[str, ...] = ()
    #: write the per-phenotype text files (``--no-text``: False)
    text_outputs: bool = True


GLM_HEADER = "#CHROM\tPOS\tID\tREF\tALT\tA1\tTEST\tOBS_CT\tBETA\tSE\tT_STAT\tP\tERRCODE"
#: plink2's ``.glm.logistic.hybrid`` (hide-covar): OR = exp(beta), FIRTH? Y where Firth regression gave the row
GLM_LOGISTIC_HEADER = "#CHROM\tPOS\tID\tREF\tALT\tA1\tFIRTH?\tTEST\tOBS_CT\tOR\tLOG(OR)_SE\tZ_STAT\tP\tERRCODE"


def is_logistic(model, name: str) -> bool:
    """Whether ``name`` is one of the ``model``'s case/control phenotypes (logistic --glm)."""
    return name in getattr(model, "logistic_phenotypes", ())


def glm_file(model, name: str) -> str:
    """A phenotype's plink2-style file name: ``<name>.glm.linear``, or ``<name>.glm.logistic.hybrid``
    for a case/control phenotype."""
    return f"{safe_name(name)}.glm.{'logistic.hybrid' if is_logistic(model, name) else 'linear'}"


def text_phenotypes(model) -> list[str]:
    """The phenotypes that get a ``.glm.*`` text file: all but those of the score test, whose text
    file is REGENIE's ``.regenie`` (none with ``--no-text``)."""
    if not getattr(model, "text_outputs", True):
        return []
    score = set(getattr(model, "score_phenotypes", ()))
    return [p for p in model.phenotypes if p not in score]


def glm_header(model, name: str) -> str:
    return GLM_LOGISTIC_HEADER if is_logistic(model, name) else GLM_HEADER


def write_glm_linear(spark, fs, results, phenotypes, stage: str, model=None) -> dict[str, str]:
    """Write every phenotype's ``<phenotype>.glm.linear`` (``.glm.logistic.hybrid``: the ``model``'s
    case/control phenotypes) under ``stage`` in one Spark job.

    Rows are partitioned by phenotype and sorted by variant index within each partition, so each
    phenotype's lines (header first) land in exactly one part file, which is then renamed.
    """
    from pyspark.sql import functions as F

    if not phenotypes:  # --no-text, or only score-tested phenotypes (their .regenie files)
        return {}
    if "firth" not in results.columns:  # rows of a linear model written before the column existed
        results = results.withColumn("firth", F.lit(None).cast("boolean"))
    # the tasks format their rows with the local writers' code (:func:`_glm_lines`): one text everywhere
    lines = results.select(*_LINE_COLUMNS).mapInArrow(_line_batches, "phenotype string, variant_index long, "
                                                                       "value string")
    headers = spark.createDataFrame([(p, -1, glm_header(model, p)) for p in phenotypes],
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
        path = f"{stage}/{glm_file(model, name)}"
        fs.rename(f"{folder}/{parts[0]}", path)
        paths[name] = path
    fs.delete(tmp)
    fs.delete_crc_files(stage)
    return paths


def safe_name(phenotype: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in phenotype)


def check_output_names(phenotypes, where: str) -> None:
    """Refuse phenotype names whose output files (``<safe_name>.glm.linear`` ...) would collide or be
    unusable: two names with the same :func:`safe_name`, or one that is empty or only dots.
    ``where`` (the phenotype file) starts the message."""
    from ..errors import InputError

    seen: dict[str, str] = {}
    for name in phenotypes:
        fname = safe_name(name)
        if not fname.strip("."):
            raise InputError(
                f"{where}: phenotype column {name!r} gives the output file name {fname + '.glm.linear'!r}; "
                f"expected a name with a letter, digit, '_' or '-', found {name!r}. Rename the column"
            )
        if fname in seen:
            raise InputError(
                f"{where}: phenotype columns {seen[fname]!r} and {name!r} would both be written to "
                f"{fname}.glm.linear; expected names that differ after replacing characters other than "
                f"letters, digits, '.', '_' and '-' with '_', found both as {fname!r}. Rename one of the columns"
            )
        seen[fname] = name


def write_reports(spark, fs, stage: str, model, *, plots: bool = True):
    """Text files, summary and plots for every phenotype of a finished scan under ``stage``."""
    from . import report

    from concurrent.futures import ThreadPoolExecutor

    results = spark.read.parquet(f"{stage}/results.parquet")
    summaries = {}
    local = "://" not in stage or stage.startswith("file://")
    tmpdir = None if local else tempfile.mkdtemp(prefix="dash-spark-")
    n_rows = model.n_variants
    # the text files and the summaries are independent small Spark jobs: run them side by side
    with ThreadPoolExecutor(max_workers=1) as pool:
        glm_future = pool.submit(write_glm_linear, spark, fs, results, text_phenotypes(model), stage, model)
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
                                                          "n_variants": int(model.n_variants),
                                                          "covariates": list(model.covariates)})
    if tmpdir:
        for fname in ("summary.tsv", "summary.json"):
            fs.put(os.path.join(tmpdir, fname), f"{stage}/{fname}")
    return glm_paths, summaries


# ----------------------------------------------------------------------------------------------
# results held by the driver: the same files without Spark


def java_double(x: float | None) -> str | None:
    """A double as Spark's ``cast(x as string)`` prints it (Java's ``Double.toString``): the
    shortest digits that round-trip (Python's ``repr``), plain for ``1e-3 <= |x| < 1e7``, else
    ``d.dddE<exp>``; ``NaN``, ``Infinity``; ``None`` stays ``None`` (SQL null).

    The same text as Java 19 and later; Java 17 prints a few doubles of magnitude >= 1e16 (integral
    values up to about 1e19, rare ones beyond) with more digits than needed: same value, longer text.
    """
    if x is None:
        return None
    if x == 0.0 or 1e-3 <= abs(x) < 1e7:
        return repr(x)  # Python prints this range (and zeros) exactly as Java does
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if abs(x) == 5e-324:  # Double.MIN_VALUE: Java's own two digits
        return "-4.9E-324" if x < 0 else "4.9E-324"
    d = Decimal(repr(x)).normalize()
    sign, digits, _ = d.as_tuple()
    ds = "".join(map(str, digits))
    return f"{'-' if sign else ''}{ds[0]}.{ds[1:] or '0'}E{d.adjusted()}"


def _java_fixed6(x: float) -> str:
    """Java's ``String.format("%.6f", x)``: the shortest digits rounded half-up to 6 decimals."""
    return f"{Decimal(repr(x)).quantize(Decimal('0.000001'), rounding=ROUND_HALF_UP):f}"


def _glm_p(p: float | None, nlp: float | None) -> str | None:
    """The P field of a line: ``p`` as Java prints it; where p underflowed to 0, from ``-log10 p``
    (mantissa with 6 decimals, ``E-<exponent>``); ``0`` where -log10 p is infinite."""
    if p is None:
        return "NA"
    if p > 0 or math.isnan(p):
        return java_double(p)
    if nlp is None:
        return None
    if nlp == math.inf:
        return "0"
    if math.isnan(nlp):  # ceil(NaN) is NaN in Spark: pow and the exponent are null
        return None
    c = math.ceil(nlp)
    return f"{_java_fixed6(10.0 ** (c - nlp))}E-{c}"


def _java_strings(arr):
    """:func:`java_double` of every value of an Arrow float64 array, vectorized: Arrow prints the shortest
    round-trip digits (those of ``repr`` and Java), plain in Java's plain range ``1e-3 <= |x| < 1e7``
    (and zeros) where Java adds ``.0`` to an integral value; the other values (scientific in Java,
    NaN, infinities: few) go through :func:`java_double`. Nulls stay null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(arr, pa.string())
    x = arr.to_numpy(zero_copy_only=False)  # nulls -> NaN
    absx = np.abs(x)
    with np.errstate(invalid="ignore"):
        plain = (x == 0.0) | ((absx >= 1e-3) & (absx < 1e7))  # NaN compares false
        integral = plain & (x == np.trunc(x))
    if integral.any():  # Arrow prints 2 and 0 where Java prints 2.0 and 0.0 (rare: only these are rebuilt)
        text = pc.replace_with_mask(text, pa.array(integral),
                                    pc.binary_join_element_wise(text.filter(pa.array(integral)), ".0", ""))
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else True
    other = pa.array(~plain & valid)  # not null and not plain: NaN, infinities, E-notation
    if pc.any(other).as_py():
        text, other = _java_small(arr, text, other)
    if pc.any(other).as_py():
        idx = np.flatnonzero(other.to_numpy(zero_copy_only=False))
        vals = arr.take(pa.array(idx)).to_pylist()
        text = pc.replace_with_mask(text, other, pa.array([java_double(v) for v in vals], type=pa.string()))
    return text


def _java_small(arr, text, other):
    """Java's ``d.dddE-<exp>`` for the values ``0 < |x| < 1e-3`` among ``other``, rewritten from
    Arrow's shortest digits with regular expressions (Arrow prints ``0.000012345`` or ``1.5e-7``);
    returns the text and the values still left for :func:`java_double` (any whose rewrite does not
    have Java's shape, and the denormal minimum that Java prints with its own digits)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    absx = pc.abs(arr)
    small = pc.and_(other, pc.and_(pc.less(absx, 1e-3), pc.greater(absx, 5e-324)))
    if not pc.any(small).as_py():
        return text, other
    idx = pa.array(np.flatnonzero(pc.fill_null(small, False).to_numpy(zero_copy_only=False)))
    t = pc.cast(arr.take(idx), pa.string())
    t = pc.replace_substring_regex(t, r"^(-?\d)e", r"\1.0e")  # 1e-7 -> 1.0e-7
    t = pc.replace_substring(t, "e", "E")
    for z in range(2, 24):  # 0.000012345 (z = 4 zeros after the point) -> 1.2345E-5
        if not pc.any(pc.match_substring_regex(t, r"^-?0\.0")).as_py():
            break  # no plain small value left
        t = pc.replace_substring_regex(t, rf"^(-?)0\.0{{{z}}}([1-9])(\d*)$", rf"\1\2.\3E-{z + 1}")
    t = pc.replace_substring(t, ".E", ".0E")
    good = pc.match_substring_regex(t, r"^-?[1-9]\.\d+E-[1-9]\d*$")
    mask = np.zeros(len(arr), dtype=bool)
    good_np = good.to_numpy(zero_copy_only=False)
    rows = idx.to_numpy()[good_np]
    mask[rows] = True
    values = pc.filter(t, good)
    text = pc.replace_with_mask(text, pa.array(mask), values)
    return text, pc.and_(other, pa.array(~mask))


def _glm_p_strings(p, nlp):
    """:func:`_glm_p` of Arrow arrays, vectorized where ``p`` prints plainly; the rest per value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = _java_strings(p)
    # plain p (the usual case) is done; NA where p is null; the rest (p = 0, NaN, E-notation) by _glm_p
    rest = pc.and_(p.is_valid(), pc.invert(pc.and_(pc.greater_equal(p, 1e-3), pc.less(p, 1e7))))
    if pc.any(rest).as_py():
        idx = pa.array(np.flatnonzero(rest.to_numpy(zero_copy_only=False)))
        vals = [_glm_p(a, b) for a, b in zip(p.take(idx).to_pylist(), nlp.take(idx).to_pylist())]
        text = pc.replace_with_mask(text, rest, pa.array(vals, type=pa.string()))
    return pc.fill_null(text, "NA") if p.null_count else text


def glm_text(table) -> bytes:
    """The ``.glm.linear`` / ``.glm.logistic.hybrid`` lines of an Arrow table of result rows as one
    UTF-8 text (a newline after each line; null fields are skipped), built column-wise in Arrow,
    without a Python string per field."""
    if table.num_rows == 0:
        return b""
    return _joined(_glm_lines(table))[0]


def _glm_lines(table, *, newline: bool = True):
    """The lines of :func:`glm_text` of a non-empty table, as an Arrow string array (``newline``:
    each with its newline)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def col(name):
        return table.column(name).combine_chunks()

    def num(name):
        return pc.fill_null(_java_strings(col(name)), "NA")

    # the line's end rides on its last field (ERRCODE is never null)
    end = pc.binary_join_element_wise(col("errcode"), pa.scalar(""), "\n") if newline else col("errcode")
    head = [col("chrom"), pc.cast(col("pos"), pa.string()), col("id"), col("ref"), col("alt"), col("a1")]
    tail = [num("se"), num("t_stat"), _glm_p_strings(col("p"), col("neg_log10_p")), end]
    firth = col("firth") if "firth" in table.column_names else None
    linear = None
    if firth is None or firth.null_count:
        linear = pc.binary_join_element_wise(*head, pa.scalar("ADD"), pc.cast(col("obs_ct"), pa.string()),
                                             num("beta"), *tail, "\t", null_handling="skip")
        if firth is None or firth.null_count == len(firth):
            return linear
    odds = pc.fill_null(_java_strings(pc.exp(col("beta"))), "NA")  # plink2's OR column: exp(beta)
    flag = pc.if_else(pc.fill_null(firth, False), "Y", "N")
    logistic = pc.binary_join_element_wise(*head, flag, pa.scalar("ADD"), pc.cast(col("obs_ct"), pa.string()),
                                           odds, *tail, "\t", null_handling="skip")
    return logistic if linear is None else pc.if_else(firth.is_null(), linear, logistic)


_LINE_COLUMNS = ("phenotype", "variant_index", "chrom", "pos", "id", "ref", "alt", "a1", "obs_ct", "beta", "se",
                 "t_stat", "p", "neg_log10_p", "errcode", "firth")


def _line_batches(batches):
    """Executor side of :func:`write_glm_linear`: each Arrow batch of result rows as
    ``(phenotype, variant_index, line)`` rows (lines without their newline)."""
    import pyarrow as pa

    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        yield pa.RecordBatch.from_arrays(
            [table.column("phenotype").combine_chunks(), table.column("variant_index").combine_chunks(),
             _glm_lines(table, newline=False)], names=["phenotype", "variant_index", "value"])


def _joined(lines) -> tuple[bytes, np.ndarray]:
    """The bytes of an Arrow string array's values, one after the other, and where each value
    starts in them (one more entry: the end)."""
    import pyarrow as pa

    width = np.int64 if lines.type == pa.large_string() else np.int32
    offsets = np.frombuffer(lines.buffers()[1], dtype=width)[lines.offset : lines.offset + len(lines) + 1]
    return bytes(lines.buffers()[2])[int(offsets[0]) : int(offsets[-1])], offsets - offsets[0]


def phenotype_groups(column, names) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: a stable order of the rows that groups them by phenotype in the order
    of ``names`` (rows of other phenotypes last), and where each group starts in it: the rows of
    ``names[c]`` are ``order[starts[c]:starts[c + 1]]``, in their original order."""

    code = phenotype_codes(column, names)  # (16-bit keys where they fit: numpy's stable sort of them is a radix sort)
    starts = np.concatenate([[0], np.cumsum(np.bincount(code, minlength=len(names) + 1))])
    return np.argsort(code, kind="stable"), starts


def phenotype_codes(column, names) -> np.ndarray:
    """Each row's phenotype as its index in ``names`` (``len(names)``: another phenotype, or null),
    as 16-bit integers where they fit."""
    import pyarrow as pa
    import pyarrow.compute as pc

    width = np.int16 if len(names) < np.iinfo(np.int16).max else np.int64
    value_set = pa.array(list(names), pa.string())
    if pa.types.is_dictionary(column.type):  # look up the dictionary's few values, not every row's
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        parts = []
        for ch in chunks:
            of_value = pc.fill_null(pc.index_in(ch.dictionary.cast(pa.string()), value_set=value_set), len(names))
            lookup = np.append(np.asarray(of_value.to_numpy(zero_copy_only=False), dtype=width), len(names))
            # a null row points past the dictionary: "other phenotypes"
            if ch.indices.null_count:
                idx = pc.fill_null(ch.indices.cast(pa.int64()), len(lookup) - 1).to_numpy(zero_copy_only=False)
            else:
                idx = ch.indices.to_numpy(zero_copy_only=False)
            parts.append(lookup[idx])
        return np.concatenate(parts).astype(width, copy=False) if parts else np.zeros(0, dtype=width)
    codes = pc.fill_null(pc.index_in(column, value_set=value_set), len(names)).to_numpy(zero_copy_only=False)
    return np.asarray(codes).astype(width)


def glm_texts(table, phenotypes) -> list[bytes]:
    """:func:`glm_text` of each phenotype's rows (in their order in ``table``; rows of phenotypes
    not listed have no lines), formatted in one pass over the table instead of one per phenotype."""
    import pyarrow as pa

    if table.num_rows == 0:
        return [b""] * len(phenotypes)
    order, starts = phenotype_groups(table.column("phenotype"), phenotypes)
    text, bounds = _joined(_glm_lines(table).take(pa.array(order)))  # one column moved, not the table
    return [text[bounds[starts[c]] : bounds[starts[c + 1]]] for c in range(len(phenotypes))]


# ----------------------------------------------------------------------------------------------
# tasks write their own parts (local outputs)

_PARTS = "results.parquet"
_DICTIONARY_COLUMNS = ["chrom", "ref", "alt", "a1", "phenotype", "errcode"]
_GLM_PARTS = "_glm_parts"
_CHUNK_RE = re.compile(r"part-(\d+)\.txt")


#: result rows buffered into one Parquet row group (a sub-block of a one-phenotype scan has ~2,000)
ROW_GROUP_ROWS = 131_072
#: top hits per phenotype in the summaries
TOP_HITS = 10
_TOP_PARTS = "_top"
_PART_RE = re.compile(r"part-(\d+)\.snappy\.parquet")
_TOP_RE = re.compile(r"part-(\d+)\.parquet")


def top_candidates(table, top_n: int = TOP_HITS, tests=None):
    """The rows of a results ``table`` that may be a phenotype's top hit: per phenotype, its valid
    tests (ERRCODE ".", p and -log10 p known) at or above its own ``top_n``-th strongest, ties kept;
    the summary's columns and the phenotype. Candidates of parts of the rows, taken together, hold
    every top hit of the whole, so tasks keep these and the driver reads no string column for all rows.
    ``tests``: the table's :func:`~dash_spark.outputs.sums.valid_tests`, when the caller has them."""
    import pyarrow as pa

    from . import report
    from .sums import valid_tests

    cols = list(dict.fromkeys(list(report._TOP_COLUMNS) + ["phenotype", "errcode"]))  # candidates reduce again
    if table.num_rows == 0:
        return table.select(cols)
    if tests is None:
        tests = valid_tests(table)
    code, nlp = tests.codes, tests.nlp
    idx = np.flatnonzero(tests.valid)
    if len(idx) == 0:
        return table.select(cols).slice(0, 0)
    fast = _top_in_blocks(code, nlp, idx, top_n)
    if fast is not None:
        return table.take(pa.array(fast)).select(cols)
    c, v = code[idx], nlp[idx]
    order = np.lexsort((-v, c))  # by phenotype, strongest first
    cs, vs = c[order], v[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    sizes = np.diff(np.r_[starts, len(cs)])
    cut = vs[starts + np.minimum(top_n, sizes) - 1]
    keep = vs >= np.repeat(cut, sizes)
    return table.take(pa.array(np.sort(idx[order[keep]]))).select(cols)


def _top_in_blocks(code: np.ndarray, nlp: np.ndarray, valid_rows: np.ndarray, top_n: int) -> np.ndarray | None:
    """:func:`top_candidates`' rows (sorted) when each phenotype's rows are one run and the runs
    have one length, as a results batch lays them out (phenotype-major): each run's ``top_n``-th
    strongest valid test by one partition of a (phenotypes, rows) matrix, no sort. None otherwise."""
    n = len(code)
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    runs, length = len(starts), n // len(starts)
    if runs * length != n or not np.array_equal(starts, np.arange(runs) * length) or \
            len(np.unique(code[starts])) != runs:
        return None
    valid = np.zeros(n, dtype=bool)
    valid[valid_rows] = True
    v = np.where(valid, nlp, -np.inf).reshape(runs, length)
    k = min(top_n, length)
    cut = -np.partition(-v, k - 1, axis=1)[:, k - 1]  # each run's k-th strongest (-inf: fewer valid tests)
    return np.flatnonzero(((v >= cut[:, None]) & valid.reshape(runs, length)).ravel())


def write_result_parts(stage: str, phenotypes, part: int, batches, sums=None) -> int:
    """Executor side: one range's result ``batches`` as ``results.parquet/part-NNNNN.snappy.parquet``
    and, per phenotype, its ``.glm.linear`` lines as ``_glm_parts/<i>/part-NNNNN.txt`` (rows in
    variant order, as the range yields them), in the folders :func:`prepare_result_dirs` made.

    Each batch (one sub-block) is written as it comes: its rows go to the Parquet writer (row groups
    of about :data:`ROW_GROUP_ROWS`) and its lines are appended to each phenotype's file, so a task
    holds one sub-block's results, not its range's. Local files are written under temporary names
    and renamed at the end, so a retried task replaces its own files; in object storage the Parquet
    part streams to its object and each phenotype's lines are put at the end (one PUT each).
    ``sums`` (a :class:`~dash_spark.outputs.sums.SummarySums`) gains every batch's error-code counts
    and valid p histograms. Returns the number of result rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .sums import valid_tests

    name = f"part-{part:05d}"
    local = not is_uri(stage)
    token = uuid.uuid4().hex[:8]
    pq_path = f"{_PARTS}/{name}.snappy.parquet"
    top_path = f"{_TOP_PARTS}/{name}.parquet"
    glm_rel = [f"{_GLM_PARTS}/{i}/{name}.txt" for i in range(len(phenotypes))]
    if local:
        def tmp_of(rel):
            path = os.path.join(stage, *rel.split("/"))
            return f"{os.path.dirname(path)}/.{os.path.basename(path)}.{token}"

        temps = [tmp_of(pq_path)] + [tmp_of(rel) for rel in glm_rel] + [tmp_of(top_path)]
        sink = temps[0]
        for tmp in temps[1:-1]:
            open(tmp, "wb").close()
        texts = None
    else:
        from ..io.files import filesystem

        fs, base = filesystem(stage)
        stream = fs.open_output_stream(f"{base}/{pq_path}")
        sink = stream
        texts = [[] for _ in phenotypes]
    n_rows = 0
    candidates: list = []
    try:
        # dictionary pages only where values repeat (ids, positions and numbers are unique: 2x faster)
        writer = pq.ParquetWriter(sink, RESULT_SCHEMA, compression="snappy", use_dictionary=_DICTIONARY_COLUMNS)
        pending: list = []

        def flush():
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema=RESULT_SCHEMA))
                pending.clear()

        for batch in batches:
            if batch.num_rows == 0:
                continue
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                flush()
            n_rows += batch.num_rows
            one = pa.Table.from_batches([batch], schema=RESULT_SCHEMA)
            tests = valid_tests(one)  # (read once for the top-hit candidates and the summary sums)
            candidates.append(top_candidates(one, tests=tests))
            if sums is not None:  # (:class:`~dash_spark.outputs.sums.SummarySums`: the summaries' counts and histograms)
                sums.add(one, tests)
            if sum(t.num_rows for t in candidates) > ROW_GROUP_ROWS:
                candidates = [top_candidates(pa.concat_tables(candidates))]
            texts_of = glm_texts(one, phenotypes) if phenotypes else []
            for i, text in enumerate(texts_of):
                if not text:
                    continue
                if local:
                    with open(temps[1 + i], "ab") as fh:
                        fh.write(text)
                else:
                    texts[i].append(text)
        flush()
        writer.close()
        top = top_candidates(pa.concat_tables(candidates)) if candidates else None
        if local:
            if top is not None:
                pq.write_table(top, temps[-1])
            for tmp, rel in zip(temps, [pq_path] + glm_rel + [top_path]):
                if os.path.exists(tmp):
                    os.replace(tmp, os.path.join(stage, *rel.split("/")))
        else:
            stream.close()
            if top is not None:
                with fs.open_output_stream(f"{base}/{top_path}") as out:
                    pq.write_table(top, out)
            for rel, chunks in zip(glm_rel, texts):
                with fs.open_output_stream(f"{base}/{rel}") as out:
                    for chunk in chunks:
                        out.write(chunk)
    except BaseException:
        if local:
            for tmp in temps:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:  # under the stage prefix, which the driver discards after a failure
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - the task's own error is what matters
                pass
        raise
    return n_rows


def prepare_result_dirs(stage: str, phenotypes) -> None:
    """Driver side, before the tasks of :func:`write_result_parts` run: their folders under ``stage``.
    Tasks never create folders, so a task cancelled after a failure cannot recreate an output
    the driver has already removed. (Object storage has no folders: nothing to do.)"""
    if is_uri(stage):
        return
    os.makedirs(os.path.join(stage, _PARTS), exist_ok=True)
    os.makedirs(os.path.join(stage, _TOP_PARTS), exist_ok=True)
    for i in range(len(phenotypes)):
        os.makedirs(os.path.join(stage, _GLM_PARTS, str(i)), exist_ok=True)


def _replace_with(path: str, write) -> None:
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def result_part_files(stage: str) -> list[str]:
    """The results Parquet parts the tasks wrote under the local ``stage`` (not temporary files)."""
    folder = os.path.join(stage, _PARTS)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if _PART_RE.fullmatch(f))


def _text_chunks(stage: str, i: int) -> list[str]:
    """Phenotype ``i``'s text chunks, in range order (not temporary files a killed task may have left)."""
    folder = os.path.join(stage, _GLM_PARTS, str(i))
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, name) for _, name in
            sorted((int(m.group(1)), m.group(0)) for m in map(_CHUNK_RE.fullmatch, os.listdir(folder)) if m)]


def text_join_plan(stage: str, model) -> dict[int, list[tuple[str, str, int, int]]]:
    """Driver side, after every task ran :func:`write_result_parts` under the local ``stage``: each
    phenotype's text file laid out (its header written, the file sized to header + chunks) and,
    per range part, the copies that put its chunks in place, ``(chunk, file, offset, size)``, for
    :func:`copy_text_chunks` in the executors. The driver handles sizes (phenotypes x parts), no line."""
    copies: dict[int, list[tuple[str, str, int, int]]] = {}
    for i, name in enumerate(text_phenotypes(model)):
        path = os.path.join(stage, glm_file(model, name))
        header = (glm_header(model, name) + "\n").encode()
        offset = len(header)
        with open(path, "wb") as out:
            out.write(header)
        for chunk in _text_chunks(stage, i):
            part = int(_CHUNK_RE.fullmatch(os.path.basename(chunk)).group(1))
            size = os.path.getsize(chunk)
            copies.setdefault(part, []).append((chunk, path, offset, size))
            offset += size
        os.truncate(path, offset)
    return copies


def copy_text_chunks(copies) -> int:
    """Executor side: each ``(chunk, file, offset, size)`` copied into place (in the kernel where the
    OS can); returns the bytes copied. Copies of one file go to disjoint ranges, so tasks need no
    lock; a chunk whose size is not the planned one is an :class:`OutputError` (nothing is guessed)."""
    done = 0
    for chunk, path, offset, size in copies:
        if os.path.getsize(chunk) != size:
            raise OutputError(f"{chunk}: {os.path.getsize(chunk)} bytes, planned {size}; the chunk changed "
                              "after the scan's tasks wrote it")
        src, dst = os.open(chunk, os.O_RDONLY), os.open(path, os.O_WRONLY)
        try:
            at = 0
            copy = getattr(os, "copy_file_range", None)
            while at < size and copy is not None:
                try:
                    n = copy(src, dst, size - at, at, offset + at)
                except OSError:  # another filesystem, or no support: the rest through a buffer
                    break
                if n <= 0:
                    break
                at += n
            while at < size:
                data = os.pread(src, min(size - at, 1 << 22), at)
                if not data:
                    raise OutputError(f"{chunk}: shorter than when its copy was planned")
                at += os.pwrite(dst, data, offset + at)
        finally:
            os.close(src)
            os.close(dst)
        done += size
    return done


def finish_local_outputs(stage: str, model, *, plots: bool = True, plots_top: int | None = None,
                         texts_joined: bool = False, sums=None, medians: dict | None = None):
    """Driver side, after every task ran :func:`write_result_parts` under the local ``stage``: join
    each phenotype's line chunks (header first, parts in order) into ``<phenotype>.glm.linear``
    (unless ``texts_joined``: the executors did, :func:`text_join_plan`), then summarise and plot
    each phenotype. The summaries come from the tasks' ``sums`` and the ``medians`` found from them
    (:mod:`dash_spark.outputs.sums`) when given, else from the Parquet parts' p, -log10 p and error
    codes; plots read their phenotypes' rows (pyarrow, one phenotype's rows in memory at a time:
    about 100 bytes per variant). Returns ``(glm paths, summaries)`` like :func:`write_reports`."""
    import shutil

    from . import report

    open(os.path.join(stage, _PARTS, "_SUCCESS"), "wb").close()
    if not texts_joined:  # the executors' join, here: the same plan and copies, parts on threads
        from concurrent.futures import ThreadPoolExecutor

        copies = text_join_plan(stage, model)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(copy_text_chunks, copies.values()))
    glm_paths = {name: os.path.join(stage, glm_file(model, name)) for name in text_phenotypes(model)}
    shutil.rmtree(os.path.join(stage, _GLM_PARTS), ignore_errors=True)
    parts = os.path.join(stage, _PARTS)
    rows_of = PhenotypeGroups(parts, list(model.phenotypes), model.n_variants, sorted(set(report.SUMMARY_COLUMNS)))
    if sums is not None and medians is not None:
        summarize = _summed_summaries(os.path.join(stage, _TOP_PARTS), model, sums, medians)
    else:
        summarize = _light_summaries(parts, os.path.join(stage, _TOP_PARTS), model)
    shutil.rmtree(os.path.join(stage, _TOP_PARTS), ignore_errors=True)
    write_extra_outputs(stage, model)
    glm_paths.update(_score_texts(stage, model))
    return glm_paths, _summarize_and_plot(stage, model, rows_of, plots, plots_top, summarize=summarize)


def _score_texts(stage: str, model) -> dict[str, str]:
    """The score-tested phenotypes' text files (``<phenotype>.regenie``), as ``glm_paths`` entries."""
    if not getattr(model, "text_outputs", True):
        return {}
    return {name: os.path.join(stage, f"{safe_name(name)}.regenie") for name in getattr(model, "score_phenotypes", ())}


def _light_summaries(parts: str, top_dir: str, model):
    """``summarize(name)``: each phenotype's summary from its p, -log10 p and error codes alone
    (read in groups of phenotypes of up to 32 million rows: about 20 bytes a row) and the top-hit
    candidates the tasks kept (:func:`top_candidates`), so no string column is read for all rows."""

    from . import report

    names = list(model.phenotypes)
    light = _LightGroups(parts, names, model.n_variants)
    top_rows = _top_rows(top_dir, names)

    def summarize(name):
        p, nlp, codes, labels = light(name)
        counts = np.bincount(codes, minlength=len(labels))
        valid = (codes == labels.index(report.TESTED)) if report.TESTED in labels else np.zeros(len(p), dtype=bool)
        valid = valid & ~np.isnan(p) & ~np.isnan(nlp)
        return report.summarize_parts(name, p, nlp, {labels[c]: int(counts[c]) for c in np.flatnonzero(counts)},
                                      valid, top_rows.get(name), top_n=TOP_HITS)

    return summarize


class PhenotypeGroups:
    """Each phenotype's result rows for the summaries and plots, read from the results Parquet in
    groups of phenotypes sized from a row budget: one pass over the files per group (not one per
    phenotype), memory bounded by the budget whatever the number of phenotypes. Rows keep the
    files' order within each phenotype (a stable sort), so the summaries are those of a per-
    phenotype read."""

    def __init__(self, path: str, phenotypes: list[str], rows_per_phenotype: int, columns: list[str],
                 budget_rows: int = 4_000_000, dictionary: list[str] | None = None):
        self.path, self.phenotypes, self.columns = path, phenotypes, columns
        # the phenotype column is read to group the rows; it is given back only when asked for
        self.keep_phenotype = "phenotype" in columns
        self.read_columns = columns if self.keep_phenotype else [*columns, "phenotype"]
        self.dictionary = list(dict.fromkeys([*(dictionary or []), "phenotype"]))
        self.group = max(1, budget_rows // max(1, rows_per_phenotype))
        self.cache: dict = {}

    def __call__(self, name: str):
        import pyarrow.parquet as pq

        if name not in self.cache:
            self.cache.clear()
            i = self.phenotypes.index(name)
            chunk = self.phenotypes[i : i + self.group]
            table = pq.read_table(self.path, columns=self.read_columns, read_dictionary=self.dictionary,
                                  filters=[("phenotype", "in", chunk)] if len(chunk) < len(self.phenotypes) else None)
            self._fill(chunk, table)
        return self.cache[name]

    def _fill(self, chunk: list[str], table) -> None:
        """Each phenotype of ``chunk``: its rows of ``table`` into the cache."""
        import pyarrow as pa

        # group the rows by phenotype (a stable sort: file order within each); the phenotype
        # column is rebuilt per slice (when asked for), not moved: it is known from the group
        order, starts = phenotype_groups(table.column("phenotype"), chunk)
        at = table.column_names.index("phenotype")
        table = table.remove_column(at).take(pa.array(order))
        for c, n in enumerate(chunk):
            rows = table.slice(starts[c], starts[c + 1] - starts[c])
            if self.keep_phenotype:
                rows = rows.add_column(at, "phenotype", pa.repeat(pa.scalar(n, pa.string()), rows.num_rows))
            self.cache[n] = rows


def _top_rows(top_dir: str, names: list[str]) -> dict:
    """Each phenotype's top-hit candidates that the tasks kept (:func:`top_candidates`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(f for f in os.listdir(top_dir) if _TOP_RE.fullmatch(f)) if os.path.isdir(top_dir) else []
    # (one file each: ParquetFile reads it without loading pyarrow's dataset module, ~0.4 s)
    top = pa.concat_tables([pq.ParquetFile(os.path.join(top_dir, f)).read() for f in files]) if files else None
    top_rows: dict = {}
    if top is not None and top.num_rows:
        order, starts = phenotype_groups(top.column("phenotype"), names)
        top = top.take(pa.array(order))
        for c, name in enumerate(names):
            top_rows[name] = top.slice(starts[c], starts[c + 1] - starts[c])
    return top_rows


def _summed_summaries(top_dir: str, model, sums, medians: dict):
    """``summarize(name)`` from the tasks' sums (:class:`~dash_spark.outputs.sums.SummarySums`),
    the exact medians found from them and the top-hit candidates: no result row is read."""
    from . import report

    top_rows = _top_rows(top_dir, list(model.phenotypes))

    def summarize(name):
        return report.summarize_sums(name, sums.counts.get(name, {}), medians.get(name), top_rows.get(name),
                                     top_n=TOP_HITS)

    return summarize


class _LightGroups(PhenotypeGroups):
    """Each phenotype's ``(p, -log10 p, error code indices, code labels)`` as numpy arrays, read in
    groups of phenotypes of up to 32 million rows (about 20 bytes a row); the error codes as
    indices into one label list (a null: "NA")."""

    def __init__(self, path: str, phenotypes: list[str], rows_per_phenotype: int):
        super().__init__(path, phenotypes, rows_per_phenotype, ["errcode", "neg_log10_p", "p"],
                         budget_rows=32_000_000, dictionary=["errcode"])

    def _fill(self, chunk: list[str], table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        # the rows come in runs of one phenotype (a results batch is phenotype-major): each
        # phenotype's values are its runs' slices put together, not a gather of every row
        code = phenotype_codes(table.column("phenotype"), chunk)
        cut = np.flatnonzero(np.diff(code)) + 1
        run_start, run_end = np.r_[0, cut], np.r_[cut, len(code)]
        run_code = code[run_start] if len(code) else np.zeros(0, dtype=np.int64)
        by_code = np.argsort(run_code, kind="stable")
        first = np.searchsorted(run_code[by_code], np.arange(len(chunk) + 1))
        p = table.column("p").to_numpy()
        nlp = table.column("neg_log10_p").to_numpy()
        labels: list[str] = ["NA"]
        parts = []
        for ch in table.column("errcode").chunks:  # every chunk's dictionary indices into one label list
            words = ch.dictionary.cast(pa.string()).to_pylist()
            for w in words:
                if w not in labels:
                    labels.append(w)
            lookup = np.array([labels.index(w) for w in words] + [0], dtype=np.int64)  # (past the end: null)
            parts.append(lookup[pc.fill_null(ch.indices.cast(pa.int64()), len(words)).to_numpy()])
        codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        for c, n in enumerate(chunk):
            runs = by_code[first[c] : first[c + 1]]
            pieces = [slice(a, b) for a, b in zip(run_start[runs], run_end[runs])]
            self.cache[n] = tuple(np.concatenate([x[sl] for sl in pieces]) if pieces else x[:0]
                                  for x in (p, nlp, codes)) + (labels,)


def write_extra_outputs(stage: str, model) -> None:
    """``--gwas-ssf`` and ``--report-covariates`` files (:mod:`dash_spark.outputs.gwas_ssf`) from the
    results Parquet under the local ``stage``, when the model asks for them."""
    extra = getattr(model, "extra_outputs", None)
    if extra is not None:
        from . import gwas_ssf

        gwas_ssf.write_extra_outputs(stage, os.path.join(stage, _PARTS), extra, model.phenotypes, safe_name)
    if not getattr(model, "text_outputs", True):
        return
    if getattr(model, "regenie_outputs", False):
        write_regenie_files(stage, model.phenotypes)
    elif getattr(model, "score_phenotypes", ()):
        write_regenie_files(stage, model.score_phenotypes)


REGENIE_HEADER = "CHROM GENPOS ID ALLELE0 ALLELE1 A1FREQ TEST BETA SE CHISQ LOG10P"


def regenie_lines(rows) -> list[str]:
    """REGENIE's step-2 lines (``--pred-test regenie``) for a ``{column: list}`` mapping of result
    rows, numbers with REGENIE's 6 significant digits; CHROM as REGENIE numbers it (X = 23)."""
    from ..io.loco import loco_chromosome

    def g(x):
        return "NA" if x is None or x != x else f"{x:.6g}"

    out = []
    for chrom, pos, vid, ref, alt, a1, freq, beta, se, t, nlp in zip(
            rows["chrom"], rows["pos"], rows["id"], rows["ref"], rows["alt"], rows["a1"], rows["a1_freq"],
            rows["beta"], rows["se"], rows["t_stat"], rows["neg_log10_p"]):
        code = loco_chromosome(chrom)
        other = ref if a1 == alt else alt
        chisq = None if t is None else t * t
        out.append(f"{code if code is not None else chrom} {pos} {vid} {other} {a1} {g(freq)} ADD "
                   f"{g(beta)} {g(se)} {g(chisq)} {g(nlp)}")
    return out


def write_regenie_files(stage: str, phenotypes) -> dict[str, str]:
    """``<phenotype>.regenie`` (REGENIE's layout, space-separated, variant order) for each phenotype
    from the results Parquet under the local ``stage``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    cols = ["variant_index", "chrom", "pos", "id", "ref", "alt", "a1", "a1_freq", "beta", "se", "t_stat",
            "neg_log10_p"]
    paths = {}
    for name in phenotypes:
        table = pq.read_table(os.path.join(stage, _PARTS), columns=cols, filters=[("phenotype", "=", name)])
        table = table.take(pc.sort_indices(table, sort_keys=[("variant_index", "ascending")]))
        path = os.path.join(stage, f"{safe_name(name)}.regenie")
        lines = regenie_lines(table.to_pydict())

        def write(tmp, lines=lines):
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(REGENIE_HEADER + "\n")
                fh.writelines(line + "\n" for line in lines)

        _replace_with(path, write)
        paths[name] = path
    return paths


def _summarize_and_plot(stage: str, model, rows_of, plots: bool, plots_top: int | None = None, *,
                        summarize=None) -> dict:
    """Summary, log line and plots of every phenotype (``rows_of(name)``: an Arrow table holding at
    least that phenotype's rows; ``summarize(name)``, when given, makes the summary without them),
    then ``summary.tsv``/``.json``; returns the summaries. With ``plots_top = N`` only the N
    phenotypes with the smallest p-values are plotted (PheWAS runs)."""
    from . import report

    def plot(name, table, summ):
        points = report.plot_points_table(table, name)
        report.plot_manhattan(points, os.path.join(stage, f"{safe_name(name)}.manhattan.png"),
                              title=f"{name}: {summ.n_tests:,} variants")
        report.plot_qq(points, os.path.join(stage, f"{safe_name(name)}.qq.png"), title=name,
                       lambda_gc=summ.lambda_gc)

    from .logs import PhenotypeLines

    summaries = {}
    lines = PhenotypeLines(log)
    for i, name in enumerate(model.phenotypes):
        table = rows_of(name) if summarize is None or (plots and plots_top is None) else None
        summ = summaries[name] = summarize(name) if summarize is not None else report.summarize_table(table, name)
        lines.line(i, "phenotype %s: %d tests, %d with an error code, lambda_GC = %.4f",
                   name, summ.n_tests, summ.n_errors, summ.lambda_gc)
        if plots and plots_top is None and summ.n_tests > 0:
            plot(name, table, summ)
    lines.done("tested: their tests, error codes and lambda_GC are in summary.tsv")
    if plots and plots_top is not None:
        tested = [n for n in model.phenotypes if summaries[n].n_tests > 0]
        best = sorted(tested, key=lambda n: -np.nan_to_num(summaries[n].min_p_neg_log10, nan=-1.0))[:plots_top]
        log.info("plots: the %d phenotype(s) with the smallest p of %d (--plots-top)", len(best), len(tested))
        for name in best:
            plot(name, rows_of(name), summaries[name])
    if plots and len(model.phenotypes) > 1:  # PheWAS runs: one overview of every phenotype's top hit
        report.plot_phewas(summaries, os.path.join(stage, "phewas.png"))
    report.write_summary(summaries, os.path.join(stage, "summary.tsv"),
                         extra={"counts": model.counts, "n_variants": int(model.n_variants),
                                "covariates": list(model.covariates)})
    return summaries


def write_outputs_local(stage: str, table, model, *, plots: bool = True):
    """Write ``results.parquet`` (a directory with one part file, as Spark writes it), every
    phenotype's ``.glm.linear``, the summary and the plots under the local directory ``stage``
    from the driver's Arrow ``table`` of results; returns ``(glm paths, summaries)`` like
    :func:`write_reports`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rdir = os.path.join(stage, _PARTS)
    os.makedirs(rdir)
    pq.write_table(table, os.path.join(rdir, f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"),
                   compression="snappy")
    open(os.path.join(rdir, "_SUCCESS"), "wb").close()
    glm_paths = {}
    for name in text_phenotypes(model):
        rows = table.filter(pc.equal(table["phenotype"], name)).sort_by("variant_index")
        path = os.path.join(stage, glm_file(model, name))
        with open(path, "wb") as fh:
            fh.write((glm_header(model, name) + "\n").encode())
            fh.write(glm_text(rows))
        glm_paths[name] = path
    write_extra_outputs(stage, model)
    glm_paths.update(_score_texts(stage, model))
    return glm_paths, _summarize_and_plot(stage, model, lambda _name: table, plots)
