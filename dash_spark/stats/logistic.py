"""plink2's logistic ``--glm`` for case/control phenotypes, per variant, vectorised over variants.

plink2's default for a case/control phenotype is the logistic-Firth hybrid (``firth-fallback``;
its output is ``<phenotype>.glm.logistic.hybrid``). For variant ``x`` (the A1 dosage) and the raw
covariates ``C`` (intercept included) over the samples with a call, the design is ``D = [C | x]``:

- **logistic regression**, as R's ``glm.fit`` (plink2 imitates it): start from the least-squares
  fit of ``z = 4.8639 (y - 1/2)`` on ``D``, then Newton steps ``coef -= (D'VD)^-1 D'(p - y)``
  (``V = diag(p(1 - p))``) until the log-likelihood changes by less than
  ``1e-8 (0.05 + |loglik|)``, at most 24 steps (then the row is reported with ``UNFINISHED``). The
  standard errors are those of the last Hessian computed (before the last step), as plink2 reports
  them.
- **Firth regression** (logistf's algorithm, plink2's port) when logistic regression cannot be
  trusted: the variant's A1 allele is absent from the cases or from the controls (separation), the
  logistic fit failed (a non-finite log-likelihood or a singular Hessian), or a covariate separates
  the phenotype on its own (then every variant of that phenotype gets Firth). It starts at 0,
  steps ``delta = (D'diag((1 + h) v)D)^-1 D'(y - p + h (1/2 - p))`` with ``h`` the hat values,
  capped at 5 in every coefficient, and stops when the step, the score and the penalised
  log-likelihood's gain are all below 1e-5 (26 steps at most). Its standard errors come from the
  last ``(D'diag((1 + h) v)D)^-1``.

Every step is a handful of matrix products over a sub-block's variants (``V @ [c_a c_b]``,
``(V x) @ C``, ...), so the variants' fits run side by side; converged variants leave the set.
Wald statistic ``z = beta / se``, ``p = 2 Phi(-|z|)`` (its -log10 from ``log_ndtr``, exact far
below float64's range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .regression import (
    ERR_FIRTH_FAIL,
    ERR_INVALID,
    ERR_OK,
    ERR_UNFINISHED,
    LN10,
    CovariateCorrelation,
    collinearity_errors_observed,
    first_errors,
)

#: z = (y - 1/2) * 2 (ln 3 + 4/3): glm.fit's start (the linear fit of the first working response)
_START = 4.863891244002886


@dataclass(frozen=True)
class LogisticFit:
    """Per-variant results [shape: (m,)]: the A1 dosage's log odds ratio and its SE, the Wald z,
    p and -log10 p, uint8 error codes (numbers NaN where one applies, except ``UNFINISHED``), whether
    Firth regression gave the row, and OBS_CT."""

    beta: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    neg_log10_p: np.ndarray
    errcode: np.ndarray
    firth: np.ndarray
    obs_ct: np.ndarray


def z_pvalues(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided normal p-values of ``z`` and their -log10 (exact where p underflows)."""
    z = np.asarray(z, dtype=np.float64)
    ln_p = np.log(2.0) + special.log_ndtr(-np.abs(z))
    return np.exp(ln_p), -ln_p / LN10


def covariate_separates(C: np.ndarray, y: np.ndarray) -> bool:
    """plink2's check (``CheckForSeparatedQtCovar``) on the analysed samples: some non-constant
    covariate column of ``C`` [shape: (n, k)] has all its case values on one side of all its control
    values (touching counts: quasi-separation). ``y``: 0/1. Then plink2's hybrid fits every variant
    of the phenotype by Firth regression."""
    case = y > 0
    if case.all() or not case.any():
        return False
    for j in range(C.shape[1]):
        v = C[:, j]
        if np.ptp(v) == 0:
            continue
        a, b = v[case], v[~case]
        if a.min() >= b.max() or b.min() >= a.max():
            return True
    return False


def _products(C: np.ndarray) -> np.ndarray:
    """``c_a c_b`` per sample for ``a <= b`` [shape: (n, k(k+1)/2)]: weighted sums of these are the
    C'VC blocks."""
    iu = np.triu_indices(C.shape[1])
    return C[:, iu[0]] * C[:, iu[1]]


def _unpack(tri: np.ndarray, k: int) -> np.ndarray:
    """The symmetric (m, k, k) matrices of their ``a <= b`` entries [shape: (m, k(k+1)/2)]."""
    out = np.empty((len(tri), k, k))
    iu = np.triu_indices(k)
    out[:, iu[0], iu[1]] = tri
    out[:, iu[1], iu[0]] = tri
    return out


def _grams(V: np.ndarray, X: np.ndarray, C: np.ndarray, CC: np.ndarray) -> np.ndarray:
    """``D'diag(v)D`` of each variant's design ``D = [C | x]`` [shape: (m, k+1, k+1)]; ``V``, ``X``: (m, n)."""
    m, k = V.shape[0], C.shape[1]
    H = np.empty((m, k + 1, k + 1))
    H[:, :k, :k] = _unpack(V @ CC, k)
    VX = V * X
    cx = VX @ C
    H[:, :k, k] = cx
    H[:, k, :k] = cx
    H[:, k, k] = np.einsum("mn,mn->m", VX, X)
    return H


def _dt(r: np.ndarray, X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``D'r`` of each variant [shape: (m, k+1)]; ``r``: (m, n)."""
    return np.concatenate([r @ C, np.einsum("mn,mn->m", r, X)[:, None]], axis=1)


def _fitted(coef: np.ndarray, X: np.ndarray, C: np.ndarray, obs: np.ndarray, lin: np.ndarray):
    """``(p, loglik)`` of each variant's coefficients: ``p = 1 / (1 + exp(-eta))`` [shape: (m, n)]
    and the log-likelihood over its ``obs`` samples, ``sum -log(1 + e^-eta) - (1 - y) eta``, whose
    linear part is ``coef . lin`` (``lin`` [shape: (m, k+1)]: ``D'((1 - y) obs)``, fixed per fit)."""
    k = C.shape[1]
    eta = coef[:, :k] @ C.T
    eta += coef[:, k : k + 1] * X
    np.negative(eta, out=eta)
    with np.errstate(over="ignore"):
        e = np.exp(eta, out=eta)
    if np.isinf(e.max(initial=0.0)):  # exp overflowed (eta < -709): the stable form
        eta = -np.log(e)
        e = np.exp(-eta)
        ll = -np.where(obs > 0, np.logaddexp(0.0, -eta), 0.0).sum(axis=1) - np.einsum("mj,mj->m", coef, lin)
        return 1.0 / (1.0 + e), ll
    e += 1.0
    ll = -np.einsum("mn,mn->m", np.log(e), obs) - np.einsum("mj,mj->m", coef, lin)
    return np.reciprocal(e, out=e), ll


def _solve(H: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched ``H^-1 b`` and which systems were singular (their rows are NaN)."""
    out = np.full(b.shape, np.nan)
    bad = np.zeros(len(H), dtype=bool)
    try:
        out[:] = np.linalg.solve(H, b[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        for i in range(len(H)):
            try:
                out[i] = np.linalg.solve(H[i], b[i])
            except np.linalg.LinAlgError:
                bad[i] = True
    bad |= ~np.isfinite(out).all(axis=1)
    return out, bad


def _inverse_pd(H: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched inverse of symmetric positive-definite matrices by Cholesky, their log-determinants,
    and which were not positive definite (their rows are NaN)."""
    m, d = H.shape[0], H.shape[1]
    inv = np.full(H.shape, np.nan)
    logdet = np.full(m, np.nan)
    bad = np.zeros(m, dtype=bool)
    eye = np.eye(d)

    def one(idx):
        L = np.linalg.cholesky(H[idx])
        Linv = np.linalg.solve(L, np.broadcast_to(eye, L.shape))
        inv[idx] = np.einsum("mji,mjk->mik", Linv, Linv)
        logdet[idx] = 2.0 * np.log(np.einsum("mii->mi", L)).sum(axis=1)

    try:
        one(np.arange(m))
    except np.linalg.LinAlgError:
        for i in range(m):
            try:
                one(np.array([i]))
            except np.linalg.LinAlgError:
                bad[i] = True
    bad |= ~np.isfinite(logdet)
    return inv, logdet, bad


def logistic_regression(C, CC, y, X, obs):
    """R glm.fit's logistic regression of ``y`` on ``[C | x]`` for every variant (rows of ``X``,
    zero where ``obs`` is 0). Returns ``(coef [m, k+1], inverse Hessian [m, k+1, k+1], failed,
    unfinished)``."""
    m, k = X.shape[0], C.shape[1]
    z = y * _START - 0.5 * _START
    coef, failed = _solve(_grams(obs, X, C, CC), _dt(obs * z[None, :], X, C))
    lin = _dt(obs * (1.0 - y)[None, :], X, C)
    P, ll = _fitted(np.nan_to_num(coef), X, C, obs, lin)
    failed |= np.isnan(ll)
    H = np.full((m, k + 1, k + 1), np.nan)
    active = ~failed
    for _ in range(1, 25):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        whole = len(idx) == m  # no copies while every variant is still iterating
        Pa, Xa, oa = (P, X, obs) if whole else (P[idx], X[idx], obs[idx])
        R = Pa - y[None, :]
        R *= oa
        V = 1.0 - Pa
        V *= Pa
        V *= oa
        Ha = _grams(V, Xa, C, CC)
        step, bad = _solve(Ha, _dt(R, Xa, C))
        H[idx] = Ha
        coef[idx] -= np.nan_to_num(step)
        Pn, lln = _fitted(coef[idx], Xa, C, oa, lin[idx])
        bad |= np.isnan(lln)
        with np.errstate(invalid="ignore"):
            conv = np.abs(lln - ll[idx]) < 1e-8 * (0.05 + np.abs(lln))
        if whole:
            P = Pn
        else:
            P[idx] = Pn
        ll[idx] = lln
        failed[idx[bad]] = True
        active[idx[bad | conv]] = False
    unfinished = active.copy()
    Hinv = np.full_like(H, np.nan)
    ok = ~failed
    if ok.any():
        inv, _, bad = _inverse_pd(H[ok])
        Hinv[ok] = inv
        failed[np.flatnonzero(ok)[bad]] = True
    return coef, Hinv, failed, unfinished & ~failed


def firth_regression(C, CC, y, X, obs):
    """logistf's Firth-penalised logistic regression (plink2's ``FirthRegressionD``) of ``y`` on
    ``[C | x]`` for every variant. Returns ``(coef, covariance [m, k+1, k+1], failed, unfinished)``."""
    m, k = X.shape[0], C.shape[1]
    coef = np.zeros((m, k + 1))
    hh = np.full((m, k + 1, k + 1), np.nan)
    delta_max = np.zeros(m)
    ll_old = np.zeros(m)
    failed = np.zeros(m, dtype=bool)
    unfinished = np.zeros(m, dtype=bool)
    active = np.ones(m, dtype=bool)
    Ct = C.T
    for it in range(10_000):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        Xa, oa = X[idx], obs[idx]
        P, ll = _fitted(coef[idx], Xa, C, oa, _dt(oa * (1.0 - y)[None, :], Xa, C))
        bad = ((oa > 0) & ((P == 0.0) | (P == 1.0))).any(axis=1)
        V = P * (1.0 - P) * oa
        H0inv, logdet, bad0 = _inverse_pd(_grams(V, Xa, C, CC))
        bad |= bad0
        ll = ll + 0.5 * logdet
        H0i = np.nan_to_num(H0inv)
        iu = np.triu_indices(k)
        weights = np.where(iu[0] == iu[1], 1.0, 2.0) * H0i[:, iu[0], iu[1]]  # c'Ac from the a <= b products
        quad = (weights @ CC.T) + 2.0 * Xa * (H0i[:, :k, k] @ Ct) + Xa * Xa * H0i[:, k, k][:, None]
        h = V * quad
        ustar = _dt(((y[None, :] - P) + h * (0.5 - P)) * oa, Xa, C)
        done = np.zeros(len(idx), dtype=bool)
        if it:
            with np.errstate(invalid="ignore"):
                done = (delta_max[idx] <= 1e-5) & (np.abs(ustar).max(axis=1) < 1e-5) & (ll - ll_old[idx] < 1e-5)
            late = ~done & ~bad & (it > 25)
            unfinished[idx[late]] = True
            done |= late
        done &= ~bad
        ll_old[idx] = ll
        go = ~done & ~bad
        if go.any():
            g = np.flatnonzero(go)
            inv, _, bad2 = _inverse_pd(_grams((1.0 + h[g]) * V[g], Xa[g], C, CC))
            delta = np.einsum("mij,mj->mi", np.nan_to_num(inv), ustar[g])
            dmax = np.abs(delta).max(axis=1)
            over = dmax > 5.0
            delta[over] *= (5.0 / dmax[over])[:, None]
            dmax[over] = 5.0
            rows = idx[g]
            hh[rows] = inv
            coef[rows] += delta
            delta_max[rows] = dmax
            bad[g[bad2]] = True
        failed[idx[bad]] = True
        active[idx[done | bad]] = False
    return coef, hh, failed, unfinished & ~failed


def _invalid(cov: np.ndarray) -> np.ndarray:
    """plink2's validParameters() check on a fit's covariance: a variance below 1e-20 or not finite,
    or two coefficients correlated above 0.99999."""
    d = np.einsum("mii->mi", cov)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(d).all(axis=1) | (d < 1e-20).any(axis=1)
        sd = np.sqrt(np.where(d > 0, d, np.nan))
        lim = 0.99999 * sd[:, :, None] * sd[:, None, :]
        off = cov > lim
    eye = np.eye(cov.shape[1], dtype=bool)
    return bad | (off & ~eye[None]).any(axis=(1, 2))


def logistic_hybrid(C: np.ndarray, y: np.ndarray, X: np.ndarray, obs: np.ndarray, *, mask: np.ndarray | None = None,
                    always_firth: bool = False) -> LogisticFit:
    """plink2's ``--glm`` (firth-fallback) for the variants of one phenotype.

    ``C`` [shape: (n, k)]: raw covariates (with the intercept column); ``y`` [shape: (n,)]: 0/1;
    ``X`` [shape: (m, n)]: A1 dosages; ``obs`` [shape: (m, n), bool]: each variant's analysed
    samples (a phenotype, the covariates and a call) among the phenotype's ``mask`` (default: any
    variant's). Checks in plink2's order:
    SAMPLE_CT<=PREDICTOR_CT, CONST_OMITTED_ALLELE, CORR_TOO_HIGH / VIF_TOO_HIGH, then the fit.
    """
    m, k = X.shape[0], C.shape[1]
    o = obs.astype(np.float64)
    Xo = np.where(obs, X, 0.0)
    n_obs = obs.sum(axis=1).astype(np.int64)
    sx, sxx = Xo.sum(axis=1), np.einsum("mn,mn->m", Xo, Xo)
    err = first_errors(sx, sxx, n_obs, n_obs, k)
    CC = _products(C)
    if k:
        todo = np.flatnonzero(err == ERR_OK)
        base = np.asarray(obs.any(axis=0) if mask is None else mask, dtype=bool)
        cc = CovariateCorrelation.build(C[base], np.eye(k))
        if len(todo) and len(cc.cols):
            on = o[todo]
            G = _unpack(on @ CC, k)  # C'C over each variant's samples
            Cm = (base[None, :] & ~obs[todo]).astype(np.float64) @ C  # the variant's missing samples' C'1
            xx_c = sxx[todo] - sx[todo] ** 2 / n_obs[todo]
            codes = collinearity_errors_observed(cc, Xo[todo] @ C, sx[todo], xx_c, Cm, G, n_obs[todo])
            err[todo] = codes
    beta = np.full(m, np.nan)
    se = np.full(m, np.nan)
    firth = np.zeros(m, dtype=bool)
    fit = np.flatnonzero(err == ERR_OK)
    if len(fit):
        Xf, of = Xo[fit], o[fit]
        case = y > 0
        a1_case = Xf[:, case].sum(axis=1)
        use_firth = np.full(len(fit), always_firth) | (a1_case == 0.0) | (a1_case == sx[fit])
        cov = np.full((len(fit), k + 1, k + 1), np.nan)
        coef = np.full((len(fit), k + 1), np.nan)
        status = np.zeros(len(fit), dtype=np.uint8)
        lg = np.flatnonzero(~use_firth)
        if len(lg):
            c, hinv, failed, unfinished = logistic_regression(C, CC, y, Xf[lg], of[lg])
            coef[lg], cov[lg] = c, hinv
            status[lg[unfinished]] = ERR_UNFINISHED
            use_firth[lg[failed]] = True
        fr = np.flatnonzero(use_firth)
        if len(fr):
            c, hh, failed, unfinished = firth_regression(C, CC, y, Xf[fr], of[fr])
            coef[fr], cov[fr] = c, hh
            status[fr] = np.where(failed, ERR_FIRTH_FAIL, np.where(unfinished, ERR_UNFINISHED, ERR_OK))
        firth[fit] = use_firth
        invalid = (status != ERR_FIRTH_FAIL) & _invalid(cov)
        status[invalid] = ERR_INVALID
        err[fit] = status
        good = (status == ERR_OK) | (status == ERR_UNFINISHED)
        beta[fit[good]] = coef[good, k]
        se[fit[good]] = np.sqrt(cov[good, k, k])
    with np.errstate(invalid="ignore", divide="ignore"):
        z = beta / se
    p, nlp = z_pvalues(z)
    return LogisticFit(beta=beta, se=se, z=z, p=p, neg_log10_p=nlp, errcode=err.astype(np.uint8),
                       firth=firth, obs_ct=n_obs)
