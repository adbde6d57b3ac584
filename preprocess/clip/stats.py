"""Per-dimension mean and std of the stored CLIP embeddings, for the manifest (the reference's clip_std.npy).

Ray workers each accumulate a part and the driver merges them. Every float16 value is an integer multiple
of 2**-24, so the sums are kept as exact integers (of value * 2**24 and value**2 * 2**48): merging is
exact and order-free, and the figures do not depend on how the rows were split among workers. Plain
float64 sums would agree only to the last few bits, and differ from one partitioning to the next.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

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

    def merge(self, other: EmbeddingStats) -> EmbeddingStats:
        """A new accumulator holding both parts."""
        if other.dim != self.dim:
            raise ValueError(f"EmbeddingStats.merge: dimensions differ ({self.dim} and {other.dim})")
        merged = EmbeddingStats(self.dim)
        merged.count = self.count + other.count
        merged._sum = [a + b for a, b in zip(self._sum, other._sum)]
        merged._sum_sq = [a + b for a, b in zip(self._sum_sq, other._sum_sq)]
        return merged

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

    def to_json(self) -> dict[str, Any]:
        """A plain, exact form (integers as decimal strings) to pass between processes or store."""
        return {
            "dim": self.dim,
            "count": self.count,
            "scale_bits": SCALE_BITS,
            "sum": [str(v) for v in self._sum],
            "sum_sq": [str(v) for v in self._sum_sq],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingStats:
        try:
            if data["scale_bits"] != SCALE_BITS:
                raise ValueError(f"scale_bits {data['scale_bits']} (this toolkit uses {SCALE_BITS})")
            stats = cls(int(data["dim"]))
            stats.count = int(data["count"])
            stats._sum = [int(v) for v in data["sum"]]
            stats._sum_sq = [int(v) for v in data["sum_sq"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"EmbeddingStats.from_json: malformed: {error}") from error
        if len(stats._sum) != stats.dim or len(stats._sum_sq) != stats.dim or stats.count < 0:
            raise ValueError(f"EmbeddingStats.from_json: malformed: lengths do not match dim {stats.dim}")
        return stats

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmbeddingStats):
            return NotImplemented
        return (self.dim, self.count, self._sum, self._sum_sq) == (other.dim, other.count, other._sum, other._sum_sq)

    def __repr__(self) -> str:
        return f"EmbeddingStats(dim={self.dim}, count={self.count})"
