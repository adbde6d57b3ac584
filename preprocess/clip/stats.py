"""Per-dimension mean and std of the stored CLIP embeddings, for the manifest (the reference's clip_std.npy).

The driver accumulates the run's ok rows file by file. Every float16 value is an integer multiple of
2**-24, so the sums are kept as exact integers (of value * 2**24 and value**2 * 2**48): the figures do not
depend on the order the rows come in nor on how they were batched. Plain float64 sums would agree only to
the last few bits, and differ from one order to the next.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

SCALE_BITS = 24  # float16's smallest step (subnormal) is 2**-24
_CHUNK = 1 << 20  # rows per vectorised pass: keeps every int64 partial sum far from overflow
_SPLIT = 20  # k = hi * 2**20 + lo with 0 <= lo < 2**20, so each square's pieces fit in int64


class EmbeddingStats:
    """A mergeable accumulator of count, sum and sum of squares per dimension, in exact integers."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"EmbeddingStats: dim must be positive, got {dim}")
        self.dim = dim
        self.count = 0
        self._sum = [0] * dim  # sum of k, where value = k * 2**-24
        self._sum_sq = [0] * dim  # sum of k**2

    @classmethod
    def of(cls, embeddings: np.ndarray) -> EmbeddingStats:
        stats = cls(np.asarray(embeddings).shape[-1])
        stats.update(embeddings)
        return stats

    def update(self, embeddings: np.ndarray) -> None:
        """Add rows of a float16 [n, D] array (the stored embeddings; failed rows left out by the caller)."""
        array = np.asarray(embeddings)
        if array.dtype != np.float16:
            raise TypeError(f"EmbeddingStats.update takes the stored float16 embeddings, got {array.dtype}")
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"EmbeddingStats.update: expected [n, {self.dim}], got {list(array.shape)}")
        if not np.isfinite(array).all():
            raise ValueError("EmbeddingStats.update: non-finite embeddings (they should have been rejected)")
        for start in range(0, len(array), _CHUNK):
            k = (array[start : start + _CHUNK].astype(np.float64) * 2.0**SCALE_BITS).astype(np.int64)
            hi, lo = k >> _SPLIT, k & ((1 << _SPLIT) - 1)
            s1 = k.sum(axis=0)
            s_hh = (hi * hi).sum(axis=0)
            s_hl = (hi * lo).sum(axis=0)
            s_ll = (lo * lo).sum(axis=0)
            for d in range(self.dim):
                self._sum[d] += int(s1[d])
                self._sum_sq[d] += (int(s_hh[d]) << (2 * _SPLIT)) + (int(s_hl[d]) << (_SPLIT + 1)) + int(s_ll[d])
            self.count += len(k)

    def mean(self) -> np.ndarray:
        """float64 [D], each the correctly rounded mean."""
        self._need_rows()
        return np.array([float(Fraction(s, self.count << SCALE_BITS)) for s in self._sum], np.float64)

    def std(self) -> np.ndarray:
        """float64 [D] population standard deviation (ddof 0, as numpy's default that clip_std.npy used)."""
        self._need_rows()
        n = self.count
        variances = [Fraction(n * q - s * s, (n * n) << (2 * SCALE_BITS)) for s, q in zip(self._sum, self._sum_sq)]
        return np.sqrt(np.array([float(v) for v in variances], np.float64))

    def _need_rows(self) -> None:
        if self.count == 0:
            raise ValueError("EmbeddingStats: no embeddings were accumulated")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmbeddingStats):
            return NotImplemented
        return (self.dim, self.count, self._sum, self._sum_sq) == (other.dim, other.count, other._sum, other._sum_sq)

    def __repr__(self) -> str:
        return f"EmbeddingStats(dim={self.dim}, count={self.count})"
