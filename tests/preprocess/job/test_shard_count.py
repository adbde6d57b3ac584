"""Issue 18: the job's default shard count serves the trainer (64 unless samples run out); --min-shards wins."""

from preprocess.job.pairs import default_min_shards, plan_shards
from tests.preprocess.job.test_pairs import image, joined, row


def _samples(count: int):
    images = [image(f"i{k}", f"h{k}") for k in range(count)]
    features = {i.content_hash: row(size=1000) for i in images}
    samples, _, rows = joined(images, features, [(f"i{k}", f"i{(k + 1) % count}") for k in range(count)])
    return samples, rows


def test_default_floor_is_64_shards_unless_a_shard_would_hold_under_16_samples():
    assert [default_min_shards(n) for n in (1, 15, 16, 100, 1023, 1024, 101_966)] == [1, 1, 1, 6, 63, 64, 64]
    samples, features = _samples(2000)
    # A 1 GB budget needs one shard for these small samples: the default floor makes 64, explicit values win.
    assert len(plan_shards(samples, features, split="train", seed=0, shard_bytes=10**9, min_shards=None)) == 64
    assert len(plan_shards(samples, features, split="train", seed=0, shard_bytes=10**9, min_shards=1)) == 1
    assert len(plan_shards(samples, features, split="train", seed=0, shard_bytes=10**9, min_shards=100)) == 100
    few, features = _samples(40)
    assert len(plan_shards(few, features, split="train", seed=0, shard_bytes=10**9, min_shards=None)) == 2
