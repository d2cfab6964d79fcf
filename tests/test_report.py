"""Tests of dash_spark.outputs.report: summaries, bounded plot points, PNG and summary files."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import chi2

from dash_spark.errors import InputError
from dash_spark.outputs.report import (
    PhenotypeSummary,
    chrom_sort_key,
    format_p,
    format_top_hits,
    plot_manhattan,
    plot_points,
    plot_qq,
    summarize_phenotype,
    write_summary,
)

SEED = int(os.environ.get("DASH_TEST_SEED", "20261124")) + 7
N_NULL = 20_000
CHROMS = ("10", "2", "X")  # deliberately not in plotting order
REGION_BP = 1_000_000  # 10 position bins of 100 kb per chromosome -> heavy thinning
# planted hits, strongest first: (chrom, pos, -log10 p); the first underflows float64 (p == 0.0)
HITS = [("2", 500_123, 400.0), ("10", 250_000, 50.0), ("X", 900_001, 20.0),
        ("2", 10_000, 12.0), ("10", 999_000, 8.5)]
N_ERR = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _table(phenotype, chrom, pos, p, nlp, errcode, rng):
    n = len(chrom)
    tested = np.asarray([e == "." for e in errcode])
    beta = np.where(tested, rng.normal(0, 0.05, n), np.nan)
    se = np.where(tested, 0.02 + rng.random(n) * 0.01, np.nan)

    def stat(values, dtype):
        return pa.array(values, type=dtype, mask=~tested)

    return pa.table({
        "chrom": pa.array(chrom, pa.string()),
        "pos": pa.array(np.asarray(pos, dtype=np.int64)),
        "id": pa.array([f"{c}:{q}:A:G" for c, q in zip(chrom, pos)], pa.string()),
        "ref": pa.array(["A"] * n, pa.string()),
        "alt": pa.array(["G"] * n, pa.string()),
        "a1": pa.array(["G"] * n, pa.string()),
        "a1_freq": stat(np.where(tested, 0.3, 0.0), pa.float64()),
        "obs_ct": pa.array(np.full(n, 5000, dtype=np.int64)),
        "beta": stat(beta, pa.float64()),
        "se": stat(se, pa.float64()),
        "t_stat": stat(np.where(tested, beta / np.where(tested, se, 1.0), 0.0), pa.float64()),
        "p": stat(np.where(tested, p, 0.0), pa.float64()),
        "neg_log10_p": stat(np.where(tested, nlp, 0.0), pa.float64()),
        "phenotype": pa.array([phenotype] * n, pa.string()),
        "errcode": pa.array(list(errcode), pa.string()),
    })


def _make_data():
    rng = np.random.default_rng(SEED)
    # phenotype "trait": uniform null p plus planted hits plus error rows
    hit_chrom, hit_pos, hit_nlp = (np.array(v) for v in zip(*HITS))
    null_p = rng.random(N_NULL)
    chrom = np.concatenate([rng.choice(CHROMS, N_NULL), hit_chrom, ["2"] * N_ERR]).astype(object)
    err_pos = REGION_BP + np.arange(N_ERR)
    pos = np.concatenate([rng.integers(1, REGION_BP, N_NULL), hit_pos, err_pos])
    p = np.concatenate([null_p, 10.0 ** -hit_nlp, np.full(N_ERR, np.nan)])
    nlp = np.concatenate([-np.log10(null_p), hit_nlp, np.full(N_ERR, np.nan)])
    errs = ["CONST_OMITTED_ALLELE"] * 2 + ["MISSING_DOSAGE", "CONST_OMITTED_ALLELE"]
    errcode = ["."] * (N_NULL + len(HITS)) + errs
    trait = _table("trait", chrom, pos, p, nlp, errcode, rng)

    # phenotype "inflated": chi-square statistics scaled by 1.2
    stat = 1.2 * rng.chisquare(1, N_NULL)
    p_inf = chi2.sf(stat, 1)
    nlp_inf = -chi2.logsf(stat, 1) / math.log(10)
    inflated = _table("inflated", rng.choice(CHROMS, N_NULL).astype(object),
                      rng.integers(1, REGION_BP, N_NULL), p_inf, nlp_inf, ["."] * N_NULL, rng)

    # phenotype "allerr": nothing was tested
    broken = _table("allerr", ["1"] * 3, [10, 20, 30], np.zeros(3), np.zeros(3),
                    ["CONST_OMITTED_ALLELE"] * 3, rng)
    n = N_NULL + len(HITS)
    return {
        "table": pa.concat_tables([trait, inflated, broken]),
        "trait_p": p[:n],
        "trait_nlp": nlp[:n],
        "trait_chrom": chrom[:n],
        "trait_pos": pos[:n].astype(np.int64),
        "inflated_p": p_inf,
    }


@pytest.fixture(scope="module")
def data(spark):
    d = _make_data()
    d["df"] = spark.createDataFrame(d["table"])
    return d


@pytest.fixture(scope="module")
def trait_summary(data):
    return summarize_phenotype(data["df"], "trait", top_n=5)


@pytest.fixture(scope="module")
def trait_points(data):
    return plot_points(data["df"], "trait")


@pytest.fixture(scope="module")
def allerr_summary(data):
    return summarize_phenotype(data["df"], "allerr")


def _numpy_lambda(p):
    return chi2.isf(np.median(p), 1) / chi2.ppf(0.5, 1)


# ---------------------------------------------------------------------------------------------
# summaries


def test_counts_and_errcodes(trait_summary):
    s = trait_summary
    assert s.n_tests == N_NULL + len(HITS)
    assert s.n_errors == N_ERR
    assert s.errcode_counts == {"CONST_OMITTED_ALLELE": 3, "MISSING_DOSAGE": 1}
    assert s.min_p_neg_log10 == 400.0
    assert s.min_p == 0.0


def test_lambda_uniform_exact_path_matches_numpy(data, trait_summary):
    s = trait_summary
    assert s.median_method == "exact"
    expected = _numpy_lambda(data["trait_p"])
    assert abs(s.lambda_gc - 1.0) < 0.06
    assert s.lambda_gc == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_lambda_small_n_exact_even_count(spark):
    # an even number of rows: the median interpolates between the two middle values, as numpy does
    rng = np.random.default_rng(SEED + 1)
    p = rng.random(200)
    t = _table("small", ["1"] * 200, np.arange(1, 201), p, -np.log10(p), ["."] * 200, rng)
    s = summarize_phenotype(spark.createDataFrame(t), "small", top_n=3)
    assert s.median_method == "exact"
    assert s.median_p == pytest.approx(np.median(p), rel=1e-12, abs=0)
    assert s.lambda_gc == pytest.approx(_numpy_lambda(p), rel=1e-12, abs=0)


def test_lambda_approx_path(data):
    s = summarize_phenotype(data["df"], "trait", top_n=0, exact_median_max_n=0)
    assert s.median_method == "approx"
    assert s.top_hits == []
    # percentile_approx(accuracy=1e5): rank error <= n / 1e5 (< 1 rank here)
    assert s.lambda_gc == pytest.approx(_numpy_lambda(data["trait_p"]), abs=1e-3)


def test_lambda_inflated(data):
    s = summarize_phenotype(data["df"], "inflated", top_n=1)
    assert abs(s.lambda_gc - 1.2) < 0.06
    assert s.lambda_gc == pytest.approx(_numpy_lambda(data["inflated_p"]), rel=1e-12)
    assert s.n_errors == 0 and s.errcode_counts == {}


def test_top_hits_are_planted_in_order(trait_summary):
    hits = trait_summary.top_hits
    assert [(h["chrom"], h["pos"], h["neg_log10_p"]) for h in hits] == HITS
    assert set(hits[0]) == {"id", "chrom", "pos", "a1", "beta", "se", "p", "neg_log10_p", "obs_ct"}
    assert hits[0]["p"] == 0.0 and hits[0]["id"] == "2:500123:A:G" and hits[0]["obs_ct"] == 5000
    assert all(isinstance(h["pos"], int) for h in hits)


def test_all_errors_and_unknown_phenotype(data, allerr_summary):
    s = allerr_summary
    assert (s.n_tests, s.n_errors, s.top_hits) == (0, 3, [])
    assert math.isnan(s.lambda_gc) and math.isnan(s.min_p_neg_log10)
    with pytest.raises(InputError, match="Did you mean 'trait'"):
        summarize_phenotype(data["df"], "trail")
    with pytest.raises(InputError, match="no rows for phenotype"):
        plot_points(data["df"], "trail")


# ---------------------------------------------------------------------------------------------
# plot points


def test_manhattan_points_bounded_and_keep_significant(data, trait_points):
    pts = trait_points
    n_rows = N_NULL + len(HITS)
    assert pts.n_tests == n_rows
    assert pts.pos.size < n_rows / 4
    # every row with -log10 p >= 3 is there exactly
    nlp, chrom, pos = data["trait_nlp"], data["trait_chrom"], data["trait_pos"]
    sig = nlp >= 3.0
    want = {(c, int(q), float(y)) for c, q, y in zip(chrom[sig], pos[sig], nlp[sig])}
    got = {
        (c, int(q), float(y))
        for c, q, y, e in zip(pts.chrom, pts.pos, pts.neg_log10_p, pts.exact)
        if e
    }
    assert got == want and pts.n_kept == len(want)
    # the thinned rest: one point per (chrom, 100 kb, 1/50 -log10 p) cell, at the cell's maximum
    rest = ~sig
    cells: dict[tuple, float] = {}
    for c, q, y in zip(chrom[rest], pos[rest], nlp[rest]):
        key = (c, int(q) // 100_000, int(math.floor(y * 50)))
        cells[key] = max(cells.get(key, -1.0), float(y))
    thinned = sorted(
        (c, int(q) // 100_000, int(math.floor(y * 50)), float(y))
        for c, q, y, e in zip(pts.chrom, pts.pos, pts.neg_log10_p, pts.exact) if not e
    )
    assert thinned == sorted((*k, v) for k, v in cells.items())
    # chromosome order and sorted positions
    assert pts.chromosomes == ("2", "10", "X")
    rank = np.array([pts.chromosomes.index(c) for c in pts.chrom])
    np.testing.assert_array_equal(pts.chrom_index, rank)
    assert np.all(np.diff(rank) >= 0)
    for c in pts.chromosomes:
        assert np.all(np.diff(pts.pos[pts.chrom == c]) >= 0)


def test_qq_points_match_exact_ranks(data, trait_points):
    pts = trait_points
    obs = np.sort(data["trait_nlp"])[::-1]
    m = obs.size
    exp = -np.log10((np.arange(1, m + 1) - 0.5) / m)
    k = pts.n_kept
    np.testing.assert_array_equal(pts.qq_observed[:k], obs[:k])
    np.testing.assert_allclose(pts.qq_expected[:k], exp[:k], rtol=1e-12, atol=1e-12)
    assert int(pts.qq_count.sum()) == m and np.all(pts.qq_count[:k] == 1)
    assert np.all(np.diff(pts.qq_observed) <= 0)
    w = pts.bin_width
    start = k
    for j in range(k, pts.qq_expected.size):
        c = int(pts.qq_count[j])
        block_obs = obs[start:start + c]
        # every row of the bin is within one bin width of the bin's point
        assert np.all(np.abs(block_obs - pts.qq_observed[j]) <= w)
        # the expected value sits at the bin's middle rank, between the exact end values
        lo, hi = exp[start + c - 1], exp[start]
        assert lo - 1e-12 <= pts.qq_expected[j] <= hi + 1e-12
        if c % 2 == 1:
            assert pts.qq_expected[j] == pytest.approx(exp[start + c // 2], rel=1e-12, abs=1e-12)
        start += c
    assert pts.qq_expected.size < 3.0 * 50 + k + 1  # bulk bounded by the number of -log10 p bins


def test_chrom_sort_key_and_format_p():
    names = ["MT", "X", "10", "chr2", "1", "Y", "GL000192.1", "XY", "22", "HLA"]
    assert sorted(names, key=chrom_sort_key) == [
        "1", "chr2", "10", "22", "X", "Y", "XY", "MT", "GL000192.1", "HLA"]
    assert format_p(400.0) == "1.000e-400"
    assert format_p(2.0) == "0.01"
    assert format_p(math.nan) == "NA"
    assert format_p(400.0 - math.log10(9.99996)) == "1.000e-399"


# ---------------------------------------------------------------------------------------------
# plots and files


def _assert_png(path):
    with open(path, "rb") as fh:
        head = fh.read(8)
    assert head == PNG_SIGNATURE and os.path.getsize(path) > 2000


def test_plots_written_atomically(tmp_path, trait_points, trait_summary, data):
    man = tmp_path / "trait.manhattan.png"
    qq = tmp_path / "trait.qq.png"
    assert plot_manhattan(trait_points, man, title="trait") == str(man)
    plot_qq(trait_points, str(qq), title="trait", lambda_gc=trait_summary.lambda_gc)
    _assert_png(man)
    _assert_png(qq)
    # empty phenotype still gives valid figures
    empty = plot_points(data["df"], "allerr")
    assert empty.n_tests == 0 and empty.pos.size == 0 and empty.qq_expected.size == 0
    plot_manhattan(empty, tmp_path / "e.manhattan.png", title="allerr")
    plot_qq(empty, tmp_path / "e.qq.png", title="allerr", lambda_gc=math.nan)
    _assert_png(tmp_path / "e.qq.png")
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["trait.manhattan.png", "trait.qq.png", "e.manhattan.png", "e.qq.png"])


def test_write_summary_tsv_and_json(tmp_path, trait_summary, allerr_summary):
    summaries = {"trait": trait_summary, "allerr": allerr_summary}
    out = tmp_path / "report"
    tsv, js = write_summary(summaries, out, extra={"n_samples": np.int64(5000), "n_variants": 20009,
                                                   "maf": np.float64(np.nan)})
    assert tsv == str(out / "summary.tsv") and js == str(out / "summary.json")
    with open(tsv, encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh]
    assert rows[0] == ["phenotype", "n_tests", "n_errors", "lambda_gc", "min_p", "top_id"]
    assert len(rows) == 3 and all(len(r) == 6 for r in rows)
    assert rows[1][:3] == ["trait", str(N_NULL + len(HITS)), str(N_ERR)]
    assert rows[1][4:] == ["1.000e-400", "2:500123:A:G"]
    assert float(rows[1][3]) == pytest.approx(trait_summary.lambda_gc, abs=1e-5)
    assert rows[2] == ["allerr", "0", "3", "NA", "NA", "NA"]
    with open(js, encoding="utf-8") as fh:
        text = fh.read()
    assert "NaN" not in text
    doc = json.loads(text)
    assert doc["extra"] == {"n_samples": 5000, "n_variants": 20009, "maf": None}
    assert doc["phenotypes"]["allerr"]["lambda_gc"] is None
    assert doc["phenotypes"]["trait"]["top_hits"][1]["neg_log10_p"] == 50.0
    assert doc["phenotypes"]["trait"]["errcode_counts"]["MISSING_DOSAGE"] == 1
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    # a .tsv path puts the JSON beside it
    tsv2, js2 = write_summary({"trait": trait_summary}, tmp_path / "x.tsv", extra={})
    assert os.path.exists(tsv2) and js2 == str(tmp_path / "x.json") and os.path.exists(js2)


def test_format_top_hits(trait_summary):
    text = format_top_hits(trait_summary)
    lines = text.splitlines()
    assert lines[0].startswith("trait: 20,005 tests, 4 skipped, lambda_GC = ")
    assert len(lines) == 2 + len(HITS)
    assert lines[1].split() == ["#", "ID", "CHROM", "POS", "A1", "BETA", "SE", "P", "OBS_CT"]
    assert "1.000e-400" in lines[2] and "2:500123:A:G" in lines[2]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned
    empty = PhenotypeSummary("none", 0, 2, {"X": 2}, math.nan, "none", math.nan, math.nan, [])
    assert "no tested variants" in format_top_hits(empty)


@pytest.mark.parametrize("hint", [10**9, 50_000])
def test_one_job_summary_with_row_hint_equals_default(data, trait_summary, hint):
    """The grouped single-job path (row count known up front) gives the same summary."""
    fast = summarize_phenotype(data["df"], "trait", top_n=5, n_rows_hint=hint)
    assert fast.n_tests == trait_summary.n_tests
    assert fast.errcode_counts == trait_summary.errcode_counts
    assert fast.top_hits == trait_summary.top_hits
    assert fast.min_p_neg_log10 == trait_summary.min_p_neg_log10
    if hint >= 10**9:  # approximate median: within the documented rank error
        assert fast.median_method == "approx"
        assert fast.lambda_gc == pytest.approx(trait_summary.lambda_gc, rel=1e-3)
    else:
        assert fast.median_method == "exact"
        assert fast.lambda_gc == pytest.approx(trait_summary.lambda_gc, rel=1e-12)


def test_phewas_overview_plot(tmp_path):
    """One point per phenotype's top hit; written only for 2+ phenotypes with tests."""
    from dash_spark.outputs.report import PhenotypeSummary, plot_phewas

    def summ(name, nlp, n=100):
        return PhenotypeSummary(phenotype=name, n_tests=n, n_errors=0, errcode_counts={}, median_p=0.5,
                                median_method="exact", lambda_gc=1.0, min_p_neg_log10=nlp,
                                top_hits=[{"id": f"rs_{name}", "neg_log10_p": nlp}])

    many = {f"t{i}": summ(f"t{i}", v) for i, v in enumerate([1.2, 9.5, 3.0, 12.0])}
    path = plot_phewas(many, tmp_path / "phewas.png")
    data = (tmp_path / "phewas.png").read_bytes()
    assert path and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert plot_phewas({"only": summ("only", 5.0)}, tmp_path / "one.png") is None
    assert plot_phewas({"a": summ("a", 5.0), "b": summ("b", float("nan"), n=0)}, tmp_path / "two.png") is None
    assert not (tmp_path / "one.png").exists() and not (tmp_path / "two.png").exists()


def test_top_candidates_by_blocks_equal_the_sorted_reduction(rng):
    """A task keeps each phenotype's candidate top hits: in a results batch's layout (each
    phenotype one run of equal length) they are found by one partition per run; the rows kept
    (ties, missing p, error codes and runs with too few valid tests included) are exactly those
    the general sort keeps, and a layout that is not one run per phenotype takes the sort."""
    import pyarrow.compute as pc

    from dash_spark.outputs import writers

    P, m = 40, 57
    nlp = np.round(rng.exponential(1.0, P * m), 1)  # rounding makes ties
    nlp[rng.random(P * m) < 0.05] = np.nan
    err = np.where(rng.random(P * m) < 0.05, "CONST_OMITTED_ALLELE", ".")
    err[3 * m : 4 * m - 3] = "VIF_TOO_HIGH"  # a phenotype with 3 valid tests only
    err[5 * m : 6 * m] = "VIF_TOO_HIGH"  # and one with none
    n = P * m
    table = pa.table({"variant_index": np.tile(np.arange(m), P), "id": [f"v{i % m}" for i in range(n)],
                      "chrom": ["1"] * n, "pos": np.tile(np.arange(m), P), "a1": ["A"] * n,
                      "beta": rng.normal(size=n), "se": np.ones(n), "t_stat": rng.normal(size=n),
                      "obs_ct": np.full(n, 100), "a1_freq": np.full(n, 0.3), "p": 10.0 ** -nlp,
                      "neg_log10_p": nlp, "phenotype": np.repeat([f"t{j}" for j in range(P)], m), "errcode": err})
    calls = []
    real = writers._top_in_blocks
    try:
        writers._top_in_blocks = lambda *a: calls.append(1) or None  # the general path
        general = writers.top_candidates(table)
    finally:
        writers._top_in_blocks = real
    fast = writers.top_candidates(table)
    assert calls and fast.equals(general) and 10 * (P - 2) <= fast.num_rows < 12 * P
    shuffled = table.take(pa.array(rng.permutation(n)))
    assert writers._top_in_blocks(
        np.asarray(pc.dictionary_encode(shuffled.column("phenotype")).combine_chunks().indices),
        shuffled.column("neg_log10_p").to_numpy(), np.arange(n), 10) is None
    assert sorted(writers.top_candidates(shuffled).column("id").to_pylist()) == sorted(general.column("id").to_pylist())


def _results_parts(tmp_path, rng):
    """Results parts of 6 phenotypes with awkward p-values: ties, a phenotype whose p are all the
    same, p clustered near 0, many p = 1, one valid test, none valid; error codes, nulls among them,
    and NaN p or -log10 p."""
    import pyarrow.parquet as pq

    P = 6
    paths, tables = [], []
    for part in range(4):
        n = 2500
        ph = rng.integers(0, P, n)
        p = np.round(rng.random(n), 3)  # ties
        p[ph == 1] = 0.25
        p[ph == 2] = rng.random(int((ph == 2).sum())) * 1e-12
        p[(ph == 3) & (rng.random(n) < 0.6)] = 1.0
        err = np.where(rng.random(n) < 0.05, "VIF_TOO_HIGH", ".").astype(object)
        err[(ph == 4)] = "CONST_OMITTED_ALLELE"
        if part == 0:
            err[np.flatnonzero(ph == 4)[:1]] = "."
        err[ph == 5] = None
        nlp = -np.log10(np.maximum(p, 1e-300))
        nlp[rng.random(n) < 0.02] = np.nan
        table = pa.table({"phenotype": [f"t{j}" for j in ph], "p": p, "neg_log10_p": nlp,
                          "errcode": pa.array(list(err), pa.string()), "variant_index": np.arange(n) + part * n,
                          "id": [f"v{i}" for i in range(n)], "chrom": ["1"] * n, "pos": np.arange(n),
                          "a1": ["A"] * n, "beta": rng.normal(size=n), "se": np.ones(n), "t_stat": rng.normal(size=n),
                          "obs_ct": np.full(n, 100), "a1_freq": np.full(n, 0.3)})
        path = str(tmp_path / f"part-{part:05d}.snappy.parquet")
        pq.write_table(table, path)
        paths.append(path)
        tables.append(table)
    return paths, pa.concat_tables(tables), [f"t{j}" for j in range(P)]


@pytest.mark.parametrize("limit,bins", [(4096, 64), (3, 64), (4096, 4096), (3, 1024)])
def test_summaries_from_task_sums_equal_the_whole_table(tmp_path, rng, monkeypatch, limit, bins):
    """The summaries a scan makes without reading every row (the tasks' error-code counts and p
    histograms, exact medians found by passes over the result files, the top-hit candidates) equal
    those made from the whole table, field by field: ties, identical p-values, p near 0 and at 1,
    one valid test, none, null error codes; with a collect limit of 3, the passes that refine
    the median's bin; with histograms of 64 to 4,096 bins."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dash_spark.outputs import report, sums as S
    from dash_spark.outputs.writers import top_candidates

    monkeypatch.setattr(S, "COLLECT_LIMIT", limit)
    paths, whole, names = _results_parts(tmp_path, rng)
    total = S.SummarySums(bins=bins)
    tops = []
    for path in paths:
        part = S.SummarySums(bins=bins)
        table = pq.read_table(path)
        part.add(table)
        total = total.merged(part)
        tops.append(top_candidates(table))
    passes = []

    def run_pass(searches, collect):
        passes.append(len(collect))
        found: dict = {}
        for path in paths:
            found = S.merge_pass(found, S.median_pass(path, searches, collect))
        return found

    medians = S.exact_medians(total, run_pass)
    assert (len(passes) > 1) == (limit == 3)
    top = pa.concat_tables(tops)
    for name in names:
        ours = report.summarize_sums(name, total.counts.get(name, {}), medians.get(name),
                                     top.filter(pc.equal(top.column("phenotype"), name)))
        assert ours == report.summarize_table(whole, name), name


def test_histogram_bins_by_phenotype_count():
    """Few phenotypes get fine first histograms (the median's bin is then usually collected at
    once), many get coarse ones (the tasks' counts stay bounded); histograms of different bins do
    not add."""
    from dash_spark.outputs import sums as S

    got = {n: S.first_bins(n) for n in (0, 1, 20, 64, 65, 100, 1000, 4096, 100_000)}
    assert got == {0: 4096, 1: 4096, 20: 4096, 64: 4096, 65: 2048, 100: 2048, 1000: 256, 4096: 64, 100_000: 64}
    assert all(b & (b - 1) == 0 for b in got.values())  # powers of two: p * bins is exact
    with pytest.raises(ValueError, match="64 and 4096 bins"):
        S.SummarySums(bins=64).merged(S.SummarySums(bins=4096))


def test_texts_joined_when_no_phenotype_has_a_valid_test(tmp_path, spark):
    """Every variant monomorphic: no valid test, so no median pass runs; the text parts are still
    joined (by a job of their own): header and one line per variant, and lambda_GC is NA."""
    from dash_spark.bench.simulate import write_bed
    from dash_spark.cli import main

    n, m = 40, 7
    iids = [f"s{i}" for i in range(n)]
    prefix = str(tmp_path / "mono")
    write_bed(prefix, n, [np.zeros((n, m), dtype=np.int8)], iids=iids, chrom=["1"] * m,
              pos=list(range(1, m + 1)), ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["C"] * m)
    y = np.random.default_rng(3).normal(size=n)
    (tmp_path / "y.pheno").write_text("#FID\tIID\ty\n" + "".join(f"{i}\t{i}\t{v}\n" for i, v in zip(iids, y)))
    out = str(tmp_path / "out")
    assert main(["-q", "scan", "--bfile", prefix, "--pheno", str(tmp_path / "y.pheno"), "--out", out,
                 "--no-plots"]) == 0
    lines = open(os.path.join(out, "y.glm.linear")).read().splitlines()
    assert lines[0].startswith("#CHROM") and len(lines) == 1 + m
    assert all(line.split("\t")[-1] != "." for line in lines[1:])  # every row has an error code
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["phenotypes"]["y"]["lambda_gc"] is None and summary["phenotypes"]["y"]["n_errors"] == m
