import numpy as np
import pytest

from preprocess.clip.stats import EmbeddingStats


def embeddings(rows: int, dim: int = 16, *, seed: int = 0) -> np.ndarray:
    """float16 values spanning many exponents (tiny, subnormal, large), the hard case for float sums."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (rows, dim)) * np.exp2(rng.integers(-26, 14, (rows, dim)))
    return np.clip(values, -65504, 65504).astype(np.float16)


def test_small_known_case():
    stats = EmbeddingStats.of(np.array([[1.0, -2.0], [3.0, 2.0]], np.float16))
    np.testing.assert_array_equal(stats.mean(), [2.0, 0.0])
    np.testing.assert_array_equal(stats.std(), [1.0, 2.0])
    assert stats.count == 2


def test_matches_numpy_in_float64():
    data = embeddings(500)
    stats = EmbeddingStats.of(data)
    wide = data.astype(np.float64)
    np.testing.assert_allclose(stats.mean(), wide.mean(axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(stats.std(), wide.std(axis=0), rtol=1e-9, atol=0)


def test_any_order_and_any_batching_give_the_same_bits():
    data = embeddings(300)
    whole = EmbeddingStats.of(data)
    rng = np.random.default_rng(1)
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, 300), size=4, replace=False))
        stats = EmbeddingStats(16)
        for part in np.split(data[rng.permutation(300)], cuts):
            stats.update(part)
        assert stats == whole
        np.testing.assert_array_equal(stats.mean(), whole.mean())
        np.testing.assert_array_equal(stats.std(), whole.std())


def test_update_in_batches_equals_one_pass():
    data = embeddings(100)
    stats = EmbeddingStats(16)
    for start in range(0, 100, 7):
        stats.update(data[start : start + 7])
    assert stats == EmbeddingStats.of(data)


def test_extreme_values_do_not_overflow():
    data = np.full((1000, 4), 65504, np.float16)
    data[::2] *= -1
    stats = EmbeddingStats.of(data)
    np.testing.assert_array_equal(stats.mean(), np.zeros(4))
    np.testing.assert_array_equal(stats.std(), np.full(4, 65504.0))


def test_refuses_what_it_cannot_account_for_exactly():
    stats = EmbeddingStats(4)
    with pytest.raises(TypeError, match="float16"):
        stats.update(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected \[n, 4\]"):
        stats.update(np.zeros((2, 5), np.float16))
    with pytest.raises(ValueError, match="non-finite"):
        stats.update(np.array([[np.inf, 0, 0, 0]], np.float16))
    with pytest.raises(ValueError, match="no embeddings"):
        stats.mean()
