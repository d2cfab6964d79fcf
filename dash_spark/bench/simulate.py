"""Simulated cohorts for tests and demos, and a chunked PLINK 1 ``.bed/.bim/.fam`` writer.

Two public functions and one record:

* :func:`write_bed` encodes ALT-allele dosages, one chunk of variants at a time, into a
  SNP-major PLINK 1 fileset (``.bed`` + ``.bim`` + ``.fam``), written under temporary names and
  renamed into place at the end.
* :func:`simulate_cohort` draws a reproducible cohort - genotypes (with missing calls,
  monomorphic and rare variants), covariates and quantitative phenotypes with known causal
  variants - and writes it as a PLINK fileset plus plink2-style ``--pheno`` / ``--covar`` files.
* :class:`Cohort` lists what :func:`simulate_cohort` wrote.

Conventions used throughout
---------------------------
*Dosage* means the number of copies (0, 1 or 2) of the ALT allele, which the ``.bim`` lists in
column 5 ("allele 1", the allele that ``bed_reader.open_bed(..., count_A1=True)`` and plink2's
``--glm`` count); ``-1`` marks a missing call.  Genotype arrays handed to :func:`write_bed` are
``(n_samples, m)`` = sample x variant, as ``bed_reader`` returns them.

Nothing here imports pyspark or pandas.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["BED_MAGIC", "Cohort", "simulate_cohort", "write_bed"]

#: First three bytes of every PLINK 1 .bed file: two magic bytes and 0x01 = SNP-major.
BED_MAGIC = b"\x6c\x1b\x01"

# Target number of genotypes handled per numpy step (keeps temporaries inside the CPU caches).
_BLOCK_ELEMENTS = 1 << 20
# Below this many genotypes per chunk, simulation runs on the calling thread only.
_THREAD_MIN_ELEMENTS = 1 << 22
# SeedSequence spawn keys of the independent random streams of simulate_cohort.
_KEY_LAYOUT, _KEY_SAMPLES, _KEY_EFFECTS, _KEY_GENO, _KEY_MISSING = range(5)
_ALLELES = np.array(["A", "C", "G", "T"])
_WHITESPACE = re.compile(r"\s")


# --------------------------------------------------------------------------------------------
# PLINK 1 .bed writer
# --------------------------------------------------------------------------------------------


def _encode_rows(rows: np.ndarray, out: np.ndarray) -> None:
    """Encode variant-major dosages into PLINK 1 .bed bytes.

    ``rows``: int8, shape ``(r, 4 * nb)``, C-contiguous, one row per variant, values in
    {-1, 0, 1, 2}; pad columns (beyond the real samples) must hold ``2`` so they encode as 00.
    ``out``: uint8, shape ``(r, nb)``, C-contiguous, receives the packed bytes.

    Samples 4k..4k+3 are the four bytes of one little-endian uint32 word.  Masking keeps each
    value's two low bits ``l`` (0, 1, 2, and 3 for -1); multiplying by
    ``2^24 + 2^18 + 2^12 + 2^6`` moves the four ``l`` to bits 24-25, 26-27, 28-29, 30-31 (the
    stray partial products all land in disjoint bit pairs below bit 24, so nothing carries
    into the top byte), i.e. the top byte is ``l0 | l1<<2 | l2<<4 | l3<<6`` with the first
    sample lowest.  Last, every 2-bit field is mapped to the .bed code ``l ^ 3 ^ (l >> 1)``:
    0 -> 11, 1 -> 10, 2 -> 00, -1 -> 01.
    """
    x = rows.view("<u4") & np.uint32(0x03030303)
    x *= np.uint32(0x01041040)
    np.copyto(out, x.view(np.uint8)[:, 3::4])  # top byte of each word
    hi = out >> np.uint8(1)
    hi &= np.uint8(0x55)
    hi ^= np.uint8(0xFF)
    out ^= hi


def _check_tokens(what: str, values: Sequence[str]) -> None:
    """Raise ValueError if any of ``values`` is empty or contains whitespace."""
    joined = "\x00".join(values)
    if values and (
        _WHITESPACE.search(joined)
        or "\x00\x00" in joined
        or joined.startswith("\x00")
        or joined.endswith("\x00")
        or joined == ""
    ):
        bad = next(v for v in values if not v or _WHITESPACE.search(v))
        raise ConfigError(f"write_bed: {what} must be non-empty and free of whitespace; found {bad!r}")


def _as_str_list(what: str, values, m: int) -> list[str]:
    out = [str(v) for v in (values.tolist() if isinstance(values, np.ndarray) else values)]
    if len(out) != m:
        raise ConfigError(f"write_bed: {what} has {len(out)} entries; expected {m} (one per variant, as ids)")
    return out


def _check_range(k: int, values: np.ndarray) -> None:
    """Raise ValueError unless every entry of chunk ``k``'s ``values`` is in {-1, 0, 1, 2}."""
    lo, hi = values.min(), values.max()
    if lo < -1 or hi > 2:
        raise ConfigError(
            f"write_bed: chunk {k} holds the value {lo if lo < -1 else hi}; "
            "expected ALT dosages 0, 1, 2 or -1 for missing"
        )


def _tmp_path(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def write_bed(
    prefix: str | os.PathLike,
    n_samples: int,
    variant_chunks: Iterable[np.ndarray] | np.ndarray,
    *,
    iids: Sequence[str],
    chrom: Sequence[str] | str,
    pos: Sequence[int] | np.ndarray,
    ids: Sequence[str],
    alt: Sequence[str],
    ref: Sequence[str],
) -> None:
    """Write a SNP-major PLINK 1 fileset ``prefix.bed``, ``prefix.bim`` and ``prefix.fam``.

    Parameters
    ----------
    prefix:
        Output path without extension; its directory must exist.  Existing files are replaced.
    n_samples:
        Number of samples ``n`` (>= 1), i.e. rows of every chunk and lines of the ``.fam``.
    variant_chunks:
        Iterable of integer arrays (int8 preferred, any integer dtype accepted), each of shape
        ``(n_samples, m_chunk)`` = sample x variant, holding the dosage of the ALT allele
        (0, 1, 2) or -1 for a missing call.  Chunks are consumed one at a time, so a generator
        lets the caller write files far larger than memory.  A single 2-D array is accepted as
        one chunk.  Arrays in either memory order work; a Fortran-ordered chunk (the transpose
        of a C-ordered variant x sample array) encodes fastest.  The chunks together must hold
        exactly ``len(ids)`` variants.
    iids:
        ``n_samples`` sample IDs (unique, no whitespace); the ``.fam`` line of sample ``i`` is
        ``iid iid 0 0 0 -9`` (FID = IID, space separated).
    chrom, pos, ids, alt, ref:
        Per-variant ``.bim`` fields, ``m = len(ids)`` each (``chrom`` may also be a single
        string used for every variant).  ``.bim`` line ``j`` is
        ``chrom[j] TAB ids[j] TAB 0 TAB pos[j] TAB alt[j] TAB ref[j]``: ALT is column 5
        (PLINK's allele 1), so ``bed_reader.open_bed(prefix + ".bed", count_A1=True)`` returns
        exactly the dosages passed in (NaN where -1).

    Encoding
    --------
    ``.bed`` = the magic bytes ``6C 1B 01`` followed by ``ceil(n/4)`` bytes per variant.  Each
    byte holds 4 samples, the first in the lowest two bits; the 2-bit code counts the column-5
    allele: 2 copies -> 00, missing -> 01, 1 copy -> 10, 0 copies -> 11.  Bits past the last
    sample of a variant are 00.  File size is ``3 + m * ceil(n/4)``.

    All three files are written under temporary names (``prefix.bed.tmp-<pid>-<random>``) in
    the output directory and renamed into place only after every chunk was encoded, so a
    final name never holds a half-written file: after an error the temporaries are removed and
    any previous fileset at ``prefix`` is left as it was.

    Raises
    ------
    ValueError
        On a chunk of the wrong shape, a value outside {-1, 0, 1, 2}, a variant count that
        differs from ``len(ids)``, mismatched metadata lengths, or IDs/alleles that are empty
        or contain whitespace.
    TypeError
        On a chunk that is not an integer array.
    """
    prefix = os.fspath(prefix)
    n = int(n_samples)
    if n < 1:
        raise ConfigError(f"write_bed: n_samples must be >= 1; found {n_samples}")
    iid_list = [str(v) for v in iids]
    if len(iid_list) != n:
        raise ConfigError(f"write_bed: iids has {len(iid_list)} entries; expected n_samples = {n}")
    _check_tokens("sample IDs", iid_list)
    if len(set(iid_list)) != n:
        raise ConfigError("write_bed: sample IDs must be unique")

    id_list = [str(v) for v in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
    m = len(id_list)
    chrom_list = [str(chrom)] * m if isinstance(chrom, str) else _as_str_list("chrom", chrom, m)
    pos_arr = np.asarray(pos)
    if pos_arr.shape != (m,) or (m and not np.issubdtype(pos_arr.dtype, np.integer)):
        raise ConfigError(
            f"write_bed: pos must be {m} integers (one per variant); "
            f"found shape {pos_arr.shape}, dtype {pos_arr.dtype}"
        )
    if m and pos_arr.min() < 0:
        raise ConfigError("write_bed: positions must be >= 0")
    pos_list = [str(p) for p in pos_arr.tolist()]
    alt_list = _as_str_list("alt", alt, m)
    ref_list = _as_str_list("ref", ref, m)
    for what, values in (("chromosome names", chrom_list), ("variant IDs", id_list),
                         ("ALT alleles", alt_list), ("REF alleles", ref_list)):
        _check_tokens(what, values)

    if isinstance(variant_chunks, np.ndarray):
        variant_chunks = [variant_chunks]

    nb = (n + 3) // 4  # bytes per variant
    n4 = 4 * nb  # samples incl. padding
    block_rows = max(1, _BLOCK_ELEMENTS // n4)
    paths = {ext: f"{prefix}.{ext}" for ext in ("bed", "bim", "fam")}
    tmps = {ext: _tmp_path(p) for ext, p in paths.items()}
    try:
        with open(tmps["bed"], "xb", buffering=0) as fh:
            fh.write(BED_MAGIC)
            written = 0
            pad_buf = None
            out_buf = np.empty((block_rows, nb), dtype=np.uint8)
            for k, chunk in enumerate(variant_chunks):
                chunk = np.asarray(chunk)
                if chunk.ndim != 2 or chunk.shape[0] != n:
                    raise ConfigError(
                        f"write_bed: chunk {k} has shape {chunk.shape}; expected ({n}, m_chunk) = sample x variant"
                    )
                if not np.issubdtype(chunk.dtype, np.integer):
                    raise TypeError(
                        f"write_bed: chunk {k} has dtype {chunk.dtype}; expected int8 dosages with -1 for missing"
                    )
                mc = chunk.shape[1]
                if mc == 0:
                    continue
                if written + mc > m:
                    raise ConfigError(f"write_bed: the chunks hold more than the {m} variants described by ids")
                vm = chunk.T  # variant x sample view
                if vm.dtype != np.int8:
                    _check_range(k, vm)
                    vm = vm.astype(np.int8)
                direct = n4 == n and vm.flags.c_contiguous
                if not direct and pad_buf is None:
                    pad_buf = np.full((block_rows, n4), 2, dtype=np.int8)  # pad columns encode as 00
                for r0 in range(0, mc, block_rows):
                    r1 = min(mc, r0 + block_rows)
                    if direct:
                        rows = vm[r0:r1]
                    else:
                        assert pad_buf is not None  # noqa: S101 - made above when not direct
                        rows = pad_buf[: r1 - r0]
                        rows[:, :n] = vm[r0:r1]
                    _check_range(k, rows)  # per block, while it is in cache
                    out = out_buf[: r1 - r0]
                    _encode_rows(rows, out)
                    fh.write(memoryview(out).cast("B"))  # type: ignore[arg-type] # numpy arrays are buffers
                written += mc
            if written != m:
                raise ConfigError(f"write_bed: the chunks hold {written} variants; expected {m} (len(ids))")

        with open(tmps["bim"], "x", encoding="utf-8", newline="\n") as fh:
            fh.writelines(
                f"{c}\t{v}\t0\t{p}\t{a}\t{r}\n"
                for c, v, p, a, r in zip(chrom_list, id_list, pos_list, alt_list, ref_list)
            )
        with open(tmps["fam"], "x", encoding="utf-8", newline="\n") as fh:
            fh.writelines(f"{i} {i} 0 0 0 -9\n" for i in iid_list)
        for ext in ("bim", "fam", "bed"):
            os.replace(tmps[ext], paths[ext])
    except BaseException:
        for tmp in tmps.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise


# --------------------------------------------------------------------------------------------
# Simulated cohort
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cohort:
    """What :func:`simulate_cohort` wrote.

    Attributes
    ----------
    bfile:
        PLINK 1 prefix: ``bfile + ".bed"``, ``".bim"``, ``".fam"`` exist.
    pheno:
        Path of the phenotype file (``#FID IID pheno1 ...``, tab separated; ``NA`` / ``-9``
        missing).
    covar:
        Path of the covariate file (``#FID IID age sex PC1 ...``), or None when the cohort has
        no covariates.
    n_samples, n_variants:
        Samples in the ``.fam`` and variants in the ``.bim``.
    causal:
        0-based indices (``.bim`` order, ascending) of the causal variants.
    pheno_names, covar_names:
        Column names of the phenotype and covariate files, in file order.
    causal_effects:
        ``causal_effects[p][k]`` = true effect on phenotype ``p`` of one extra copy of the ALT
        allele of variant ``causal[k]``, in phenotype units.
    covar_effects:
        ``covar_effects[p][c]`` = true effect on phenotype ``p`` of one unit of covariate ``c``.
    no_covar_iids:
        Samples of the ``.fam`` left out of the covariate file (a scan must drop them).
    extra_pheno_iids:
        IDs in the phenotype file that are not in the ``.fam`` (a scan must ignore them).
    """

    bfile: str
    pheno: str
    covar: str | None
    n_samples: int
    n_variants: int
    causal: tuple[int, ...]
    pheno_names: tuple[str, ...]
    covar_names: tuple[str, ...]
    causal_effects: tuple[tuple[float, ...], ...] = ()
    covar_effects: tuple[tuple[float, ...], ...] = ()
    no_covar_iids: tuple[str, ...] = ()
    extra_pheno_iids: tuple[str, ...] = ()


def _atomic_write_lines(path: str, lines: Iterable[str]) -> None:
    tmp = _tmp_path(path)
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as fh:
            fh.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fmt(v: float) -> str:
    return format(float(v), ".17g")


def _prob_threshold(p: np.ndarray) -> np.ndarray:
    """Map probabilities to uint16 thresholds ``t`` with ``P(u < t) = t / 2**16`` for uniform uint16 ``u``."""
    return np.clip(np.rint(np.asarray(p, dtype=np.float64) * 65536.0), 0, 65535).astype(np.uint16)


class _GenotypeSource:
    """Draws the simulated dosages, variant-major, with random access by variant.

    Variant ``j`` consumes words ``[j*w, (j+1)*w)`` (``w = ceil(n/4)`` 64-bit words = ``4w``
    uniform uint16 draws, the first ``n`` used) of two PCG64 streams - one for genotypes, one for
    missingness - so any split into chunks, blocks or threads yields identical genotypes.

    Genotype of a polymorphic variant with ALT frequency f: with uniform uint16 ``u``,
    ``g = [u < t1] + [u < t2]``, ``t1 ~ 2^16 (1 - (1-f)^2)``, ``t2 ~ 2^16 f^2`` (Hardy-Weinberg,
    probabilities resolved to 2^-16).  Monomorphic variants are set to their constant; a call
    is then replaced by -1 when its missingness draw falls below the variant's missing rate.
    """

    def __init__(self, seed: int, n: int, freq: np.ndarray, mono_value: np.ndarray,
                 miss_rate: np.ndarray, causal: np.ndarray) -> None:
        self.n = n
        self.words = (n + 3) // 4
        self.geno_ss = np.random.SeedSequence(seed, spawn_key=(_KEY_GENO,))
        self.miss_ss = np.random.SeedSequence(seed, spawn_key=(_KEY_MISSING,))
        f = np.asarray(freq, dtype=np.float64)
        self.t1 = _prob_threshold(1.0 - (1.0 - f) ** 2)
        self.t2 = _prob_threshold(f * f)
        self.mono_value = mono_value  # int8 per variant: -1 = polymorphic, else constant dosage
        self.tm = _prob_threshold(miss_rate)
        self.tm[(miss_rate > 0) & (self.tm == 0)] = 1
        self.causal_slot = np.full(len(f), -1, dtype=np.int64)
        self.causal_slot[causal] = np.arange(len(causal))
        self.causal_geno = np.zeros((n, len(causal)), dtype=np.int8)  # true dosages, before missingness

    def _uniform(self, ss: np.random.SeedSequence, r0: int, r1: int) -> np.ndarray:
        bg = np.random.PCG64(ss).advance(r0 * self.words)
        raw = bg.random_raw((r1 - r0) * self.words).astype("<u8", copy=False)
        return raw.view("<u2").reshape(r1 - r0, 4 * self.words)[:, : self.n]

    def fill(self, out: np.ndarray, r0: int) -> None:
        """Fill ``out`` (int8, shape ``(r, n)``, C-contiguous) with the dosages of variants r0..r0+r-1."""
        r1 = r0 + out.shape[0]
        u = self._uniform(self.geno_ss, r0, r1)
        flag = np.empty(out.shape, dtype=np.bool_)
        np.less(u, self.t1[r0:r1, None], out=out.view(np.bool_))
        np.less(u, self.t2[r0:r1, None], out=flag)
        out += flag.view(np.int8)
        mono = self.mono_value[r0:r1]
        for i in np.flatnonzero(mono >= 0):
            out[i] = mono[i]
        slots = self.causal_slot[r0:r1]
        for i in np.flatnonzero(slots >= 0):
            self.causal_geno[:, slots[i]] = out[i]
        tm = self.tm[r0:r1]
        if tm.any():
            u = self._uniform(self.miss_ss, r0, r1)
            np.less(u, tm[:, None], out=flag)
            missing = flag.view(np.int8)
            np.negative(missing, out=missing)  # 1 -> -1 (all bits set), 0 -> 0
            out |= missing

    def chunks(self, m: int, chunk_variants: int, threads: int) -> Iterator[np.ndarray]:
        """Yield the dosages of consecutive chunks of ``chunk_variants`` variants.

        Each item is an ``(n, m_chunk)`` sample x variant int8 view (Fortran-ordered) of one of
        two reused buffers: it is valid until the next item is requested, which is all that
        :func:`write_bed` needs.  While the consumer encodes chunk k, ``threads`` worker
        threads already draw chunk k + 1 into the other buffer.
        """
        block = max(1, _BLOCK_ELEMENTS // self.n)
        bounds = [(c0, min(m, c0 + chunk_variants)) for c0 in range(0, m, chunk_variants)]
        use_pool = threads > 1 and self.n * (bounds[0][1] - bounds[0][0]) >= _THREAD_MIN_ELEMENTS
        pool = ThreadPoolExecutor(threads) if use_pool else None
        buffers: list[np.ndarray | None] = [None, None]

        def start(k: int):
            c0, c1 = bounds[k]
            buf = buffers[k % 2]
            if buf is None:
                buf = buffers[k % 2] = np.empty((bounds[0][1] - bounds[0][0], self.n), dtype=np.int8)
            view = buf[: c1 - c0]
            jobs = []
            for s in range(c0, c1, block):
                part = view[s - c0 : min(c1, s + block) - c0]
                if pool is None:
                    self.fill(part, s)
                else:
                    jobs.append(pool.submit(self.fill, part, s))
            return view, jobs

        try:
            pending = start(0)
            for k in range(len(bounds)):
                view, jobs = pending
                for job in jobs:
                    job.result()
                if k + 1 < len(bounds):
                    pending = start(k + 1)  # runs in the pool while the consumer handles chunk k
                yield view.T
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _effect_shares(k: int, rng: np.random.Generator) -> np.ndarray:
    """Fractions of the genetic variance carried by each of ``k`` causal variants (sum 1), in random order.

    One or two variants are strong (0.4 and 0.25 of the heritability when k >= 3) so that even a
    2,000-sample demo finds them far beyond p = 5e-8; the rest share the remaining 0.35.
    """
    if k == 0:
        return np.zeros(0)
    if k == 1:
        shares = np.array([1.0])
    elif k == 2:
        shares = np.array([0.6, 0.4])
    else:
        w = rng.uniform(0.5, 1.5, k - 2)
        shares = np.concatenate([[0.4, 0.25], 0.35 * w / w.sum()])
    return shares[rng.permutation(k)]


def simulate_cohort(
    out_dir: str | os.PathLike,
    *,
    n_samples: int = 2000,
    n_variants: int = 5000,
    n_covariates: int = 3,
    n_phenotypes: int = 1,
    n_causal: int = 5,
    missing_rate: float = 0.0,
    pheno_missing_rate: float = 0.0,
    n_chrom: int = 3,
    n_monomorphic: int = 0,
    seed: int = 1,
    heritability: float = 0.3,
    chunk_variants: int = 20000,
    name: str = "cohort",
) -> Cohort:
    """Simulate a cohort and write ``{out_dir}/{name}.bed/.bim/.fam``, ``.pheno`` and ``.covar``.

    The output is a pure function of the arguments except ``chunk_variants`` (which only sets
    memory use: the bytes written are identical for every value) and ``out_dir``/``name``.

    Variants
        ``n_chrom`` chromosomes named "1".."n_chrom" with the variants split evenly (the first
        ``n_variants % n_chrom`` chromosomes get one more).  The i-th variant of a chromosome
        sits at ``1000 + 1000*i + jitter`` (jitter uniform in 0..999, so strictly increasing)
        with ID ``rs<chrom>_<pos>``; REF and ALT are distinct random bases.
        ALT frequency: Uniform(0.05, 0.95) for ~90% of variants; ~10% are rare, with a minor
        allele frequency in (0.005, 0.05) (the rare allele is ALT for half of them, REF for
        the others).  Dosages are Binomial(2, f) (Hardy-Weinberg).
        ``n_monomorphic`` evenly spaced variants (index ``floor((i + 0.5) * m / k)``) carry
        dosage 0 in every sample (even i) or 2 (odd i).
        With ``missing_rate > 0`` every call is missing (-1) independently with that
        probability, except for ``max(1, round(0.01 m))`` random variants whose rate is
        ``max(missing_rate, min(10 * missing_rate, 0.5))``.  Missingness also hits monomorphic
        variants (their non-missing calls stay constant).  Probabilities are resolved to 2^-16.
    Samples
        IIDs ``S000001``, ``S000002``, ... in the ``.fam`` (FID = IID).
    Covariates (``{name}.covar``)
        ``n_covariates`` columns, named in this order: ``age`` (Uniform(40, 70) years - a
        large-mean column), ``sex`` (0/1), then ``PC1``, ``PC2``, ... (standard normal).  Header
        ``#FID<TAB>IID<TAB>age...``; values are ``.17g``.  Samples appear in a shuffled order,
        and when ``n_samples >= 200`` about 1% of them (``round(0.01 n)``) are left out (listed
        in :attr:`Cohort.no_covar_iids`).  With ``n_covariates == 0`` no file is written.
    Phenotypes (``{name}.pheno``)
        ``n_phenotypes`` continuous columns ``pheno1``.. with
        ``y = intercept + sum_k beta_k * dosage_k + sum_c gamma_c * covariate_c + noise``.
        The total variance is about 1.  The causal variants (``n_causal`` of them, polymorphic,
        ALT frequency in (0.05, 0.95), normal missing rate, spread round-robin over
        chromosomes) act through their true dosages (before calls are made missing); their
        summed effect has in-sample variance exactly ``heritability``, so they explain about
        that share.  One or two effects are strong (0.4 and 0.25 of it when ``n_causal >= 3``),
        the rest share the remainder, and each phenotype gets its own assignment of strengths
        and signs (:attr:`Cohort.causal_effects`).  The covariates explain about
        ``min(0.2, (1 - heritability)/2)``, every covariate with a non-zero effect on every
        phenotype (:attr:`Cohort.covar_effects`); the noise is normal with the remaining
        variance.  With ``n_causal == 0`` ``heritability`` is ignored.
        Samples appear in another shuffled order (never the ``.fam`` order when n >= 2), plus
        two IDs (``X000001``, ``X000002``) that are not in the ``.fam``.  With
        ``pheno_missing_rate > 0`` each phenotype independently loses each sample with that
        probability; missing values are written ``NA``, except that for ``pheno1`` about a
        quarter of them (at least one) are written ``-9``.  Header ``#FID<TAB>IID<TAB>pheno1...``.

    Memory and speed: genotypes are generated and written ``chunk_variants`` variants at a
    time, never as a full matrix: peak memory is two ``chunk_variants x n_samples`` int8
    buffers (the next chunk is drawn by worker threads, one per available CPU up to 8, while
    the current one is encoded and written) plus a few MiB.  Each variant's genotype and
    missingness draws come from fixed offsets of two seeded PCG64 streams, so neither
    ``chunk_variants`` nor the thread count changes a byte of the output.

    Returns
    -------
    Cohort
        Paths written, sizes, causal variant indices and the true effects.
    """
    n, m = int(n_samples), int(n_variants)
    if n < 1 or m < 1:
        raise ConfigError(f"simulate_cohort: n_samples and n_variants must be >= 1; found {n_samples}, {n_variants}")
    if not 1 <= n_chrom <= m:
        raise ConfigError(f"simulate_cohort: n_chrom must be in 1..n_variants; found {n_chrom}")
    if not 0 <= n_monomorphic <= m:
        raise ConfigError(f"simulate_cohort: n_monomorphic must be in 0..n_variants; found {n_monomorphic}")
    if n_covariates < 0 or n_phenotypes < 1 or n_causal < 0:
        raise ConfigError("simulate_cohort: need n_covariates >= 0, n_phenotypes >= 1 and n_causal >= 0")
    if not 0.0 <= missing_rate < 1.0 or not 0.0 <= pheno_missing_rate < 1.0:
        raise ConfigError("simulate_cohort: missing_rate and pheno_missing_rate must be in [0, 1)")
    if not 0.0 <= heritability < 1.0:
        raise ConfigError(f"simulate_cohort: heritability must be in [0, 1); found {heritability}")
    if chunk_variants < 1:
        raise ConfigError(f"simulate_cohort: chunk_variants must be >= 1; found {chunk_variants}")
    if seed < 0:
        raise ConfigError(f"simulate_cohort: seed must be >= 0; found {seed}")
    if not name or _WHITESPACE.search(name) or os.sep in name:
        raise ConfigError(f"simulate_cohort: name must be a plain file name; found {name!r}")

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, name)
    rng_layout = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_LAYOUT,)))
    rng_samples = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_SAMPLES,)))
    rng_effects = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_EFFECTS,)))

    # ---- variant layout and per-variant parameters ------------------------------------------
    sizes = np.full(n_chrom, m // n_chrom, dtype=np.int64)
    sizes[: m % n_chrom] += 1
    chrom_idx = np.repeat(np.arange(n_chrom), sizes)
    within = np.arange(m) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    pos = 1000 + 1000 * within + rng_layout.integers(0, 1000, m)
    chrom_names = np.array([str(c + 1) for c in range(n_chrom)])
    chrom = chrom_names[chrom_idx].tolist()
    ids = [f"rs{c}_{p}" for c, p in zip(chrom, pos.tolist())]
    ref_i = rng_layout.integers(0, 4, m)
    alt_i = (ref_i + rng_layout.integers(1, 4, m)) % 4
    ref, alt = _ALLELES[ref_i].tolist(), _ALLELES[alt_i].tolist()

    freq = rng_layout.uniform(0.05, 0.95, m)
    rare_maf = rng_layout.uniform(0.005, 0.05, m)
    rare_kind = rng_layout.random(m)  # < 0.05: rare ALT, 0.05..0.1: rare REF
    freq = np.where(rare_kind < 0.05, rare_maf, np.where(rare_kind < 0.10, 1.0 - rare_maf, freq))
    mono_value = np.full(m, -1, dtype=np.int8)
    mono_idx = np.floor((np.arange(n_monomorphic) + 0.5) * m / max(n_monomorphic, 1)).astype(np.int64)
    mono_value[mono_idx] = np.where(np.arange(n_monomorphic) % 2 == 0, 0, 2)
    freq[mono_idx] = mono_value[mono_idx] / 2.0

    miss_rate = np.full(m, float(missing_rate))
    high_miss = np.zeros(m, dtype=bool)
    if missing_rate > 0:
        high_miss[rng_layout.choice(m, size=max(1, round(0.01 * m)), replace=False)] = True
        miss_rate[high_miss] = max(missing_rate, min(10.0 * missing_rate, 0.5))

    # ---- causal variants: spread round-robin over chromosomes -------------------------------
    eligible = (mono_value < 0) & (freq > 0.05) & (freq < 0.95) & ~high_miss
    pools = [list(rng_layout.permutation(np.flatnonzero(eligible & (chrom_idx == c)))) for c in range(n_chrom)]
    if n_causal > int(eligible.sum()):
        raise ConfigError(
            f"simulate_cohort: n_causal = {n_causal} but only {int(eligible.sum())} variants are "
            "eligible (polymorphic, ALT frequency in (0.05, 0.95), normal missing rate)"
        )
    picked: list[int] = []
    c = 0
    while len(picked) < n_causal:
        if pools[c % n_chrom]:
            picked.append(int(pools[c % n_chrom].pop()))
        c += 1
    causal = np.sort(np.array(picked, dtype=np.int64))

    # ---- genotypes: generated and written chunk by chunk ------------------------------------
    iids = [f"S{i:06d}" for i in range(1, n + 1)]
    source = _GenotypeSource(seed, n, freq, mono_value, miss_rate, causal)
    threads = min(_available_cpus(), 8)
    write_bed(prefix, n, source.chunks(m, int(chunk_variants), threads),
              iids=iids, chrom=chrom, pos=pos, ids=ids, alt=alt, ref=ref)

    # ---- covariates ---------------------------------------------------------------------------
    base_names = ["age", "sex"]
    covar_names = tuple(base_names[:n_covariates] + [f"PC{i}" for i in range(1, n_covariates - 1)])
    cov = np.empty((n, n_covariates))
    cov_mean = np.empty(n_covariates)
    cov_sd = np.empty(n_covariates)
    for j, cname in enumerate(covar_names):
        if cname == "age":
            cov[:, j], cov_mean[j], cov_sd[j] = rng_samples.uniform(40.0, 70.0, n), 55.0, 30.0 / np.sqrt(12.0)
        elif cname == "sex":
            cov[:, j], cov_mean[j], cov_sd[j] = rng_samples.integers(0, 2, n).astype(np.float64), 0.5, 0.5
        else:
            cov[:, j], cov_mean[j], cov_sd[j] = rng_samples.standard_normal(n), 0.0, 1.0
    cov_std = (cov - cov_mean) / cov_sd

    # ---- phenotypes ---------------------------------------------------------------------------
    p = int(n_phenotypes)
    h2 = float(heritability) if n_causal > 0 else 0.0
    cov_share = min(0.2, (1.0 - h2) / 2.0) if n_covariates > 0 else 0.0
    noise_sd = np.sqrt(1.0 - h2 - cov_share)
    f_c = freq[causal]
    g_c = source.causal_geno.astype(np.float64)
    x_c = (g_c - 2.0 * f_c) / np.sqrt(2.0 * f_c * (1.0 - f_c))  # standardised true dosages
    y = np.empty((n, p))
    causal_effects, covar_effects = [], []
    for k in range(p):
        beta = np.sqrt(_effect_shares(n_causal, rng_effects) * h2) * rng_effects.choice([-1.0, 1.0], n_causal)
        genetic = x_c @ beta
        v = genetic.var()
        scale = np.sqrt(h2 / v) if v > 0 else 0.0
        genetic *= scale
        gamma = rng_effects.uniform(0.5, 1.0, n_covariates) * rng_effects.choice([-1.0, 1.0], n_covariates)
        if n_covariates:
            gamma *= np.sqrt(cov_share / np.sum(gamma**2))
        intercept = rng_effects.uniform(1.0, 10.0)
        y[:, k] = intercept + genetic + cov_std @ gamma + noise_sd * rng_effects.standard_normal(n)
        causal_effects.append(tuple((beta * scale / np.sqrt(2.0 * f_c * (1.0 - f_c))).tolist()))
        covar_effects.append(tuple((gamma / cov_sd).tolist()))
    pheno_names = tuple(f"pheno{k}" for k in range(1, p + 1))

    # ---- sample order, dropouts and extras -----------------------------------------------------
    def shuffled() -> np.ndarray:
        order = rng_samples.permutation(n)
        if n >= 2 and np.array_equal(order, np.arange(n)):
            order = np.roll(order, 1)
        return order

    pheno_order = shuffled()
    covar_order = shuffled()
    n_drop = round(0.01 * n) if n >= 200 else 0
    dropped = np.sort(rng_samples.choice(n, size=n_drop, replace=False)) if n_drop else np.zeros(0, np.int64)
    covar_order = covar_order[~np.isin(covar_order, dropped)]
    extra_iids = ("X000001", "X000002")
    extra_y = rng_samples.normal(y.mean(axis=0), y.std(axis=0) + 1.0, size=(len(extra_iids), p))
    extra_at = np.sort(rng_samples.choice(n + len(extra_iids), size=len(extra_iids), replace=False))

    pheno_missing = rng_samples.random((n, p)) < pheno_missing_rate
    cells = [[_fmt(v) for v in row] for row in y.tolist()]
    for k in range(p):
        rows_k = np.flatnonzero(pheno_missing[:, k])
        for i in rows_k:
            cells[i][k] = "NA"
        if k == 0 and rows_k.size:
            # a quarter of pheno1's missing values (at least one), chosen in file order, spelled -9
            in_file_order = [i for i in pheno_order.tolist() if pheno_missing[i, 0]]
            for i in in_file_order[: max(1, rows_k.size // 4)]:
                cells[i][0] = "-9"

    pheno_lines = ["#FID\tIID\t" + "\t".join(pheno_names) + "\n"]
    body = [f"{iids[i]}\t{iids[i]}\t" + "\t".join(cells[i]) + "\n" for i in pheno_order.tolist()]
    for e, at in enumerate(extra_at.tolist()):
        body.insert(at, f"{extra_iids[e]}\t{extra_iids[e]}\t" + "\t".join(_fmt(v) for v in extra_y[e]) + "\n")
    pheno_path = prefix + ".pheno"
    _atomic_write_lines(pheno_path, pheno_lines + body)

    covar_path = None
    if n_covariates:
        covar_path = prefix + ".covar"
        cov_cells = [[("1" if v else "0") if cname == "sex" else _fmt(v) for cname, v in zip(covar_names, row)]
                     for row in cov.tolist()]
        _atomic_write_lines(
            covar_path,
            ["#FID\tIID\t" + "\t".join(covar_names) + "\n"]
            + [f"{iids[i]}\t{iids[i]}\t" + "\t".join(cov_cells[i]) + "\n" for i in covar_order.tolist()],
        )

    return Cohort(
        bfile=prefix,
        pheno=pheno_path,
        covar=covar_path,
        n_samples=n,
        n_variants=m,
        causal=tuple(causal.tolist()),
        pheno_names=pheno_names,
        covar_names=covar_names,
        causal_effects=tuple(causal_effects),
        covar_effects=tuple(covar_effects),
        no_covar_iids=tuple(iids[i] for i in dropped.tolist()),
        extra_pheno_iids=extra_iids,
    )
