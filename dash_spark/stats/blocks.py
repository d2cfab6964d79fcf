"""A block of variants as the kernels take it, and the kernel chosen by the block's type.

- :class:`PackedBlock`: PLINK 1 .bed bytes [shape: (m, ceil(n/4))], summed by the packed-byte
  kernel of :mod:`dash_spark.stats.kernel` without decoding;
- :class:`DenseBlock`: real values [shape: (m, n)], NaN for missing (features, dosages), summed
  with matrix products.

Both give the same sums ``(SX, SXX, SM)`` and missing-call Gram blocks, so everything above this
module is indifferent to where the genotypes came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .kernel import compress_block, decode, downdate_packed, missing_grams, transpose_block


@dataclass(frozen=True, eq=False)
class PackedBlock:
    """Packed .bed bytes of ``m`` variants (``n_samples`` samples); ``meta`` = ``(chrom, id, pos,
    alt, ref)`` arrays when the reader was asked for them."""

    data: np.ndarray
    n_samples: int
    meta: tuple | None = None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def dense(self) -> np.ndarray:
        """Dosages [shape: (m, n)], NaN for missing."""
        return decode(self.data, self.n_samples).T

    @cached_property
    def transposed(self) -> np.ndarray:
        """The bytes with one byte position of every variant per row (:func:`transpose_block`),
        made once (when the block has missing calls or downdates) for the missing calls' sums and
        Grams and the phenotypes' downdates."""
        return transpose_block(np.ascontiguousarray(self.data))

    def take(self, rows: np.ndarray) -> "PackedBlock":
        meta = None if self.meta is None else tuple(x[rows] for x in self.meta)
        return PackedBlock(self.data[rows], self.n_samples, meta)


@dataclass(frozen=True, eq=False)
class DenseBlock:
    """Values of ``m`` variants [shape: (m, n)], NaN for missing; ``meta`` as for :class:`PackedBlock`."""

    values: np.ndarray
    meta: tuple | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def dense(self) -> np.ndarray:
        return self.values

    def take(self, rows: np.ndarray) -> "DenseBlock":
        meta = None if self.meta is None else tuple(x[rows] for x in self.meta)
        return DenseBlock(self.values[rows], meta)


Block = PackedBlock | DenseBlock


def compress_dense(X: np.ndarray, W: np.ndarray, n_a: int):
    """The kernel's sums for dense values X [shape: (m, n)] (NaN missing): ``(SX, SXX, SM)``."""
    n = X.shape[1]
    M = np.isnan(X)
    X0 = np.where(M, 0.0, X)
    A, B = W[:n, :n_a], W[:n, n_a:]
    return X0 @ A, (X0 * X0) @ B, M.astype(np.float64) @ A


def missing_grams_dense(X: np.ndarray, W: np.ndarray, a0: int, k: int, p: int, todo: np.ndarray):
    """:func:`dash_spark.stats.kernel.missing_grams` for dense values (NaN missing)."""
    m, n = X.shape
    qq = np.zeros((m, k, k))
    qy = np.zeros((m, k, p))
    yy = np.zeros((m, p))
    block = W[:n, a0 : a0 + k + p]
    for j in np.flatnonzero(todo):
        rows = block[np.isnan(X[j])]
        Q, Y = rows[:, :k], rows[:, k:]
        qq[j] = Q.T @ Q
        qy[j] = Q.T @ Y
        yy[j] = (Y * Y).sum(axis=0)
    return qq, qy, yy


def block_sums(block: Block, W: np.ndarray, n_a: int):
    """``(SX, SXX, SM)`` of a block (see :mod:`dash_spark.stats.kernel`), by the block's kernel."""
    if isinstance(block, DenseBlock):
        return compress_dense(block.values, W, n_a)
    return compress_block(block.data, W, n_a, packed_t=lambda: block.transposed)  # (made only if needed)


def block_grams(block: Block, W: np.ndarray, a0: int, k: int, p: int, todo: np.ndarray):
    """Missing calls' ``(QmQm, Qmy, ymy)`` of a block (see :func:`dash_spark.stats.kernel.missing_grams`)."""
    if isinstance(block, DenseBlock):
        return missing_grams_dense(block.values, W, a0, k, p, todo)
    return missing_grams(block.data, W, a0, k, p, todo=todo, packed_t=lambda: block.transposed)


def downdate_dense(X: np.ndarray, W: np.ndarray, idx: np.ndarray, k: int, want_qq: bool):
    """:func:`dash_spark.stats.kernel.downdate_packed` for dense values X [shape: (m, n)] (NaN missing)."""
    XM = X[:, idx]
    M = np.isnan(XM)
    X0 = np.where(M, 0.0, XM)
    QM = W[idx, :k]
    Mf = M.astype(np.float64)
    s = np.stack([X0.sum(axis=1), (X0 * X0).sum(axis=1), Mf.sum(axis=1)], axis=1)
    qq = None
    if want_qq:
        qq = np.zeros((X.shape[0], k, k))
        for j in np.flatnonzero(s[:, 2] > 0):
            rows = QM[M[j]]
            qq[j] = rows.T @ rows
    return X0 @ QM, s, Mf @ QM, qq


def block_downdate(block: Block, W: np.ndarray, idx: np.ndarray, k: int, want_qq: bool):
    """The samples ``idx``'s share of a block's sums (see :func:`dash_spark.stats.kernel.downdate_packed`)."""
    if isinstance(block, DenseBlock):
        return downdate_dense(block.values, W, idx, k, want_qq)
    return downdate_packed(block.data, W, idx, k, want_qq, packed_t=block.transposed)
