"""The per-variant result rows every command writes (``results.parquet``'s columns) and plink2's A1 rule.

Numpy and pyarrow only: executors, the combiner and notebooks build the same rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .regression import ERRCODES

RESULT_SCHEMA_DDL = (
    "variant_index long, chrom string, pos long, id string, ref string, alt string, a1 string, "
    "a1_freq double, mach_r2 double, obs_ct long, beta double, se double, t_stat double, p double, "
    "neg_log10_p double, phenotype string, errcode string, firth boolean"
)

RESULT_SCHEMA = pa.schema([
    ("variant_index", pa.int64()), ("chrom", pa.string()), ("pos", pa.int64()), ("id", pa.string()),
    ("ref", pa.string()), ("alt", pa.string()), ("a1", pa.string()), ("a1_freq", pa.float64()),
    ("mach_r2", pa.float64()), ("obs_ct", pa.int64()), ("beta", pa.float64()), ("se", pa.float64()), ("t_stat", pa.float64()),
    ("p", pa.float64()), ("neg_log10_p", pa.float64()), ("phenotype", pa.string()), ("errcode", pa.string()),
    ("firth", pa.bool_()),
])  # the same columns as RESULT_SCHEMA_DDL, for tasks that write Parquet themselves


def a1_flip(freq_alt_sum, freq_called, alt_freq, *, count_alt: bool) -> np.ndarray:
    """Which variants have REF as A1 [shape: (m,), bool]. plink2's default: A1 is the non-major
    allele over the frequency samples (``freq_alt_sum``/``freq_called``: their ALT dosage sum and
    called count). plink2 takes ref_freq = ref_count * (1 / (2 n)) and alt_freq = 1 - ref_freq, and
    keeps REF as major on an exact tie; that arithmetic decides tied counts (either way, depending
    on n), so it is reproduced as is. A variant with no call among them falls back to the
    phenotype's samples (``alt_freq`` [shape: (m,)], or (P, m) for P phenotypes at once: the
    result is then (P, m) where any variant has no such call). ``count_alt``: A1 is always ALT."""
    m = len(freq_called)
    if count_alt:
        return np.zeros(m, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(freq_called > 0, 1.0 / (2.0 * freq_called), np.nan)
        ref_freq = (2.0 * freq_called - freq_alt_sum) * inv
    no_freq = np.isnan(ref_freq)
    flip = (1.0 - ref_freq) > ref_freq
    return np.where(no_freq, np.asarray(alt_freq) > 0.5, flip) if no_freq.any() else flip


def results_batch(vidx, meta, freq_alt_sum, freq_called, named_stats, *, count_alt: bool,
                  a1freq_floor: float = 0.0) -> pa.RecordBatch:
    """Result rows (phenotype-major) for variants ``vidx`` with .bim fields ``meta``.

    ``a1freq_floor`` (``--a1freq-lower-limit``): published A1 frequencies below it are reported as
    it, and those above ``1 - a1freq_floor`` as that (rare-allele counts are not released).

    ``freq_alt_sum``/``freq_called`` (m,): ALT dosage sum and called count over the samples whose
    frequency decides the major allele; ``named_stats``: (phenotype, VariantStats) pairs.
    """
    chrom, ids, pos, alt, ref = meta
    m = len(vidx)
    P = len(named_stats)
    stats = [st for _, st in named_stats]

    def joined(attr: str, dtype=np.float64) -> np.ndarray:  # the phenotypes' arrays, one after another
        return np.concatenate([np.asarray(getattr(st, attr), dtype=dtype) for st in stats]) if P else np.zeros(0, dtype)

    alt_freq = joined("alt_freq")
    # every phenotype's A1 at once: the frequency samples' counts are the variant's, a phenotype's
    # own frequency [shape: (P, m)] decides only where they have no call
    flip = np.broadcast_to(a1_flip(freq_alt_sum, freq_called, alt_freq.reshape(P, m), count_alt=count_alt),
                           (P, m)).ravel()
    sign = np.where(flip, -1.0, 1.0)
    a1f = np.where(flip, 1.0 - alt_freq, alt_freq)
    if a1freq_floor > 0:
        a1f = np.where(np.isnan(a1f), a1f, np.clip(a1f, a1freq_floor, 1.0 - a1freq_floor))
    cols = {
        "variant_index": np.tile(np.asarray(vidx), P) if P else np.zeros(0),
        "pos": np.tile(np.asarray(pos), P) if P else np.zeros(0),
        "a1_freq": a1f,
        "mach_r2": (np.concatenate([np.full(m, np.nan) if st.mach_r2 is None else np.asarray(st.mach_r2, dtype=np.float64)
                                    for st in stats]) if P else np.zeros(0)),
        "obs_ct": np.concatenate([st.obs_ct for st in stats]) if P else np.zeros(0),
        "beta": sign * joined("beta"),
        "se": joined("se"),
        "t_stat": sign * joined("t_stat"),
        "p": joined("p"),
        "neg_log10_p": joined("neg_log10_p"),
    }
    a1_index = np.tile(np.arange(m), P) + m * flip  # into [alt | ref]
    codes = [np.asarray(st.errcode) for st in stats]
    firth = [np.full(m, -1, dtype=np.int8) if st.firth is None else np.asarray(st.firth, dtype=np.int8) for st in stats]
    numbers = {}
    for name, values in cols.items():
        if name in ("variant_index", "pos", "obs_ct"):
            numbers[name] = pa.array(values, type=pa.int64())
        else:
            numbers[name] = pa.array(values, type=pa.float64(), from_pandas=True)
    # string columns: each variant's value once, repeated per phenotype by Arrow (no Python string per row)
    def text(values):
        return pa.array(np.asarray(values, dtype=object), type=pa.string())

    tile = pa.array(np.tile(np.arange(m, dtype=np.int64), P))
    alt_ref = pa.concat_arrays([text(alt), text(ref)])
    strings = {
        "chrom": text(chrom).take(tile), "id": text(ids).take(tile), "ref": text(ref).take(tile),
        "alt": text(alt).take(tile),
        "a1": alt_ref.take(pa.array(a1_index if P else np.zeros(0, dtype=np.int64))),
        "phenotype": pa.DictionaryArray.from_arrays(
            pa.array(np.repeat(np.arange(P, dtype=np.int32), m)),
            pa.array([name for name, _ in named_stats], type=pa.string())).cast(pa.string()),
        "errcode": pa.DictionaryArray.from_arrays(
            pa.array(np.concatenate(codes).astype(np.int32) if codes else np.zeros(0, dtype=np.int32)),
            pa.array(list(ERRCODES), type=pa.string())).cast(pa.string()),
    }
    # FIRTH? of a logistic model's rows; null for a linear model's
    flags = np.concatenate(firth) if firth else np.zeros(0, dtype=np.int8)
    strings["firth"] = pa.array(flags > 0, type=pa.bool_(), mask=flags < 0)
    order = ("variant_index", "chrom", "pos", "id", "ref", "alt", "a1", "a1_freq", "mach_r2", "obs_ct", "beta",
             "se", "t_stat", "p", "neg_log10_p", "phenotype", "errcode", "firth")
    arrays = [numbers[c] if c in numbers else strings[c] for c in order]
    return pa.RecordBatch.from_arrays(arrays, names=list(order))
