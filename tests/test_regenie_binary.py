"""REGENIE's binary-trait step 2 (v1.0.6.7) on its example data, to REGENIE's printed digits.

The outputs come from Glow's test data (see ``../peer-data/regenie-bin/README.md``: fetched, never
in this repo; the test is skipped where that folder is absent). Three runs with REGENIE's step-1
LOCO predictions: the score test alone (``--bt``), and REGENIE's approximate Firth correction with
``--pThresh 0.9999`` (every variant) and ``0.5`` (the score test above it). A direct maximisation of
Firth's penalized likelihood checks the Firth fit on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import optimize, special

from dash_spark.config import ScanConfig
from dash_spark.scanner.pipeline import run_scan
from dash_spark.stats.score import approx_firth, firth_null_offset

REPO = Path(__file__).resolve().parents[1]
GENO = REPO.parent / "shared" / "peer-data" / "regenie"
BIN = next((p for p in (REPO.parent / "shared" / "peer-data" / "regenie-bin", REPO.parent / "peer-data" / "regenie-bin")
            if p.is_dir()), None)
needs_bin = pytest.mark.skipif(BIN is None or not GENO.is_dir(),
                               reason="REGENIE's binary-trait outputs (../peer-data/regenie-bin) are not here")


def _read(path) -> dict[str, dict]:
    lines = Path(path).read_text().splitlines()
    head = lines[0].split()
    return {row[head.index("ID")]: dict(zip(head, row)) for row in (ln.split() for ln in lines[1:])}


def _units(ours: float, theirs: str) -> float:
    """How many units of REGENIE's 6th significant digit ``ours`` is from ``theirs``."""
    t = float(theirs)
    if f"{ours:.6g}" == f"{t:.6g}":
        return 0.0
    unit = 10.0 ** (np.floor(np.log10(abs(t))) - 5) if t else 1e-300
    return abs(ours - t) / unit


@needs_bin
@pytest.mark.parametrize("run,correction,thresh", [("test_bin_out_no_correction", "none", 0.05),
                                                   ("test_bin_out_firth", "firth", 0.9999),
                                                   ("test_bin_out_half_firth", "firth", 0.5)])
def test_equals_regenie_binary_outputs(run, correction, thresh, spark, tmp_path):
    pred = tmp_path / "pred.list"
    pred.write_text(f"Y1 {BIN}/fit_bin_out_1.loco\nY2 {BIN}/fit_bin_out_2.loco\n")
    res = run_scan(ScanConfig(bfile=str(GENO / "example"), pheno=str(BIN / "phenotype_bin.txt"),
                              covar=str(GENO / "covariates.txt"), pred=str(pred), pheno_01=True, binary_test="score",
                              score_correction=correction, score_p_thresh=thresh, out=str(tmp_path / "o"),
                              plots=False), spark=spark)
    tbl = pq.read_table(res.results_path).to_pandas()
    for phen in ("Y1", "Y2"):
        theirs = _read(BIN / f"{run}_{phen}.regenie")
        ours = tbl[tbl.phenotype == phen].set_index("id")
        assert len(theirs) == len(ours) == 1000
        firth = 0
        off = []
        for vid, t in theirs.items():
            o = ours.loc[vid]
            assert {o.a1, o.alt if o.a1 == o.ref else o.ref} == {t["ALLELE0"], t["ALLELE1"]}
            flip = o.a1 != t["ALLELE1"]
            freq, beta = (1 - o.a1_freq, -o.beta) if flip else (o.a1_freq, o.beta)
            firth += bool(o.firth)  # the Firth-corrected rows (their p: the likelihood-ratio test)
            assert _units(freq, t["A1FREQ"]) <= 1 and _units(o.se, t["SE"]) <= 1, (vid, o.se, t["SE"])
            for got, col, tol in ((beta, "BETA", 1e-8), (o.t_stat ** 2, "CHISQ", 1e-8),
                                  (o.neg_log10_p, "LOG10P", 1e-8)):
                u = _units(got, t[col])
                if u > 1:  # a Firth estimate is exact to its convergence rule only (|score| < 1e-5)
                    assert abs(got - float(t[col])) <= tol, (vid, col, got, t[col])
                    off.append(vid)
                elif u > 0:
                    off.append(vid)
        # the last digit differs where the two fits stop at different points within the rule
        assert len(set(off)) <= (0 if correction == "none" else 40), sorted(set(off))
        if correction == "firth":
            assert (firth == 1000) if thresh > 0.9 else (300 <= firth < 800), firth
        else:
            assert firth == 0


def test_firth_fit_maximises_the_penalized_likelihood():
    """The approximate Firth test's one-coefficient fit (and the null model's) against a direct
    maximisation of the penalized log-likelihood ``l(b) + log|I(b)| / 2``."""
    rng = np.random.default_rng(5)
    n = 400
    C = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    off = rng.normal(scale=0.3, size=n)
    y = (rng.random(n) < special.expit(-2.0 + 0.5 * C[:, 1] + off)).astype(float)

    def penalized(b, X, o):
        eta = X @ b + o
        w = special.expit(eta) * (1 - special.expit(eta))
        return -(np.sum(y * eta - np.logaddexp(0, eta)) + 0.5 * np.linalg.slogdet(X.T @ (X * w[:, None]))[1])

    fo = firth_null_offset(C, y, off, intercept=True)
    ref = optimize.minimize(penalized, np.zeros(3), args=(C, off), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(fo, off + C @ ref.x, atol=1e-5)
    X = rng.binomial(2, 0.1, size=(3, n)).astype(float)
    X[2, :] = 0.0
    X[2, np.flatnonzero(y == 1)[:3]] = 1.0  # a rare variant, in cases only
    X = X - X.mean(axis=1, keepdims=True)
    beta, chisq, se = approx_firth(X, y, fo)
    for j in range(3):
        r = optimize.minimize(penalized, np.zeros(1), args=(X[j][:, None], fo), method="BFGS", options={"gtol": 1e-10})
        np.testing.assert_allclose(beta[j], r.x[0], atol=1e-5)
        np.testing.assert_allclose(chisq[j], 2 * (penalized(np.zeros(1), X[j][:, None], fo) - r.fun), atol=1e-6)
        w = special.expit(fo + X[j] * beta[j])
        np.testing.assert_allclose(se[j], 1 / np.sqrt(np.sum(w * (1 - w) * X[j] ** 2)), rtol=1e-6)
