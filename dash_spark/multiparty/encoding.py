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

from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import ConfigError, DashError, InputError

RING_BITS = 128
FRAC_BITS = 64
HEADROOM_BITS = 8

_U64 = np.uint64
_ONE = np.uint64(1)


class EncodingOverflow(DashError):
    """A statistic cannot be encoded: not finite, or too large for the ring with its headroom."""


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
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(x.size - np.count_nonzero(finite))
        raise EncodingOverflow(f"statistic {name!r}: {bad} of {x.size} values are not finite (NaN or "
                               f"infinite); expected finite numbers, found {bad} bad. Check the party's "
                               "inputs (phenotypes, covariates) for missing or infinite values")
    mag = np.abs(x)
    limit = float(2.0 ** max_abs_bits)
    big = mag >= limit
    if big.any():
        nbig = int(np.count_nonzero(big))
        raise EncodingOverflow(f"statistic {name!r}: {nbig} of {x.size} values are too large for the "
                               f"fixed-point ring; expected |x| < 2^{max_abs_bits} = {limit:.6g} with "
                               f"frac_bits={frac_bits}, found max |x| = {float(mag.max()):.6g}. Rescale the "
                               "inputs or use fewer frac_bits for the study")
    flat = mag.reshape(-1)
    v = np.rint(np.ldexp(flat, frac_bits))  # exact: a power-of-two scaling, then an exact integer
    hi = np.floor(np.ldexp(v, -64))  # exact
    lo = v - np.ldexp(hi, 64)  # exact: the low bits of v, in [0, 2^64)
    out = np.empty((flat.size, 2), dtype=_U64)
    out[:, 0] = lo.astype(_U64)
    out[:, 1] = hi.astype(_U64)
    neg = np.signbit(x.reshape(-1)) & (v != 0)
    if neg.any():
        out[neg] = _neg_flat(out[neg])
    return out.reshape(x.shape + (2,))


def _neg_flat(a: np.ndarray) -> np.ndarray:
    """Two's complement negation of a ``(n, 2)`` array."""
    lo, hi = a[:, 0], a[:, 1]
    out = np.empty_like(a)
    out[:, 0] = ~lo + _ONE
    out[:, 1] = ~hi + (lo == 0).astype(_U64)
    return out


def _pair(a: np.ndarray, b: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    check_encoded(a, where=f"ring {op} (left)")
    check_encoded(b, where=f"ring {op} (right)")
    if a.shape != b.shape:
        raise InputError(f"ring {op}: operand shapes differ; expected equal shapes, found {a.shape} and "
                         f"{b.shape}. Align the statistics before combining them")
    return a.reshape(-1, 2), b.reshape(-1, 2), a.shape


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ring sum ``a + b`` (mod 2^128), limb-wise with carry."""
    fa, fb, shape = _pair(a, b, "add")
    out = np.empty_like(fa)
    np.add(fa[:, 0], fb[:, 0], out=out[:, 0])
    carry = (out[:, 0] < fa[:, 0]).astype(_U64)
    np.add(fa[:, 1], fb[:, 1], out=out[:, 1])
    out[:, 1] += carry
    return out.reshape(shape)


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ring difference ``a - b`` (mod 2^128), limb-wise with borrow."""
    fa, fb, shape = _pair(a, b, "sub")
    out = np.empty_like(fa)
    np.subtract(fa[:, 0], fb[:, 0], out=out[:, 0])
    borrow = (fa[:, 0] < fb[:, 0]).astype(_U64)
    np.subtract(fa[:, 1], fb[:, 1], out=out[:, 1])
    out[:, 1] -= borrow
    return out.reshape(shape)


def neg(a: np.ndarray) -> np.ndarray:
    """Ring negation ``-a`` (mod 2^128)."""
    check_encoded(a, where="ring neg")
    return _neg_flat(a.reshape(-1, 2)).reshape(a.shape)


def ring_sum(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Ring sum of equally shaped encoded arrays (at least one)."""
    items = list(arrays)
    if not items:
        raise InputError("ring_sum: no arrays to add; expected at least one encoded array, found none. "
                         "Pass the parties' shares")
    total = check_encoded(items[0], where="ring_sum").copy()
    for a in items[1:]:
        total = add(total, a)
    return total


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of each uint64 (0 for 0), exact (no float rounding)."""
    x = x.copy()
    bl = np.zeros(x.shape, dtype=np.int64)
    for sh in (32, 16, 8, 4, 2, 1):
        m = x >= (_ONE << _U64(sh))
        bl += np.where(m, sh, 0)
        x = np.where(m, x >> _U64(sh), x)
    return bl + (x > 0)


def decode(a: np.ndarray, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Decode ring elements [shape S + (2,)] to float64 [shape S], correctly rounded.

    The element is read as a signed 128-bit integer ``hi * 2^64 + lo`` (``hi`` signed) and
    ``value * 2^-frac_bits`` is rounded once to the nearest float64 (ties to even).
    """
    check_encoded(a, where="decode")
    frac_bits = check_frac_bits(frac_bits, where="decode")
    flat = a.reshape(-1, 2)
    negative = (flat[:, 1] >> _U64(63)) == _ONE
    mag = np.where(negative[:, None], _neg_flat(flat), flat)  # |value|, at most 2^127
    lo, hi = mag[:, 0], mag[:, 1]
    small = hi == 0
    # |value| >= 2^64: normalise so that the top bit sits at bit 127, keep the top 64 bits and OR a
    # sticky bit for the dropped ones (64 >= 53 + 2 bits, so one uint64 -> float64 rounding is exact
    # round-to-nearest of the whole 128-bit number)
    s = np.where(small, 0, 64 - _bit_length(hi)).astype(_U64)  # 0..63
    top = hi << s
    spill = np.where(s == 0, _U64(0), lo >> np.where(s == 0, _U64(1), _U64(64) - s))
    top |= spill
    top |= ((lo << s) != 0).astype(_U64)
    exp_big = (64 - s.astype(np.int64) - frac_bits).astype(np.int32)
    big_val = np.ldexp(top.astype(np.float64), exp_big)
    small_val = np.ldexp(lo.astype(np.float64), np.int32(-frac_bits))
    out = np.where(small, small_val, big_val)
    out = np.where(negative, -out, out)
    return out.reshape(a.shape[:-1])


def encode_stats(stats: Mapping[str, object], frac_bits: int = FRAC_BITS,
                 max_abs_bits: int | None = None) -> dict[str, np.ndarray]:
    """:func:`encode` every statistic of a ``{name: float array}`` mapping (errors name the statistic)."""
    return {name: encode(v, frac_bits, max_abs_bits, name=name) for name, v in stats.items()}


def decode_stats(stats: Mapping[str, np.ndarray], frac_bits: int = FRAC_BITS) -> dict[str, np.ndarray]:
    """:func:`decode` every statistic of a ``{name: ring array}`` mapping."""
    return {name: decode(v, frac_bits) for name, v in stats.items()}


__all__ = ["FRAC_BITS", "HEADROOM_BITS", "RING_BITS", "EncodingOverflow", "add", "check_encoded",
           "check_frac_bits", "decode", "decode_stats", "default_max_abs_bits", "encode", "encode_stats",
           "neg", "ring_sum", "sub", "zeros"]
