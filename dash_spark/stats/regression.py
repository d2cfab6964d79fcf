"""Covariate bases and per-variant finalisation of the linear model (plain numpy/scipy).

Model, for variant ``x`` and phenotype ``y`` over the samples analysed for ``y``:

    y = beta * x + C gamma + e,   e ~ N(0, sigma^2 I),   C = QR (thin QR), k = rank C

    x'x|C = x'x - |Q'x|^2      x'y|C = x'y - (Q'x)'(Q'y)      y'y|C = y'y - |Q'y|^2
    beta = x'y|C / x'x|C       sigma^2 = (y'y|C - beta x'y|C) / (n - k - 1)
    se = sqrt(sigma^2 / x'x|C) t = beta / se                 p = 2 T_{n-k-1}(-|t|)

``neg_log10_p`` comes from an exact log-tail of Student's t (no underflow below 1e-308).
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import numpy as np
from scipy import special

from ..errors import ModelError

LN10 = float(np.log(10.0))

#: a variant whose covariate-adjusted sum of squares is below this fraction of its raw
#: (centred) sum of squares is treated as explained by the covariates
COLLINEAR_TOL = 1e-10


def t_pvalues(t: np.ndarray, dof: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p-value of Student's t with ``dof`` degrees of freedom, and its -log10.

    Uses ``p = I_x(dof/2, 1/2)`` with ``x = dof / (dof + t^2)``; where p is below 1e-280 it is
    evaluated in log space through ``I_x(a,b) = x^a (1-x)^b / (a B(a,b)) 2F1(a+b, 1; a+1; x)``,
    so values far beyond float64's range stay exact.
    """
    t = np.asarray(t, dtype=np.float64)
    dof = np.broadcast_to(np.asarray(dof, dtype=np.float64), t.shape)
    out = np.full(t.shape, np.nan)
    pout = np.full(t.shape, np.nan)
    ok = np.isfinite(t) & (dof > 0)
    at = np.abs(t[ok])
    d = dof[ok]
    p = 2.0 * special.stdtr(d, -at)
    res = -np.log10(p, where=p > 0, out=np.full(p.shape, np.inf))
    tiny = p < 1e-280
    if np.any(tiny):
        tt = at[tiny]
        dd = d[tiny]
        a = dd / 2.0
        x = dd / (dd + tt * tt)
        log1mx = np.log(tt * tt) - np.log(dd + tt * tt)
        logp = (
            a * np.log(x)
            + 0.5 * log1mx
            - np.log(a)
            - special.betaln(a, 0.5)
            + np.log(special.hyp2f1(a + 0.5, 1.0, a + 1.0, x))
        )
        res[tiny] = -logp / LN10
    out[ok] = res
    pout[ok] = p
    return pout, out


@dataclass(frozen=True)
class Basis:
    """Orthonormal basis of the covariates over one set of samples.

    ``Q`` [shape: (n, k)] has zero rows outside ``mask`` [shape: (n,), bool]; ``R`` [shape: (k, k)].
    """

    Q: np.ndarray
    R: np.ndarray
    mask: np.ndarray

    @property
    def n(self) -> int:
        return int(self.mask.sum())

    @property
    def k(self) -> int:
        return self.Q.shape[1]


def covariate_basis(C: np.ndarray, mask: np.ndarray, names: list[str], *, where: str) -> Basis:
    """Thin QR of ``C[mask]`` [shape: (n, k)] with a rank check that names the offending column.

    Columns are scaled to unit norm before the QR so that an ``age`` column in years and an
    intercept lose no digits against each other; the column whose diagonal of R is tiny relative
    to its norm is reported as collinear with the columns before it.
    """
    n_all, k = C.shape
    sub = C[mask]
    n = sub.shape[0]
    if n < k + 2:
        raise ModelError(
            f"{where}: {n} samples with complete data, but {k} covariates need at least {k + 2} "
            f"(samples must exceed covariates + 1); n={n}, k={k}. Check the sample IDs or use fewer covariates"
        )
    if k == 0:  # y ~ 0 + x: no covariate, not even an intercept (the regression through the origin)
        return Basis(Q=np.zeros((n_all, 0)), R=np.zeros((0, 0)), mask=mask)
    norms = np.linalg.norm(sub, axis=0)
    for j in range(k):
        if norms[j] == 0:
            raise ModelError(
                f"{where}: covariate {names[j]!r} is zero for every analysed sample; remove it with --covar-name"
            )
    Qs, Rs = np.linalg.qr(sub / norms)
    diag = np.abs(np.diag(Rs))
    for j in range(k):
        if diag[j] < 1e-9:
            before = ", ".join(repr(x) for x in names[:j]) or "(none)"
            const = f" (it is constant, {sub[0, j]:g}, on these samples)" if np.ptp(sub[:, j]) == 0 else ""
            raise ModelError(
                f"{where}: covariate {names[j]!r} is collinear with {before} on the {n} analysed samples{const}; "
                "remove it (--covar-name) or drop the intercept (--no-intercept) if it duplicates it"
            )
    Q = np.zeros((n_all, k))
    Q[mask] = Qs
    R = Rs * norms  # C = Qs @ (Rs diag(norms)); R is only used for reporting
    return Basis(Q=Q, R=R, mask=mask)


@dataclass(frozen=True)
class VariantStats:
    """Per-variant results for one phenotype; arrays of length m (NaN where errcode != 0)."""

    beta: np.ndarray
    se: np.ndarray
    t_stat: np.ndarray
    neg_log10_p: np.ndarray
    p: np.ndarray
    obs_ct: np.ndarray
    alt_freq: np.ndarray
    errcode: np.ndarray  # uint8, codes in ERRCODES
    #: MaCH imputation r-squared of the dosages over the samples with a call (plink2's MACH_R2)
    mach_r2: np.ndarray | None = None
    #: a case/control phenotype's rows (logistic ``--glm``): which came from Firth regression;
    #: ``beta`` is then the log odds ratio and ``t_stat`` the Wald z. None: a linear model
    firth: np.ndarray | None = None


def mach_r2(sx: np.ndarray, sxx: np.ndarray, n_called: np.ndarray) -> np.ndarray:
    """plink2's MACH_R2 of a biallelic variant from ``sum x``, ``sum x^2`` over ``n`` called samples:
    the dosages' variance (1/n) over its expectation 2p(1-p), ``2 (n sxx - sx^2) / (sx (2n - sx))``;
    NaN for a constant variant with p = 0 or 1 (or no call)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        den = sx * (2.0 * n_called - sx)
        return np.where(den > 0, 2.0 * (n_called * sxx - sx * sx) / np.where(den > 0, den, 1.0), np.nan)


#: plink2's ``--glm`` error codes for a linear model, by name and in plink2's own order (its
#: ``GlmErrcode`` enum); a variant gets the first that applies, checked in this order:
#: ``SAMPLE_CT<=PREDICTOR_CT`` (OBS_CT <= k + 1: no residual degree of freedom; checked first, as
#: plink2 does), ``CONST_OMITTED_ALLELE`` (the dosage is constant on the variant's samples),
#: ``CORR_TOO_HIGH`` / ``VIF_TOO_HIGH`` (plink2's --max-corr / --vif cut-offs; a variant's
#: covariates singular on its samples is ``VIF_INFINITE``), ``VIF_INFINITE`` (the dosage is
#: explained exactly by the covariates)
#: A logistic fit (:mod:`dash_spark.stats.logistic`) adds ``FIRTH_CONVERGE_FAIL``, ``INVALID_RESULT``
#: and ``UNFINISHED`` (numbers reported: the iteration limit was reached).
ERRCODES = (".", "SAMPLE_CT<=PREDICTOR_CT", "CONST_OMITTED_ALLELE", "CORR_TOO_HIGH", "VIF_INFINITE", "VIF_TOO_HIGH",
            "LOGISTIC_CONVERGE_FAIL", "FIRTH_CONVERGE_FAIL", "INVALID_RESULT", "UNFINISHED")
ERR_OK, ERR_FEW, ERR_CONST, ERR_CORR, ERR_COLLINEAR, ERR_VIF = range(6)
ERR_FIRTH_FAIL, ERR_INVALID, ERR_UNFINISHED = (ERRCODES.index(c) for c in ("FIRTH_CONVERGE_FAIL", "INVALID_RESULT",
                                                                          "UNFINISHED"))

#: plink2's defaults: --max-corr 0.999, --vif 50
MAX_CORR = 0.999
MAX_VIF = 50.0


@dataclass(frozen=True)
class CovariateCorrelation:
    """What plink2's per-variant correlation and VIF checks need about one pattern's covariates.

    ``R`` [shape: (k, k)] with ``C = QR``; ``sums`` [shape: (k,)] = C'1; ``cols``: the non-constant
    covariate columns (the intercept excluded); ``sd`` [shape: (c,)] their centred norms;
    ``corr_inv`` [shape: (c, c)]: inverse of their correlation matrix.
    """

    R: np.ndarray
    sums: np.ndarray
    n: int
    cols: np.ndarray
    sd: np.ndarray
    corr_inv: np.ndarray
    #: a variant whose R^2 on the covariates (with the mean) is at most this passes both checks
    #: (:func:`_r2_screen`); 0: every variant is checked in full
    r2_screen: float = 0.0

    @staticmethod
    def _screen(corr_inv: np.ndarray, constant_nonzero: bool) -> float:
        """The R^2 below which no variant can fail the checks, when the covariates span the mean
        (``constant_nonzero``: the intercept, or a constant covariate); else 0."""
        if not constant_nonzero or not len(corr_inv):
            return 0.0
        return _r2_screen(corr_inv)

    @classmethod
    def from_moments(cls, CtC: np.ndarray, Ct1: np.ndarray, n: int, R: np.ndarray) -> "CovariateCorrelation":
        """The same from the additive moments C'C [shape: (k, k)] and C'1 [shape: (k,)] alone."""
        cov = CtC - np.outer(Ct1, Ct1) / n
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        cols = np.flatnonzero(sd > 1e-12 * np.maximum(np.sqrt(np.diag(CtC)), 1e-300))
        corr = cov[np.ix_(cols, cols)] / np.outer(sd[cols], sd[cols])
        corr_inv = np.linalg.inv(corr) if len(cols) else np.zeros((0, 0))
        norm = np.sqrt(np.maximum(np.diag(CtC), 0.0))
        constant = bool(np.any((norm > 0) & ~np.isin(np.arange(len(sd)), cols)))
        return cls(R=R, sums=Ct1.copy(), n=n, cols=cols, sd=sd[cols], corr_inv=corr_inv,
                   r2_screen=cls._screen(corr_inv, constant))

    @classmethod
    def build(cls, C_masked: np.ndarray, R: np.ndarray) -> "CovariateCorrelation":
        n = C_masked.shape[0]
        centred = C_masked - C_masked.mean(axis=0)
        sd = np.linalg.norm(centred, axis=0)
        cols = np.flatnonzero(sd > 1e-12 * np.maximum(np.linalg.norm(C_masked, axis=0), 1e-300))
        Z = centred[:, cols] / sd[cols]
        corr = Z.T @ Z
        corr_inv = np.linalg.inv(corr) if len(cols) else np.zeros((0, 0))
        norm = np.linalg.norm(C_masked, axis=0)
        constant = bool(np.any((norm > 0) & ~np.isin(np.arange(len(sd)), cols)))
        return cls(R=R, sums=C_masked.sum(axis=0), n=n, cols=cols, sd=sd[cols], corr_inv=corr_inv,
                   r2_screen=cls._screen(corr_inv, constant))


def _r2_screen(corr_inv: np.ndarray, max_corr: float = MAX_CORR, max_vif: float = MAX_VIF) -> float:
    """The largest R^2 (of a dosage on the covariates, with the mean) at which neither check can
    fire, less a margin for rounding.

    With r = corr(x, covariates), Sigma their correlation matrix and R^2 = r' Sigma^-1 r: every
    r_j^2 <= R^2 (one covariate explains no more than all), VIF_x = 1/(1 - R^2), and with
    u = Sigma^-1 r, u_j^2 <= |u|^2 <= lambda_max(Sigma^-1) R^2, so
    VIF_c_j <= max diag(Sigma^-1) + lambda_max R^2 / (1 - R^2). Each bound is below its cut-off
    for R^2 below the value returned."""
    d_max = float(np.max(np.diag(corr_inv)))
    lam = float(np.max(np.linalg.eigvalsh(corr_inv)))
    if not (np.isfinite(d_max) and np.isfinite(lam)) or d_max >= max_vif or lam <= 0:
        return 0.0
    bound = min(max_corr * max_corr, 1.0 - 1.0 / max_vif, (max_vif - d_max) / (max_vif - d_max + lam))
    return max(bound - 1e-6, 0.0)


def _maybe_collinear(cc: CovariateCorrelation, Qx: np.ndarray, sx: np.ndarray, xx_centred: np.ndarray) -> np.ndarray:
    """The variants that may fail plink2's checks [shape: Qx.shape[:-1], bool]: all but those whose
    R^2 on the pattern's covariates, from sums at hand (x'Hx = |Q'x|^2 with Q spanning the mean:
    R^2 = (|Q'x|^2 - (sum x)^2 / n) / centred x'x), is below ``cc.r2_screen``."""
    if cc.r2_screen <= 0:
        return np.ones(Qx.shape[:-1], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = (np.einsum("...k,...k->...", Qx, Qx) - sx * sx / cc.n) / xx_centred
    return ~(r2 <= cc.r2_screen)  # (NaN: checked in full)


def collinearity_errors(cc: CovariateCorrelation, Qx: np.ndarray, sx: np.ndarray, xx_centred: np.ndarray,
                        *, max_corr: float = MAX_CORR, max_vif: float = MAX_VIF) -> np.ndarray:
    """plink2's checks per variant: CORR_TOO_HIGH if |corr(x, c)| > max_corr for a covariate c,
    else VIF_TOO_HIGH if any predictor's variance inflation factor exceeds ``max_vif``.

    The covariates' correlation block is fixed, so with ``r`` = corr(x, covariates) and
    ``u = corr_cc^{-1} r``, ``s = 1 - r'u``: VIF_x = 1/s and VIF_c = diag(corr_cc^{-1}) + u^2/s.
    Returns uint8 codes (0 where both checks pass). ``Qx`` (m, k), ``sx``/``xx_centred`` (m,).
    """
    if max_corr != MAX_CORR or max_vif != MAX_VIF:  # (the screen is worked out for plink2's defaults)
        return _collinearity_codes(cc, Qx, sx, xx_centred, max_corr, max_vif)
    out = np.zeros(len(Qx), dtype=np.uint8)
    todo = np.flatnonzero(_maybe_collinear(cc, Qx, sx, xx_centred))  # most variants pass on their R^2 alone
    if len(todo):
        out[todo] = _collinearity_codes(cc, Qx[todo], sx[todo], xx_centred[todo], max_corr, max_vif)
    return out


def _collinearity_codes(cc: CovariateCorrelation, Qx, sx, xx_centred, max_corr: float, max_vif: float) -> np.ndarray:
    """:func:`collinearity_errors` computed in full for every variant given."""
    Cx = Qx @ cc.R  # rows: (C'x)' = (Q'x)' R
    sxx = np.sqrt(np.maximum(xx_centred, 1e-300))
    r = (Cx[:, cc.cols] - np.outer(sx, cc.sums[cc.cols]) / cc.n) / sxx[:, None] / cc.sd
    return _corr_vif_codes(r, r @ cc.corr_inv, np.diag(cc.corr_inv)[None, :], max_corr, max_vif)


def _corr_vif_codes(r, u, inv_diag, max_corr=MAX_CORR, max_vif=MAX_VIF) -> np.ndarray:
    """Error codes from r = corr(x, covariates) [shape: (m, c)], u = r corr_cc^{-1} and the
    diagonal of corr_cc^{-1} ((1, c) or (m, c)): VIF_x = 1/(1 - r'u), VIF_c = diag + u^2 VIF_x."""
    err = np.zeros(len(r), dtype=np.uint8)
    if r.shape[1] == 0:  # no covariate besides the intercept: nothing to be collinear with
        return err
    s = 1.0 - np.einsum("mc,mc->m", r, u)
    with np.errstate(divide="ignore", invalid="ignore"):
        vif_x = np.where(s > 0, 1.0 / s, np.inf)
        vif_c = inv_diag + u * u * vif_x[:, None]
    err[(vif_x > max_vif) | (vif_c.max(axis=1) > max_vif)] = ERR_VIF
    err[np.abs(r).max(axis=1) > max_corr] = ERR_CORR
    return err


def finalize_mean_imputed(
    Qx: np.ndarray,
    yx: np.ndarray,
    sx: np.ndarray,
    sxx: np.ndarray,
    Qm: np.ndarray,
    ym: np.ndarray,
    miss: np.ndarray,
    Qy: np.ndarray,
    yy: np.ndarray,
    n: int,
    cc: CovariateCorrelation | None = None,
) -> list[VariantStats]:
    """Finalise one sample pattern under mean imputation of missing calls.

    Inputs over the pattern's ``n`` samples, for ``m`` variants and ``p`` phenotypes sharing it:
    ``Qx`` (m, k) = Q'x with missing calls as 0, ``yx`` (m, p) = Y'x likewise, ``sx`` (m,) = sum x,
    ``sxx`` (m,) = sum x^2, ``Qm`` (m, k) = Q'1_M and ``ym`` (m, p) = Y'1_M over the missing calls,
    ``miss`` (m,) = |M|, ``Qy`` (k, p) = Q'Y, ``yy`` (p,) = diag Y'Y. A missing call is replaced by
    the mean of the variant's observed calls on these samples (Hail / REGENIE semantics).
    With ``cc``, plink2's correlation and VIF checks flag variants too collinear with covariates.
    """
    m, k = Qx.shape
    n_obs = n - miss
    mu = sx / np.where(n_obs > 0, n_obs, 1)
    Qxi = Qx + mu[:, None] * Qm
    yxi = yx + mu[:, None] * ym
    xxi = sxx + mu * mu * miss
    sxi = sx + mu * miss
    xx_c = xxi - np.einsum("mk,mk->m", Qxi, Qxi)
    xx_centred = xxi - sxi * sxi / n
    err = first_errors(sx, sxx, n_obs, n, k)
    if cc is not None:
        err = np.where(err == 0, collinearity_errors(cc, Qxi, sxi, xx_centred), err).astype(np.uint8)
    yx_c = yxi - Qxi @ Qy  # (m, p)
    yy_c = np.broadcast_to(yy - np.einsum("kp,kp->p", Qy, Qy), yx_c.shape)
    dof = np.full(m, n - k - 1, dtype=np.int64)
    alt_freq = np.where(n_obs > 0, mu / 2.0, np.nan)
    return _finish(xx_c, xx_centred, yx_c, yy_c, dof, err, np.full(m, n, dtype=np.int64), alt_freq,
                   mach_r2(sx, sxx, n_obs))


def finalize_complete_case(
    Qx: np.ndarray,
    yx: np.ndarray,
    sx: np.ndarray,
    sxx: np.ndarray,
    Qm: np.ndarray,
    miss: np.ndarray,
    QmQm: np.ndarray,
    Qmy: np.ndarray,
    ymy: np.ndarray,
    Qy: np.ndarray,
    yy: np.ndarray,
    n: int,
    cc: CovariateCorrelation | None = None,
) -> list[VariantStats]:
    """Finalise one sample pattern dropping, per variant, the samples without a call (plink2).

    Over the observed samples O = (pattern) minus M, with ``G = Q_O'Q_O = I - Q_M'Q_M``:

        x'x|C = x'x - a'G^{-1}a,   x'y|C = x'y - a'G^{-1}b,   y'y|C = y_O'y_O - b'G^{-1}b

    where ``a = Q'x`` (x is 0 on M) and ``b = Q'y - Q_M'y``. Inputs as in
    :func:`finalize_mean_imputed` plus ``QmQm`` (m, k, k), ``Qmy`` (m, k, p), ``ymy`` (m, p) from
    :func:`dash_spark.stats.kernel.missing_grams`. A k x k solve is done only for variants with
    missing calls in the pattern. Each variant has its own n (OBS_CT) and n - k - 1 dof.
    """
    m, k = Qx.shape
    p = yx.shape[1]
    n_obs = (n - miss).astype(np.int64)
    has = miss > 0
    b = np.broadcast_to(Qy, (m, k, p)) - Qmy
    rhs = np.concatenate([Qx[:, :, None], b], axis=2)
    z = rhs.copy()
    err = first_errors(sx, sxx, n_obs, n_obs, k)
    xx_centred = sxx - sx * sx / np.where(n_obs > 0, n_obs, 1)
    if has.any() and k:
        G_obs = np.eye(k)[None] - QmQm[has]  # Q_O'Q_O of each variant with missing calls
        singular = _near_singular(G_obs)
        G = np.where(singular[:, None, None], np.eye(k)[None], G_obs)
        z[has] = np.linalg.solve(G, rhs[has])
        idx = np.flatnonzero(has)
        err[idx[singular & (err[idx] == 0)]] = ERR_COLLINEAR
    if cc is not None:
        checks = np.zeros(m, dtype=np.uint8)
        checks[~has] = collinearity_errors(cc, Qx[~has], sx[~has], xx_centred[~has])
        if has.any() and k and len(cc.cols):  # no covariate besides the intercept: nothing to check
            checks[has] = collinearity_errors_observed(
                cc, Qx[has], sx[has], xx_centred[has], Qm[has], G_obs, n_obs[has])
        err = np.where(err == 0, checks, err).astype(np.uint8)
    xx_c = sxx - np.einsum("mk,mk->m", Qx, z[:, :, 0])
    yx_c = yx - np.einsum("mk,mkp->mp", Qx, z[:, :, 1:])
    yy_c = (yy[None, :] - ymy) - np.einsum("mkp,mkp->mp", b, z[:, :, 1:])
    with np.errstate(divide="ignore", invalid="ignore"):
        alt_freq = np.where(n_obs > 0, sx / (2.0 * n_obs), np.nan)
    return _finish(xx_c, xx_centred, yx_c, yy_c, n_obs - k - 1, err, n_obs, alt_freq, mach_r2(sx, sxx, n_obs))


def finalize_no_missing(Qx: np.ndarray, yx: np.ndarray, sx: np.ndarray, sxx: np.ndarray, Qy: np.ndarray,
                        yy: np.ndarray, n: np.ndarray, ccs: list, *, mode: str = "drop") -> list[VariantStats]:
    """Finalise B one-phenotype patterns side by side, for variants with no missing call among their
    samples: ``Qx`` [shape: (B, m, k)], ``yx``/``sx``/``sxx`` [shape: (B, m)], ``Qy`` [shape: (B, k)],
    ``yy``/``n`` [shape: (B,)], ``ccs`` each pattern's :class:`CovariateCorrelation` (or None).
    The very arithmetic of :func:`finalize_complete_case` (``mode="drop"``) or
    :func:`finalize_mean_imputed` (``"mean"``) without missing calls, operation for operation (the
    numbers are bit-identical), in whole-array operations over the B patterns: a 1,000-phenotype
    scan calls it a few times per sub-block, not 1,000 times. Returns one :class:`VariantStats` per
    pattern."""
    B, m, k = Qx.shape
    nn = np.asarray(n, dtype=np.int64)[:, None]
    obs = np.broadcast_to(nn, (B, m))
    err = first_errors(sx, sxx, nn, nn, k)
    if mode == "drop":
        xx_centred = sxx - sx * sx / np.where(nn > 0, nn, 1)
    else:
        xx_centred = sxx - sx * sx / nn
    checks = collinearity_errors_batched(ccs, Qx, sx, xx_centred)
    err = np.where(err == 0, checks, err).astype(np.uint8)
    if mode == "drop":  # as finalize_complete_case, its arrays laid out alike (einsum's sums follow the layout)
        b = np.broadcast_to(Qy[:, None, :, None], (B, m, k, 1)) - np.zeros((B, m, k, 1))
        z = np.concatenate([Qx[..., None], b], axis=3)
        xx_c = sxx - np.einsum("bmk,bmk->bm", Qx, z[..., 0])
        yx_c = yx - np.einsum("bmk,bmkp->bmp", Qx, z[..., 1:])[:, :, 0]
        yy_c = yy[:, None] - np.einsum("bmkp,bmkp->bmp", b, z[..., 1:])[:, :, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            alt_freq = np.where(obs > 0, sx / (2.0 * obs), np.nan)
    else:  # as finalize_mean_imputed
        xx_c = sxx - np.einsum("bmk,bmk->bm", Qx, Qx)
        yx_c = yx - np.stack([Qx[i] @ np.ascontiguousarray(Qy[i][:, None]) for i in range(B)])[:, :, 0]
        yy_c = np.broadcast_to((yy - np.einsum("bk,bk->b", Qy, Qy))[:, None], (B, m))
        mu = sx / np.where(obs > 0, obs, 1)
        alt_freq = np.where(obs > 0, mu / 2.0, np.nan)
    flat = _finish(xx_c.ravel(), xx_centred.ravel(), yx_c.reshape(-1, 1), np.ascontiguousarray(yy_c).reshape(-1, 1),
                   (obs - k - 1).ravel(), err.ravel(), obs.ravel(), alt_freq.ravel(), mach_r2(sx, sxx, obs).ravel())[0]
    def rows(i: int) -> VariantStats:  # pattern i's rows: views into the flat arrays
        part = slice(i * m, (i + 1) * m)
        return dataclasses.replace(flat, **{f.name: getattr(flat, f.name)[part] for f in dataclasses.fields(flat)
                                            if getattr(flat, f.name) is not None})

    return [rows(i) for i in range(B)]


def collinearity_errors_batched(ccs: list, Qx: np.ndarray, sx: np.ndarray, xx_centred: np.ndarray) -> np.ndarray:
    """:func:`collinearity_errors` of B patterns at once [shape: (B, m)]: patterns whose checks
    cover the same covariate columns go through one set of batched products."""
    B, m, _ = Qx.shape
    out = np.zeros((B, m), dtype=np.uint8)
    groups: dict = {}
    for b, cc in enumerate(ccs):
        if cc is not None:
            groups.setdefault(tuple(cc.cols.tolist()), []).append(b)
    for cols, idx in groups.items():
        if not cols:
            continue
        # most (pattern, variant) pairs pass on their R^2 alone; the others are checked in full
        todo = np.stack([_maybe_collinear(ccs[b], Qx[b], sx[b], xx_centred[b]) for b in idx])
        if not todo.all():
            for j, b in enumerate(idx):
                rows = np.flatnonzero(todo[j])
                if len(rows):
                    out[b, rows] = _collinearity_codes(ccs[b], Qx[b, rows], sx[b, rows], xx_centred[b, rows],
                                                       MAX_CORR, MAX_VIF)
            continue
        g = [ccs[b] for b in idx]
        R = np.stack([c.R for c in g])
        sums = np.stack([c.sums[list(cols)] for c in g])
        n = np.array([float(c.n) for c in g])
        sd = np.stack([c.sd for c in g])
        inv = np.stack([c.corr_inv for c in g])
        Cx = np.matmul(Qx[idx], R[:, :, list(cols)])  # batched BLAS products
        sxx = np.sqrt(np.maximum(xx_centred[idx], 1e-300))
        r = (Cx - sx[idx][:, :, None] * sums[:, None, :] / n[:, None, None]) / sxx[:, :, None] / sd[:, None, :]
        u = np.matmul(r, inv)
        diag = np.broadcast_to(np.einsum("gcc->gc", inv)[:, None, :], r.shape)
        c = len(cols)
        out[idx] = _corr_vif_codes(r.reshape(-1, c), u.reshape(-1, c), diag.reshape(-1, c)).reshape(len(idx), m)
    return out


def _near_singular(G: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Which of the symmetric PSD matrices G [shape: (m, k, k)], eigenvalues in [0, 1], have one below tol.

    det(G) is at most the smallest eigenvalue, so only matrices with a small determinant (cheap,
    by LU) need their eigenvalues.
    """
    sign, logdet = np.linalg.slogdet(G)
    out = np.zeros(len(G), dtype=bool)
    cand = (sign <= 0) | (logdet < np.log(1e-4))
    if cand.any():
        out[cand] = np.linalg.eigvalsh(G[cand])[:, 0] < tol
    return out


def collinearity_errors_observed(cc, Qx, sx, xx_centred, Qm, G, n_obs):
    """plink2's correlation/VIF checks with covariate moments downdated to each variant's calls."""
    R = cc.R
    cols = cc.cols
    sums = cc.sums[None, :] - Qm @ R  # C_O'1
    CtC = R.T @ G @ R  # C_O'C_O = R'GR, batched
    nn = n_obs.astype(float)
    cov = CtC[:, cols][:, :, cols] - sums[:, cols, None] * sums[:, None, cols] / nn[:, None, None]
    sd = np.sqrt(np.maximum(np.einsum("mii->mi", cov), 1e-300))
    corr = cov / sd[:, :, None] / sd[:, None, :]
    Cx = Qx @ R
    r = (Cx[:, cols] - sx[:, None] * sums[:, cols] / nn[:, None]) / np.sqrt(np.maximum(xx_centred, 1e-300))[:, None] / sd
    try:
        corr_inv = np.linalg.inv(corr)
    except np.linalg.LinAlgError:  # a covariate constant on some variant's samples
        corr_inv = np.linalg.pinv(corr, hermitian=True)
    return _corr_vif_codes(r, np.einsum("mc,mcd->md", r, corr_inv), np.einsum("mii->mi", corr_inv))


def first_errors(sx, sxx, n_obs, n_fit, k: int) -> np.ndarray:
    """plink2's first two checks, in its order: SAMPLE_CT<=PREDICTOR_CT where the regression's
    ``n_fit`` samples do not exceed its k + 1 predictors, else CONST_OMITTED_ALLELE where every
    observed dosage is the same (or nothing was observed)."""
    spread = sxx - sx * sx / np.where(n_obs > 0, n_obs, 1)
    const = (n_obs <= 0) | (spread <= 1e-12 * np.maximum(sxx, 1.0))
    err = np.where(const, ERR_CONST, ERR_OK).astype(np.uint8)
    err[np.broadcast_to(n_fit, err.shape) <= k + 1] = ERR_FEW
    return err


def _finish(xx_c, xx_centred, yx_c, yy_c, dof, err, obs_ct, alt_freq, mach=None) -> list[VariantStats]:
    """Per-phenotype statistics from covariate-adjusted sums; shared by both missing-call modes."""
    err = err.copy()
    collinear = (err == 0) & (xx_c <= COLLINEAR_TOL * np.maximum(xx_centred, 1e-300))
    err[collinear] = ERR_COLLINEAR
    err[(err == 0) & (dof < 1)] = ERR_FEW
    good = err == 0
    xx_g = np.where(good, xx_c, 1.0)
    dof_g = np.where(good, dof, 1)
    out = []
    for t in range(yx_c.shape[1]):
        beta = yx_c[:, t] / xx_g
        rss = np.maximum(yy_c[:, t] - beta * yx_c[:, t], 0.0)
        se = np.sqrt(rss / dof_g / xx_g)
        with np.errstate(divide="ignore", invalid="ignore"):
            tstat = beta / se
        out.append(_pack(beta, se, tstat, dof_g, good, obs_ct, alt_freq, err, mach))
    return out


def _pack(beta, se, tstat, dof, good, obs_ct, alt_freq, err, mach=None) -> VariantStats:
    beta = np.where(good, beta, np.nan)
    se = np.where(good, se, np.nan)
    tstat = np.where(good, tstat, np.nan)
    p, nl = t_pvalues(np.where(good, tstat, 0.0), dof)
    p = np.where(good, p, np.nan)
    nl = np.where(good, nl, np.nan)
    # where se == 0 (perfect fit) t is infinite: p = 0 and -log10 p = inf, as plink2 prints
    return VariantStats(beta, se, tstat, nl, p, obs_ct, alt_freq, err, mach)
