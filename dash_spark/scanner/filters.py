"""plink2-style sample and variant filters.

Driver side (metadata only, no genotype bytes): ``--keep/--remove`` (sample-ID files),
``--chr`` (lists and ranges), ``--from-bp/--to-bp``, ``--extract/--exclude`` (variant-ID files).
Executor side, from the sums each task computes anyway (no extra pass over the genotypes):
``--maf``, ``--mac`` (over the founders among the kept samples, as plink2 counts allele
frequencies) and ``--geno`` (missing-call rate over the kept samples).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError
from ..io.tables import read_sample_ids

log = logging.getLogger("dash_spark")


@dataclass(frozen=True)
class CallFilters:
    """Thresholds applied per variant in the tasks (None: not applied)."""

    maf: float | None = None
    mac: float | None = None
    geno: float | None = None
    #: ``--mach-r2-filter MIN MAX``: keep variants whose MaCH r-squared over the kept samples is in
    #: [MIN, MAX] (plink2; a variant whose r-squared is undefined, p = 0 or 1, is kept)
    mach_r2: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.maf, self.mac, self.geno, self.mach_r2))

    def describe(self) -> str:
        """The thresholds applied, as the options that set them: ``--maf 0.6, --geno 0``."""
        out = [f"--{name} {v:g}" for name, v in (("maf", self.maf), ("mac", self.mac), ("geno", self.geno))
               if v is not None]
        if self.mach_r2 is not None:
            out.append(f"--mach-r2-filter {self.mach_r2[0]:g} {self.mach_r2[1]:g}")
        return ", ".join(out)

    def none_passed(self, n_variants: int) -> InputError:
        """The error for a scan in which these thresholds removed all ``n_variants`` variants tested."""
        flags = self.describe()
        return InputError(
            f"{flags}: no variant passes the call filters; expected at least 1 of the {n_variants:,} selected "
            f"variants to pass, found 0 ({n_variants:,} of {n_variants:,} variants removed). Relax {flags}"
        )

    def keep(self, alt_sum: np.ndarray, called: np.ndarray, missing_kept: np.ndarray, n_kept: int,
             kept_sums: tuple | None = None) -> np.ndarray:
        """Boolean mask of variants passing; ``alt_sum``/``called`` over the frequency samples;
        ``kept_sums`` = ``(sum x, sum x^2)`` over the kept samples' calls, for ``--mach-r2-filter``
        (``None``: not applied to these variants)."""
        ok = np.ones(len(alt_sum), dtype=bool)
        if self.mach_r2 is not None and kept_sums is not None:
            from ..stats.regression import mach_r2

            r2 = mach_r2(kept_sums[0], kept_sums[1], n_kept - missing_kept)
            ok &= np.isnan(r2) | ((r2 >= self.mach_r2[0]) & (r2 <= self.mach_r2[1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.maf is not None or self.mac is not None:
                minor_count = np.minimum(alt_sum, 2.0 * called - alt_sum)
                if self.maf is not None:
                    ok &= np.where(called > 0, minor_count / (2.0 * called), 0.0) >= self.maf
                if self.mac is not None:
                    ok &= minor_count >= self.mac
            if self.geno is not None:
                ok &= missing_kept / max(n_kept, 1) <= self.geno
        return ok


def sample_mask(iids: tuple[str, ...], keep: str | None, remove: str | None) -> np.ndarray:
    """Samples of the .fam left by ``--keep`` and ``--remove`` (IDs unknown to the .fam: counted, warned)."""
    mask = np.ones(len(iids), dtype=bool)
    index = {iid: i for i, iid in enumerate(iids)}
    for path, keep_listed in ((keep, True), (remove, False)):
        if not path:
            continue
        ids = read_sample_ids(path)
        rows = [index[i] for i in ids if i in index]
        unknown = len(ids) - len(rows)
        if unknown:
            log.warning("%s: %d of %d sample IDs are not in the .fam and are ignored", path, unknown, len(ids))
        listed = np.zeros(len(iids), dtype=bool)
        listed[rows] = True
        mask &= listed if keep_listed else ~listed
        log.info("%s %s: %d samples listed, %d of the .fam samples remain",
                 "--keep" if keep_listed else "--remove", path, len(rows), int(mask.sum()))
    return mask


def _normalise_chrom(name: str) -> str:
    name = name.strip()
    return name[3:] if name.lower().startswith("chr") else name


_CHROM_NUMBERS = {"X": 23, "Y": 24, "XY": 25, "MT": 26, "M": 26}


def chrom_key(name: str):
    """A chromosome name as plink2 compares them: a number (X, Y, XY, MT as 23-26; a ``chr``
    prefix dropped), else the name."""
    name = _normalise_chrom(name)
    if name.isdigit():
        return int(name)
    return _CHROM_NUMBERS.get(name.upper(), name)


def parse_chr_spec(spec: str) -> tuple[set[str], list[tuple[int, int]]]:
    """``"1-3,5,X"`` -> names {'5', 'X'} and numeric ranges [(1, 3)] (plink2's --chr syntax)."""
    names: set[str] = set()
    ranges: list[tuple[int, int]] = []
    for token in re.split(r"[,\s]+", spec.strip()):
        if not token:
            continue
        m = re.fullmatch(r"(?:chr)?(\d+)-(?:chr)?(\d+)", token, flags=re.IGNORECASE)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ConfigError(f"--chr: range {token!r} runs backwards; expected LOW-HIGH")
            ranges.append((lo, hi))
        else:
            names.add(_normalise_chrom(token))
    if not names and not ranges:
        raise ConfigError(f"--chr: expected chromosome names or ranges such as 1-22,X; found {spec!r}")
    return names, ranges


def _read_variant_ids(path: str) -> list[str]:
    from ..io import files

    text = files.read_text(path, "variant-ID file", verb="read")
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def variant_mask(bim, *, chr_spec: str | None = None, from_bp: int | None = None, to_bp: int | None = None,
                 extract: str | None = None, exclude: str | None = None) -> np.ndarray:
    """Variants of the .bim selected by the metadata filters; an empty selection is an error."""
    m = bim.n_variants
    sel = np.ones(m, dtype=bool)
    if chr_spec:
        names, ranges = parse_chr_spec(chr_spec)
        chrom = np.array([_normalise_chrom(c) for c in bim.chrom], dtype=object)
        # plink2's equivalences: X = 23, Y = 24, XY = 25, MT = 26 (either spelling, either side)
        want = {chrom_key(c) for c in names}
        keys = [chrom_key(c) for c in chrom]
        hit = np.array([k in want for k in keys], dtype=bool)
        if ranges:
            as_int = np.array([k if isinstance(k, int) else -1 for k in keys])
            for lo, hi in ranges:
                hit |= (as_int >= lo) & (as_int <= hi)
        if not hit.any():
            present = ", ".join(sorted(set(chrom.tolist()), key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))[:30])
            raise InputError(f"{bim.path}: --chr {chr_spec} names no variant; the .bim has chromosomes {present}")
        sel &= hit
    if from_bp is not None or to_bp is not None:
        lo = from_bp if from_bp is not None else -np.inf
        hi = to_bp if to_bp is not None else np.inf
        if lo > hi:
            raise ConfigError(f"--from-bp {from_bp} is after --to-bp {to_bp}")
        sel &= (bim.pos >= lo) & (bim.pos <= hi)
    for path, keep_listed in ((extract, True), (exclude, False)):
        if not path:
            continue
        ids = _read_variant_ids(path)
        listed = np.isin(bim.id, ids)
        unknown = len(set(ids)) - int(np.isin(np.unique(np.array(ids, dtype=object)), bim.id).sum())
        if unknown:
            log.warning("%s: %d of %d variant IDs are not in %s and are ignored", path, unknown, len(set(ids)), bim.path)
        sel &= listed if keep_listed else ~listed
    if not sel.any():
        raise InputError(f"{bim.path}: no variant is left after --chr/--from-bp/--to-bp/--extract/--exclude; "
                         "check the filters against the .bim")
    if not sel.all():
        log.info("variant filters: %d of %d variants selected", int(sel.sum()), m)
    return sel
