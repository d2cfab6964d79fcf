"""The compress step on packed PLINK 1 bytes: per-variant additive sums, no decoding pass.

For a block of ``m`` variants and ``n`` samples (.fam order), with per-sample weight matrices

    A  [shape: (n, F)]  columns multiplied by the dosage x_i      (Q, Y and masks of each pattern)
    B  [shape: (n, G)]  columns multiplied by the squared dosage  (one mask per pattern)

the kernel returns, for every variant ``j``,

    SX[j]  = sum_i x_ij   * A[i]      over samples with a call       [shape: (m, F)]
    SXX[j] = sum_i x_ij^2 * B[i]      over samples with a call       [shape: (m, G)]
    SM[j]  = sum_i 1[x_ij missing] * A[i]                           [shape: (m, F)]

Every quantity the regression needs (``Q'x``, ``x'y``, ``x'x``, allele counts, and the missing
calls' own sums that mean-imputation and downdates need) is a column of these. All are sums over
samples, so they add over sample batches; samples outside the analysis have zero rows in A and B.

How it is fast: a .bed byte holds 4 samples, so for each byte position the kernel builds a table of
the 256 possible bytes' contributions (from two 16-entry half-byte tables) and then adds one table
row per variant: ``n/4`` row additions per variant instead of ``n`` multiply-adds, with no float
genotype matrix ever materialised. The loop has no branch on the genotype (a missing call adds
the table's zero). Four byte positions' tables are added per pass over the variants, reading each
variant's four adjacent bytes of the .bed row, so each variant's row of sums is read and written
once per four (the additions stay in byte order: the same sums). Wide tables (many phenotypes)
are built only for the byte values that occur. A block with missing calls is then transposed (8 x
8 tiles in registers: one byte position of every variant per row), its missing calls found 8
variants at a time and visited one by one (cost grows with their count); the missing calls'
Grams and the phenotypes' downdates read the same transposed copy.
Arithmetic is float64 throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

# dosage of the .bim column-5 allele for each 2-bit code; code 1 (missing) contributes 0 here
_DOSAGE = np.array([2.0, 0.0, 1.0, 0.0])
_MISSING = np.array([0, 1, 0, 0], dtype=np.uint8)


def _has_missing_table() -> np.ndarray:
    out = np.zeros(256, dtype=np.uint8)
    for v in range(256):
        for s in range(4):
            if (v >> (2 * s)) & 3 == 1:
                out[v] = 1
    return out


_HAS_MISSING = _has_missing_table()


@njit(cache=True, nogil=True, inline="always")
def _word(packed, j, c):  # pragma: no cover - jitted
    """Bytes ``c .. c+7`` of row ``j`` as one little-endian 64-bit word."""
    x = np.uint64(0)
    for k in range(8):
        x |= np.uint64(packed[j, c + k]) << np.uint64(8 * k)
    return x


@njit(cache=True, nogil=True)
def _transpose(packed, out, out64):  # pragma: no cover - jitted
    """``out[b, j] = packed[j, b]``: 8 x 8 tiles of bytes transposed in registers (three rounds of
    block swaps inside eight 64-bit words), each written as one word of ``out64`` (``out`` viewed
    as uint64: its rows are padded to a multiple of 8 bytes). One byte position of every variant is
    then one contiguous row for the kernel. A plain strided copy costs ~2.5x this; reading the .bed
    bytes in place costs the kernel ~1.4x."""
    m, nb = packed.shape
    M32 = np.uint64(0x00000000FFFFFFFF)
    M16 = np.uint64(0x0000FFFF0000FFFF)
    M8 = np.uint64(0x00FF00FF00FF00FF)
    s32 = np.uint64(32)
    s16 = np.uint64(16)
    s8 = np.uint64(8)
    m8 = m - m % 8
    nb8 = nb - nb % 8
    for j0 in range(0, m8, 8):
        q = j0 // 8
        for c in range(0, nb8, 8):
            w0 = _word(packed, j0, c)
            w1 = _word(packed, j0 + 1, c)
            w2 = _word(packed, j0 + 2, c)
            w3 = _word(packed, j0 + 3, c)
            w4 = _word(packed, j0 + 4, c)
            w5 = _word(packed, j0 + 5, c)
            w6 = _word(packed, j0 + 6, c)
            w7 = _word(packed, j0 + 7, c)
            # swap 4x4 blocks of bytes, then 2x2 blocks, then single bytes
            t0 = (w0 & M32) | (w4 << s32)
            t4 = (w0 >> s32) | (w4 & ~M32)
            t1 = (w1 & M32) | (w5 << s32)
            t5 = (w1 >> s32) | (w5 & ~M32)
            t2 = (w2 & M32) | (w6 << s32)
            t6 = (w2 >> s32) | (w6 & ~M32)
            t3 = (w3 & M32) | (w7 << s32)
            t7 = (w3 >> s32) | (w7 & ~M32)
            u0 = (t0 & M16) | ((t2 & M16) << s16)
            u2 = ((t0 >> s16) & M16) | (t2 & ~M16)
            u1 = (t1 & M16) | ((t3 & M16) << s16)
            u3 = ((t1 >> s16) & M16) | (t3 & ~M16)
            u4 = (t4 & M16) | ((t6 & M16) << s16)
            u6 = ((t4 >> s16) & M16) | (t6 & ~M16)
            u5 = (t5 & M16) | ((t7 & M16) << s16)
            u7 = ((t5 >> s16) & M16) | (t7 & ~M16)
            out64[c, q] = (u0 & M8) | ((u1 & M8) << s8)
            out64[c + 1, q] = ((u0 >> s8) & M8) | (u1 & ~M8)
            out64[c + 2, q] = (u2 & M8) | ((u3 & M8) << s8)
            out64[c + 3, q] = ((u2 >> s8) & M8) | (u3 & ~M8)
            out64[c + 4, q] = (u4 & M8) | ((u5 & M8) << s8)
            out64[c + 5, q] = ((u4 >> s8) & M8) | (u5 & ~M8)
            out64[c + 6, q] = (u6 & M8) | ((u7 & M8) << s8)
            out64[c + 7, q] = ((u6 >> s8) & M8) | (u7 & ~M8)
        for c in range(nb8, nb):
            for k in range(8):
                out[c, j0 + k] = packed[j0 + k, c]
    for j in range(m8, m):
        for c in range(nb):
            out[c, j] = packed[j, c]


def transpose_block(packed: np.ndarray) -> np.ndarray:
    """The block's bytes transposed: [shape: (nbytes, m rounded up to 8)], column ``j < m`` is
    variant ``j`` (the padding columns are not written)."""
    m, nb = packed.shape
    buf = np.empty((nb, (m + 7) // 8 * 8), dtype=np.uint8)
    if not np.little_endian:  # the tiles' words are stored in the machine's byte order
        buf[:, :m] = packed.T
        return buf
    _transpose(np.ascontiguousarray(packed), buf, buf.view(np.uint64))
    return buf


#: weight columns from which a byte position's table is built only for the byte values that occur
#: in its row (wide tables: many phenotypes); narrower tables are built whole, which costs less
#: than finding the values
SPARSE_TABLE_COLUMNS = 128


@njit(cache=True, nogil=True, inline="always")
def _halves(W, i0, n_a, nw, dosage, lo, hi):  # pragma: no cover - jitted
    """The 16-entry tables of a byte's low and high half (two samples each): ``lo[h]`` = the
    dosage-weighted sum of rows ``i0`` and ``i0+1`` of ``W`` for the codes of half-byte ``h``
    (squared dosages for the ``B`` columns from ``n_a`` on); ``hi`` likewise for rows ``i0+2, i0+3``."""
    for h in range(16):
        d0 = dosage[h & 3]
        d1 = dosage[h >> 2]
        for f in range(n_a):
            lo[h, f] = d0 * W[i0, f] + d1 * W[i0 + 1, f]
            hi[h, f] = d0 * W[i0 + 2, f] + d1 * W[i0 + 3, f]
        d0 *= d0
        d1 *= d1
        for f in range(n_a, nw):
            lo[h, f] = d0 * W[i0, f] + d1 * W[i0 + 1, f]
            hi[h, f] = d0 * W[i0 + 2, f] + d1 * W[i0 + 3, f]


@njit(cache=True, nogil=True, inline="always")
def _byte_table(W, b, n_a, nw, dosage, row, m, sparse, lo, hi, seen, table):  # pragma: no cover - jitted
    """``table[v]`` = ``lo[v & 15] + hi[v >> 4]`` for byte position ``b``: every byte value, or with
    ``sparse`` only those that occur in ``row`` (the others are not read)."""
    _halves(W, 4 * b, n_a, nw, dosage, lo, hi)
    if sparse:
        seen[:] = 0
        for j in range(m):
            seen[row[j]] = 1
    for v in range(256):
        if sparse and not seen[v]:
            continue
        a = lo[v & 15]
        c = hi[v >> 4]
        t = table[v]
        for f in range(nw):
            t[f] = a[f] + c[f]


@njit(cache=True, nogil=True)
def _accumulate(packed, W, n_a, out_x, dosage):  # pragma: no cover - jitted
    """packed: (m, nbytes) uint8, the block's bytes as in the .bed (m = ``out_x``'s rows); W:
    (4*nbytes, n_a + n_b) float64 = [A | B] padded rows; ``out_x`` (m, >= n_a + n_b): columns
    beyond W's get nothing (a width of whole 4-double vectors runs 3-8% faster). No branch on the
    genotype: a missing call's code adds the table's zero (its own sums come from
    :func:`_missing_sums`). Four byte positions are added per pass over the variants (four
    tables; each variant's four bytes are adjacent in its row, and its row of sums is read and
    written once per four), in byte order: each sum is the same sequence of additions as one
    position at a time."""
    m, nbytes = packed.shape
    nw = W.shape[1]
    wide = out_x.shape[1]  # nw rounded up to 4 (whole vectors): the tables' extra columns stay 0
    sparse = nw >= SPARSE_TABLE_COLUMNS
    lo = np.empty((16, nw))
    hi = np.empty((16, nw))
    t0 = np.zeros((256, wide))
    t1 = np.zeros((256, wide))
    t2 = np.zeros((256, wide))
    t3 = np.zeros((256, wide))
    seen = np.zeros(256, dtype=np.uint8)
    col = np.empty(m, dtype=np.uint8)  # one byte position of every variant (a sparse table's values)
    ncol = m if sparse else 0
    b = 0
    while b + 3 < nbytes:
        tables = (t0, t1, t2, t3)
        for q in range(4):
            if sparse:
                for j in range(m):
                    col[j] = packed[j, b + q]
            _byte_table(W, b + q, n_a, nw, dosage, col, ncol, sparse, lo, hi, seen, tables[q])
        for j in range(m):
            row = packed[j]
            a0 = t0[row[b]]
            a1 = t1[row[b + 1]]
            a2 = t2[row[b + 2]]
            a3 = t3[row[b + 3]]
            o = out_x[j]
            for f in range(wide):
                o[f] = (((o[f] + a0[f]) + a1[f]) + a2[f]) + a3[f]
        b += 4
    while b < nbytes:
        for j in range(m):
            col[j] = packed[j, b]
        _byte_table(W, b, n_a, nw, dosage, col, m, sparse, lo, hi, seen, t0)
        for j in range(m):
            a0 = t0[col[j]]
            o = out_x[j]
            for f in range(wide):
                o[f] += a0[f]
        b += 1


@njit(cache=True, nogil=True)
def _rows_with_missing(packed, out):  # pragma: no cover - jitted
    """``out[j]``: whether row ``j`` of the packed bytes holds a missing call (a code 01: a set low
    bit under a clear high bit), the row's bytes OR-ed together without a branch."""
    m, nbytes = packed.shape
    for j in range(m):
        row = packed[j]
        acc = np.uint8(0)
        for b in range(nbytes):
            v = row[b]
            acc |= v & ~(v >> np.uint8(1))
        out[j] = (acc & np.uint8(0x55)) != 0


@njit(cache=True, nogil=True, inline="always")
def _missing_in_row(packed_t, words, b, m, has_missing, hits):  # pragma: no cover - jitted
    """The variants of transposed row ``b`` whose byte holds a missing call, in order, into
    ``hits``; returns how many. Eight variants' bytes are tested as one 64-bit word (whatever its
    byte order: the test is on all eight), so a row without missing calls costs m/8 tests."""
    low = np.uint64(0x5555555555555555)
    one = np.uint64(1)
    n = 0
    m8 = m - m % 8
    for q in range(m8 // 8):
        x = words[b, q]
        if x & ~(x >> one) & low == 0:
            continue
        for j in range(8 * q, 8 * q + 8):
            if has_missing[packed_t[b, j]]:
                hits[n] = j
                n += 1
    for j in range(m8, m):
        if has_missing[packed_t[b, j]]:
            hits[n] = j
            n += 1
    return n


@njit(cache=True, nogil=True)
def _missing_sums(packed_t, m, W, n_a, out_m, has_missing):  # pragma: no cover - jitted
    """``out_m[j] += W[i, :n_a]`` for every missing call (code 01) of variant ``j``, found in the
    transposed block (a row: one byte position of every variant, tested 8 variants at a time): the
    row's four weight rows stay in cache, and each variant sums its calls in sample order."""
    nbytes = packed_t.shape[0]
    words = packed_t.view(np.uint64)
    hits = np.empty(m, dtype=np.int64)
    for b in range(nbytes):
        for h in range(_missing_in_row(packed_t, words, b, m, has_missing, hits)):
            j = hits[h]
            v = packed_t[b, j]
            for s in range(4):
                if (v >> (2 * s)) & 3 == 1:
                    i = 4 * b + s
                    for f in range(n_a):
                        out_m[j, f] += W[i, f]


def pad_weights(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Stack ``[A | B]`` (n x (F+G)) and pad rows to a multiple of 4 with zeros (C order, float64)."""
    n = A.shape[0]
    n_pad = (n + 3) // 4 * 4
    W = np.zeros((n_pad, A.shape[1] + B.shape[1]), dtype=np.float64)
    W[:n, : A.shape[1]] = A
    W[:n, A.shape[1] :] = B
    return W


def compress_block(packed: np.ndarray, W: np.ndarray, n_a: int,
                   packed_t: np.ndarray | Callable[[], np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of one block of variants.

    packed [shape: (m, ceil(n/4))] uint8 bytes as in the .bed; W [shape: (4*ceil(n/4), F+G)] from
    :func:`pad_weights`; ``n_a`` = F. The missing calls' sums need the block's
    :func:`transpose_block` (only when it has missing calls): ``packed_t`` is it, or a function
    that makes it (a block's cached copy), else it is made here. Returns ``(SX (m, F), SXX (m, G),
    SM (m, F))``.
    """
    m = packed.shape[0]
    if W.shape[0] != 4 * packed.shape[1]:
        raise ValueError(f"compress_block: W has {W.shape[0]} rows, expected {4 * packed.shape[1]}")
    packed = np.ascontiguousarray(packed)
    nw = W.shape[1]
    out_x = np.zeros((m, (nw + 3) // 4 * 4))
    out_m = np.zeros((m, n_a))
    _accumulate(packed, W, n_a, out_x, _DOSAGE)
    flags = np.empty(m, dtype=np.bool_)
    _rows_with_missing(packed, flags)
    if flags.any():
        if callable(packed_t):
            packed_t = packed_t()
        if packed_t is None:
            packed_t = transpose_block(packed)
        _missing_sums(packed_t, m, W, n_a, out_m, _HAS_MISSING)
    return out_x[:, :n_a], out_x[:, n_a:nw], out_m


def decode(packed: np.ndarray, n_samples: int) -> np.ndarray:
    """Decode packed bytes to float64 dosages [shape: (n, m)], NaN for missing (tests, small data)."""
    m, nb = packed.shape
    codes = np.empty((m, nb * 4), dtype=np.uint8)
    for s in range(4):
        codes[:, s::4] = (packed >> (2 * s)) & 3
    codes = codes[:, :n_samples]
    lut = np.array([2.0, np.nan, 1.0, 0.0])
    return lut[codes].T.copy()


@njit(cache=True, nogil=True)
def _missing_grams(packed_t, m, W, a0, k, p, has_missing, todo, acc):  # pragma: no cover - jitted
    """The missing calls of each variant in ``todo``, found in the transposed block (one byte
    position of every variant per row, :func:`transpose_block`). For a row's four samples, the
    products of their weights are formed once: ``q q'`` (upper triangle), ``q y'`` and ``y^2``,
    one vector each; a variant's missing call adds its sample's vector to the variant's row of
    ``acc`` (contiguous adds). Each variant sums its calls in sample order, each product formed as
    a single multiplication. Samples outside the pattern (zero weights) add nothing."""
    nbytes = packed_t.shape[0]
    w = acc.shape[1]
    prod = np.empty((4, w))
    live = np.zeros(4, dtype=np.bool_)
    words = packed_t.view(np.uint64)
    hits = np.empty(m, dtype=np.int64)
    for b in range(nbytes):
        row = packed_t[b]
        ready = False
        for h in range(_missing_in_row(packed_t, words, b, m, has_missing, hits)):
            j = hits[h]
            v = row[j]
            if not todo[j]:
                continue
            if not ready:
                for s in range(4):
                    i = 4 * b + s
                    nz = False
                    for c in range(k + p):
                        nz = nz or W[i, a0 + c] != 0.0
                    live[s] = nz
                    f = 0
                    for r in range(k):
                        qr = W[i, a0 + r]
                        for c in range(r, k):
                            prod[s, f] = qr * W[i, a0 + c]
                            f += 1
                    for r in range(k):
                        qr = W[i, a0 + r]
                        for t in range(p):
                            prod[s, f] = qr * W[i, a0 + k + t]
                            f += 1
                    for t in range(p):
                        yt = W[i, a0 + k + t]
                        prod[s, f] = yt * yt
                        f += 1
                ready = True
            for s in range(4):
                if (v >> (2 * s)) & 3 == 1 and live[s]:
                    for f in range(w):
                        acc[j, f] += prod[s, f]


def missing_grams(packed: np.ndarray, W: np.ndarray, a0: int, k: int, p: int, todo: np.ndarray | None = None,
                  packed_t: np.ndarray | Callable[[], np.ndarray] | None = None):
    """Sums over each variant's missing calls of ``q_i q_i'``, ``q_i y_i'`` and ``y_i^2``.

    ``q_i`` = row i of the pattern's Q (``W[:, a0:a0+k]``), ``y_i`` = its p phenotype columns
    (``W[:, a0+k:a0+k+p]``); samples outside the pattern have zero rows and add nothing.
    Returns ``QmQm`` [shape: (m, k, k)], ``Qmy`` [shape: (m, k, p)], ``ymy`` [shape: (m, p)].
    Cost: one byte test per byte of the variants in ``todo`` (bool (m,), default all: pass the
    variants that have missing calls in the pattern), then (k(k+1)/2 + kp) per missing call.
    ``packed_t``: the block's :func:`transpose_block`, or a function that makes it (called only
    when some variant is to be visited).
    """
    m = packed.shape[0]
    todo = np.ones(m, dtype=np.bool_) if todo is None else np.asarray(todo, dtype=np.bool_)
    qq = np.zeros((m, k, k))
    qy = np.zeros((m, k, p))
    yy = np.zeros((m, p))
    if not todo.any():  # no variant to visit: no transposed copy needed
        return qq, qy, yy
    if callable(packed_t):
        packed_t = packed_t()
    if packed_t is None:
        packed_t = transpose_block(np.ascontiguousarray(packed))
    upper = np.triu_indices(k)
    nq = len(upper[0])
    acc = np.zeros((m, nq + k * p + p))
    _missing_grams(packed_t, m, W, a0, k, p, _HAS_MISSING, todo, acc)
    qq[:, upper[0], upper[1]] = acc[:, :nq]
    qq[:, upper[1], upper[0]] = acc[:, :nq]  # (the same sums: q_r q_c = q_c q_r)
    qy[:] = acc[:, nq : nq + k * p].reshape(m, k, p)
    yy[:] = acc[:, nq + k * p :]
    return qq, qy, yy


@njit(cache=True, nogil=True, inline="always")
def _code_dose(v, shift):  # pragma: no cover - jitted
    """The dosage of a 2-bit code (the table's 2, 0, 1, 0 without a lookup or a branch) and 1 for
    a missing call (code 01)."""
    c = (v >> shift) & 3
    lo = c & 1
    hi = c >> 1
    return np.float64((1 - lo) * (2 - hi)), lo & (1 - hi)


@njit(cache=True, nogil=True)
def _decode_selected_t(packed_t, m, idx, out_t, nmiss, sq):  # pragma: no cover - jitted
    """Dosages of the samples ``idx`` (0 for a missing call; no branch on the genotype), from the
    transposed block (one contiguous row per byte position): sample ``idx[a]``'s dosages of every
    variant into row ``a`` of ``out_t`` [shape: (len(idx), m)]; each variant's number of missing
    calls among them and the sum of their squared dosages (integers: exact in any order, so four
    samples' are added at a time)."""
    r = idx.shape[0]
    a = 0
    while a + 3 < r:
        i0 = idx[a]
        i1 = idx[a + 1]
        i2 = idx[a + 2]
        i3 = idx[a + 3]
        r0 = packed_t[i0 >> 2]
        r1 = packed_t[i1 >> 2]
        r2 = packed_t[i2 >> 2]
        r3 = packed_t[i3 >> 2]
        s0 = 2 * (i0 & 3)
        s1 = 2 * (i1 & 3)
        s2 = 2 * (i2 & 3)
        s3 = 2 * (i3 & 3)
        o0 = out_t[a]
        o1 = out_t[a + 1]
        o2 = out_t[a + 2]
        o3 = out_t[a + 3]
        for j in range(m):
            d0, n0 = _code_dose(r0[j], s0)
            d1, n1 = _code_dose(r1[j], s1)
            d2, n2 = _code_dose(r2[j], s2)
            d3, n3 = _code_dose(r3[j], s3)
            o0[j] = d0
            o1[j] = d1
            o2[j] = d2
            o3[j] = d3
            sq[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            nmiss[j] += (n0 + n1) + (n2 + n3)
        a += 4
    while a < r:
        i = idx[a]
        row = packed_t[i >> 2]
        shift = 2 * (i & 3)
        o = out_t[a]
        for j in range(m):
            d, miss = _code_dose(row[j], shift)
            o[j] = d
            sq[j] += d * d
            nmiss[j] += miss
        a += 1


@njit(cache=True, nogil=True)
def _missing_selected(packed, idx, rows, QM, k, want_qq, out_qm, out_qq):  # pragma: no cover - jitted
    """Sums of q_i (and q_i q_i') over the missing calls among the samples ``idx``, for the variants ``rows``."""
    r = idx.shape[0]
    for j in rows:
        for a in range(r):
            i = idx[a]
            if (packed[j, i >> 2] >> (2 * (i & 3))) & 3 != 1:
                continue
            for f in range(k):
                out_qm[j, f] += QM[a, f]
            if want_qq:
                for r1 in range(k):
                    q1 = QM[a, r1]
                    for c1 in range(k):
                        out_qq[j, r1, c1] += q1 * QM[a, c1]


#: samples decoded at a time by :func:`downdate_packed` (a block's float64 dosages of them stay small)
DOWNDATE_CHUNK_BYTES = 32 << 20


def downdate_packed(packed: np.ndarray, W: np.ndarray, idx: np.ndarray, k: int, want_qq: bool,
                    packed_t: np.ndarray | None = None):
    """The contribution of the samples ``idx`` (sorted .fam rows) to one block's sums: what a
    phenotype's missing samples take out of the sums over all analysed samples.

    With ``q_i`` = row i of ``W[:, :k]`` (the shared covariate basis) and ``x_ij`` the dosage
    (0 for a missing call), returns for every variant ``j``: ``Qx`` [shape: (m, k)] = sum q_i x_ij,
    ``s`` [shape: (m, 3)] = (sum x_ij, sum x_ij^2, number of missing calls), ``Qm`` [shape: (m, k)]
    = sum of q_i over the missing calls, and with ``want_qq`` ``QQ`` [shape: (m, k, k)] = sum of
    q_i q_i' over the missing calls (else None). The selected samples' dosages are decoded
    (without a branch per genotype) in chunks and multiplied by ``[Q_idx | 1]`` as one matrix
    product; the missing calls are then visited one by one, only for variants that have any.
    A sample's dosages are decoded from one contiguous row of the transposed block (``packed_t``:
    the block's :func:`transpose_block`, made here when not given).
    """
    packed = np.ascontiguousarray(packed)
    if packed_t is None:
        packed_t = transpose_block(packed)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    m = packed.shape[0]
    qx = np.zeros((m, k))
    s = np.zeros((m, 3))
    qm = np.zeros((m, k))
    qq = np.zeros((m, k, k) if want_qq else (1, 1, 1))
    nmiss = np.zeros(m, dtype=np.int64)
    sq = np.zeros(m)
    step = max(64, DOWNDATE_CHUNK_BYTES // (8 * max(m, 1)))
    for a in range(0, len(idx), step):
        sel = idx[a : a + step]
        QM1 = np.empty((len(sel), k + 1))
        QM1[:, :k] = W[sel, :k]
        QM1[:, k] = 1.0
        XT = np.empty((len(sel), m))  # each sample's dosages from one contiguous row; BLAS reads X transposed
        _decode_selected_t(packed_t, m, sel, XT, nmiss, sq)
        G = XT.T @ QM1
        qx += G[:, :k]
        s[:, 0] += G[:, k]
    s[:, 1] = sq
    s[:, 2] = nmiss
    rows = np.flatnonzero(nmiss > 0)
    if len(rows):
        _missing_selected(packed, idx, rows, np.ascontiguousarray(W[idx, :k]), k, want_qq, qm, qq)
    return qx, s, qm, qq if want_qq else None
