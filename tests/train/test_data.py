from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch

from shards.reader import ReadStats, ShardError, iter_samples, iter_shard_members, iter_shard_span, resolve, shard_keys
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from tests.train.conftest import GEOMETRY
from train.data import (
    DataError,
    TrainStream,
    batches_per_epoch,
    consumed_by_worker,
    load_pairs,
    make_loader,
    split_count,
)


def _stream(source, **overrides) -> TrainStream:
    settings = dict(source=source, rank=0, world_size=1, num_workers=0, batch_size=2, batches_per_epoch=5, seed=0,
                    shuffle_buffer=4, verify_checksums=True)
    settings.update(overrides)
    return TrainStream(**settings)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """13 samples in 2 shards (7 + 6): far fewer shards than 8 ranks x 4 workers."""
    out = tmp_path_factory.mktemp("two-shards") / "out"
    write_synthetic_dataset(str(out), geometry=GEOMETRY, samples=13, samples_per_shard=7, seed=5, previews=False)
    return out


def _epoch_keys(source, *, world_size, num_workers, batch_size, epoch=0, seed=0) -> list[list[str]]:
    """Every reader's raw keys for one epoch, reader by reader (rank-major)."""
    readers = []
    for rank in range(world_size):
        stream = _stream(source, rank=rank, world_size=world_size, num_workers=num_workers, batch_size=batch_size,
                         batches_per_epoch=None, seed=seed)
        stream.epoch = epoch
        for role in range(max(1, num_workers)):
            keys = [m["__key__"] for m in stream.raw_samples(role)] if stream.worker_batches(role) else []
            assert len(keys) == stream.worker_batches(role) * batch_size
            readers.append(keys)
    return readers


def test_8x4_readers_on_2_shards_read_every_sample_once_per_epoch_plus_stated_padding(two_shards):
    """Any ranks x workers on any shard count: one epoch's union is the dataset, each sample once except
    the padding, which repeats the first samples of the epoch's order."""
    source = resolve(str(two_shards))
    dataset = [s["__key__"] for s in iter_samples(str(two_shards), decode=False)]
    for world_size, workers, batch in [(8, 4, 1), (8, 4, 2), (3, 2, 2), (1, 0, 5)]:
        readers = _epoch_keys(source, world_size=world_size, num_workers=workers, batch_size=batch)
        seen = Counter(key for keys in readers for key in keys)
        stream = _stream(source, world_size=world_size, num_workers=workers, batch_size=batch, batches_per_epoch=None)
        plan = stream.plan()
        assert plan.positions == world_size * stream.batches_per_epoch * batch
        assert 0 <= plan.padding < world_size * batch and plan.padding == sum(seen.values()) - len(dataset)
        assert set(seen) == set(dataset)
        order = [s for k in plan.order for s in _keys_of_ordered(source.urls[k])]
        repeated = order[:plan.padding]
        assert sorted(k for k, n in seen.items() if n == 2) == sorted(repeated) and max(seen.values()) <= 2
    # Each rank's batches all exist (no rank runs dry), and ranks get the same count.
    per_rank = [len(list(_stream(source, rank=r, world_size=8, num_workers=0, batch_size=1,
                                 batches_per_epoch=None))) for r in range(8)]
    assert per_rank == [2] * 8


def test_epoch_order_is_seeded_and_changes_with_the_epoch(two_shards):
    source = resolve(str(two_shards))
    first = _epoch_keys(source, world_size=8, num_workers=4, batch_size=1)
    assert _epoch_keys(source, world_size=8, num_workers=4, batch_size=1) == first
    orders = {tuple(_stream(source, batches_per_epoch=None, seed=0).plan().order)}
    for epoch in range(1, 6):
        stream = _stream(source, batches_per_epoch=None, seed=0)
        stream.epoch = epoch
        orders.add(tuple(stream.plan().order))
    assert orders == {(0, 1), (1, 0)}  # two shards: both orders occur over a few epochs


def test_shared_shards_are_read_by_seeking_and_whole_ones_streamed(two_shards, shards_dir):
    """8 x 4 readers on 2 shards read little more than the data; readers of whole shards stream them."""
    source = resolve(str(two_shards))
    total = sum(r.bytes for r in source.manifest.shards)
    stats = ReadStats()
    pieces = []
    for rank in range(8):
        stream = _stream(source, rank=rank, world_size=8, num_workers=4, batch_size=1, batches_per_epoch=None,
                         stats=stats)
        for role in range(4):
            pieces += stream.plan().pieces(rank=rank, role=role)
            list(stream.raw_samples(role)) if stream.worker_batches(role) else None
    assert not any(p.whole for p in pieces)
    assert total < stats.bytes < 2 * total  # shared: headers repeat, member data does not
    plentiful = resolve(str(shards_dir))  # 4 shards of 4, one reader each at batch 4
    stream = _stream(plentiful, world_size=1, num_workers=0, batch_size=4, batches_per_epoch=None, stats=ReadStats())
    assert all(p.whole for p in stream.plan().pieces(rank=0, role=0))
    list(stream.raw_samples(0))
    assert stream.stats.bytes == sum(r.bytes for r in plentiful.manifest.shards)


def test_a_span_is_the_same_samples_as_the_whole_shard_slice(two_shards):
    url = resolve(str(two_shards)).urls[0]
    whole = list(iter_shard_members(url))
    for start, stop in [(0, 7), (0, 1), (3, 5), (6, 7)]:
        stats = ReadStats()
        part = list(iter_shard_span(url, start, stop, stats=stats))
        assert [{k: v for k, v in m.items()} for m in part] == whole[start:stop]
    assert shard_keys(url) == [m["__key__"] for m in whole]
    with pytest.raises(ShardError, match=r"train-000000.tar: 7 samples, fewer than the 9"):
        list(iter_shard_span(url, 5, 9))


def _keys_of_ordered(url: str) -> list[str]:
    return [m["__key__"] for m in iter_shard_members(url)]


def test_each_rank_yields_a_fixed_epoch(shards_dir):
    source = resolve(str(shards_dir))
    for rank in range(2):
        stream = _stream(source, rank=rank, world_size=2, batches_per_epoch=7)
        batches = list(stream)
        assert len(batches) == 7  # more than one pass holds: the order again, cyclically, never short
        batch = batches[0]
        assert batch.tgt_latent.shape == (2, 8, 8, 8) and batch.tgt_latent.dtype == torch.float16
        assert batch.tgt_pose.shape == (2, 3, 64, 64) and batch.tgt_pose.dtype == torch.uint8
        assert batch.face_ok.dtype == torch.bool and batch.src_clip.shape == (2, GEOMETRY.clip_dim)


def test_epochs_differ_and_repeat_exactly(shards_dir):
    source = resolve(str(shards_dir))
    stream = _stream(source)
    first = [b.keys for b in stream]
    again = [b.keys for b in stream]
    stream.epoch = 1
    second = [b.keys for b in stream]
    assert first == again
    assert first != second


def test_resume_skips_exactly_what_was_consumed_with_workers(shards_dir):
    source = resolve(str(shards_dir))
    stream = _stream(source, num_workers=2, batches_per_epoch=5, shuffle_buffer=0)
    whole = [b.keys for b in make_loader(stream, pin_memory=False)]
    assert len(whole) == 5
    for consumed in (0, 1, 2, 3, 5):
        stream.skip_batches = consumed
        rest = [b.keys for b in make_loader(stream, pin_memory=False)]
        assert rest == whole[consumed:], consumed
    stream.skip_batches = 0


def test_counting_helpers():
    assert [split_count(5, 2, w) for w in range(2)] == [3, 2]
    # DataLoader order: batch i from worker i % 2. After 3 batches worker 0 gave 2, worker 1 gave 1.
    assert [consumed_by_worker(3, workers=2, worker=w) for w in range(2)] == [2, 1]
    assert consumed_by_worker(0, workers=3, worker=2) == 0
    assert batches_per_epoch(samples=101966, world_size=2, batch_size=12) == 4249  # ceil: one whole pass
    assert batches_per_epoch(samples=3, world_size=2, batch_size=12) == 1


def test_a_corrupt_shard_is_an_error_naming_it(shards_dir, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(shards_dir, copy)
    victim = copy / "train-000001.tar"
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0xFF
    victim.write_bytes(bytes(data))
    stream = _stream(resolve(str(copy)), batches_per_epoch=40)
    with pytest.raises(ShardError, match="train-000001.tar"):
        list(stream)


def test_validation_pairs_are_the_first_samples_and_must_fit(shards_dir, tmp_path):
    pairs = load_pairs(str(shards_dir), count=3, geometry=GEOMETRY)
    assert len(pairs) == 3 and "tgt" in pairs[0]
    other = tmp_path / "other"
    write_synthetic_dataset(str(other), geometry=Geometry(height=32, width=32, clip_dim=24), samples=2)
    with pytest.raises(DataError, match="32x32 with CLIP width 24; training shards are 64x64"):
        load_pairs(str(other), count=2, geometry=GEOMETRY)


def test_an_undecodable_sample_is_an_error_naming_shard_and_field(tmp_path):
    import io
    import tarfile

    out = tmp_path / "out"
    write_synthetic_dataset(str(out), geometry=GEOMETRY, samples=2, samples_per_shard=2, previews=False)
    shard = out / "train-000000.tar"
    with tarfile.open(shard) as source:
        members = [(info, source.extractfile(info).read()) for info in source.getmembers()]
    with tarfile.open(shard, "w") as target:
        for info, data in members:
            if info.name.endswith(".src_clip.npy"):
                data = b"not an array"
                info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    stream = _stream(resolve(str(out)), verify_checksums=False, batches_per_epoch=1, shuffle_buffer=0)
    with pytest.raises(ShardError, match=r"train-000000.tar: .*field src_clip cannot be decoded"):
        list(stream)
