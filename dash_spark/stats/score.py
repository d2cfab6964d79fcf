"""The score test of a case/control phenotype, from additive sums (REGENIE's and SAIGE's approach).

Null model ``logit(mu) = C gamma (+ offset)`` over a phenotype's samples, fitted by Newton steps
whose only inputs are sums over samples: ``C'WC``, ``C'(y - mu)`` and the log-likelihood (``W =
diag(mu (1 - mu))``). Parties can therefore fit it together, one masked sum per step
(:func:`fit_null` takes the sums as a callable). It starts where R's glm.fit (and plink2) start
and stops when the Newton step is below 1e-10 of the coefficients.

Then, for every variant ``x`` (missing calls take the mean of the variant's calls over the
phenotype's samples, as REGENIE imputes them), the efficient score and its variance are sums of
the same shape as the linear scan's, with per-sample weights::

    U = x'(y - mu)       V = x'Wx - (x'WC) (C'WC)^-1 (C'Wx)       chisq = U^2 / V ~ chi2(1)

so a scan task gets them from the packed-genotype kernel with weight columns ``[y - mu | W C | W |
1]`` (:func:`score_weights`, :func:`score_stats`). ``BETA = U / V`` (the one-step estimate of the
log odds ratio from 0) and ``SE = 1 / sqrt(V)``.

Where the score test's p is below ``spa_threshold`` (REGENIE's ``--pThresh`` default, 0.05), the
p-value is the saddlepoint approximation (SPA; Dey et al. 2017) of ``U = sum g_i (y_i - mu_i)``
with ``g = x - C (C'WC)^-1 C'W x`` and ``y_i ~ Bernoulli(mu_i)``: the cumulant generating function
``K(t) = sum log(1 - mu_i + mu_i e^(t g_i)) - t sum mu_i g_i`` is a sum over samples too. With
``K'(t) = u``, ``w = sign(t) sqrt(2 (t u - K(t)))`` and ``v = t sqrt(K''(t))``, a tail is
``P(U >= u) = 1 - Phi(w + log(v / w) / w)`` (Lugannani-Rice); the two tails at ``|u|`` and
``-|u|`` are added. The SE is then reported as ``|BETA| / sqrt(chisq)`` of that p, as REGENIE does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from .regression import LN10

#: REGENIE's --pThresh default: the score test's p below which SPA corrects it
SPA_THRESHOLD = 0.05


@dataclass(frozen=True)
class NullModel:
    """A fitted null model: coefficients, iterations, and whether the rule was met."""

    gamma: np.ndarray
    iterations: int
    converged: bool
    loglik: float


def null_sums(C: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None) -> Callable:
    """The sums a Newton step of the null model needs, from one party's samples: for
    coefficients ``gamma`` (None: the start's), ``(C'WC, C'(y - mu), loglik)``, or for the start
    ``(C'C, C'z, 0)`` with glm.fit's working response ``z = 4.8639 (y - 1/2)``. Sums over
    samples: parties add theirs."""
    C = np.asarray(C, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    off = np.zeros(len(y)) if offset is None else np.asarray(offset, dtype=np.float64)

    def sums(gamma: np.ndarray | None):
        if gamma is None:
            z = 4.863891244002886 * (y - 0.5) - off
            return C.T @ C, C.T @ z, 0.0
        eta = C @ gamma + off
        mu = special.expit(eta)
        w = mu * (1.0 - mu)
        loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
        return C.T @ (C * w[:, None]), C.T @ (y - mu), loglik

    return sums


def fit_null(sums: Callable, k: int, *, max_iter: int = 50) -> NullModel:
    """Newton's method on the null model from ``sums`` (:func:`null_sums`, or a secure sum of
    every party's): start from the least-squares fit of glm.fit's working response, step
    ``gamma += (C'WC)^-1 C'(y - mu)`` until a step moves no coefficient by more than
    ``1e-10 (1 + |gamma|)`` (Newton converges quadratically: one step past plink2's log-likelihood
    rule, so that the scores are exact to float64's digits, not to that rule's). One call of
    ``sums`` per step."""
    CtC, Ctz, _ = sums(None)
    gamma = np.linalg.solve(CtC, Ctz) if k else np.zeros(0)
    loglik = float("nan")
    for it in range(1, max_iter + 1):
        H, grad, loglik = sums(gamma)
        if not np.isfinite(loglik) or k == 0:
            return NullModel(gamma, it, bool(np.isfinite(loglik)), loglik)
        step = np.linalg.solve(H, grad)
        gamma = gamma + step
        if np.max(np.abs(step)) <= 1e-10 * (1.0 + np.max(np.abs(gamma))):
            return NullModel(gamma, it, True, loglik)
    return NullModel(gamma, max_iter, False, loglik)


def score_weights(C: np.ndarray, y: np.ndarray, mu: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's weight columns for one phenotype: A = ``[y - mu | W C | W | 1 | mu]`` and
    B = ``[W]``, each zero outside ``mask`` (its samples), so that ``X'A``, ``(X^2)'B`` and the
    missing calls' ``M'A`` give every sum :func:`score_stats` needs (``mu`` rides along for the
    saddlepoint correction of the tasks)."""
    m = mask.astype(np.float64)
    w = mu * (1.0 - mu) * m
    A = np.column_stack([(y - mu) * m, C * w[:, None], w, m, mu * m])
    return A, w[:, None]


@dataclass(frozen=True)
class ScoreStats:
    """Per-variant score test [shape: (m,)]: U, V, chi-square, p, -log10 p, BETA = U / V, SE, the
    variant's mean dosage over the phenotype's called samples, OBS_CT, and which got SPA."""

    U: np.ndarray
    V: np.ndarray
    chisq: np.ndarray
    p: np.ndarray
    neg_log10_p: np.ndarray
    beta: np.ndarray
    se: np.ndarray
    mean: np.ndarray
    obs_ct: np.ndarray
    spa: np.ndarray
    #: the (imputed) dosage is constant on the phenotype's samples (else, with V ~ 0: explained
    #: by the covariates)
    const: np.ndarray | None = None


def chisq_pvalues(chisq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p and -log10 p of a chi-square(1) statistic (exact far below float64's range)."""
    z = np.sqrt(np.maximum(chisq, 0.0))
    ln_p = np.log(2.0) + special.log_ndtr(-z)
    return np.exp(ln_p), -ln_p / LN10


def score_stats(SX: np.ndarray, SXX: np.ndarray, SM: np.ndarray, CtWC: np.ndarray, n: int,
                wsum: float) -> ScoreStats:
    """The score test from the kernel's sums with :func:`score_weights`'s columns (k covariates):
    ``SX`` (m, k+4) = X'A over the called samples, ``SXX`` (m,) = (X^2)'W, ``SM`` (m, k+4) = M'A
    over the missing calls; ``CtWC`` (k, k); ``n`` the phenotype's samples and ``wsum`` their
    weights' sum (1'W1). A missing call takes
    the mean ``a = sum x / n_called``: ``U = x'r + a M'r``, ``C'Wx = SX + a SM``, ``x'Wx = SXX +
    a^2 M'w``."""
    k = CtWC.shape[0]
    miss = SM[:, k + 2]
    called = n - miss
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(called > 0, SX[:, k + 2] / called, np.nan)
    U = SX[:, 0] + a * SM[:, 0]
    CWx = SX[:, 1 : k + 1] + a[:, None] * SM[:, 1 : k + 1]
    xWx = SXX + a * a * SM[:, k + 1]
    V = xWx - np.einsum("mi,mi->m", CWx, np.linalg.solve(CtWC, CWx.T).T) if k else xWx
    sw = SX[:, k + 1] + a * SM[:, k + 1]  # sum w x
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = xWx - sw * sw / wsum  # the weighted spread of x: zero for a constant dosage
    const = ~(spread > 1e-12 * np.maximum(xWx, 1e-300)) | np.isnan(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = V > 1e-12 * np.maximum(xWx, 1e-300)
        chisq = np.where(ok, U * U / np.where(ok, V, 1.0), np.nan)
        beta = np.where(ok, U / np.where(ok, V, 1.0), np.nan)
        se = np.where(ok, 1.0 / np.sqrt(np.where(ok, V, 1.0)), np.nan)
    p, nlp = chisq_pvalues(chisq)
    p, nlp = np.where(ok, p, np.nan), np.where(ok, nlp, np.nan)
    return ScoreStats(U=U, V=V, chisq=chisq, p=p, neg_log10_p=nlp, beta=beta, se=se, mean=a,
                      obs_ct=np.full(len(U), n, dtype=np.int64), spa=np.zeros(len(U), dtype=bool), const=const)


def score_errcodes(st: ScoreStats, *, few: bool) -> np.ndarray:
    """plink2's error code of each variant's score test [shape: (m,), uint8]: CONST_OMITTED_ALLELE
    for a constant dosage, VIF_INFINITE for one the covariates explain (V ~ 0), and with ``few`` (no
    more samples than predictors) SAMPLE_CT<=PREDICTOR_CT for all."""
    from .regression import ERR_COLLINEAR, ERR_CONST, ERR_FEW, ERR_OK

    const = st.const if st.const is not None else np.zeros(len(st.p), dtype=bool)
    err = np.where(const, ERR_CONST, np.where(np.isnan(st.chisq), ERR_COLLINEAR, ERR_OK)).astype(np.uint8)
    if few:
        err[:] = ERR_FEW
    return err


def spa_rows(st: ScoreStats, *, few: bool, spa_threshold: float = SPA_THRESHOLD) -> np.ndarray:
    """The variants whose p the saddlepoint corrects: tested, and the score test's p below the threshold."""
    from .regression import ERR_OK

    return np.flatnonzero((score_errcodes(st, few=few) == ERR_OK) & (st.p < spa_threshold))


def score_variant_stats(st: ScoreStats, *, few: bool, spa_threshold: float = SPA_THRESHOLD,
                        spa: Callable[[np.ndarray], np.ndarray] | None = None,
                        firth: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None):
    """A phenotype's :class:`~dash_spark.stats.regression.VariantStats` from its score test: plink2's
    error codes (a constant dosage; one the covariates explain, V ~ 0; ``few``: no more samples than
    predictors), and where the score test's p is below ``spa_threshold``, the saddlepoint p from
    ``spa(rows)`` (natural logs, NaN where the saddlepoint equation fails: the score test's p stays)
    with its chi-square and ``SE = |BETA| / sqrt(chisq)``, as REGENIE reports them. BETA is U / V,
    T_STAT the signed square root of the chi-square, for ALT (the result rows flip them to A1).

    With ``firth(rows)`` instead (REGENIE's ``--firth --approx``: ``(beta, chi-square)`` of each
    row's approximate Firth fit and likelihood-ratio test, NaN where the fit failed), those rows'
    BETA is Firth's, their p the test's, ``SE = |BETA| / sqrt(chisq)``, and their ``firth`` flag is
    set."""
    from .regression import ERR_OK, VariantStats

    p, nlp, se, chisq = st.p.copy(), st.neg_log10_p.copy(), st.se.copy(), st.chisq.copy()
    beta, sign = st.beta.copy(), np.sign(st.U)
    err = score_errcodes(st, few=few)
    flag = np.zeros(len(err), dtype=bool)
    rows = spa_rows(st, few=few, spa_threshold=spa_threshold)
    if len(rows) and spa is not None:
        ln_p = np.minimum(np.asarray(spa(rows), dtype=np.float64), 0.0)
        ok = np.isfinite(ln_p)
        rows = rows[ok]
        p[rows] = np.exp(ln_p[ok])
        nlp[rows] = -ln_p[ok] / LN10
        chisq[rows] = chisq_of_log_p(ln_p[ok])
        se[rows] = np.abs(st.beta[rows]) / np.sqrt(chisq[rows])
    elif len(rows) and firth is not None:
        b, q, s = (np.asarray(v, dtype=np.float64) for v in firth(rows))
        ok = np.isfinite(b) & np.isfinite(q)
        rows, b, q = rows[ok], b[ok], np.maximum(q[ok], 0.0)
        ln_p = np.log(2.0) + special.log_ndtr(-np.sqrt(q))
        beta[rows], chisq[rows], sign[rows], se[rows] = b, q, np.sign(b), s[ok]
        p[rows], nlp[rows] = np.exp(ln_p), -ln_p / LN10
        flag[rows] = True
    with np.errstate(invalid="ignore"):
        z = sign * np.sqrt(chisq)
    good = err == ERR_OK
    return VariantStats(beta=np.where(good, beta, np.nan), se=np.where(good, se, np.nan),
                        t_stat=np.where(good, z, np.nan), neg_log10_p=np.where(good, nlp, np.nan),
                        p=np.where(good, p, np.nan), obs_ct=st.obs_ct, alt_freq=st.mean / 2.0,
                        errcode=err, mach_r2=None, firth=flag)


# ------------------------------------------------------------------------------------------------
# REGENIE's approximate Firth correction (--firth --approx)

#: REGENIE's Firth settings: convergence of the penalized score, the deviance margin of a step
#: halving, the most iterations, the largest step of a coefficient, the most halvings
FIRTH_TOL, FIRTH_DEV_TOL, FIRTH_MAX_ITER, FIRTH_MAX_STEP, FIRTH_MAX_HALVES = 1e-5, 1e-6, 250, 5.0, 25


def _firth_deviance(X: np.ndarray, y: np.ndarray, eta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """-2 x the penalized log-likelihood (log-likelihood + log|X'WX| / 2) at the linear predictor
    ``eta``; with the means and the information ``X'WX``."""
    pi = special.expit(eta)
    info = X.T @ (X * (pi * (1.0 - pi))[:, None])
    sign, logdet = np.linalg.slogdet(info)
    loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    return -2.0 * (loglik + 0.5 * logdet) if sign > 0 else float("inf"), pi, info


def firth_fit(X: np.ndarray, y: np.ndarray, offset: np.ndarray, beta0: np.ndarray):
    """Firth's penalized logistic regression of ``y`` on ``X`` [shape: (n, k)] with ``offset``, as
    REGENIE fits it: from ``beta0``, a step ``(X'WX)^+ X'(y - pi + h (1/2 - pi))`` (``h``: the hat
    values), scaled so that no coefficient moves by more than 5, halved while the penalized deviance
    does not drop below its value plus 1e-6 (at most 25 times); stop once the penalized score is below
    1e-5 in every coefficient (the step taken), at most 250 iterations. Returns ``(beta, deviance,
    X'WX)`` at the estimate, or None when it does not converge."""
    beta = np.array(beta0, dtype=np.float64)
    dev, pi, info = _firth_deviance(X, y, X @ beta + offset)
    for _ in range(FIRTH_MAX_ITER):
        inv = np.linalg.pinv(info)
        Xw = X * np.sqrt(pi * (1.0 - pi))[:, None]
        h = np.einsum("ij,jk,ik->i", Xw, inv, Xw)
        score = X.T @ (y - pi + h * (0.5 - pi))
        step = inv @ score
        big = np.max(np.abs(step)) / FIRTH_MAX_STEP
        if big > 1.0:
            step = step / big
        for _ in range(FIRTH_MAX_HALVES):
            new = _firth_deviance(X, y, X @ (beta + step) + offset)
            if new[0] < dev + FIRTH_DEV_TOL:
                break
            step = step / 2.0
        beta = beta + step
        dev, pi, info = new
        if np.max(np.abs(score)) < FIRTH_TOL:
            return beta, dev, info
    return None


def firth_null_offset(C: np.ndarray, y: np.ndarray, offset: np.ndarray, *, intercept: bool) -> np.ndarray | None:
    """REGENIE's null model for the approximate Firth test: Firth's fit of ``y`` on the covariates
    ``C`` with ``offset`` (from the intercept at the logit of ``(1/2 + cases) / (n + 1)`` less the
    offset's mean, the other coefficients at 0); returns ``offset + C beta`` (None: no convergence)."""
    beta0 = np.zeros(C.shape[1])
    if intercept and C.shape[1]:
        f = (0.5 + y.sum()) / (len(y) + 1.0)
        beta0[0] = np.log(f / (1.0 - f)) - offset.mean()
    fit = firth_fit(C, y, offset, beta0)
    return None if fit is None else offset + C @ fit[0]


def approx_firth(X: np.ndarray, y: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """REGENIE's approximate Firth test of each row of ``X`` [shape: (m, n)] (dosages with the
    covariates projected out): the one-coefficient Firth fit with the null model's ``offset`` and
    the likelihood-ratio chi-square of the penalized deviances at 0 and at the estimate, and the
    standard error from the information ``x'Wx`` at the estimate; ``(beta, chisq, se)``, NaN where
    the fit failed."""
    beta, chisq, se = np.full(len(X), np.nan), np.full(len(X), np.nan), np.full(len(X), np.nan)
    for j, x in enumerate(X):
        col = x[:, None]
        fit = firth_fit(col, y, offset, np.zeros(1))
        if fit is None:
            continue
        beta[j] = fit[0][0]
        chisq[j] = _firth_deviance(col, y, offset)[0] - fit[1]
        se[j] = 1.0 / np.sqrt(fit[2][0, 0])
    return beta, chisq, se


def adjusted_genotypes(X: np.ndarray, C: np.ndarray, w: np.ndarray, CtWC: np.ndarray) -> np.ndarray:
    """``g = x - C (C'WC)^-1 C'W x`` of each row of ``X`` [shape: (m, n)] (no missing value)."""
    if C.shape[1] == 0:
        return X
    coef = np.linalg.solve(CtWC, ((X * w[None, :]) @ C).T)  # (k, m)
    return X - (C @ coef).T


def spa_pvalues(G: np.ndarray, mu: np.ndarray, u: np.ndarray, *, tol: float = 1e-10) -> np.ndarray:
    """Two-sided saddlepoint p-values [shape: (m,)] of the scores ``u`` of ``U = sum g_i (y_i - mu_i)``,
    ``G`` [shape: (m, n)] the adjusted genotypes; NaN where the saddlepoint equation fails."""
    return np.minimum(1.0, np.exp(spa_log_pvalues(G, mu, u, tol=tol)))


def spa_log_pvalues(G: np.ndarray, mu: np.ndarray, u: np.ndarray, *, tol: float = 1e-10) -> np.ndarray:
    """:func:`spa_pvalues` as natural logarithms, exact where p underflows float64."""
    out = np.full(len(u), np.nan)
    for j in range(len(u)):
        g = G[j]
        out[j] = np.logaddexp(_run_tail(abs(u[j]), g, mu, tol), _run_tail(-abs(u[j]), g, mu, tol))
    return out


def chisq_of_log_p(ln_p: np.ndarray) -> np.ndarray:
    """The chi-square(1) statistic whose two-sided p is ``exp(ln_p)`` (exact where p underflows)."""
    return special.ndtri_exp(np.minimum(np.asarray(ln_p, dtype=np.float64), 0.0) - np.log(2.0)) ** 2


def cgf(t: float, g: np.ndarray, mu: np.ndarray) -> tuple[float, float, float]:
    """K(t), K'(t), K''(t) of ``U = sum g_i (y_i - mu_i)`` (sums over samples: parties add theirs)."""
    e = np.exp(np.clip(t * g, -700.0, 700.0))
    den = 1.0 - mu + mu * e
    K = float(np.sum(np.log(den)) - t * np.sum(mu * g))
    K1 = float(np.sum(mu * g * e / den) - np.sum(mu * g))
    K2 = float(np.sum((1.0 - mu) * mu * g * g * e / (den * den)))
    return K, K1, K2


def tail_steps(q: float, tol: float = 1e-10):
    """log P(U >= q) for q >= 0, log P(U <= q) for q < 0, by Lugannani-Rice at the saddlepoint, as
    a generator: it yields tuples of ``t`` at which it needs ``(K, K', K'')`` (:func:`cgf`), is sent
    their list, and returns the log tail (NaN where the saddlepoint equation fails).

    The root of ``K'(t) = q`` is found by Newton's method from 0, kept inside a bracket that
    bisection shrinks; the bracket's ends (doubled from -1 and 1 until ``K'(lo) < q < K'(hi)``) and
    ``t = 0`` are asked for together, then one Newton point at a time. One process runs it with its
    own samples' :func:`cgf`; a study runs every top hit's two tails in lockstep, each request a
    round of masked sums (:class:`LockstepTails`), and every party replays it."""
    lo, hi = -1.0, 1.0
    lo_ok = hi_ok = False
    at0 = None
    for _ in range(200):  # widen until K'(lo) < q < K'(hi) (K' is increasing), with K at 0 asked at once
        pts = ([] if lo_ok else [lo]) + ([] if hi_ok else [hi]) + ([0.0] if at0 is None else [])
        vals = list((yield tuple(pts)))
        if not lo_ok:
            lo_ok = vals.pop(0)[1] < q
            lo = lo if lo_ok else 2.0 * lo
        if not hi_ok:
            hi_ok = vals.pop(0)[1] > q
            hi = hi if hi_ok else 2.0 * hi
        if at0 is None:
            at0 = vals.pop(0)
        if lo_ok and hi_ok:
            break
    assert at0 is not None  # noqa: S101 - asked in the first request
    t, cur, root = 0.0, at0, None
    for _ in range(200):
        _, K1, K2 = cur
        f = K1 - q
        if abs(f) <= tol * max(1.0, abs(q)):
            root = t
            break
        if f > 0:
            hi = t
        else:
            lo = t
        step = t - f / K2 if K2 > 0 else 0.5 * (lo + hi)
        t = step if lo < step < hi else 0.5 * (lo + hi)
        cur = (yield (t,))[0]
        if hi - lo < 1e-14 * max(1.0, abs(t)):
            root = t
            break
    if root is None:
        return float("nan")
    K, _, K2 = cur
    w2 = 2.0 * (t * q - K)
    if t == 0.0 or w2 <= 0.0 or K2 <= 0.0:  # at the mean: the normal tail (K''(0) is the score's variance)
        var = at0[2]
        return float(special.log_ndtr(-abs(q) / np.sqrt(var))) if var > 0 else float("nan")
    w = np.sign(t) * np.sqrt(w2)
    v = t * np.sqrt(K2)
    z = w + np.log(v / w) / w
    return float(special.log_ndtr(-z) if q >= 0 else special.log_ndtr(z))


def _run_tail(q: float, g: np.ndarray, mu: np.ndarray, tol: float) -> float:
    """:func:`tail_steps` with one process's own samples."""
    steps = tail_steps(q, tol)
    try:
        pts = next(steps)
        while True:
            pts = steps.send([cgf(t, g, mu) for t in pts])
    except StopIteration as done:
        return float(done.value)


class LockstepTails:
    """The two saddlepoint tails of several scores, run in lockstep (:func:`tail_steps`): each
    round asks for ``(K, K', K'')`` at :attr:`requests` (pairs ``(score, t)``, in order) and is fed
    their pooled values; :meth:`log_pvalues` once none is left."""

    def __init__(self, u: np.ndarray, *, tol: float = 1e-10):
        self.u = np.asarray(u, dtype=np.float64)
        self.steps = [tail_steps(q, tol) for x in self.u for q in (abs(float(x)), -abs(float(x)))]
        self.pending: list = [next(s) for s in self.steps]
        self.done = [float("nan")] * len(self.steps)

    @property
    def requests(self) -> list[tuple[int, float]]:
        """``(score index, t)`` of every value this round needs."""
        return [(i // 2, t) for i, pts in enumerate(self.pending) if pts is not None for t in pts]

    def feed(self, values: np.ndarray) -> None:
        """The pooled ``(K, K', K'')`` [shape: (len(requests), 3)] of this round's requests."""
        values = np.asarray(values, dtype=np.float64).reshape(-1, 3)
        if len(values) != len(self.requests):
            from ..errors import ProtocolError

            raise ProtocolError(f"saddlepoint round: {len(values)} pooled values for {len(self.requests)} requests; "
                                "the round's shares answer another round's requests")
        at = 0
        for i, pts in enumerate(self.pending):
            if pts is None:
                continue
            got = [tuple(map(float, v)) for v in values[at : at + len(pts)]]
            at += len(pts)
            try:
                self.pending[i] = self.steps[i].send(got)
            except StopIteration as end:
                self.pending[i] = None
                self.done[i] = float(end.value)

    def log_pvalues(self) -> np.ndarray:
        """The two-sided saddlepoint log p of each score (NaN where a tail failed or is unfinished)."""
        d = np.asarray(self.done).reshape(-1, 2)
        return np.logaddexp(d[:, 0], d[:, 1])
