"""A party's additive statistics for a multi-party study, and their pooled finalisation.

What a party computes (Spark, the same packed-byte kernel as the scan) depends only on its own
samples and has a size independent of their number. For each phenotype ``t`` (its samples: those
with the phenotype and every covariate), with the raw covariates ``C`` (intercept included):

- global: ``n``, ``C'C`` (k x k), ``C'1`` (k), ``C'y`` (k), ``y'y``, and ``n_freq`` (samples whose
  allele frequencies decide which allele is major: the founders);
- per variant, the columns of :data:`per_variant_layout`: ``C'x, y'x, sum x, sum x^2`` over the
  calls, ``C'1_M, y'1_M, |M|`` over the missing calls, with ``drop`` also ``C_M'C_M`` (upper
  triangle), ``C_M'y, y_M'y_M``; then the founders' ALT dosage sum and missing count.

The combiner adds the parties' statistics, takes ``R`` from the pooled ``C'C`` (Cholesky of the
equilibrated matrix), maps every ``C'v`` to ``Q'v = R^{-T} C'v``, and calls the scan's own
finalize functions: the pooled results are the scan of the pooled samples. Mean imputation uses
the pooled mean of each variant (its sums are pooled before the mean is taken).
"""

from __future__ import annotations

from dataclasses import dataclass

import logging

import numpy as np
import pyarrow as pa
from scipy.linalg import solve_triangular

from ..errors import ModelError
from ..stats.regression import (
    CovariateCorrelation,
    finalize_complete_case,
    finalize_mean_imputed,
    t_pvalues,
)

log = logging.getLogger("dash_spark")


def per_variant_layout(k: int, n_pheno: int, mode: str) -> dict[str, slice]:
    """Column slices of the per-variant statistics matrix (names ``t<i>.<stat>``)."""
    out: dict[str, slice] = {}
    pos = 0

    def take(name: str, width: int) -> None:
        nonlocal pos
        out[name] = slice(pos, pos + width)
        pos += width

    for t in range(n_pheno):
        for name, width in (("Ctx", k), ("yx", 1), ("sx", 1), ("sxx", 1), ("Ctm", k), ("ym", 1), ("miss", 1)):
            take(f"t{t}.{name}", width)
        if mode == "drop":
            take(f"t{t}.CmCm", k * (k + 1) // 2)
            take(f"t{t}.Cmy", k)
            take(f"t{t}.ymy", 1)
    take("freq_alt", 1)
    take("freq_miss", 1)
    out["_width"] = slice(pos, pos)
    return out


def party_block_sums(plan, W: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Per-variant statistics of one block [shape: (m, width)] for a party's plan (``party=True`` model)."""
    from ..spark.scan import block_missing_grams, block_sums

    SX, SXX, SM = block_sums(plan, W, packed)
    k = plan.patterns[0].k
    lay = per_variant_layout(k, len(plan.patterns), plan.missing_genotypes)
    out = np.zeros((packed.shape[0], lay["_width"].start))
    iu = np.triu_indices(k)
    for t, pat in enumerate(plan.patterns):
        a = pat.a_offset
        out[:, lay[f"t{t}.Ctx"]] = SX[:, a : a + k]
        out[:, lay[f"t{t}.yx"]] = SX[:, a + k : a + k + 1]
        out[:, lay[f"t{t}.sx"]] = SX[:, a + k + 1 : a + k + 2]
        out[:, lay[f"t{t}.sxx"]] = SXX[:, pat.b_offset : pat.b_offset + 1]
        out[:, lay[f"t{t}.Ctm"]] = SM[:, a : a + k]
        out[:, lay[f"t{t}.ym"]] = SM[:, a + k : a + k + 1]
        out[:, lay[f"t{t}.miss"]] = SM[:, a + k + 1 : a + k + 2]
        if plan.missing_genotypes == "drop":
            CmCm, Cmy, ymy = block_missing_grams(plan, W, packed, a, k, 1, SM[:, a + k + 1] > 0)
            out[:, lay[f"t{t}.CmCm"]] = CmCm[:, iu[0], iu[1]]
            out[:, lay[f"t{t}.Cmy"]] = Cmy[:, :, 0]
            out[:, lay[f"t{t}.ymy"]] = ymy
    out[:, lay["freq_alt"]] = SX[:, -1:]
    out[:, lay["freq_miss"]] = SM[:, -1:]
    return out


def global_stats(model) -> dict[str, np.ndarray]:
    """The small per-phenotype moments of a party's model (``build_model(..., party=True)``)."""
    out: dict[str, np.ndarray] = {"n_freq": np.array([float(model.n_freq)])}
    for t, pat in enumerate(model.patterns):
        out[f"t{t}.n"] = np.array([float(pat.n)])
        out[f"t{t}.CtC"] = pat.CtC
        out[f"t{t}.Ct1"] = pat.Ct1
        out[f"t{t}.Cty"] = pat.Qy[:, 0]
        out[f"t{t}.yty"] = pat.yy.copy()
    return out


@dataclass(frozen=True)
class PooledBasis:
    """``C'C = L L'`` of the pooled samples of one phenotype (``R = L'`` with ``C = QR``)."""

    L: np.ndarray
    n: int
    k: int

    def to_q(self, Ctv: np.ndarray) -> np.ndarray:
        """``Q'v = L^{-1} C'v`` for rows of ``Ctv`` [shape: (m, k)] (or one vector)."""
        return solve_triangular(self.L, np.atleast_2d(Ctv).T, lower=True).T.reshape(np.shape(Ctv))


def pooled_basis(CtC: np.ndarray, n: int, names: list[str], *, where: str) -> PooledBasis:
    """Cholesky of the equilibrated pooled ``C'C`` with a rank check naming the collinear column."""
    k = CtC.shape[0]
    if n < k + 2:
        raise ModelError(f"{where}: {n} pooled samples, but {k} covariates need at least {k + 2}")
    d = np.sqrt(np.diag(CtC))
    for j in range(k):
        if d[j] == 0:
            raise ModelError(f"{where}: covariate {names[j]!r} is zero for every pooled sample")
    S = CtC / np.outer(d, d)
    # pivot-free Cholesky column by column, so that a collinear column is named
    Ls = np.zeros_like(S)
    for j in range(k):
        v = S[j, j] - Ls[j, :j] @ Ls[j, :j]
        if v < 1e-18:
            raise ModelError(f"{where}: covariate {names[j]!r} is collinear with the columns before it "
                             "in the pooled data; remove it from the study's covariates")
        Ls[j, j] = np.sqrt(v)
        Ls[j + 1 :, j] = (S[j + 1 :, j] - Ls[j + 1 :, :j] @ Ls[j, :j]) / Ls[j, j]
    return PooledBasis(L=Ls * d[:, None], n=n, k=k)


def finalize_pooled_scan(glob: dict[str, np.ndarray], V: np.ndarray, phenotypes: list[str], covariates: list[str],
                         mode: str) -> list[tuple[str, object]]:
    """Per-phenotype :class:`VariantStats` from pooled statistics (``V``: the per-variant matrix)."""
    k = len(covariates)
    lay = per_variant_layout(k, len(phenotypes), mode)
    named = []
    iu = np.triu_indices(k)
    for t, name in enumerate(phenotypes):
        n = int(round(glob[f"t{t}.n"][0]))
        basis = pooled_basis(glob[f"t{t}.CtC"], n, covariates, where=f"phenotype {name}")
        Qy = basis.to_q(glob[f"t{t}.Cty"])[:, None]
        yy = glob[f"t{t}.yty"]
        cc = CovariateCorrelation.from_moments(glob[f"t{t}.CtC"], glob[f"t{t}.Ct1"], n, basis.L.T)
        col = {s: V[:, lay[f"t{t}.{s}"]] for s in ("Ctx", "yx", "sx", "sxx", "Ctm", "ym", "miss")}
        sums = dict(Qx=basis.to_q(col["Ctx"]), yx=col["yx"], sx=col["sx"][:, 0], sxx=col["sxx"][:, 0],
                    Qm=basis.to_q(col["Ctm"]), miss=np.rint(col["miss"][:, 0]), Qy=Qy, yy=yy, n=n, cc=cc)
        if mode == "mean":
            stats = finalize_mean_imputed(ym=col["ym"], **sums)[0]
        else:
            # Q_M'Q_M is only read for variants with missing calls
            has = sums["miss"] > 0
            if has.any():
                CmCm = np.zeros((int(has.sum()), k, k))
                CmCm[:, iu[0], iu[1]] = V[has][:, lay[f"t{t}.CmCm"]]
                CmCm[:, iu[1], iu[0]] = V[has][:, lay[f"t{t}.CmCm"]]
                Linv = solve_triangular(basis.L, np.eye(k), lower=True)
                QmQm = np.zeros((V.shape[0], k, k))
                QmQm[has] = Linv @ CmCm @ Linv.T
            else:
                QmQm = np.broadcast_to(np.zeros((k, k)), (V.shape[0], k, k))
            Qmy = basis.to_q(V[:, lay[f"t{t}.Cmy"]])[:, :, None]
            stats = finalize_complete_case(QmQm=QmQm, Qmy=Qmy, ymy=V[:, lay[f"t{t}.ymy"]], **sums)[0]
        named.append((name, stats))
    return named


def regression_table(glob: dict[str, np.ndarray], t: int, covariates: list[str], *, where: str) -> pa.Table:
    """Section 2: OLS of phenotype ``t`` on the covariates from pooled moments alone.

    ``beta = (C'C)^{-1} C'y``, ``rss = y'y - beta'C'y``, ``dof = n - k``,
    ``se = sqrt(diag((C'C)^{-1}) rss / dof)``; as statsmodels reports for the pooled data.
    """
    n = int(round(glob[f"t{t}.n"][0]))
    k = len(covariates)
    basis = pooled_basis(glob[f"t{t}.CtC"], n, covariates, where=where)
    Linv = solve_triangular(basis.L, np.eye(k), lower=True)
    inv = Linv.T @ Linv
    Cty = glob[f"t{t}.Cty"]
    qy = Linv @ Cty
    beta = Linv.T @ qy
    rss = max(float(glob[f"t{t}.yty"][0] - qy @ qy), 0.0)
    dof = n - k
    se = np.sqrt(np.diag(inv) * rss / dof)
    tstat = beta / se
    p, nl = t_pvalues(tstat, float(dof))
    return pa.table({"covariate": covariates, "beta": beta, "se": se, "t_stat": tstat, "p": p,
                     "neg_log10_p": nl, "obs_ct": np.full(k, n, dtype=np.int64)})


def regression_party_stats(pheno: str, covar: str | None, settings: dict) -> tuple[dict, list[str], list[str]]:
    """Section 2: per-phenotype ``n, C'C, C'1, C'y, y'y`` over the party's samples with the
    phenotype and every covariate (samples matched by IID between the two tables)."""
    from ..io.tables import match_samples, read_sample_table

    ph = read_sample_table(pheno, kind="pheno", names=settings.get("pheno_names"))
    tables = [ph]
    if covar:
        tables.append(read_sample_table(covar, kind="covar", names=settings.get("covar_names")))
    ids = ph.iids
    rows, _ = match_samples(ids, tables)
    ok = (rows >= 0).all(axis=0)
    Y = ph.values[rows[0, ok]]
    parts, names = [], []
    if settings.get("intercept", True):
        parts.append(np.ones((int(ok.sum()), 1)))
        names.append("(intercept)")
    if covar:
        Cv = tables[1].values[rows[1, ok]]
        parts.append(Cv)
        names += list(tables[1].names)
    C = np.hstack(parts)
    complete = ~np.isnan(C).any(axis=1)
    out: dict[str, np.ndarray] = {"n_freq": np.zeros(1)}
    for t in range(Y.shape[1]):
        mask = complete & ~np.isnan(Y[:, t])
        Cm, y = C[mask], Y[mask, t]
        out[f"t{t}.n"] = np.array([float(mask.sum())])
        out[f"t{t}.CtC"] = Cm.T @ Cm
        out[f"t{t}.Ct1"] = Cm.sum(axis=0)
        out[f"t{t}.Cty"] = Cm.T @ y
        out[f"t{t}.yty"] = np.array([y @ y])
    log.info("party statistics: %d phenotype(s), %d covariate column(s), %d samples with complete data",
             Y.shape[1], C.shape[1], int(complete.sum()))
    return out, names, list(ph.names)
