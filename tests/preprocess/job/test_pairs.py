from preprocess.job.features import FeatureRow
from preprocess.job.inputs import ImageInput, PairInput
from preprocess.job.pairs import join_pairs, plan_shards


def image(name, digest):
    return ImageInput(image_id=name, source_path=f"{name}.jpg", content_hash=digest, size=1)


def row(status="ok", size=1000):
    return FeatureRow(file="f", row=0, values={"status": status, "detail": "why", "reject_stage": "densepose",
                                               "source_bytes": size, "target_bytes": size})


def test_join_rejects_pairs_of_rejected_images():
    images = {"a": image("a", "ha"), "b": image("b", "hb"), "c": image("c", "hc")}
    features = {"ha": row(), "hb": row(), "hc": row(status="no_person")}
    pairs = [PairInput(key="a__b", source_id="a", target_id="b", line=2),
             PairInput(key="c__a", source_id="c", target_id="a", line=3),
             PairInput(key="a__c", source_id="a", target_id="c", line=4)]
    samples, rejects = join_pairs(pairs, images, features)
    assert [s.key for s in samples] == ["a__b"]
    assert [(r.id, r.reason) for r in rejects] == [("c__a", "source_rejected"), ("a__c", "target_rejected")]
    assert "no_person" in rejects[0].detail and "c.jpg" in rejects[0].detail


def test_plan_is_seeded_independent_of_input_order_and_even():
    images = [image(f"i{k}", f"h{k}") for k in range(40)]
    features = {i.content_hash: row(size=50_000) for i in images}
    pairs = [PairInput(key=f"i{k}__i{(k + 1) % 40}", source_id=f"i{k}", target_id=f"i{(k + 1) % 40}", line=k)
             for k in range(40)]
    by_id = {i.image_id: i for i in images}
    samples, _ = join_pairs(pairs, by_id, features)
    plan = plan_shards(samples, features, split="train", seed=3, shard_bytes=1_000_000, min_shards=1)
    again = plan_shards(list(reversed(samples)), features, split="train", seed=3, shard_bytes=1_000_000, min_shards=1)
    assert [[s.key for s in p.samples] for p in plan] == [[s.key for s in p.samples] for p in again]
    other = plan_shards(samples, features, split="train", seed=4, shard_bytes=1_000_000, min_shards=1)
    assert [s.key for p in other for s in p.samples] != [s.key for p in plan for s in p.samples]
    counts = [len(p.samples) for p in plan]
    assert sum(counts) == 40 and max(counts) - min(counts) <= 1
    assert len(plan) == 5  # 40 x ~106 kB / 1 MB with a 5% margin
    assert [p.name for p in plan] == [f"train-{i:06d}.tar" for i in range(5)]
    wide = plan_shards(samples, features, split="train", seed=3, shard_bytes=10**12, min_shards=8)
    assert len(wide) == 8
    assert len(plan_shards(samples[:3], features, split="train", seed=3, shard_bytes=10**12, min_shards=8)) == 3
