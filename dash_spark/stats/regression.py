"""Covariate bases and per-variant finalisation of the linear model (plain numpy/scipy).

Model, for variant ``x`` and phenotype ``y`` over the samples analysed for ``y``:

    y = beta * x + C gamma + e,   e ~ N(0, sigma^2 I),   C = QR (thin QR), k = rank C

    x'x|C = x'x - |Q'x|^2      x'y|C = x'y - (Q'x)'(Q'y)      y'y|C = y'y - |Q'y|^2
    beta = x'y|C / x'x|C       sigma^2 = (y'y|C - beta x'y|C) / (n - k - 1)
    se = sqrt(sigma^2 / x'x|C) t = beta / se                 p = 2 T_{n-k-1}(-|t|)

``neg_log10_p`` comes from an exact log-tail of Student's t (no underflow below 1e-308).
"""

from __future__ import annotations

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


ERRCODES = (".", "CONST_OMITTED_ALLELE", "VIF_INFINITE", "TOO_FEW_OBS", "CORR_TOO_HIGH", "VIF_TOO_HIGH")
ERR_OK, ERR_CONST, ERR_COLLINEAR, ERR_FEW, ERR_CORR, ERR_VIF = range(6)

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

    @classmethod
    def build(cls, C_masked: np.ndarray, R: np.ndarray) -> "CovariateCorrelation":
        n = C_masked.shape[0]
        centred = C_masked - C_masked.mean(axis=0)
        sd = np.linalg.norm(centred, axis=0)
        cols = np.flatnonzero(sd > 1e-12 * np.maximum(np.linalg.norm(C_masked, axis=0), 1e-300))
        Z = centred[:, cols] / sd[cols]
        corr = Z.T @ Z
        corr_inv = np.linalg.inv(corr) if len(cols) else np.zeros((0, 0))
        return cls(R=R, sums=C_masked.sum(axis=0), n=n, cols=cols, sd=sd[cols], corr_inv=corr_inv)


def collinearity_errors(cc: CovariateCorrelation, Qx: np.ndarray, sx: np.ndarray, xx_centred: np.ndarray,
                        *, max_corr: float = MAX_CORR, max_vif: float = MAX_VIF) -> np.ndarray:
    """plink2's checks per variant: CORR_TOO_HIGH if |corr(x, c)| > max_corr for a covariate c,
    else VIF_TOO_HIGH if any predictor's variance inflation factor exceeds ``max_vif``.

    The covariates' correlation block is fixed, so with ``r`` = corr(x, covariates) and
    ``u = corr_cc^{-1} r``, ``s = 1 - r'u``: VIF_x = 1/s and VIF_c = diag(corr_cc^{-1}) + u^2/s.
    Returns uint8 codes (0 where both checks pass). ``Qx`` (m, k), ``sx``/``xx_centred`` (m,).
    """
    m = Qx.shape[0]
    err = np.zeros(m, dtype=np.uint8)
    if len(cc.cols) == 0:
        return err
    Cx = Qx @ cc.R  # rows: (C'x)' = (Q'x)' R
    sxx = np.sqrt(np.maximum(xx_centred, 1e-300))
    r = (Cx[:, cc.cols] - np.outer(sx, cc.sums[cc.cols]) / cc.n) / sxx[:, None] / cc.sd
    corr_bad = np.abs(r).max(axis=1) > max_corr
    u = r @ cc.corr_inv
    s = 1.0 - np.einsum("mc,mc->m", r, u)
    with np.errstate(divide="ignore", invalid="ignore"):
        vif_x = np.where(s > 0, 1.0 / s, np.inf)
        vif_c = np.diag(cc.corr_inv)[None, :] + u * u * vif_x[:, None]
    vif_bad = (vif_x > max_vif) | (vif_c.max(axis=1) > max_vif)
    err[vif_bad] = ERR_VIF
    err[corr_bad] = ERR_CORR
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
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(n_obs > 0, sx / np.where(n_obs > 0, n_obs, 1), 0.0)
    Qxi = Qx + mu[:, None] * Qm
    yxi = yx + mu[:, None] * ym
    xxi = sxx + mu * mu * miss
    sxi = sx + mu * miss
    xx_c = xxi - np.einsum("mk,mk->m", Qxi, Qxi)
    xx_centred = xxi - sxi * sxi / n
    alt_freq = np.where(n_obs > 0, mu / 2.0, np.nan)
    dof = n - k - 1
    err = np.zeros(m, dtype=np.uint8)
    # constant on the observed calls: every observed dosage equals the mean
    const = (n_obs == 0) | (sxx - sx * sx / np.where(n_obs > 0, n_obs, 1) <= 1e-12 * np.maximum(sxx, 1.0))
    err[const] = ERR_CONST
    if cc is not None:
        checks = collinearity_errors(cc, Qxi, sxi, xx_centred)
        err = np.where(err == 0, checks, err).astype(np.uint8)
    collinear = (err == 0) & (xx_c <= COLLINEAR_TOL * np.maximum(xx_centred, 1e-300))
    err[collinear] = ERR_COLLINEAR
    if dof < 1:
        err[:] = ERR_FEW
    good = err == 0
    xx_g = np.where(good, xx_c, 1.0)
    yx_c = yxi - Qxi @ Qy  # (m, p)
    yy_c = yy - np.einsum("kp,kp->p", Qy, Qy)  # (p,)
    out = []
    obs_ct = np.full(m, n, dtype=np.int64)
    for t in range(yx.shape[1]):
        beta = yx_c[:, t] / xx_g
        rss = np.maximum(yy_c[t] - beta * yx_c[:, t], 0.0)
        se = np.sqrt(rss / max(dof, 1) / xx_g)
        with np.errstate(divide="ignore", invalid="ignore"):
            tstat = beta / se
        out.append(_pack(beta, se, tstat, dof, good, obs_ct, alt_freq, err))
    return out


def _pack(beta, se, tstat, dof, good, obs_ct, alt_freq, err) -> VariantStats:
    beta = np.where(good, beta, np.nan)
    se = np.where(good, se, np.nan)
    tstat = np.where(good, tstat, np.nan)
    p, nl = t_pvalues(np.where(good, tstat, 0.0), dof)
    p = np.where(good, p, np.nan)
    nl = np.where(good, nl, np.nan)
    # where se == 0 (perfect fit) t is infinite: p = 0 and -log10 p = inf, as plink2 prints
    return VariantStats(beta, se, tstat, nl, p, obs_ct, alt_freq, err)
