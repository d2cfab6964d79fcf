"""Forward selection on stored statistics against statsmodels fits with the selected variants as covariates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dash_spark.cli import main
from dash_spark.bench.simulate import write_bed
from dash_spark.studies.select import run_select
from dash_spark.studies.store import run_compress

from .oracle_data import make_split_files, statsmodels_oracle


@pytest.fixture(scope="module")
def two_batch_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("select")
    files, _, prefixes = make_split_files(tmp, 41, ("a", "b"), [0.6, 0.4], n=500, m=260)
    return files, tmp, prefixes


def _check(got: dict, want: dict, rows):
    """Our rows (ALT orientation restored) against statsmodels at 1e-9."""
    for r in rows:
        j = r["variant_index"]
        sign = -1.0 if r["a1"] != r["alt"] else 1.0
        assert np.isfinite(want["beta"][j]), j
        assert abs(sign * r["beta"] - want["beta"][j]) <= 1e-9 * max(abs(want["beta"][j]), want["se"][j])
        assert r["se"] == pytest.approx(want["se"][j], rel=1e-9)
        assert r["p"] == pytest.approx(want["p"][j], rel=1e-8)
        assert r["obs_ct"] == want["n"][j]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drop", "mean"])
def test_selection_equals_statsmodels_with_selected_covariates(two_batch_data, spark, mode):
    files, tmp, prefixes = two_batch_data
    store = str(tmp / f"store_{mode}")
    for b in ("a", "b"):
        run_compress(store, b, {"bfile": prefixes[b], "pheno": files.pheno, "covar": files.covar},
                     missing_genotypes=mode, spark=spark)
    res = run_select(store, str(tmp / f"sel_{mode}"), pheno_name="pheno1", p_threshold=1.0, max_steps=3,
                     spark=spark)
    assert res.steps == 3
    sel = [r["variant_index"] for r in res.selected]
    assert len(set(sel)) == 3
    # each step's conditional statistics of the variant it selected: statsmodels given the earlier ones
    for i, row in enumerate(res.selected):
        want = statsmodels_oracle(files, "pheno1", mode, condition=sel[:i], variants=[sel[i]])
        _check({}, want, [row])
        # and it was the most significant variant of that conditional scan
        full = statsmodels_oracle(files, "pheno1", mode, condition=sel[:i])
        p = np.where(np.isin(np.arange(files.m), sel[:i]), np.inf, full["p"])
        assert np.nanargmin(p) == sel[i]
    # the final conditional scan, for every testable variant
    final = statsmodels_oracle(files, "pheno1", mode, condition=sel)
    tab = pq.read_table(f"{res.out}/results.parquet").to_pylist()
    assert len(tab) == files.m
    ok = [r for r in tab if r["errcode"] == "." and r["variant_index"] not in sel]
    assert len(ok) > files.m - 10
    _check({}, final, ok)
    assert all(r["errcode"] != "." for r in tab if r["variant_index"] in sel)  # collinear with itself
    # joint statistics per step
    joint = pd.read_csv(f"{res.out}/joint.tsv", sep="\t")
    assert list(joint["step"]) == [1, 2, 2, 3, 3, 3]
    for q in (1, 2, 3):
        fit = statsmodels_oracle(files, "pheno1", mode, condition=sel[:q], variants=[])["joint"]
        got = joint[joint["step"] == q]
        signs = np.array([-1.0 if r["a1"] != r["alt"] else 1.0 for r in res.selected[:q]])
        np.testing.assert_allclose(signs * got["beta"].to_numpy(), fit.params[4:], rtol=1e-9)
        np.testing.assert_allclose(got["se"].to_numpy(), fit.bse[4:], rtol=1e-9)
        np.testing.assert_allclose(got["p"].to_numpy(), fit.pvalues[4:], rtol=1e-8)


def _ld_cohort(tmp, rng, n=2000, m=300, causal=(60, 100, 230)):
    """Independent variants, except that each causal variant has 6 neighbours in LD with it (r^2 ~ 0.5-0.85)."""
    G = rng.binomial(2, rng.uniform(0.1, 0.9, m), size=(n, m)).astype(np.int8)
    for c in causal:
        for d, keep in zip((-3, -2, -1, 1, 2, 3), (0.7, 0.8, 0.92, 0.92, 0.85, 0.75)):
            redraw = rng.random(n) > keep
            G[:, c + d] = np.where(redraw, rng.binomial(2, 0.5, n), G[:, c])
    G[rng.random((n, m)) < 0.01] = -1
    iids = [f"s{i}" for i in range(n)]
    prefix = str(tmp / "ld")
    write_bed(prefix, n, [G], iids=iids, chrom=["1"] * (m // 2) + ["2"] * (m - m // 2),
              pos=[10_000 * (j + 1) for j in range(m)], ids=[f"v{j}" for j in range(m)], alt=["A"] * m, ref=["G"] * m)
    age = rng.normal(50, 8, n)
    Gf = np.where(G < 0, 1.0, G)
    y = 0.02 * age + Gf[:, list(causal)] @ np.array([0.35, -0.3, 0.3]) + rng.normal(size=n)
    (tmp / "ld.pheno").write_text("IID\ty\n" + "".join(f"{i}\t{float(v)!r}\n" for i, v in zip(iids, y)))
    (tmp / "ld.covar").write_text("IID\tage\n" + "".join(f"{i}\t{float(v)!r}\n" for i, v in zip(iids, age)))
    return prefix, str(tmp / "ld.pheno"), str(tmp / "ld.covar"), set(causal)


@pytest.mark.slow
def test_planted_causal_variants_in_ld_are_recovered(tmp_path, spark, capsys):
    prefix, pheno, covar, causal = _ld_cohort(tmp_path, np.random.default_rng(43))
    store = str(tmp_path / "store")
    assert main(["-q", "compress", "--store", store, "--batch", "all", "--bfile", prefix, "--pheno", pheno,
                 "--covar", covar]) == 0
    # marginally, the causal variants' neighbours pass the threshold too
    res0 = run_select(store, str(tmp_path / "one"), p_threshold=5e-8, max_steps=1, spark=spark)
    marginal = pq.read_table(f"{res0.out}/results.parquet").to_pandas()
    assert (marginal["p"] < 5e-8).sum() >= 9
    for extra in ([], ["--window-kb", "100"]):
        out = tmp_path / f"sel{len(extra)}"
        capsys.readouterr()
        assert main(["-q", "select", "--store", store, "--out", str(out), "--p-threshold", "5e-8",
                     "--max-steps", "10", *extra]) == 0
        got = pd.read_csv(out / "selected.tsv", sep="\t")
        assert {int(v[1:]) for v in got["id"]} == causal, got
        assert (got["p"] < 5e-8).all()
    # with the window, v61 is conditioned on v60 only and v10 on nothing (statsmodels, drop mode)
    import statsmodels.api as sm
    from bed_reader import open_bed

    with open_bed(prefix + ".bed", count_A1=True) as bed:
        X = bed.read(dtype="float64")
    y = pd.read_csv(pheno, sep="\t")["y"].to_numpy()
    age = pd.read_csv(covar, sep="\t")["age"].to_numpy()
    z60 = np.where(np.isnan(X[:, 60]), np.nanmean(X[:, 60]), X[:, 60])
    tab = pq.read_table(str(tmp_path / "sel2" / "results.parquet")).to_pandas().set_index("variant_index")
    for j, cond in ((61, [z60]), (10, [])):
        rows = ~np.isnan(X[:, j])
        fit = sm.OLS(y[rows], np.column_stack([X[rows, j], np.ones(rows.sum()), age[rows]] + [c[rows] for c in cond])).fit()
        sign = -1.0 if tab.loc[j, "a1"] != tab.loc[j, "alt"] else 1.0
        assert sign * tab.loc[j, "beta"] == pytest.approx(fit.params[0], rel=1e-9)
        assert tab.loc[j, "se"] == pytest.approx(fit.bse[0], rel=1e-9)


@pytest.mark.slow
def test_selection_after_a_withdrawal(two_batch_data, spark):
    """Withdrawn samples stay out of the selection's genotype passes too (statsmodels without them)."""
    from dash_spark.studies.store import run_refresh

    files, tmp, prefixes = two_batch_data
    store = str(tmp / "store_withdrawn")
    for b in ("a", "b"):
        run_compress(store, b, {"bfile": prefixes[b], "pheno": files.pheno, "covar": files.covar}, spark=spark)
    gone = [line.split()[1] for line in open(prefixes["b"] + ".fam")][:6]
    (tmp / "gone.txt").write_text("\n".join(gone) + "\n")
    run_refresh(store, str(tmp / "gone_out"), withdraw=str(tmp / "gone.txt"), plots=False, spark=spark)
    res = run_select(store, str(tmp / "sel_gone"), pheno_name="pheno1", p_threshold=1.0, max_steps=2, spark=spark)
    sel = [r["variant_index"] for r in res.selected]
    for i, row in enumerate(res.selected):
        _check({}, statsmodels_oracle(files, "pheno1", "drop", condition=sel[:i], variants=[sel[i]], remove=gone),
               [row])
    final = statsmodels_oracle(files, "pheno1", "drop", condition=sel, remove=gone)
    tab = pq.read_table(f"{res.out}/results.parquet").to_pylist()
    _check({}, final, [r for r in tab if r["errcode"] == "." and r["variant_index"] not in sel])
