"""The score test of case/control phenotypes (``--binary-test score``), REGENIE's and SAIGE's approach.

Oracles, none sharing code with dash_spark: statsmodels' GLM (the null model) and its
``score_test`` (the chi-square per variant, missing calls at the variant's mean as REGENIE imputes
them), and for the saddlepoint-corrected rows an independent saddlepoint approximation (the
cumulant generating function's root by scipy's ``brentq``, then Lugannani-Rice). The data is
``test_logistic``'s: missing calls, missing phenotypes, awkward variants.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import optimize, special, stats

from dash_spark.scanner.pipeline import ScanConfig, run_scan
from dash_spark.stats.score import fit_null, null_sums

from .test_logistic import _analysed, cc_data  # noqa: F401 - the shared cohort fixture


@pytest.fixture(scope="module")
def scored(cc_data, tmp_path_factory, spark):  # noqa: F811
    _, files, pheno, _, _ = cc_data
    out = tmp_path_factory.mktemp("score") / "o"
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=pheno, covar=files.covar, pheno_name=("cc", "cc2", "q"),
                              binary_test="score", out=str(out), plots=False), spark=spark)
    return res, out


def test_null_model_equals_statsmodels(cc_data):  # noqa: F811
    import statsmodels.api as sm

    y, C, base, _ = _analysed(cc_data, "cc")
    fit = fit_null(null_sums(C[base], y[base]), C.shape[1])
    ref = sm.GLM(y[base], C[base], family=sm.families.Binomial()).fit(tol=1e-13)
    assert fit.converged
    np.testing.assert_allclose(fit.gamma, ref.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.loglik, ref.llf, rtol=1e-12)


def _spa_oracle(g, mu, q):
    """Two-sided saddlepoint p of U = sum g (y - mu) at |q|: K'(t) = q by brentq, Lugannani-Rice."""
    def K(t):
        return np.sum(np.log1p(mu * np.expm1(t * g))) - t * np.sum(mu * g)

    def K1(t):
        e = np.exp(t * g)
        return np.sum(mu * g * e / (1 - mu + mu * e)) - np.sum(mu * g)

    def K2(t):
        e = np.exp(t * g)
        return np.sum((1 - mu) * mu * g * g * e / (1 - mu + mu * e) ** 2)

    total = 0.0
    for x in (abs(q), -abs(q)):
        t = optimize.brentq(lambda t: K1(t) - x, -50, 50, xtol=1e-14, rtol=1e-14)
        w = np.sign(t) * np.sqrt(2 * (t * x - K(t)))
        v = t * np.sqrt(K2(t))
        z = w + np.log(v / w) / w
        total += stats.norm.sf(z) if x > 0 else stats.norm.cdf(z)
    return total


def test_score_test_equals_statsmodels_and_spa_an_independent_one(cc_data, scored):  # noqa: F811
    import statsmodels.api as sm

    res, _ = scored
    got = pq.read_table(res.results_path).to_pandas()
    got = got[got.phenotype == "cc"].sort_values("variant_index")
    y, C, base, G = _analysed(cc_data, "cc")
    null = sm.GLM(y[base], C[base], family=sm.families.Binomial()).fit(tol=1e-13)
    mu = special.expit(C[base] @ null.params)
    w = mu * (1 - mu)
    n_score = n_spa = 0
    for row in got.itertuples():
        x = G[base, row.variant_index].copy()
        x[np.isnan(x)] = np.nanmean(x)  # REGENIE's imputation: the mean of the calls
        assert row.obs_ct == base.sum()
        if row.errcode != ".":  # constant, or explained by the covariates (2 x sex)
            assert row.errcode == ("CONST_OMITTED_ALLELE" if np.ptp(x) == 0 else "VIF_INFINITE"), row
            continue
        chisq, p_score = null.score_test(exog_extra=x[:, None])[:2]
        chisq, p_score = float(np.squeeze(chisq)), float(np.squeeze(p_score))
        sign = 1.0 if row.a1 == row.alt else -1.0
        g = x - C[base] @ np.linalg.solve(C[base].T @ (C[base] * w[:, None]), C[base].T @ (w * x))
        u = float(g @ (y[base] - mu))
        v = float(np.sum(w * g * g))
        np.testing.assert_allclose(sign * row.beta, u / v, rtol=1e-8)
        if p_score >= 0.05:
            np.testing.assert_allclose(row.t_stat ** 2, chisq, rtol=1e-8)
            np.testing.assert_allclose(row.p, p_score, rtol=1e-8)
            np.testing.assert_allclose(row.se, 1 / np.sqrt(v), rtol=1e-8)
            n_score += 1
        else:  # the saddlepoint p; SE and chi-square follow from it, as REGENIE reports them
            p_spa = _spa_oracle(g, mu, u)
            np.testing.assert_allclose(row.p, p_spa, rtol=1e-6)
            np.testing.assert_allclose(row.t_stat ** 2, stats.chi2.isf(p_spa, 1), rtol=1e-6)
            np.testing.assert_allclose(row.se, abs(row.beta) / abs(row.t_stat), rtol=1e-9)
            n_spa += 1
    assert n_score > 200 and n_spa >= 5


def test_files_of_the_score_test(scored):
    """REGENIE's .regenie for the score-tested phenotypes, .glm.linear for the quantitative one."""
    res, out = scored
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".regenie", ".linear", ".hybrid")) == [
        "cc.regenie", "cc2.regenie", "q.glm.linear"]
    assert sorted(res.glm_paths) == ["cc", "cc2", "q"] and res.glm_paths["cc"].endswith("cc.regenie")
    lines = (out / "cc.regenie").read_text().splitlines()
    assert lines[0] == "CHROM GENPOS ID ALLELE0 ALLELE1 A1FREQ TEST BETA SE CHISQ LOG10P"
    table = pq.read_table(res.results_path).to_pandas()
    cc = table[(table.phenotype == "cc")].sort_values("variant_index")
    assert len(lines) == 1 + len(cc)
    first = lines[1].split()
    row = cc.iloc[0]
    assert first[2] == row.id and first[4] == row.a1 and float(first[7]) == pytest.approx(row.beta, rel=1e-5)
    assert float(first[10]) == pytest.approx(row.neg_log10_p, rel=1e-5)


def test_pred_offsets_in_the_null_model_equal_statsmodels(cc_data, spark, tmp_path):  # noqa: F811
    """--pred with the score test (REGENIE's binary-trait step 2): each chromosome's LOCO prediction
    (logit scale) is the null model's offset, as statsmodels' GLM(offset=) fits it."""
    import statsmodels.api as sm

    _, files, pheno, _, _ = cc_data
    fam = [line.split() for line in open(files.bfile + ".fam")]
    keys = [f"{f[0]}_{f[1]}" for f in fam]
    rng = np.random.default_rng(77)
    offsets = {c: rng.normal(0, 0.4, len(keys)) for c in range(1, 24)}
    loco = tmp_path / "cc.loco"
    loco.write_text("FID_IID " + " ".join(keys) + "\n"
                    + "".join(f"{c} " + " ".join(repr(float(v)) for v in offsets[c]) + "\n" for c in range(1, 24)))
    pred = tmp_path / "pred.list"
    pred.write_text(f"cc {loco}\n")
    res = run_scan(ScanConfig(bfile=files.bfile, pheno=pheno, covar=files.covar, pheno_name=("cc",), pred=str(pred),
                              binary_test="score", out=str(tmp_path / "o"), plots=False), spark=spark)
    got = pq.read_table(res.results_path).to_pandas().sort_values("variant_index")
    y, C, base, G = _analysed(cc_data, "cc")
    nulls = {}
    checked = spa = 0
    for row in got.itertuples():
        if row.errcode != ".":
            continue
        c = int(row.chrom)
        if c not in nulls:
            nulls[c] = sm.GLM(y[base], C[base], family=sm.families.Binomial(), offset=offsets[c][base]).fit(tol=1e-13)
        null = nulls[c]
        x = G[base, row.variant_index].copy()
        x[np.isnan(x)] = np.nanmean(x)
        chisq, p_score = null.score_test(exog_extra=x[:, None])[:2]
        chisq, p_score = float(np.squeeze(chisq)), float(np.squeeze(p_score))
        if p_score >= 0.05:
            np.testing.assert_allclose(row.t_stat ** 2, chisq, rtol=1e-8)
            np.testing.assert_allclose(row.p, p_score, rtol=1e-8)
        else:
            mu = special.expit(C[base] @ null.params + offsets[c][base])
            w = mu * (1 - mu)
            g = x - C[base] @ np.linalg.solve(C[base].T @ (C[base] * w[:, None]), C[base].T @ (w * x))
            np.testing.assert_allclose(row.p, _spa_oracle(g, mu, float(g @ (y[base] - mu))), rtol=1e-6)
            spa += 1
        checked += 1
    assert checked > 250 and spa >= 3 and len(nulls) == 2
    assert (tmp_path / "o" / "cc.regenie").exists()


def test_pred_needs_the_score_test(cc_data, tmp_path, capsys):  # noqa: F811
    from .test_bad_input import assert_input_error, run_cli

    _, files, pheno, _, _ = cc_data
    out = tmp_path / "o"
    pred = tmp_path / "pred.list"
    pred.write_text("cc cc.loco\n")
    rc, _, err = run_cli(capsys, ["-q", "scan", "--bfile", files.bfile, "--pheno", pheno, "--pheno-name", "cc",
                                  "--pred", str(pred), "--out", str(out)])
    assert_input_error(rc, err, str(out), "cc are case/control", "--binary-test score")


def test_score_correction_needs_the_score_test(cc_data, tmp_path, capsys):  # noqa: F811
    from .test_bad_input import assert_input_error, run_cli

    _, files, pheno, _, _ = cc_data
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, ["-q", "scan", "--bfile", files.bfile, "--pheno", pheno, "--pheno-name", "cc",
                                  "--score-correction", "firth", "--out", str(out)])
    assert_input_error(rc, err, str(out), "--score-correction", "--binary-test score")
    rc, _, err = run_cli(capsys, ["-q", "scan", "--bfile", files.bfile, "--pheno", pheno, "--pheno-name", "cc",
                                  "--binary-test", "score", "--score-p-thresh", "0", "--out", str(out)])
    assert_input_error(rc, err, str(out), "--score-p-thresh", "(0, 1]")


def test_firth_and_no_correction_on_the_api(cc_data, scored, spark):  # noqa: F811
    """REGENIE's approximate Firth (``correction="firth"``) replaces BETA, SE and p of the rows below
    the threshold, with the ``firth`` flag; ``correction="none"`` keeps the score test's rows."""
    import pandas as pd

    from dash_spark import api

    _, files, pheno, _, _ = cc_data
    y = pd.read_csv(pheno, sep="\t")[["IID", "cc"]]
    kw = dict(pheno_names=["cc"])
    plain = api.logistic_regression(spark, api.open_bfile(files.bfile), y, files.covar, test="score",
                                    correction="none", **kw).toPandas().sort_values("variant_index")
    firth = api.logistic_regression(spark, api.open_bfile(files.bfile), y, files.covar, test="score",
                                    correction="firth", p_thresh=0.05, **kw).toPandas().sort_values("variant_index")
    res, _ = scored
    spa = pq.read_table(res.results_path).to_pandas()
    spa = spa[spa.phenotype == "cc"].sort_values("variant_index")
    low = (plain.p < 0.05).to_numpy() & (plain.errcode == ".").to_numpy()
    assert low.sum() >= 5 and not plain.firth.any()
    np.testing.assert_allclose(plain.beta, spa.beta, rtol=1e-12)  # U / V either way
    np.testing.assert_allclose(plain.p[~low], spa.p[~low], rtol=1e-12)
    assert (firth.firth.to_numpy() == low).all()
    np.testing.assert_allclose(firth.p[~low], plain.p[~low], rtol=1e-12)
    assert np.all(np.sign(firth.beta[low]) == np.sign(plain.beta[low]))
    assert not np.allclose(firth.beta[low], plain.beta[low])


def test_api_score_test_equals_the_scan(cc_data, scored, spark):  # noqa: F811
    """``ds.logistic_regression(..., test="score")`` gives the scan's score-test rows."""
    import pandas as pd

    import dash_spark as ds

    _, files, pheno, _, _ = cc_data
    res, _ = scored
    df = ds.logistic_regression(spark, ds.open_bfile(files.bfile), pheno, files.covar, pheno_names=["cc", "cc2"],
                                test="score")
    got = df.toPandas().sort_values(["phenotype", "variant_index"]).reset_index(drop=True)
    want = pq.read_table(res.results_path).to_pandas()
    want = want[want.phenotype.isin(["cc", "cc2"])].sort_values(["phenotype", "variant_index"]).reset_index(drop=True)
    for c in got.columns:
        pd.testing.assert_series_equal(got[c], want[c], check_dtype=False, obj=c)


def test_saddlepoint_p_below_float64(cc_data):  # noqa: F811
    """The saddlepoint tail is carried in logarithms: a score far in the tail keeps an exact -log10 p
    and chi-square where p itself underflows, and agrees with the oracle where p is representable."""
    from dash_spark.stats.score import chisq_of_log_p, spa_log_pvalues

    rng = np.random.default_rng(5)
    n = 4000
    mu = special.expit(rng.normal(-2.0, 0.5, n))
    g = rng.binomial(2, 0.3, n) - 0.6
    sd = np.sqrt(np.sum(mu * (1 - mu) * g * g))
    for u in (3.0 * sd, 8.0 * sd):  # representable p: the oracle's own
        ln_p = spa_log_pvalues(g[None], mu, np.array([u]))[0]
        np.testing.assert_allclose(np.exp(ln_p), _spa_oracle(g, mu, u), rtol=1e-6)
        np.testing.assert_allclose(chisq_of_log_p(ln_p), stats.chi2.isf(np.exp(ln_p), 1), rtol=1e-9)
    ln_p = spa_log_pvalues(g[None], mu, np.array([45.0 * sd]))[0]  # p far below 1e-308
    assert np.isfinite(ln_p) and ln_p < np.log(1e-308) and chisq_of_log_p(ln_p) > 1400
