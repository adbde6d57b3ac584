"""Each bad input of the foundation issue gets a clear error naming what is wrong, never a bare traceback."""

import io
import json
import tarfile

import pytest

from shards.manifest import ManifestError, read_manifest
from shards.reader import ShardError, iter_samples
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from shards.verify import verify_output

GEOMETRY = Geometry(height=256, width=176, clip_dim=32)


@pytest.fixture
def out(tmp_path):
    write_synthetic_dataset(str(tmp_path), geometry=GEOMETRY, samples=6, seed=0, samples_per_shard=3)
    return tmp_path


def test_truncated_tar(out):
    shard = out / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match=r"train-000001\.tar: (truncated or corrupt tar|sha256)"):
        list(iter_samples(str(out)))
    report = verify_output(str(out), progress=False)
    assert not report.ok
    assert any(p.shard == "train-000001.tar" for p in report.problems)
    assert all(p.shard != "train-000000.tar" for p in report.problems)


def test_flipped_byte_is_caught_by_the_checksum(out):
    shard = out / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[3000] ^= 0x01  # inside the first member's payload: the tar itself stays readable
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train-000000\.tar: sha256 .* differs from the manifest"):
        list(iter_samples(str(out)))
    report = verify_output(str(out), progress=False)
    assert [p.shard for p in report.problems] == ["train-000000.tar"]


def test_missing_shard(out):
    (out / "train-000001.tar").unlink()
    with pytest.raises(ShardError, match=r"1 shard\(s\) listed in the manifest are missing: train-000001\.tar"):
        list(iter_samples(str(out)))
    report = verify_output(str(out), progress=False)
    assert "train-000001.tar: missing from the folder" in [str(p) for p in report.problems]


def test_manifest_of_another_schema_version(out):
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema_version is 2; this toolkit .* reads schema version 1 only"):
        read_manifest(str(out))
    with pytest.raises(ShardError, match="schema_version is 2"):
        list(iter_samples(str(out)))
    assert not verify_output(str(out), progress=False).ok


def _rewrite_shard(path, edit):
    """Rewrite a tar through ``edit(name, data) -> (name, data) | None``."""
    with tarfile.open(path) as archive:
        members = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            edited = edit(name, data)
            if edited is None:
                continue
            info = tarfile.TarInfo(edited[0])
            info.size = len(edited[1])
            archive.addfile(info, io.BytesIO(edited[1]))
    path.write_bytes(buffer.getvalue())


def test_sample_missing_a_required_field(out):
    shard = out / "train-000000.tar"
    with tarfile.open(shard) as archive:
        first_key = archive.getmembers()[0].name.split(".")[0]
    _rewrite_shard(shard, lambda n, d: None if n == f"{first_key}.face_emb.npy" else (n, d))
    with pytest.raises(ShardError, match=rf"train-000000\.tar: {first_key}: missing required field\(s\) \['face_emb'\]"):
        list(iter_samples([str(shard)]))
    report = verify_output(str(out), progress=False)
    assert any(p.key == first_key and "face_emb" in p.message for p in report.problems)


@pytest.mark.parametrize("bad_name", ["a.b__c.meta.json", "dir/a__c.meta.json", "../a__c.meta.json", "a__c"])
def test_key_with_dots_or_path_separators(out, bad_name):
    shard = out / "train-000000.tar"
    _rewrite_shard(shard, lambda n, d: (bad_name, d) if n.endswith(".meta.json") else (n, d))
    with pytest.raises(ShardError, match=r"train-000000\.tar: member .* is not '\{source_id\}__\{target_id\}"):
        list(iter_samples([str(shard)]))


def test_empty_directory(tmp_path):
    with pytest.raises(ShardError, match="empty output folder"):
        list(iter_samples(str(tmp_path)))
    report = verify_output(str(tmp_path), progress=False)
    assert not report.ok and "no manifest" in str(report.problems[0])


def test_unfinished_output_without_manifest(out):
    (out / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest.json: the job did not finish"):
        list(iter_samples(str(out)))


def test_nonexistent_path(tmp_path):
    with pytest.raises(ShardError, match="no such file or directory"):
        list(iter_samples(str(tmp_path / "nope")))


def test_unlisted_shard_and_bad_counts(out):
    (out / "train-000009.tar").write_bytes((out / "train-000000.tar").read_bytes())
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    data["counts"]["pairs_in"] += 1
    path.write_text(json.dumps(data))
    messages = [str(p) for p in verify_output(str(out), progress=False).problems]
    assert "train-000009.tar: shard is not listed in the manifest" in messages
    assert any("counts do not add up: pairs: 7 in != 6 written + 0 rejected" in m for m in messages)
