"""The ring encoding's compiled kernels (numba), imported on first use so that the commands that
only check signatures and manifests (a round's close, a party's join) do not load numba.

They work on C-contiguous ``(n, 2)`` uint64 arrays (and flat float64 arrays) in one pass each;
:mod:`.encoding`'s public functions check shapes and types and make their operands contiguous.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

@njit(cache=True, nogil=True)
def encode_kernel(x, scale, limit, out):  # pragma: no cover - jitted
    """``out[i] = round(x[i] * scale) mod 2^128``; returns the number of values that are not
    finite or have ``|x| >= limit`` (then ``out`` is garbage and the caller raises)."""
    two64 = 18446744073709551616.0
    bad = 0
    for i in range(x.shape[0]):
        xi = x[i]
        mag = abs(xi)
        if not mag < limit:  # NaN too
            bad += 1
            continue
        v = np.rint(mag * scale)  # exact: a power-of-two scaling, then an exact integer
        hi = np.floor(v / two64)  # exact
        lo = np.uint64(v - hi * two64)  # exact: the low bits of v, in [0, 2^64)
        uhi = np.uint64(hi)
        if xi < 0.0 and v != 0.0:  # two's complement
            borrow = np.uint64(1) if lo == np.uint64(0) else np.uint64(0)
            lo = ~lo + np.uint64(1)
            uhi = ~uhi + borrow
        out[i, 0] = lo
        out[i, 1] = uhi
    return bad


@njit(cache=True, nogil=True)
def add_kernel(a, b, out, subtract):  # pragma: no cover - jitted
    """``out = a + b`` (``a - b`` when ``subtract``) mod 2^128; ``out`` may be ``a``."""
    one = np.uint64(1)
    zero = np.uint64(0)
    for i in range(a.shape[0]):
        alo = a[i, 0]
        blo = b[i, 0]
        if subtract:
            lo = alo - blo
            out[i, 1] = a[i, 1] - b[i, 1] - (one if alo < blo else zero)
        else:
            lo = alo + blo
            out[i, 1] = a[i, 1] + b[i, 1] + (one if lo < alo else zero)
        out[i, 0] = lo


@njit(cache=True, nogil=True)
def neg_kernel(a, out):  # pragma: no cover - jitted
    one = np.uint64(1)
    zero = np.uint64(0)
    for i in range(a.shape[0]):
        lo = a[i, 0]
        out[i, 1] = ~a[i, 1] + (one if lo == zero else zero)
        out[i, 0] = ~lo + one


@njit(cache=True, nogil=True)
def decode_kernel(a, frac_bits, out):  # pragma: no cover - jitted
    """Signed 128-bit ``hi * 2^64 + lo`` times ``2^-frac_bits``, rounded once to float64."""
    one = np.uint64(1)
    zero = np.uint64(0)
    for i in range(a.shape[0]):
        lo = a[i, 0]
        hi = a[i, 1]
        negative = (hi >> np.uint64(63)) == one
        if negative:  # |value|, at most 2^127
            hi = ~hi + (one if lo == zero else zero)
            lo = ~lo + one
        if hi == zero:
            val = math.ldexp(float(lo), -frac_bits)  # one correctly rounded uint64 -> float64
        else:
            # normalise so that the top bit sits at bit 127, keep the top 64 bits and OR a sticky
            # bit for the dropped ones (64 >= 53 + 2 bits, so the uint64 -> float64 rounding is the
            # exact round-to-nearest-even of the whole 128-bit number)
            s = 0
            h = hi
            for step in (32, 16, 8, 4, 2, 1):
                if (h >> np.uint64(64 - step)) == zero:
                    h = h << np.uint64(step)
                    s += step
            top = h
            if s > 0:
                top |= lo >> np.uint64(64 - s)
                if (lo << np.uint64(s)) != zero:
                    top |= one
            elif lo != zero:
                top |= one
            val = math.ldexp(float(top), 64 - s - frac_bits)
        out[i] = -val if negative else val
