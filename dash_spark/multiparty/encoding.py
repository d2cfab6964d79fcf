"""Fixed-point encoding of float64 statistics in the ring Z_{2^128}.

A value ``x`` is encoded as the integer ``round(x * 2^frac_bits)`` reduced mod 2^128 (two's
complement for negatives) and stored as two uint64 limbs ``(lo, hi)`` in the last axis of a
``(..., 2)`` uint64 array. Ring addition is exact, so the sum of the parties' encodings decodes to
the sum of their rounded values: the only error is the rounding of each value to a multiple of
``2^-frac_bits`` (and the final rounding of the decoded sum to float64).

Encoding is exact: ``x * 2^frac_bits`` is an exact float, rounded to the nearest integer and split
into limbs without loss. Values must satisfy ``|x| < 2^max_abs_bits`` with ``max_abs_bits`` by
default ``127 - frac_bits - 8``: 8 bits of headroom, so that sums over up to 256 parties cannot
wrap around the signed range. Decoding interprets the ring element as a signed 128-bit integer and
rounds it correctly (round-half-even) to float64.

Threat model: encoding reveals nothing by itself; it only makes masking (:mod:`.masking`) exact.
Masked encodings are uniform in the ring whatever the value (see :mod:`dash_spark.multiparty`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import ConfigError, EncodingOverflow, InputError

RING_BITS = 128
FRAC_BITS = 64
HEADROOM_BITS = 8

_U64 = np.uint64


def check_frac_bits(frac_bits: object, *, where: str = "encoding") -> int:
    """Validate ``frac_bits`` (an integer in 0..118, leaving at least one integer bit)."""
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)) or not (
            0 <= int(frac_bits) <= RING_BITS - 1 - HEADROOM_BITS - 1):
        raise ConfigError(f"{where}: frac_bits out of range; expected an integer in 0.."
                          f"{RING_BITS - 2 - HEADROOM_BITS}, found {frac_bits!r}. Use the default {FRAC_BITS}")
    return int(frac_bits)


def default_max_abs_bits(frac_bits: int = FRAC_BITS) -> int:
    """``127 - frac_bits - 8``: the largest magnitude (as a power of two) a statistic may have."""
    return RING_BITS - 1 - check_frac_bits(frac_bits) - HEADROOM_BITS


def check_encoded(a: object, *, where: str = "ring array") -> np.ndarray:
    """Return ``a`` as a uint64 array of shape ``(..., 2)`` or raise :class:`InputError`."""
    if not isinstance(a, np.ndarray) or a.dtype != _U64 or a.ndim < 1 or a.shape[-1] != 2:
        found = (f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__)
        raise InputError(f"{where}: not an encoded ring array; expected uint64 of shape (..., 2), found {found}. "
                         "Encode values with dash_spark.multiparty.encoding.encode")
    return a


def zeros(shape: int | tuple[int, ...]) -> np.ndarray:
    """The ring zero of the given value shape (array shape ``shape + (2,)``)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return np.zeros(shape + (2,), dtype=_U64)


def encode(x: object, frac_bits: int = FRAC_BITS, max_abs_bits: int | None = None, *,
           name: str = "statistic") -> np.ndarray:
    """Encode float64 values ``x`` [shape S] as ring elements [shape S + (2,), uint64].

    Raises :class:`EncodingOverflow` naming the statistic ``name`` when a value is not finite or
    has ``|x| >= 2**max_abs_bits``.
    """
    frac_bits = check_frac_bits(frac_bits, where=f"statistic {name!r}")
    if max_abs_bits is None:
        max_abs_bits = default_max_abs_bits(frac_bits)
    if (isinstance(max_abs_bits, bool) or not isinstance(max_abs_bits, (int, np.integer))
            or not 0 <= int(max_abs_bits) <= RING_BITS - 1 - frac_bits):
        raise ConfigError(f"statistic {name!r}: max_abs_bits out of range; expected an integer in 0.."
                          f"{RING_BITS - 1 - frac_bits} with frac_bits={frac_bits}, found {max_abs_bits!r}. "
                          "Leave it at the default")
    max_abs_bits = int(max_abs_bits)
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"statistic {name!r}: values are not numbers; expected a float64 array, "
                         f"found an error ({exc}). Pass numeric statistics") from None
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty((flat.size, 2), dtype=_U64)
    # one pass: NaN, infinities and |x| >= 2^max_abs_bits are all counted as bad (NaN fails `<`)
    n_bad = _kernels().encode_kernel(flat, float(2.0 ** frac_bits), float(2.0 ** max_abs_bits), out)
    if n_bad:
        finite = np.isfinite(flat)
        n_nonfinite = int(flat.size - np.count_nonzero(finite))
        if n_nonfinite:
            raise EncodingOverflow(f"statistic {name!r}: {n_nonfinite} of {flat.size} values are not finite (NaN "
                                   f"or infinite); expected finite numbers, found {n_nonfinite} bad. Check the "
                                   "party's inputs (phenotypes, covariates) for missing or infinite values")
        limit = float(2.0 ** max_abs_bits)
        raise EncodingOverflow(f"statistic {name!r}: {n_bad} of {flat.size} values are too large for the "
                               f"fixed-point ring; expected |x| < 2^{max_abs_bits} = {limit:.6g} with "
                               f"frac_bits={frac_bits}, found max |x| = {float(np.abs(flat).max()):.6g}. Rescale "
                               "the inputs or use fewer frac_bits for the study")
    return out.reshape(x.shape + (2,))


def _kernels():
    from . import _ring_kernels  # numba loads here, once

    return _ring_kernels


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1, 2)


def _pair(a: np.ndarray, b: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    check_encoded(a, where=f"ring {op} (left)")
    check_encoded(b, where=f"ring {op} (right)")
    if a.shape != b.shape:
        raise InputError(f"ring {op}: operand shapes differ; expected equal shapes, found {a.shape} and "
                         f"{b.shape}. Align the statistics before combining them")
    return _flat(a), _flat(b), a.shape


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ring sum ``a + b`` (mod 2^128), limb-wise with carry."""
    fa, fb, shape = _pair(a, b, "add")
    out = np.empty_like(fa)
    _kernels().add_kernel(fa, fb, out, False)
    return out.reshape(shape)


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ring difference ``a - b`` (mod 2^128), limb-wise with borrow."""
    fa, fb, shape = _pair(a, b, "sub")
    out = np.empty_like(fa)
    _kernels().add_kernel(fa, fb, out, True)
    return out.reshape(shape)


def add_into(total: np.ndarray, b: np.ndarray, *, subtract: bool = False) -> np.ndarray:
    """In place: ``total += b`` (``total -= b`` when ``subtract``) mod 2^128; returns ``total``.

    ``total`` must be a writable C-contiguous ring array (no copy is made of it).
    """
    ft, fb, _ = _pair(total, b, "sub" if subtract else "add")
    if not (total.flags.c_contiguous and total.flags.writeable):
        raise InputError("ring add_into: the accumulator is not a writable C-contiguous array; expected one, "
                         "found a view or a read-only array. Pass a fresh copy (np.array(total))")
    _kernels().add_kernel(ft, fb, ft, bool(subtract))
    return total


def neg(a: np.ndarray) -> np.ndarray:
    """Ring negation ``-a`` (mod 2^128)."""
    check_encoded(a, where="ring neg")
    fa = _flat(a)
    out = np.empty_like(fa)
    _kernels().neg_kernel(fa, out)
    return out.reshape(a.shape)


def ring_sum(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Ring sum of equally shaped encoded arrays (at least one)."""
    items = iter(arrays)
    first = next(items, None)
    if first is None:
        raise InputError("ring_sum: no arrays to add; expected at least one encoded array, found none. "
                         "Pass the parties' shares")
    second = next(items, None)
    if second is None:
        return np.array(check_encoded(first, where="ring_sum"), order="C")  # a fresh, writable copy
    total = add(first, second)
    for a in items:
        add_into(total, a)
    return total


def decode(a: np.ndarray, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Decode ring elements [shape S + (2,)] to float64 [shape S], correctly rounded.

    The element is read as a signed 128-bit integer ``hi * 2^64 + lo`` (``hi`` signed) and
    ``value * 2^-frac_bits`` is rounded once to the nearest float64 (ties to even).
    """
    check_encoded(a, where="decode")
    frac_bits = check_frac_bits(frac_bits, where="decode")
    fa = _flat(a)
    out = np.empty(fa.shape[0], dtype=np.float64)
    kernel = _kernels().decode_kernel
    n = fa.shape[0]
    # the kernel releases the GIL: slices of at least 1M elements decode at once
    in_slices(n, min(os.cpu_count() or 1, 4, max(1, n >> 20)), lambda a, b: kernel(fa[a:b], frac_bits, out[a:b]))
    return out.reshape(a.shape[:-1])


def in_slices(n: int, threads: int, work) -> None:
    """``work(start, stop)`` on ``threads`` consecutive slices of ``range(n)`` at once (one call
    on the whole range when ``threads`` <= 1): for kernels that release the GIL."""
    if threads <= 1:
        work(0, n)
        return
    from concurrent.futures import ThreadPoolExecutor

    cuts = [n * i // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: work(cuts[i], cuts[i + 1]), range(threads)))


def encode_stats(stats: Mapping[str, object], frac_bits: int = FRAC_BITS,
                 max_abs_bits: int | None = None) -> dict[str, np.ndarray]:
    """:func:`encode` every statistic of a ``{name: float array}`` mapping (errors name the statistic)."""
    return {name: encode(v, frac_bits, max_abs_bits, name=name) for name, v in stats.items()}


def decode_stats(stats: Mapping[str, np.ndarray], frac_bits: int = FRAC_BITS) -> dict[str, np.ndarray]:
    """:func:`decode` every statistic of a ``{name: ring array}`` mapping."""
    return {name: decode(v, frac_bits) for name, v in stats.items()}


__all__ = ["FRAC_BITS", "HEADROOM_BITS", "RING_BITS", "EncodingOverflow", "add", "add_into", "check_encoded",
           "check_frac_bits", "decode", "decode_stats", "default_max_abs_bits", "encode", "encode_stats",
           "in_slices", "neg", "ring_sum", "sub", "zeros"]
