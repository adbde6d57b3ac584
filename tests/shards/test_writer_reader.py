import hashlib
import os
import tarfile

import numpy as np
import pytest

from shards.manifest import read_manifest
from shards.reader import iter_samples, pipeline, resolve
from shards.schema import Geometry, SchemaError
from shards.synthetic import write_synthetic_dataset
from shards.writer import FIXED_MTIME, ShardWriter, parse_size
from tests.shards.conftest import make_samples


def write(out, geometry, samples, **kwargs):
    with ShardWriter(str(out), split="train", geometry=geometry, **kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.records


def test_round_trip_through_tars(tmp_path, geometry):
    samples = make_samples(geometry, 5)
    records = write(tmp_path, geometry, samples, max_samples=2)
    assert [r.name for r in records] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [r.samples for r in records] == [2, 2, 1]
    for record in records:
        data = (tmp_path / record.name).read_bytes()
        assert record.bytes == len(data)
        assert record.sha256 == hashlib.sha256(data).hexdigest()
    urls = [str(tmp_path / r.name) for r in records]
    decoded = list(iter_samples(urls))
    assert [d["__key__"] for d in decoded] == [s["__key__"] for s in samples]
    for original, got in zip(samples, decoded):
        for name in ("tgt_latent", "ref_latent", "src_clip", "tex_clip", "face_emb", "tgt_pose"):
            np.testing.assert_array_equal(got[name], original[name])
        assert got["meta"] == original["meta"]
        assert got["__url__"].endswith(".tar")


def test_torch_output(tmp_path):
    import torch

    geometry = Geometry(height=256, width=176, clip_dim=32)
    records = write(tmp_path, geometry, make_samples(geometry, 2), max_samples=10)
    sample = next(iter_samples([str(tmp_path / records[0].name)], to_torch=True))
    assert sample["tgt_latent"].dtype == torch.float16 and sample["tgt_latent"].shape == (8, 32, 22)
    assert sample["tgt_pose"].dtype == torch.uint8 and sample["tgt_pose"].shape == (256, 176, 3)
    assert sample["face_emb"].dtype == torch.float32


def test_identical_input_gives_byte_identical_tars(tmp_path):
    geometry = Geometry(height=256, width=176, clip_dim=32)
    first = write(tmp_path / "a", geometry, make_samples(geometry, 6, seed=3), max_samples=4)
    second = write(tmp_path / "b", geometry, make_samples(geometry, 6, seed=3), max_samples=4)
    assert [r.sha256 for r in first] == [r.sha256 for r in second]
    for record in first:
        assert (tmp_path / "a" / record.name).read_bytes() == (tmp_path / "b" / record.name).read_bytes()
    with tarfile.open(tmp_path / "a" / first[0].name) as archive:
        for info in archive.getmembers():
            assert (info.mtime, info.uid, info.gid, info.mode, info.uname) == (FIXED_MTIME, 0, 0, 0o444, "")


def test_rolls_over_at_the_byte_budget(tmp_path):
    geometry = Geometry(height=256, width=176, clip_dim=32)
    samples = make_samples(geometry, 12)
    budget = 120_000
    records = write(tmp_path, geometry, samples, max_bytes=budget)
    assert len(records) > 1
    assert sum(r.samples for r in records) == 12
    for record in records:
        assert record.bytes <= budget, record
    # a budget smaller than one sample still writes it, alone
    records = write(tmp_path / "small", geometry, samples[:2], max_bytes=1000)
    assert [r.samples for r in records] == [1, 1]


def test_writes_are_atomic(tmp_path):
    geometry = Geometry(height=256, width=176, clip_dim=32)
    samples = make_samples(geometry, 4)
    bad = dict(samples[3])
    del bad["tgt_pose"]
    with pytest.raises(SchemaError, match="missing required field"):
        with ShardWriter(str(tmp_path), split="train", geometry=geometry, max_samples=2) as writer:
            for sample in samples[:3] + [bad]:
                writer.write(sample)
    # the first shard was complete and renamed; nothing of the unfinished second one is left behind
    assert sorted(os.listdir(tmp_path)) == ["train-000000.tar"]


def test_writer_refuses_duplicate_keys_and_bad_split(tmp_path):
    geometry = Geometry(height=256, width=176, clip_dim=32)
    sample = make_samples(geometry, 1)[0]
    with pytest.raises(SchemaError, match="duplicate sample key"):
        write(tmp_path, geometry, [sample, sample], max_samples=5)
    with pytest.raises(ValueError, match="split name"):
        ShardWriter(str(tmp_path), split="Train.x", geometry=geometry, max_samples=1)


def test_parse_size():
    assert parse_size("1GB") == 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("300k") == 300_000
    assert parse_size(42) == 42
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("lots")


def test_output_folder_reading_and_pipeline_shuffle(tmp_path):
    geometry = Geometry(height=256, width=176, clip_dim=32)
    manifest = write_synthetic_dataset(str(tmp_path), geometry=geometry, samples=9, seed=1, samples_per_shard=3)
    assert read_manifest(str(tmp_path)).shards == manifest.shards
    keys = [s["__key__"] for s in iter_samples(str(tmp_path))]
    assert len(keys) == 9 == len(set(keys))
    source = resolve(str(tmp_path))
    shuffled = [s["__key__"] for s in pipeline(source, shuffle_buffer=8, seed=5)]
    assert sorted(shuffled) == sorted(keys) and shuffled != keys
    again = [s["__key__"] for s in pipeline(source, shuffle_buffer=8, seed=5)]
    assert again == shuffled
    resampled = pipeline(source, resampled=True, seed=2, decode=False)
    drawn = [s["__key__"] for _, s in zip(range(30), resampled)]
    assert len(drawn) == 30 and set(drawn) <= set(keys)

