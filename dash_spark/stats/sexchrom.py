"""plink2's sex-chromosome classes, and the additive statistics a statistics model keeps for them.

plink2's ``--glm`` treats chrX (23), chrY (24) and chrMT (26) apart from the autosomes (XY, 25, the
pseudo-autosomal region, is diploid): chrX on the samples of known sex with a ``SEX`` covariate
when both sexes are present (``--xchr-model 2``: dosages 0..2 for males too), chrY on males only and
chrMT on everyone, both haploid (dosages halved, each sample one allele in the frequencies).

A statistics model (a store batch, a party) cannot decide what depends on the pooled samples (are
both sexes present? does a phenotype have both?), so it always computes chrX's statistics with the
``SEX`` column on the samples of known sex, chrY's on the males, and keeps the moments of those
sample sets (:class:`SexChromStats`); finalize then decides from the pooled sums what plink2 decides
from the pooled samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the dosage factor of a class in the regression (haploid calls count 0..1)
CLASS_SCALE = {"X": 1.0, "Y": 0.5, "MT": 0.5}
_NUMBERS = {"23": "X", "X": "X", "24": "Y", "Y": "Y", "26": "MT", "MT": "MT", "M": "MT"}


def sex_chrom_class(name) -> str | None:
    """``"X"``, ``"Y"``, ``"MT"`` for plink2's names and numbers of those chromosomes (a ``chr``
    prefix and leading zeros allowed), else None (autosomes, XY and other contigs)."""
    key = str(name).strip()
    if key.lower().startswith("chr"):
        key = key[3:]
    if key.isdigit():
        key = str(int(key))
    return _NUMBERS.get(key.upper())


def row_classes(chroms) -> np.ndarray:
    """Each variant's class (``""`` for an autosome) from its chromosome name."""
    chroms = np.asarray(chroms, dtype=object)
    names = {c: sex_chrom_class(c) or "" for c in dict.fromkeys(chroms.tolist())}
    return np.array([names[c] for c in chroms.tolist()], dtype=object)


@dataclass(frozen=True, eq=False)
class SexChromStats:
    """The sums a statistics model keeps for its sex-chromosome variants, additive over batches:

    - ``moments``: per class (``"X"``, ``"Y"``) each phenotype's :class:`~dash_spark.stats.sufficient.Moments`
      of that class's samples (chrX: known sex, covariates plus ``SEX`` coded 1 male, 2 female;
      chrY: males, covariates plus a zero column); chrMT uses the autosomes' moments;
    - ``n_freq``: per class, the sum of the frequency samples' allele weights (1 diploid, 0.5 one
      allele; chrY: males only), the denominator of A1's frequency;
    - ``males``, ``known``: the kept samples that are male, and of known sex (plink2 adds ``SEX``
      on chrX when both sexes are present among them).
    """

    moments: dict
    n_freq: dict
    males: int
    known: int

    def combine(self, other: "SexChromStats", sign: int) -> "SexChromStats":
        moments = {c: tuple(a + b if sign > 0 else a - b for a, b in zip(self.moments[c], other.moments[c]))
                   for c in self.moments}
        return SexChromStats(moments=moments, n_freq={c: self.n_freq[c] + sign * other.n_freq[c] for c in self.n_freq},
                             males=self.males + sign * other.males, known=self.known + sign * other.known)

    @property
    def both_sexes(self) -> bool:
        """plink2's rule: some kept samples are male and some are of the other known sex."""
        return 0 < self.males < self.known


__all__ = ["CLASS_SCALE", "SexChromStats", "row_classes", "sex_chrom_class"]
