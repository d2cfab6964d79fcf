"""The additive sufficient statistics ``S`` of DESIGN.md section 2, as one type.

For each phenotype ``t`` (its samples: those with the phenotype and every covariate) and the raw
covariates ``C`` [shape: (n_t, k)] (intercept included), ``S`` holds

- global moments (:class:`Moments`): ``n``, ``C'C`` (k x k), ``C'1`` (k), ``C'y`` (k), ``y'y``;
  and, shared by all phenotypes, ``n_freq``: the samples whose allele frequencies decide which
  allele is major (plink2: the founders);
- per variant, one row of :attr:`SufficientStats.per_variant` whose columns :class:`StatLayout`
  names: for every phenotype ``C'x, y'x, sum x, sum x^2`` over the called samples, ``C'1_M,
  y'1_M, |M|`` over the missing calls ``M``, and with exact complete cases (``mode="drop"``)
  ``C_M'C_M`` (upper triangle), ``C_M'y, y_M'y_M``; then the ``n_freq`` samples' ALT dosage sum and
  missing-call count.

None of it grows with the number of samples, and for any split of the samples into batches
(Spark partitions, recruitment waves, parties) ``S = sum_s S_s``: ``a + b`` merges, ``a - b``
withdraws, :meth:`SufficientStats.finalize` gives the per-variant regression of each phenotype.
``R`` comes from the pooled ``C'C`` (Cholesky of the equilibrated matrix), every ``C'v`` maps to
``Q'v = R^{-T} C'v``, and the scan's own finalize functions do the rest, so the results are those
of the scan of the pooled samples. Mean imputation uses each variant's pooled mean.

This module is numpy/scipy only (plus pyarrow for result tables): it runs on executors, on a
party's driver, in a combiner, and in unit tests without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pyarrow as pa
from scipy.linalg import solve_triangular

from ..errors import ModelError
from .regression import CovariateCorrelation, VariantStats, finalize_complete_case, finalize_mean_imputed, t_pvalues
from .regenie import RegenieSums, regenie_from_sums
from .sexchrom import CLASS_SCALE, SexChromStats, row_classes

MODES = ("drop", "mean")

#: per-phenotype per-variant statistics in column order: (name, width as a function of k)
_PER_PHENOTYPE = (("Ctx", lambda k: k), ("yx", lambda k: 1), ("sx", lambda k: 1), ("sxx", lambda k: 1),
                  ("Ctm", lambda k: k), ("ym", lambda k: 1), ("miss", lambda k: 1))
_DROP_ONLY = (("CmCm", lambda k: k * (k + 1) // 2), ("Cmy", lambda k: k), ("ymy", lambda k: 1))


@dataclass(frozen=True)
class StatLayout:
    """Which columns of the per-variant matrix hold which statistic.

    ``k`` covariate columns, ``n_phenotypes`` phenotypes, ``mode`` ``"drop"`` (exact complete
    cases: the missing calls' Gram blocks are kept) or ``"mean"`` (mean imputation).

    Examples
    --------
    >>> lay = StatLayout(k=3, n_phenotypes=2, mode="mean")
    >>> lay.width > 0, StatLayout(k=3, n_phenotypes=2, mode="drop").width > lay.width
    (True, True)
    """

    k: int
    n_phenotypes: int
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"StatLayout.mode: expected one of {MODES}, found {self.mode!r}")
        if self.k < 0 or self.n_phenotypes < 0:
            raise ValueError(f"StatLayout: expected k >= 0 and n_phenotypes >= 0, found {self.k}, {self.n_phenotypes}")

    @cached_property
    def _slices(self) -> dict[tuple[int, str], slice]:
        out: dict[tuple[int, str], slice] = {}
        pos = 0
        fields = _PER_PHENOTYPE + (_DROP_ONLY if self.mode == "drop" else ())
        for t in range(self.n_phenotypes):
            for name, width in fields:
                out[(t, name)] = slice(pos, pos + width(self.k))
                pos += width(self.k)
        out[(-1, "freq_alt")] = slice(pos, pos + 1)
        out[(-1, "freq_miss")] = slice(pos + 1, pos + 2)
        return out

    @property
    def width(self) -> int:
        """Columns of the per-variant matrix."""
        return self._slices[(-1, "freq_miss")].stop

    def of(self, t: int, name: str) -> slice:
        """Columns of statistic ``name`` (``Ctx``, ``yx``, ``sx``, ``sxx``, ``Ctm``, ``ym``, ``miss``,
        and in drop mode ``CmCm``, ``Cmy``, ``ymy``) of phenotype ``t``."""
        try:
            return self._slices[(t, name)]
        except KeyError:
            raise KeyError(f"StatLayout: no statistic {name!r} for phenotype {t} "
                           f"(k={self.k}, {self.n_phenotypes} phenotypes, mode {self.mode})") from None

    @property
    def freq_alt(self) -> int:
        """Column of the frequency samples' ALT dosage sum."""
        return self._slices[(-1, "freq_alt")].start

    @property
    def freq_miss(self) -> int:
        """Column of the frequency samples' missing-call count."""
        return self._slices[(-1, "freq_miss")].start

    def column_names(self) -> tuple[str, ...]:
        """One name per column (``t0.Ctx.3``: entry 4 of phenotype 0's ``C'x``; one-wide statistics
        have no suffix), as stored in a store's block files."""
        names: list[str] = []
        for (t, name), sl in self._slices.items():
            label = name if t < 0 else f"t{t}.{name}"
            width = sl.stop - sl.start
            names += [label] if width == 1 else [f"{label}.{j}" for j in range(width)]
        return tuple(names)


@dataclass(frozen=True, eq=False)
class Moments:
    """Global moments of one phenotype's samples: ``n``, ``C'C`` [shape: (k, k)], ``C'1`` [shape:
    (k,)], ``C'y`` [shape: (k,)], ``y'y``; additive (``+``, ``-``) over disjoint sample sets.

    Examples
    --------
    >>> import numpy as np
    >>> C = np.column_stack([np.ones(4), [1.0, 2.0, 3.0, 4.0]])
    >>> y = np.array([1.0, 0.0, 2.0, 1.0])
    >>> m = Moments.of(C[:2], y[:2]) + Moments.of(C[2:], y[2:])
    >>> m.n, m.CtC.tolist(), m.yty
    (4, [[4.0, 10.0], [10.0, 30.0]], 6.0)
    """

    n: int
    CtC: np.ndarray
    Ct1: np.ndarray
    Cty: np.ndarray
    yty: float

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.CtC + other.CtC, self.Ct1 + other.Ct1, self.Cty + other.Cty,
                       self.yty + other.yty)

    def __sub__(self, other: "Moments") -> "Moments":
        return Moments(self.n - other.n, self.CtC - other.CtC, self.Ct1 - other.Ct1, self.Cty - other.Cty,
                       self.yty - other.yty)

    @classmethod
    def of(cls, C: np.ndarray, y: np.ndarray) -> "Moments":
        """The moments of covariate rows ``C`` [shape: (n, k)] and phenotype values ``y`` [shape: (n,)]."""
        return cls(int(C.shape[0]), C.T @ C, C.sum(axis=0), C.T @ y, float(y @ y))

    def augment(self, CZ: np.ndarray, ZZ: np.ndarray, Z1: np.ndarray, Zy: np.ndarray) -> "Moments":
        """The moments with ``q`` more covariate columns ``Z`` appended: ``C'Z`` (k x q), ``Z'Z``,
        ``Z'1``, ``Z'y`` over the same samples."""
        return Moments(self.n, np.block([[self.CtC, CZ], [CZ.T, ZZ]]), np.concatenate([self.Ct1, Z1]),
                       np.concatenate([self.Cty, Zy]), self.yty)

    def restrict(self, columns) -> "Moments":
        """The moments of the model with only covariate ``columns`` (indices) kept."""
        idx = np.asarray(list(columns), dtype=np.int64)
        return Moments(self.n, self.CtC[np.ix_(idx, idx)], self.Ct1[idx], self.Cty[idx], self.yty)

    def basis(self, names, *, where: str) -> "PooledBasis":
        return pooled_basis(self.CtC, self.n, list(names), where=where)


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


@dataclass(frozen=True, eq=False)
class SufficientStats:
    """``S``: global moments per phenotype plus per-variant statistics (see the module docstring).

    ``per_variant`` [shape: (m, layout.width)] may be ``None`` (a regression on the covariates
    alone, note section 2) or cover a block of the variant list (rows ``first_variant ..``).
    ``variants`` optionally carries the variants' ``chrom, pos, id, ref, alt`` (an Arrow table),
    so that :meth:`finalize` can label its rows; sums require equal variant lists.

    Examples
    --------
    (``compress``, ``example_data``, ``open_bfile``: :mod:`dash_spark.api`)

    >>> data = example_data()
    >>> S = compress(spark, open_bfile(data.bfile), data.pheno, data.covar)
    >>> S.phenotypes, S.covariates
    (('pheno1', 'pheno2'), ('(intercept)', 'age', 'sex'))
    >>> S.per_variant.shape[0]  # one row of sums per variant
    120
    >>> S.regression_table("pheno1").column_names  # note section 2: y ~ C from the moments alone
    ['covariate', 'beta', 'se', 't_stat', 'p', 'neg_log10_p', 'obs_ct']
    >>> arrays = S.to_arrays()  # what the multi-party encoding masks, and its inverse
    >>> T = SufficientStats.from_arrays(arrays, S.phenotypes, S.covariates, S.mode)
    >>> bool((T.per_variant == S.per_variant).all())
    True
    """

    phenotypes: tuple[str, ...]
    covariates: tuple[str, ...]
    mode: str
    moments: tuple[Moments, ...]
    n_freq: int
    per_variant: np.ndarray | None = None
    first_variant: int = 0
    variants: pa.Table | None = field(default=None, repr=False)
    #: LOCO offsets (``--pred``, Wald): per chromosome name, ``(C'(y - o), (y - o)'(y - o))`` of
    #: every phenotype [shapes: (T, k), (T,)]; the per-variant ``y'x`` columns then hold
    #: ``(y - o)'x`` for the variant's chromosome, and finalize uses that chromosome's moments
    offsets: dict | None = field(default=None, repr=False)
    #: plink2's sex-chromosome models (:class:`~dash_spark.stats.sexchrom.SexChromStats`): the
    #: per-variant rows then have one more covariate column, ``SEX`` (zero but on chrX's rows)
    sexchr: SexChromStats | None = field(default=None, repr=False)
    #: the batches summed in (identities given by ``compress``; None where unknown, e.g. a store's
    #: or a study's sums): the same batch cannot be added twice
    sources: frozenset | None = field(default=None, repr=False)
    #: REGENIE's test (``--pred-test regenie``): :class:`~dash_spark.stats.regenie.RegenieSums`; the
    #: per-variant rows then hold 2T + 1 sets of sums (with y, with the LOCO predictions, over the
    #: analysed samples) in mean-imputation layout
    regenie: RegenieSums | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shape = "no variants" if self.per_variant is None else \
            f"{self.n_variants:,} variants x {self.layout.width} sums from variant {self.first_variant}"
        n = ", ".join(f"{p}: {mo.n:,}" for p, mo in zip(self.phenotypes[:5], self.moments))
        more = f", ... ({len(self.phenotypes)} phenotypes)" if len(self.phenotypes) > 5 else ""
        return (f"SufficientStats({n}{more} samples; {len(self.covariates)} covariates; {shape}; "
                f"missing calls: {self.mode}" + (f"; {len(self.sources)} batch(es)" if self.sources else "") + ")")

    def __post_init__(self) -> None:
        if len(self.moments) != len(self.phenotypes):
            raise ValueError(f"SufficientStats: {len(self.moments)} moments for {len(self.phenotypes)} phenotypes")
        if self.per_variant is not None and self.per_variant.shape[1:] != (self.layout.width,):
            raise ValueError(f"SufficientStats.per_variant: expected {self.layout.width} columns, "
                             f"found shape {self.per_variant.shape}")
        if self.variants is not None and self.per_variant is not None and \
                self.variants.num_rows != self.per_variant.shape[0]:
            raise ValueError(f"SufficientStats.variants: {self.variants.num_rows} rows for "
                             f"{self.per_variant.shape[0]} variants")

    # -- shape ---------------------------------------------------------------------------------

    @property
    def layout(self) -> StatLayout:
        if self.regenie is not None:
            return StatLayout(len(self.covariates), 2 * len(self.phenotypes) + 1, "mean")
        return StatLayout(len(self.covariates) + (1 if self.sexchr is not None else 0), len(self.phenotypes),
                          self.mode)

    @property
    def n_variants(self) -> int:
        return 0 if self.per_variant is None else int(self.per_variant.shape[0])

    def n_samples(self, phenotype: str | int) -> int:
        """Samples analysed for a phenotype (by name or index)."""
        t = phenotype if isinstance(phenotype, int) else self.phenotypes.index(phenotype)
        return self.moments[t].n

    def block(self, first: int, per_variant: np.ndarray, variants: pa.Table | None = None) -> "SufficientStats":
        """The same global moments with the per-variant rows of a block of variants."""
        return replace(self, per_variant=per_variant, first_variant=first, variants=variants)

    # -- the algebra ---------------------------------------------------------------------------

    def _check_compatible(self, other: "SufficientStats", op: str) -> None:
        if not isinstance(other, SufficientStats):
            raise TypeError(f"SufficientStats {op} {type(other).__name__}: both operands must be SufficientStats")
        for what in ("phenotypes", "covariates", "mode"):
            if getattr(self, what) != getattr(other, what):
                raise ModelError(f"statistics {op}: the {what} differ ({getattr(self, what)} vs "
                                 f"{getattr(other, what)}); only statistics of the same model add up")
        if (self.per_variant is None) != (other.per_variant is None) or (
                self.per_variant is not None and other.per_variant is not None
                and (self.per_variant.shape != other.per_variant.shape or self.first_variant != other.first_variant)):
            raise ModelError(f"statistics {op}: they cover different variants ({self.n_variants} from "
                             f"{self.first_variant} vs {other.n_variants} from {other.first_variant})")
        if self.variants is not None and other.variants is not None and not self.variants.equals(other.variants):
            raise ModelError(f"statistics {op}: the variant lists differ (IDs, positions, alleles or order); "
                             "compress every batch against the same variants")

    def _combine(self, other: "SufficientStats", sign: float, op: str) -> "SufficientStats":
        self._check_compatible(other, op)
        if (self.offsets is None) != (other.offsets is None) or (
                self.offsets is not None and other.offsets is not None and set(self.offsets) != set(other.offsets)):
            raise ModelError(f"statistics {op}: one has LOCO offsets (--pred) for chromosomes "
                             f"{sorted(self.offsets or ())}, the other for {sorted(other.offsets or ())}; "
                             "compress every batch or party with --pred, or none")
        sources = None
        if self.sources is not None and other.sources is not None:
            if sign > 0 and self.sources & other.sources:
                raise ModelError(f"statistics {op}: both hold the same batch ({len(self.sources & other.sources)} "
                                 "batch(es) in common); each batch's samples may be added once")
            # a withdrawal of whole batches drops them; of some samples (statistics compressed apart,
            # with keep=), the batches stay
            sources = self.sources | other.sources if sign > 0 else (
                self.sources - other.sources if other.sources <= self.sources else self.sources)
        if (self.regenie is None) != (other.regenie is None):
            raise ModelError(f"statistics {op}: one has REGENIE's test (--pred-test regenie), the other not; "
                             "compress every batch or party with the same --pred-test")
        if (self.sexchr is None) != (other.sexchr is None):
            raise ModelError(f"statistics {op}: one models chrX/Y/MT as plink2 does, the other as autosomes; "
                             "compress every batch or party with this version of dash-spark")
        moments = tuple(a + b if sign > 0 else a - b for a, b in zip(self.moments, other.moments))
        V = None
        if self.per_variant is not None and other.per_variant is not None:
            V = self.per_variant + sign * other.per_variant
        offsets = None
        if self.offsets is not None and other.offsets is not None:
            their = other.offsets
            offsets = {c: (a + sign * their[c][0], b + sign * their[c][1]) for c, (a, b) in self.offsets.items()}
        sexchr = None
        if self.sexchr is not None and other.sexchr is not None:
            sexchr = self.sexchr.combine(other.sexchr, int(sign))
        regenie = None
        if self.regenie is not None and other.regenie is not None:
            regenie = self.regenie.combine(other.regenie, int(sign))
        return replace(self, moments=moments, n_freq=self.n_freq + int(sign) * other.n_freq, per_variant=V,
                       variants=self.variants if self.variants is not None else other.variants, offsets=offsets,
                       sexchr=sexchr, sources=sources, regenie=regenie)

    def __add__(self, other: "SufficientStats") -> "SufficientStats":
        """Merge: the statistics of the union of two disjoint sample sets."""
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: "SufficientStats") -> "SufficientStats":
        """Withdraw: the statistics without ``other``'s samples (which must be among ``self``'s)."""
        return self._combine(other, -1.0, "-")

    def __radd__(self, other):  # sum([...]) starts from 0
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    # -- finalize ------------------------------------------------------------------------------

    def check(self, *, where: str = "") -> None:
        """Raise :class:`ModelError` when a phenotype's pooled covariates are rank-deficient or
        its samples too few (before any per-variant work)."""
        prefix = f"{where}: " if where else ""
        for t, name in enumerate(self.phenotypes):
            self.moments[t].basis(self.covariates, where=f"{prefix}phenotype {name}")

    def finalize_stats(self, chroms: np.ndarray | None = None) -> list[tuple[str, VariantStats]]:
        """Per-phenotype :class:`~dash_spark.stats.regression.VariantStats` of every variant.

        With LOCO offsets, ``chroms`` (each variant's chromosome; default: the statistics' own
        variant list) picks each variant's moments."""
        if self.per_variant is None:
            raise ModelError("finalize: these statistics hold no variants (a covariates-only regression); "
                             "use regression_table()")
        V = self.per_variant
        if self.regenie is not None:
            raise ModelError("finalize_stats: statistics of REGENIE's test are finalized by finalize() (it leaves "
                             "untested variants out)")
        if self.sexchr is not None:
            if chroms is None:
                chroms = self._chroms()
            return self._finalize_sexchr(V, row_classes(chroms))
        if not self.offsets:
            return [(name, self._finalize_one(t, self.moments[t], V)) for t, name in enumerate(self.phenotypes)]
        if chroms is None:
            chroms = self._chroms()
        chroms = np.asarray(chroms, dtype=object)
        missing = sorted(set(chroms.tolist()) - set(self.offsets))
        if missing:
            raise ModelError(f"finalize: no LOCO offsets for chromosome(s) {', '.join(map(str, missing))}")
        named = []
        for t, name in enumerate(self.phenotypes):
            parts = []
            for c, (Cty, yty) in self.offsets.items():
                rows = np.flatnonzero(chroms == c)
                if len(rows):
                    mo = replace(self.moments[t], Cty=np.asarray(Cty)[t], yty=float(np.asarray(yty)[t]))
                    parts.append((rows, self._finalize_one(t, mo, V[rows])))
            named.append((name, _scatter(parts, V.shape[0])))
        return named

    def _rows(self) -> np.ndarray:
        """The per-variant rows (a ModelError for statistics without variants)."""
        if self.per_variant is None:
            raise ModelError("these statistics hold no variants (a covariates-only regression); use "
                             "regression_table()")
        return self.per_variant

    def _chroms(self) -> np.ndarray:
        if self.variants is None:
            raise ModelError("finalize: statistics with LOCO offsets or sex-chromosome models need the variants' "
                             "chromosomes")
        return np.asarray(self.variants.column("chrom").to_numpy(zero_copy_only=False), dtype=object)

    def _finalize_sexchr(self, V: np.ndarray, classes: np.ndarray) -> list[tuple[str, VariantStats]]:
        """:meth:`finalize_stats` of a model with sex-chromosome statistics: autosomes and chrMT with
        the phenotype's own moments, chrX with its known-sex moments (and ``SEX`` where the pooled
        samples of the phenotype have both sexes, as plink2), chrY with the males' moments; the
        haploid classes' A1 frequencies per allele."""
        sx, k = self.sexchr, len(self.covariates)
        assert sx is not None  # noqa: S101 - called for statistics with sex-chromosome sums only
        lay = self.layout
        named = []
        for t, name in enumerate(self.phenotypes):
            parts = []
            for cls in dict.fromkeys(classes.tolist()):
                rows = np.flatnonzero(classes == cls)
                keep = list(range(k))
                mo = self.moments[t]
                if cls == "X":
                    mo = sx.moments["X"][t]
                    if not sx.both_sexes:
                        if self.moments[t].n != mo.n:
                            raise ModelError(
                                f"phenotype {name}: the pooled samples are not of both sexes, so plink2 would test "
                                f"chrX on all {self.moments[t].n} of them, {self.moments[t].n - mo.n} of unknown sex "
                                "included, whose chrX sums these statistics leave out; give every sample's sex, or "
                                "leave chrX out of the batches' genotype files")
                    elif mo.n * mo.CtC[k, k] - mo.Ct1[k] ** 2 > 0:  # SEX varies among its samples
                        keep = list(range(k + 1))
                elif cls == "Y":
                    mo = sx.moments["Y"][t]
                names = list(self.covariates) + ["SEX"]
                mo_k = mo if len(keep) == k + 1 else mo.restrict(keep)
                lay_k, Vk = restrict_per_variant(lay, V[rows], keep)
                st = self._finalize_one(t, mo_k, Vk, names=[names[j] for j in keep], lay=lay_k)
                if cls:
                    scale = CLASS_SCALE[cls]
                    st = replace(st, alt_freq=st.alt_freq / scale, mach_r2=None)
                parts.append((rows, st))
            named.append((name, _scatter(parts, V.shape[0])))
        return named

    def _finalize_one(self, t: int, mo: Moments, V: np.ndarray, *, names=None,
                      lay: StatLayout | None = None) -> VariantStats:
        """Phenotype ``t``'s statistics of the per-variant rows ``V`` with the global moments ``mo``
        (``names``, ``lay``: the covariates and layout of ``V``; default: the statistics' own)."""
        names = list(self.covariates) if names is None else names
        lay, k = (self.layout if lay is None else lay), len(names)
        iu = np.triu_indices(k)
        name = self.phenotypes[t]
        basis = mo.basis(names, where=f"phenotype {name}")
        cc = CovariateCorrelation.from_moments(mo.CtC, mo.Ct1, mo.n, basis.L.T)
        col = {s: V[:, lay.of(t, s)] for s in ("Ctx", "yx", "sx", "sxx", "Ctm", "ym", "miss")}
        sums = dict(Qx=basis.to_q(col["Ctx"]), yx=col["yx"], sx=col["sx"][:, 0], sxx=col["sxx"][:, 0],
                    Qm=basis.to_q(col["Ctm"]), miss=np.rint(col["miss"][:, 0]),
                    Qy=basis.to_q(mo.Cty)[:, None], yy=np.array([mo.yty]), n=mo.n, cc=cc)
        if self.mode == "mean":
            return finalize_mean_imputed(ym=col["ym"], **sums)[0]
        # Q_M'Q_M is only read for variants with missing calls
        has = sums["miss"] > 0
        if has.any():
            CmCm = np.zeros((int(has.sum()), k, k))
            CmCm[:, iu[0], iu[1]] = V[has][:, lay.of(t, "CmCm")]
            CmCm[:, iu[1], iu[0]] = V[has][:, lay.of(t, "CmCm")]
            Linv = solve_triangular(basis.L, np.eye(k), lower=True)
            QmQm = np.zeros((V.shape[0], k, k))
            QmQm[has] = Linv @ CmCm @ Linv.T
        else:
            QmQm = np.broadcast_to(np.zeros((k, k)), (V.shape[0], k, k))
        Qmy = basis.to_q(V[:, lay.of(t, "Cmy")])[:, :, None]
        return finalize_complete_case(QmQm=QmQm, Qmy=Qmy, ymy=V[:, lay.of(t, "ymy")], **sums)[0]

    def finalize(self, variants: pa.Table | None = None, *, count_alt: bool | None = None,
                 a1freq_floor: float = 0.0) -> pa.Table:
        """Per-variant results of every phenotype as an Arrow table with the ``results.parquet``
        columns (:data:`dash_spark.stats.results.RESULT_SCHEMA`).

        ``variants`` (``chrom, pos, id, ref, alt``; default: the statistics' own) labels the rows.
        A1 follows plink2's rule (the non-major allele over the ``n_freq`` samples), or is always
        ALT with ``count_alt`` (default: when the variants have no alleles, i.e. features).
        """
        meta = variants if variants is not None else self.variants
        m = self.n_variants
        if meta is None:
            dot = pa.array(["."] * m, type=pa.string())
            meta = pa.table({"chrom": pa.array(["NA"] * m, type=pa.string()),
                             "pos": pa.array(np.arange(self.first_variant + 1, self.first_variant + m + 1)),
                             "id": pa.array([f"v{self.first_variant + i + 1}" for i in range(m)]),
                             "ref": dot, "alt": dot})
        cols = tuple(np.asarray(meta.column(c).to_numpy(zero_copy_only=False)) for c in ("chrom", "id", "pos", "alt", "ref"))
        if count_alt is None:
            count_alt = bool(np.all(cols[3] == "."))
        vidx = np.arange(self.first_variant, self.first_variant + m, dtype=np.int64)
        return pa.Table.from_batches([self.results_batch(vidx, cols, count_alt=count_alt,
                                                         a1freq_floor=a1freq_floor)])

    def results_batch(self, vidx: np.ndarray, cols: tuple, *, count_alt: bool, a1freq_floor: float = 0.0):
        """The results (``results.parquet`` columns) of the per-variant rows as one Arrow batch:
        ``vidx`` their variant indices, ``cols`` their ``(chrom, id, pos, alt, ref)`` arrays."""
        from .results import results_batch

        V, lay = self._rows(), self.layout
        freq_alt, freq_called = V[:, lay.freq_alt], self.n_freq - V[:, lay.freq_miss]
        if self.regenie is not None:  # REGENIE's test: ALLELE1 is ALT, untested variants are left out
            tested, named = regenie_from_sums(self.regenie, self.moments, self.phenotypes,
                                              lambda t, s: V[:, lay.of(t, s)], np.asarray(cols[0], dtype=object))
            return results_batch(vidx[tested], tuple(c[tested] for c in cols), freq_alt[tested],
                                 freq_called[tested], named, count_alt=True, a1freq_floor=a1freq_floor)
        if self.sexchr is None:
            named = self.finalize_stats(cols[0] if self.offsets else None)
        else:
            # each class's frequencies: allele-weighted sums of the unscaled dosages (the class's
            # frequency column is its allele weights; its dosages were scaled before the sums);
            # chrY is not tested when no pooled sample is male (as plink2 and the scan skip it)
            classes = row_classes(cols[0])
            keep = ~((classes == "Y") & (self.sexchr.males == 0))
            freq_alt, freq_called = freq_alt.copy(), freq_called.copy()
            for cls, scale in CLASS_SCALE.items():
                rows = classes == cls
                freq_alt[rows] = V[rows, lay.freq_alt] / scale
                freq_called[rows] = self.sexchr.n_freq[cls] - V[rows, lay.freq_miss]
            if not keep.all():
                V, vidx, cols, classes = V[keep], vidx[keep], tuple(c[keep] for c in cols), classes[keep]
                freq_alt, freq_called = freq_alt[keep], freq_called[keep]
            named = self._finalize_sexchr(V, classes)
        return results_batch(vidx, cols, freq_alt, freq_called, named, count_alt=count_alt, a1freq_floor=a1freq_floor)

    def regression_table(self, phenotype: str | int, covariates=None, *, where: str | None = None) -> pa.Table:
        """Note section 2: OLS of one phenotype on the covariates from the moments alone.

        ``beta = (C'C)^{-1} C'y``, ``rss = y'y - beta'C'y``, ``dof = n - k``,
        ``se = sqrt(diag((C'C)^{-1}) rss / dof)``: what statsmodels reports for the pooled data.
        ``covariates`` renames the columns (default: the statistics' own names).
        """
        t = phenotype if isinstance(phenotype, int) else self.phenotypes.index(phenotype)
        names = list(covariates if covariates is not None else self.covariates)
        return moments_regression(self.moments[t], names, where=where or f"phenotype {self.phenotypes[t]}")

    # -- conditioning (forward selection) ------------------------------------------------------

    def condition(self, phenotype: int, dense_moments: Moments, names, zx: np.ndarray, zm: np.ndarray,
                  zmm: np.ndarray | None = None, zmc: np.ndarray | None = None) -> "SufficientStats":
        """The statistics of phenotype ``phenotype`` alone with ``q`` more covariates ``Z``.

        ``dense_moments``: this phenotype's moments already augmented with ``Z``
        (:meth:`Moments.augment`) and possibly restricted; ``names``: the covariate names of that
        model. Per variant: ``zx`` (m x q) ``sum x_j z`` over its calls; ``zm`` (m x q) ``sum z``
        over its missing calls; drop mode also ``zmm`` (m x q x q) ``sum z z'`` and ``zmc``
        (m x q x (k+1)) ``sum z [c, y]'`` over its missing calls.
        """
        if self.sexchr is not None or self.regenie is not None:
            raise ModelError("forward selection does not condition chrX/Y/MT (plink2's models) or REGENIE's test "
                             "yet; select on statistics of the autosomes with the Wald test")
        V = augment_per_variant(self.layout, self._rows(), phenotype, zx, zm, zmm, zmc)
        return SufficientStats(phenotypes=(self.phenotypes[phenotype],), covariates=tuple(names), mode=self.mode,
                               moments=(dense_moments,), n_freq=self.n_freq, per_variant=V,
                               first_variant=self.first_variant, variants=self.variants)

    # -- arrays (ring encoding, files) ---------------------------------------------------------

    def moment_arrays(self) -> dict[str, np.ndarray]:
        """The global moments as named float64 arrays (``n_freq``, ``t<i>.n``, ``t<i>.CtC`` ...)."""
        out: dict[str, np.ndarray] = {"n_freq": np.array([float(self.n_freq)])}
        for t, mo in enumerate(self.moments):
            out[f"t{t}.n"] = np.array([float(mo.n)])
            out[f"t{t}.CtC"] = np.asarray(mo.CtC, dtype=np.float64)
            out[f"t{t}.Ct1"] = np.asarray(mo.Ct1, dtype=np.float64)
            out[f"t{t}.Cty"] = np.asarray(mo.Cty, dtype=np.float64)
            out[f"t{t}.yty"] = np.array([float(mo.yty)])
        for c, (Cty, yty) in (self.offsets or {}).items():
            out[f"o.{c}.Cty"] = np.asarray(Cty, dtype=np.float64)
            out[f"o.{c}.yty"] = np.asarray(yty, dtype=np.float64)
        if self.regenie is not None:
            out.update(self.regenie.arrays())
        if self.sexchr is not None:
            sx = self.sexchr
            out["s.males"], out["s.known"] = np.array([float(sx.males)]), np.array([float(sx.known)])
            for c in sorted(sx.n_freq):
                out[f"s.{c}.n_freq"] = np.array([float(sx.n_freq[c])])
            for c in sorted(sx.moments):
                for t, mo in enumerate(sx.moments[c]):
                    out[f"s.{c}.t{t}.n"] = np.array([float(mo.n)])
                    out[f"s.{c}.t{t}.CtC"] = np.asarray(mo.CtC, dtype=np.float64)
                    out[f"s.{c}.t{t}.Ct1"] = np.asarray(mo.Ct1, dtype=np.float64)
                    out[f"s.{c}.t{t}.Cty"] = np.asarray(mo.Cty, dtype=np.float64)
                    out[f"s.{c}.t{t}.yty"] = np.array([float(mo.yty)])
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every statistic as a named float64 array, for the ring encoding: :meth:`moment_arrays`
        plus ``variants`` (the per-variant matrix) when there is one."""
        out = self.moment_arrays()
        if self.per_variant is not None:
            out["variants"] = self.per_variant
        return out

    @classmethod
    def from_arrays(cls, arrays, phenotypes, covariates, mode: str, *, variants: pa.Table | None = None,
                    first_variant: int = 0) -> "SufficientStats":
        """The inverse of :meth:`to_arrays` (counts are rounded back to integers)."""
        moments = []
        for t in range(len(phenotypes)):
            moments.append(Moments(n=int(round(float(arrays[f"t{t}.n"][0]))), CtC=np.asarray(arrays[f"t{t}.CtC"]),
                                   Ct1=np.asarray(arrays[f"t{t}.Ct1"]), Cty=np.asarray(arrays[f"t{t}.Cty"]),
                                   yty=float(arrays[f"t{t}.yty"][0])))
        V = arrays.get("variants")
        T, k = len(phenotypes), len(covariates)
        offsets = {}
        for key in arrays:
            if key.startswith("o.") and key.endswith(".Cty"):
                c = key[2:-4]
                offsets[c] = (np.asarray(arrays[key], dtype=np.float64).reshape(T, k),
                              np.asarray(arrays[f"o.{c}.yty"], dtype=np.float64).reshape(T))
        sexchr = None
        if "s.males" in arrays:
            k1 = k + 1

            def class_moments(c):
                return tuple(Moments(n=int(round(float(arrays[f"s.{c}.t{t}.n"][0]))),
                                     CtC=np.asarray(arrays[f"s.{c}.t{t}.CtC"], dtype=np.float64).reshape(k1, k1),
                                     Ct1=np.asarray(arrays[f"s.{c}.t{t}.Ct1"], dtype=np.float64).reshape(k1),
                                     Cty=np.asarray(arrays[f"s.{c}.t{t}.Cty"], dtype=np.float64).reshape(k1),
                                     yty=float(arrays[f"s.{c}.t{t}.yty"][0])) for t in range(T))

            sexchr = SexChromStats(moments={c: class_moments(c) for c in ("X", "Y")},
                                   n_freq={c: float(arrays[f"s.{c}.n_freq"][0]) for c in CLASS_SCALE},
                                   males=int(round(float(arrays["s.males"][0]))),
                                   known=int(round(float(arrays["s.known"][0]))))
        return cls(phenotypes=tuple(phenotypes), covariates=tuple(covariates), mode=mode, moments=tuple(moments),
                   n_freq=int(round(float(arrays["n_freq"][0]))), per_variant=None if V is None else np.asarray(V),
                   first_variant=first_variant, variants=variants, offsets=offsets or None, sexchr=sexchr,
                   regenie=RegenieSums.from_arrays(arrays, T, k))


def _scatter(parts, m: int) -> VariantStats:
    """One :class:`VariantStats` of ``m`` rows from ``(rows, VariantStats of those rows)`` pieces."""
    fields = ("beta", "se", "t_stat", "neg_log10_p", "p", "obs_ct", "alt_freq", "errcode", "mach_r2")
    out: dict = {}
    for f in fields:
        given = [getattr(st, f) for _, st in parts if getattr(st, f) is not None]
        if not given:
            out[f] = None
            continue
        arr = np.zeros(m, dtype=np.asarray(given[0]).dtype)
        for rows, st in parts:
            arr[rows] = np.nan if getattr(st, f) is None else getattr(st, f)  # mach_r2: none on sex chromosomes
        out[f] = arr
    return VariantStats(**out)


def moments_regression(mo: Moments, names: list[str], *, where: str) -> pa.Table:
    """OLS of ``y`` on ``C`` from :class:`Moments` (see :meth:`SufficientStats.regression_table`)."""
    k = len(names)
    basis = mo.basis(names, where=where)
    Linv = solve_triangular(basis.L, np.eye(k), lower=True)
    inv = Linv.T @ Linv
    qy = Linv @ mo.Cty
    beta = Linv.T @ qy
    rss = max(float(mo.yty - qy @ qy), 0.0)
    dof = mo.n - k
    se = np.sqrt(np.diag(inv) * rss / dof)
    tstat = beta / se
    p, nl = t_pvalues(tstat, float(dof))
    return pa.table({"covariate": names, "beta": beta, "se": se, "t_stat": tstat, "p": p,
                     "neg_log10_p": nl, "obs_ct": np.full(k, mo.n, dtype=np.int64)})


def augment_per_variant(layout: StatLayout, V: np.ndarray, t: int, zx: np.ndarray, zm: np.ndarray,
                        zmm: np.ndarray | None = None, zmc: np.ndarray | None = None) -> np.ndarray:
    """Per-variant statistics of phenotype ``t`` alone with ``q`` covariates ``Z`` appended
    (layout ``StatLayout(k + q, 1, mode)``); see :meth:`SufficientStats.condition`."""
    k, mode = layout.k, layout.mode
    m, q = zx.shape
    k2 = k + q
    lay2 = StatLayout(k2, 1, mode)
    out = np.zeros((m, lay2.width))

    def col(s):
        return V[:, layout.of(t, s)]

    out[:, lay2.of(0, "Ctx")] = np.hstack([col("Ctx"), zx])
    out[:, lay2.of(0, "Ctm")] = np.hstack([col("Ctm"), zm])
    for s in ("yx", "sx", "sxx", "ym", "miss"):
        out[:, lay2.of(0, s)] = col(s)
    if mode == "drop":  # the missing calls' blocks are zero for variants without any: fill the others
        r = np.flatnonzero(col("miss")[:, 0] > 0)
        iu = np.triu_indices(k)
        full = np.zeros((len(r), k2, k2))
        full[:, iu[0], iu[1]] = V[r][:, layout.of(t, "CmCm")]
        full[:, iu[1], iu[0]] = V[r][:, layout.of(t, "CmCm")]
        assert zmc is not None and zmm is not None  # noqa: S101 - drop mode passes both
        full[:, k:, :k] = zmc[r, :, :k]
        full[:, :k, k:] = np.transpose(zmc[r, :, :k], (0, 2, 1))
        full[:, k:, k:] = zmm[r]
        iu2 = np.triu_indices(k2)
        sl = lay2.of(0, "CmCm")
        out[np.ix_(r, np.arange(sl.start, sl.stop))] = full[:, iu2[0], iu2[1]]
        out[:, lay2.of(0, "Cmy")] = np.hstack([col("Cmy"), zmc[:, :, k]])
        out[:, lay2.of(0, "ymy")] = col("ymy")
    out[:, lay2.freq_alt] = V[:, layout.freq_alt]
    out[:, lay2.freq_miss] = V[:, layout.freq_miss]
    return out


def restrict_per_variant(layout: StatLayout, V: np.ndarray, keep) -> tuple[StatLayout, np.ndarray]:
    """The per-variant rows ``V`` of ``layout`` with only covariate columns ``keep`` (indices, in
    order): ``(StatLayout of len(keep) covariates, rows)``."""
    keep = list(keep)
    if keep == list(range(layout.k)):
        return layout, V
    lay2 = StatLayout(len(keep), layout.n_phenotypes, layout.mode)
    out = np.zeros((V.shape[0], lay2.width))
    tri = {(int(i), int(j)): p for p, (i, j) in enumerate(zip(*np.triu_indices(layout.k)))}
    tri_keep = [tri[(a, b)] for a, b in zip(*[np.asarray(keep)[ix] for ix in np.triu_indices(len(keep))])]
    for t in range(layout.n_phenotypes):
        for s in ("Ctx", "Ctm", "Cmy"):
            if layout.mode == "drop" or s != "Cmy":
                out[:, lay2.of(t, s)] = V[:, layout.of(t, s)][:, keep]
        for s in ("yx", "sx", "sxx", "ym", "miss") + (("ymy",) if layout.mode == "drop" else ()):
            out[:, lay2.of(t, s)] = V[:, layout.of(t, s)]
        if layout.mode == "drop":
            out[:, lay2.of(t, "CmCm")] = V[:, layout.of(t, "CmCm")][:, tri_keep]
    out[:, lay2.freq_alt] = V[:, layout.freq_alt]
    out[:, lay2.freq_miss] = V[:, layout.freq_miss]
    return lay2, out


def block_statistics(layout: StatLayout, a_offsets, b_offsets, SX: np.ndarray, SXX: np.ndarray, SM: np.ndarray,
                     grams) -> np.ndarray:
    """Per-variant rows of ``S`` [shape: (m, layout.width)] from the kernel's sums of a block.

    The weight matrix has, per phenotype ``t``, the masked raw covariates, the phenotype and its
    mask at columns ``a_offsets[t] ..`` of A and the mask at ``b_offsets[t]`` of B, then the
    kept-samples and frequency-sample masks last. ``grams(a, k, todo)`` returns the missing calls'
    ``(C_M'C_M, C_M'y, y_M'y_M)`` for the variants ``todo`` (drop mode only).
    """
    k = layout.k
    out = np.zeros((SX.shape[0], layout.width))
    iu = np.triu_indices(k)
    for t in range(layout.n_phenotypes):
        a, b = a_offsets[t], b_offsets[t]
        out[:, layout.of(t, "Ctx")] = SX[:, a : a + k]
        out[:, layout.of(t, "yx")] = SX[:, a + k : a + k + 1]
        out[:, layout.of(t, "sx")] = SX[:, a + k + 1 : a + k + 2]
        out[:, layout.of(t, "sxx")] = SXX[:, b : b + 1]
        out[:, layout.of(t, "Ctm")] = SM[:, a : a + k]
        out[:, layout.of(t, "ym")] = SM[:, a + k : a + k + 1]
        out[:, layout.of(t, "miss")] = SM[:, a + k + 1 : a + k + 2]
        if layout.mode == "drop":
            CmCm, Cmy, ymy = grams(a, k, SM[:, a + k + 1] > 0)
            out[:, layout.of(t, "CmCm")] = CmCm[:, iu[0], iu[1]]
            out[:, layout.of(t, "Cmy")] = Cmy[:, :, 0]
            out[:, layout.of(t, "ymy")] = ymy
    out[:, layout.freq_alt] = SX[:, -1]
    out[:, layout.freq_miss] = SM[:, -1]
    return out
