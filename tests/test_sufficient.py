"""The additive statistics type ``S`` without Spark: compress (the tasks' kernel path on a .bed),
merge, withdraw and finalize, against statsmodels fits on the decoded genotypes.

The oracle (``statsmodels_oracle``) shares no code with dash_spark: pandas reads the tables,
bed-reader decodes the genotypes and statsmodels fits every variant.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dash_spark.errors import ModelError
from dash_spark.scanner.pipeline import ScanConfig, model_statistics, plan_scan
from dash_spark.scanner.model import statistics_model
from dash_spark.stats.sufficient import Moments, StatLayout, SufficientStats
from dash_spark.scanner.tasks import block_stats

from .oracle_data import PHENOS, make_files, statsmodels_oracle


def _stats(cfg) -> SufficientStats:
    """``S`` of a config's samples through the tasks' own kernel path, in one process."""
    model = statistics_model(cfg)
    plan, _, _ = plan_scan(cfg, model, 1)
    block = plan.reader.read(np.arange(model.bim.n_variants))
    return model_statistics(model, block_stats(plan, model.W, block))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suff")
    files = make_files(tmp, np.random.default_rng(11), n=420, m=240, missing=0.04, name="s")
    iids = [line.split()[1] for line in open(files.bfile + ".fam")]
    halves = []
    for s in range(2):
        path = tmp / f"half{s}.txt"
        path.write_text("".join(f"{i}\n" for j, i in enumerate(iids) if j % 2 == s))
        halves.append(str(path))
    return files, halves


def _check_against_statsmodels(files, table, phenotype, mode):
    sel = np.asarray(table.column("phenotype").to_numpy(zero_copy_only=False)) == phenotype
    ours = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False))[sel] for c in table.column_names}
    ref = statsmodels_oracle(files, phenotype, mode)
    sign = np.where(ours["a1"] == ours["alt"], 1.0, -1.0)
    tested = ~ref["const"] & ~np.isnan(ref["beta"])
    assert tested.sum() > 220
    beta = sign * ours["beta"]
    assert np.all(np.abs(beta[tested] - ref["beta"][tested])
                  <= 1e-9 * np.maximum(np.abs(ref["beta"][tested]), ref["se"][tested]))
    np.testing.assert_allclose(ours["se"][tested], ref["se"][tested], rtol=1e-9)
    np.testing.assert_allclose(ours["p"][tested], ref["p"][tested], rtol=1e-8, atol=1e-300)
    assert np.all(ours["obs_ct"] == ref["n"])
    assert np.all(ours["errcode"][ref["const"]] != ".")


@pytest.mark.parametrize("mode", ["drop", "mean"])
def test_merged_halves_finalize_to_statsmodels(cohort, tmp_path, mode):
    """S(half 1) + S(half 2), finalized, equals statsmodels per variant on all samples; in drop
    mode every variant is fitted on its own complete cases (plink2's semantics)."""
    files, halves = cohort
    cfg = ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"),
                     missing_genotypes=mode)
    S = sum(_stats(dataclasses.replace(cfg, keep=h)) for h in halves)
    assert S.layout == StatLayout(4, 3, mode)
    table = S.finalize()
    if mode == "drop":  # the test covers variants with different OBS_CT
        assert len(set(table.column("obs_ct").to_pylist())) > 10
    for phenotype in PHENOS:
        _check_against_statsmodels(files, table, phenotype, mode)


def test_withdrawal_equals_the_remaining_samples(cohort, tmp_path):
    """S(all) - S(half 2) is S(half 1), to rounding."""
    files, halves = cohort
    cfg = ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"))
    whole, gone, kept = _stats(cfg), _stats(dataclasses.replace(cfg, keep=halves[1])), \
        _stats(dataclasses.replace(cfg, keep=halves[0]))
    rest = whole - gone
    assert [m.n for m in rest.moments] == [m.n for m in kept.moments]
    np.testing.assert_allclose(rest.per_variant, kept.per_variant, rtol=1e-9, atol=1e-7)
    a, b = rest.finalize(), kept.finalize()
    assert a.column("errcode").equals(b.column("errcode"))
    np.testing.assert_allclose(a.column("neg_log10_p").to_numpy(zero_copy_only=False),
                               b.column("neg_log10_p").to_numpy(zero_copy_only=False), rtol=1e-9, atol=1e-11)


def test_arrays_round_trip_and_mismatched_models_refuse(cohort, tmp_path):
    files, halves = cohort
    cfg = ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"))
    S = _stats(dataclasses.replace(cfg, keep=halves[0]))
    back = SufficientStats.from_arrays(S.to_arrays(), S.phenotypes, S.covariates, S.mode)
    assert np.array_equal(back.per_variant, S.per_variant)
    assert [m.n for m in back.moments] == [m.n for m in S.moments] and back.n_freq == S.n_freq
    other = _stats(dataclasses.replace(cfg, keep=halves[1], covar_name=("age", "sex")))
    with pytest.raises(ModelError, match="covariates differ"):
        S + other
    with pytest.raises(ModelError, match="different variants"):
        S + S.block(0, S.per_variant[:10])


def test_layout_names_every_column_once():
    lay = StatLayout(3, 2, "drop")
    names = lay.column_names()
    assert len(names) == lay.width == len(set(names))
    assert names[lay.freq_alt] == "freq_alt" and names[lay.freq_miss] == "freq_miss"
    assert names[lay.of(1, "Ctx").start] == "t1.Ctx.0"
    with pytest.raises(KeyError, match="CmCm"):
        StatLayout(3, 2, "mean").of(0, "CmCm")


def test_section2_moments_regression_matches_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    C = np.column_stack([np.ones(200), rng.normal(size=(200, 2))])
    y = C @ [1.0, 0.5, -2.0] + rng.normal(size=200)
    halves = [Moments.of(C[:80], y[:80]), Moments.of(C[80:], y[80:])]
    S = SufficientStats(phenotypes=("y",), covariates=("(intercept)", "a", "b"), mode="mean",
                        moments=(halves[0] + halves[1],), n_freq=0)
    tbl = S.regression_table("y")
    fit = sm.OLS(y, C).fit()
    np.testing.assert_allclose(tbl.column("beta").to_numpy(), fit.params, rtol=1e-10)
    np.testing.assert_allclose(tbl.column("se").to_numpy(), fit.bse, rtol=1e-10)
    np.testing.assert_allclose(tbl.column("p").to_numpy(), fit.pvalues, rtol=1e-8)


def test_a1freq_lower_limit_only_clips_published_frequencies(cohort, tmp_path):
    files, halves = cohort
    cfg = ScanConfig(bfile=files.bfile, pheno=files.pheno, covar=files.covar, out=str(tmp_path / "o"))
    S = _stats(cfg)
    plain, floored = S.finalize(), S.finalize(a1freq_floor=0.2)
    f0 = plain.column("a1_freq").to_numpy(zero_copy_only=False)
    f1 = floored.column("a1_freq").to_numpy(zero_copy_only=False)
    ok = ~np.isnan(f0)
    assert (f0[ok] < 0.2).any()  # the cohort has rare alleles to hide
    np.testing.assert_array_equal(f1[ok], np.clip(f0[ok], 0.2, 0.8))
    for col in ("beta", "se", "p", "obs_ct", "a1"):
        assert plain.column(col).equals(floored.column(col)), col
