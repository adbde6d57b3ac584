from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from shards.reader import ShardError, resolve
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


def test_fewer_shards_than_readers_fails_fast(shards_dir):
    with pytest.raises(DataError, match=r"4 shard\(s\) for 6 readers \(2 process\(es\) x 3 DataLoader worker"):
        _stream(resolve(str(shards_dir)), world_size=2, num_workers=3)


def test_every_reader_owns_a_disjoint_slice_of_the_shards(shards_dir):
    source = resolve(str(shards_dir))
    owned = [_stream(source, rank=rank, world_size=2, num_workers=2).reader_urls(worker)
             for rank in range(2) for worker in range(2)]
    assert all(len(urls) == 1 for urls in owned)
    assert sorted(itertools.chain(*owned)) == sorted(source.urls)


def test_each_rank_yields_a_fixed_epoch_from_its_own_shards(shards_dir):
    source = resolve(str(shards_dir))
    for rank in range(2):
        stream = _stream(source, rank=rank, world_size=2, batches_per_epoch=7)
        batches = list(stream)
        assert len(batches) == 7  # more than its two shards hold: resampled, never short
        own_keys = {key for url in stream.reader_urls(0) for key in _keys_of(url)}
        assert {key for batch in batches for key in batch.keys} <= own_keys
        batch = batches[0]
        assert batch.tgt_latent.shape == (2, 8, 8, 8) and batch.tgt_latent.dtype == torch.float16
        assert batch.tgt_pose.shape == (2, 3, 64, 64) and batch.tgt_pose.dtype == torch.uint8
        assert batch.face_ok.dtype == torch.bool and batch.src_clip.shape == (2, GEOMETRY.clip_dim)


def _keys_of(url: str) -> set[str]:
    from shards.reader import iter_samples

    return {s["__key__"] for s in iter_samples([url], decode=False)}


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
    assert batches_per_epoch(samples=101966, world_size=2, batch_size=12) == 4248
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
