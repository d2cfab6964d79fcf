"""REGENIE's step-2 score test for quantitative traits, from the kernel's additive sums.

REGENIE (v1.0.6.7 and later, default non-``--strict`` mode) tests variant ``x`` for phenotype ``t``
over the analysed samples ``A`` (those with at least one phenotype and every covariate) as follows:

- ``Q``: orthonormal basis of the covariates (intercept included) over ``A``;
- ``x``: missing calls imputed with the mean over ``A``; ``g = x - Q Q'x`` (over ``A``);
- phenotype: centred (mean over its non-missing samples), residualized on ``Q`` on its own samples
  ``M_t`` and divided by ``s_t = |.| / sqrt(N_t - 1)``; minus the LOCO prediction ``o`` of the
  variant's chromosome: ``r = M_t (y~ - o)``, whose scale is ``p_t = |r| / sqrt(N_t - 1)``;
- ``T = g'r / (p_t sqrt(g' M_t g))``, ``CHISQ = T^2`` (one degree of freedom),
  ``BETA = s_t g'r / g' M_t g``, ``SE = s_t p_t / sqrt(g' M_t g)``, ``LOG10P = -log10 P(chi2_1 > CHISQ)``.

Variants with a minor allele count over ``A`` below ``min_mac`` (REGENIE's ``--minMAC``, 5), or
whose ``g`` has a standard deviation below 1e-6, are not tested (REGENIE leaves them out of its
output). Everything per variant is a column of the kernel's sums over the weight matrix
:func:`regenie_weights` builds, so the test runs at the kernel's speed on executors.

Numpy/scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from .regression import ERR_OK, VariantStats

LN10 = float(np.log(10.0))
NUMTOL = 1e-6  # REGENIE's numtol: a residualized variant with a smaller standard deviation is skipped


@dataclass(frozen=True)
class RegeniePhenotype:
    """One phenotype's columns of ``W`` and its null-model constants for one chromosome."""

    name: str
    r_col: int           # A column: r = M (y~ - o)
    mq_col: int          # first of k A columns M*Q (-1 when M is all of A)
    m_col: int           # A column: M
    b_col: int           # B column: M (-1 when M is all of A)
    n: int
    scale_y: float
    p_sd: float
    Qr: np.ndarray       # Q'r [shape: (k,)]
    QMQ: np.ndarray | None  # Q' M Q [shape: (k, k)] (None when M is all of A)


@dataclass(frozen=True)
class RegenieSpec:
    """Where a task finds the score test's sums in the kernel's output (one chromosome)."""

    k: int
    a_col: int           # A column 1_A (after the k columns of Q at 0..k)
    b_col: int           # B column 1_A
    n_analysed: int
    phenotypes: tuple[RegeniePhenotype, ...]
    min_mac: float = 5.0


def null_phenotype(Q: np.ndarray, analysed: np.ndarray, y: np.ndarray, mask: np.ndarray):
    """REGENIE's residualized, scaled phenotype ``y~`` [shape: (n,)] and its scale ``s``.

    ``y`` [shape: (n,)] raw values of every sample that has one (NaN otherwise; all of them enter
    the mean, as in REGENIE, also those without covariates); ``mask``: the phenotype's analysed
    samples ``M`` (also in the .loco file). As REGENIE does, a sample left out only for lack of a
    prediction keeps its centred value (it counts in ``s``, not in the test)."""
    use = ~np.isnan(y)
    mean = float(y[use].mean())
    yc = np.where(use & analysed, y - mean, 0.0)
    yt = yc - mask * (Q @ (Q.T @ yc))
    n = int(mask.sum())
    scale = float(np.linalg.norm(yt) / np.sqrt(n - 1))
    return yt / scale, scale


def regenie_weights(Q: np.ndarray, analysed: np.ndarray, nulls, offsets, min_mac: float = 5.0):
    """``(A columns, B columns, spec)`` for one chromosome.

    ``nulls``: per phenotype ``(name, y~, s, M)`` from :func:`null_phenotype`; ``offsets``: per
    phenotype the chromosome's LOCO predictions [shape: (n,)] (NaN outside the .loco file)."""
    n, k = Q.shape
    a = analysed.astype(np.float64)
    A_cols, B_cols = [Q, a[:, None]], [a[:, None]]
    col, bcol = k + 1, 1
    phens = []
    for (name, yt, scale, mask), o in zip(nulls, offsets):
        m = mask.astype(np.float64)
        r = np.where(mask, yt - np.nan_to_num(o), 0.0)
        nt = int(mask.sum())
        p_sd = float(np.linalg.norm(r) / np.sqrt(nt - 1))
        full = bool((mask == analysed).all())
        A_cols.append(r[:, None])
        r_col = col
        col += 1
        mq_col = b_col = -1
        QMQ = None
        if not full:
            MQ = Q * m[:, None]
            A_cols.append(MQ)
            mq_col = col
            col += k
            B_cols.append(m[:, None])
            b_col = bcol
            bcol += 1
            QMQ = Q.T @ MQ
        A_cols.append(m[:, None])
        m_col = col
        col += 1
        phens.append(RegeniePhenotype(name, r_col, mq_col, m_col, b_col, nt, scale, p_sd, Q.T @ r, QMQ))
    spec = RegenieSpec(k=k, a_col=k, b_col=0, n_analysed=int(analysed.sum()), phenotypes=tuple(phens),
                       min_mac=min_mac)
    return A_cols, B_cols, spec


def chisq1_tail(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, -log10 p)`` of ``chi2_1 > z^2`` (``-log10 p`` exact far below float64's range)."""
    az = -np.abs(z)
    logp = np.log(2.0) + special.log_ndtr(az)
    return np.exp(logp), -logp / LN10


def regenie_stats(spec: RegenieSpec, SX: np.ndarray, SXX: np.ndarray, SM: np.ndarray):
    """``(tested, [(phenotype, VariantStats)])`` of a block from the kernel's sums.

    ``tested`` [shape: (m,), bool]: the variants REGENIE tests (MAC and variance filters); the
    statistics hold only those rows. ``VariantStats.alt_freq`` is the ALT frequency over ``A``
    (REGENIE's A1FREQ) and ``t_stat`` the signed score statistic ``T``."""
    k, ac = spec.k, spec.a_col
    miss_a = SM[:, ac]
    called = spec.n_analysed - miss_a
    total = SX[:, ac]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(called > 0, total / called, 0.0)
    mac = np.minimum(total, 2.0 * called - total)
    b = SX[:, :k] + mu[:, None] * SM[:, :k]
    xx = SXX[:, spec.b_col] + mu * mu * miss_a
    gg_all = np.maximum(xx - np.einsum("mk,mk->m", b, b), 0.0)
    sd = np.sqrt(gg_all / max(spec.n_analysed - 1, 1))
    tested = (called > 0) & (mac >= spec.min_mac) & (sd >= NUMTOL)
    b, mu, gg_all = b[tested], mu[tested], gg_all[tested]
    SXt, SXXt, SMt = SX[tested], SXX[tested], SM[tested]
    alt_freq = (total[tested] / called[tested]) / 2.0
    out = []
    for ph in spec.phenotypes:
        rx = SXt[:, ph.r_col] + mu * SMt[:, ph.r_col]
        gr = rx - b @ ph.Qr
        if ph.QMQ is None:
            gmg = gg_all
        else:
            xmx = SXXt[:, ph.b_col] + mu * mu * SMt[:, ph.m_col]
            qmx = SXt[:, ph.mq_col : ph.mq_col + k] + mu[:, None] * SMt[:, ph.mq_col : ph.mq_col + k]
            gmg = xmx - 2.0 * np.einsum("mk,mk->m", b, qmx) + np.einsum("mk,kl,ml->m", b, ph.QMQ, b)
        root = np.sqrt(gmg)
        T = gr / (ph.p_sd * root)
        beta = ph.scale_y * gr / gmg
        se = ph.scale_y * ph.p_sd / root
        p, nlp = chisq1_tail(T)
        m = len(T)
        out.append((ph.name, VariantStats(beta=beta, se=se, t_stat=T, neg_log10_p=nlp, p=p,
                                          obs_ct=np.full(m, ph.n, dtype=np.int64), alt_freq=alt_freq,
                                          errcode=np.full(m, ERR_OK, dtype=np.uint8))))
    return tested, out


# ------------------------------------------------------------------------------------------------
# the same test from additive sums (stores and multi-party studies)


@dataclass(frozen=True, eq=False)
class RegenieSums:
    """What a statistics model keeps, besides each phenotype's moments over its samples ``M``
    (``n, C_M'C_M, C_M'1, C_M'y, y'y``, raw ``y``), so that REGENIE's test of the pooled samples
    comes out of pooled sums in one round (every quantity of :func:`null_phenotype` and
    :func:`regenie_weights` is a function of sums over samples; the pooled mean, basis and scales are
    computed at finalize). Per phenotype [shapes: (T,) or (T, k)]:

    - ``n_use``, ``s_use``: samples with the phenotype (covariates or not), and the sum of its values
      (REGENIE's mean);
    - ``n_au``, ``s_au``, ``ss_au``, ``CAy_au``, ``CA1_au``: over the analysed samples ``A`` that have it:
      count, ``sum y``, ``sum y^2``, ``C'y``, ``C'1``;
    - ``n_A``, ``CAtCA``: the analysed samples (any phenotype, every covariate) and their ``C'C``;
    - ``chroms``: per chromosome name ``(C_M'o, o'o, y'o, 1'o)`` of the LOCO predictions ``o`` on ``M``.

    The per-variant rows hold, in :class:`~dash_spark.stats.sufficient.StatLayout` order, the
    phenotypes' sums with ``y`` (columns ``t``), with ``o`` (``T + t``: ``x'o``, and ``o`` over the
    missing calls), and the analysed samples' (``2T``), in mean-imputation layout.
    """

    n_use: np.ndarray
    s_use: np.ndarray
    n_au: np.ndarray
    s_au: np.ndarray
    ss_au: np.ndarray
    CAy_au: np.ndarray
    CA1_au: np.ndarray
    n_A: float
    CAtCA: np.ndarray
    chroms: dict

    FIELDS = ("n_use", "s_use", "n_au", "s_au", "ss_au", "CAy_au", "CA1_au")

    def combine(self, other: "RegenieSums", sign: int) -> "RegenieSums":
        if set(self.chroms) != set(other.chroms):
            from ..errors import ModelError

            raise ModelError(f"statistics: LOCO predictions for chromosomes {sorted(self.chroms)} and "
                             f"{sorted(other.chroms)}; every batch or party needs the same chromosomes")
        vals = {f: getattr(self, f) + sign * getattr(other, f) for f in self.FIELDS}
        chroms = {c: tuple(a + sign * b for a, b in zip(self.chroms[c], other.chroms[c])) for c in self.chroms}
        return RegenieSums(**vals, n_A=self.n_A + sign * other.n_A, CAtCA=self.CAtCA + sign * other.CAtCA,
                           chroms=chroms)

    def arrays(self) -> dict:
        out = {f"r.{f}": np.asarray(getattr(self, f), dtype=np.float64) for f in self.FIELDS}
        out["r.n_A"] = np.array([float(self.n_A)])
        out["r.CAtCA"] = np.asarray(self.CAtCA, dtype=np.float64)
        for c, vals in self.chroms.items():
            for name, v in zip(("CMo", "oo", "yo", "so"), vals):
                out[f"r.c.{c}.{name}"] = np.asarray(v, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays, T: int, k: int) -> "RegenieSums | None":
        if "r.n_A" not in arrays:
            return None
        shape = {"CAy_au": (T, k), "CA1_au": (T, k)}
        vals = {f: np.asarray(arrays[f"r.{f}"], dtype=np.float64).reshape(shape.get(f, (T,))) for f in cls.FIELDS}
        chroms = {}
        for key in arrays:
            if key.startswith("r.c.") and key.endswith(".CMo"):
                c = key[4:-4]
                chroms[c] = tuple(np.asarray(arrays[f"r.c.{c}.{n}"], dtype=np.float64).reshape((T, k) if n == "CMo"
                                                                                               else (T,))
                                  for n in ("CMo", "oo", "yo", "so"))
        return cls(**vals, n_A=float(arrays["r.n_A"][0]),
                   CAtCA=np.asarray(arrays["r.CAtCA"], dtype=np.float64).reshape(k, k), chroms=chroms)


def regenie_from_sums(sums: RegenieSums, moments, names, col, chroms: np.ndarray, min_mac: float = 5.0):
    """``(tested, [(phenotype, VariantStats)])`` of per-variant rows from pooled sums: REGENIE's
    test as :func:`regenie_stats` computes it on the pooled samples (see :class:`RegenieSums`).

    ``moments``: each phenotype's pooled moments over its samples (raw ``y``; the intercept is
    covariate 0); ``col(t, name)``: the rows' column(s) of statistic ``name`` of layout phenotype
    ``t`` (2-d); ``chroms``: each row's chromosome name."""
    from scipy.linalg import solve_triangular

    T = len(names)
    L = np.linalg.cholesky(sums.CAtCA)

    def lq(v):  # Q'v = L^{-1} C_A'v, for rows of v [shape: (..., k)]
        v = np.asarray(v, dtype=np.float64)
        return solve_triangular(L, v.T, lower=True).T

    n_A = sums.n_A
    CAx, sxA, sxxA, CAm, missA = (col(2 * T, s) for s in ("Ctx", "sx", "sxx", "Ctm", "miss"))
    sxA, sxxA, missA = sxA[:, 0], sxxA[:, 0], missA[:, 0]
    called = n_A - missA
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(called > 0, sxA / called, 0.0)
    mac = np.minimum(sxA, 2.0 * called - sxA)
    b = lq(CAx + mu[:, None] * CAm)
    xx = sxxA + mu * mu * missA
    gg_all = np.maximum(xx - np.einsum("mk,mk->m", b, b), 0.0)
    sd = np.sqrt(gg_all / max(n_A - 1, 1))
    tested = (called > 0) & (mac >= min_mac) & (sd >= NUMTOL)
    with np.errstate(divide="ignore", invalid="ignore"):
        alt_freq = np.where(called > 0, sxA / called, np.nan) / 2.0
    out = []
    for t, name in enumerate(names):
        mo = moments[t]
        n_M = mo.n
        mean = sums.s_use[t] / sums.n_use[t]
        a = lq(sums.CAy_au[t] - mean * sums.CA1_au[t])                 # Q'yc
        b_M = lq(mo.Cty - mean * mo.Ct1)                               # Q'M yc
        QMQ = lq(lq(mo.CtC).T)                                         # Q'MQ
        yc2_au = sums.ss_au[t] - 2 * mean * sums.s_au[t] + mean * mean * sums.n_au[t]
        s = float(np.sqrt(max(yc2_au - 2 * a @ b_M + a @ QMQ @ a, 0.0) / (n_M - 1)))
        if not s > 1e-6:
            from ..errors import ModelError

            raise ModelError(f"phenotype {name!r} has no variance left after the covariates in the pooled samples "
                             "(REGENIE's sd=0); leave it out with --pheno-name")
        yc2_M = mo.yty - 2 * mean * mo.Cty[0] + mean * mean * n_M
        yt2_M = yc2_M - 2 * a @ b_M + a @ QMQ @ a
        stats = {f: np.full(len(chroms), np.nan) for f in ("beta", "se", "t")}
        for c in dict.fromkeys(chroms.tolist()):
            rows = np.flatnonzero(chroms == c)
            if c not in sums.chroms:
                from ..errors import ModelError

                raise ModelError(f"finalize: no LOCO predictions for chromosome {c}")
            CMo, oo, yo, so = (v[t] for v in sums.chroms[c])
            qMo = lq(CMo)
            ytMo = (yo - mean * so) - a @ qMo                          # (M yt)'o
            r2 = yt2_M / s ** 2 - 2 * ytMo / s + oo
            p_sd = float(np.sqrt(r2 / (n_M - 1)))
            Qr = (b_M - QMQ @ a) / s - qMo
            Ctx, yx, sx, sxx, Ctm, ym, miss = (col(t, f)[rows] for f in ("Ctx", "yx", "sx", "sxx", "Ctm", "ym",
                                                                          "miss"))
            ox, om = col(T + t, "yx")[rows, 0], col(T + t, "ym")[rows, 0]
            sx, sxx, yx, ym, miss = sx[:, 0], sxx[:, 0], yx[:, 0], ym[:, 0], miss[:, 0]
            mu_r = mu[rows]
            xr = ((yx - mean * sx) - lq(Ctx) @ a) / s - ox             # sum over M's calls of x r
            mr = ((ym - mean * miss) - lq(Ctm) @ a) / s - om           # sum over M's missing calls of r
            br = b[rows]
            gr = xr + mu_r * mr - br @ Qr
            xmx = sxx + mu_r * mu_r * miss
            qmx = lq(Ctx + mu_r[:, None] * Ctm)
            gmg = xmx - 2.0 * np.einsum("mk,mk->m", br, qmx) + np.einsum("mk,kl,ml->m", br, QMQ, br)
            with np.errstate(divide="ignore", invalid="ignore"):
                root = np.sqrt(gmg)
                stats["t"][rows] = gr / (p_sd * root)
                stats["beta"][rows] = s * gr / gmg
                stats["se"][rows] = s * p_sd / root
        Tt = stats["t"][tested]
        p, nlp = chisq1_tail(Tt)
        m = int(tested.sum())
        out.append((name, VariantStats(beta=stats["beta"][tested], se=stats["se"][tested], t_stat=Tt,
                                       neg_log10_p=nlp, p=p, obs_ct=np.full(m, n_M, dtype=np.int64),
                                       alt_freq=alt_freq[tested], errcode=np.full(m, ERR_OK, dtype=np.uint8))))
    return tested, out
