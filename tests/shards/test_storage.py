"""Atomic writes and their one temporary-name rule on fsspec URLs and S3; the store preflight."""

from __future__ import annotations

import pytest

from shards import storage


def test_a_killed_writer_leaves_a_temporary_file_that_the_one_cleanup_removes(tmp_path):
    """local:// writes through fsspec like an object store without atomic uploads (temporary name + move)."""
    folder = f"local://{tmp_path}"
    pending = storage.atomic_write(storage.join(folder, "train-000000.tar"))
    writer = pending.__enter__()  # a writer killed here never reaches its exit
    writer.write(b"half a shard")
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and storage.is_temporary(leftovers[0]), leftovers
    assert leftovers[0].startswith(".train-000000.tar.")
    assert not storage.exists(storage.join(folder, "train-000000.tar"))
    assert storage.remove_temporaries(folder) == leftovers
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scheme", ["memory", "local"])
def test_an_error_mid_write_leaves_neither_the_target_nor_a_temporary(scheme, tmp_path):
    folder = f"memory://{tmp_path.name}" if scheme == "memory" else f"local://{tmp_path}"
    target = storage.join(folder, "a.bin")
    with pytest.raises(RuntimeError, match="store lost"):
        with storage.atomic_write(target) as writer:
            writer.write(b"x" * 1000)
            raise RuntimeError("store lost")
    assert not storage.exists(folder) or storage.list_names(folder) == []
    assert storage.write_bytes_atomic(target, b"whole") and storage.read_bytes(target) == b"whole"
    assert storage.list_names(folder) == ["a.bin"]


def test_local_temporaries_follow_the_same_rule(tmp_path):
    pending = storage.atomic_write(tmp_path / "manifest.json")
    pending.__enter__().write(b"{")
    (leftover,) = [p.name for p in tmp_path.iterdir()]
    assert storage.is_temporary(leftover)
    assert storage.remove_temporaries(tmp_path) == [leftover]


def test_s3_upload_is_published_whole_or_not_at_all(s3_server):
    """A writer that fails after 60 MB (a multipart upload is under way) leaves no object, no temporary
    object and no open upload; a finished write leaves exactly the target."""
    bucket = s3_server.new_bucket()
    target = f"s3://{bucket}/out/train-000000.tar"
    with pytest.raises(ConnectionError, match="lost"):
        with storage.atomic_write(target) as writer:
            for _ in range(12):
                writer.write(b"\x01" * (5 << 20))
            raise ConnectionError("lost the store")
    assert s3_server.keys(bucket) == []
    assert s3_server.open_uploads(bucket) == []
    digest = storage.write_bytes_atomic(target, b"shard bytes")
    assert s3_server.keys(bucket) == ["out/train-000000.tar"]
    assert storage.sha256_of(target) == (digest, 11)


def _fresh_s3(monkeypatch, **env):
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_preflight_accepts_a_working_bucket(s3_server):
    bucket = s3_server.new_bucket()
    storage.preflight(f"s3://{bucket}/out", what="--out", write=True)
    assert s3_server.keys(bucket) == []  # the write probe is removed


def test_preflight_names_the_url_when_the_bucket_is_missing(s3_server):
    with pytest.raises(storage.StorageError, match=r"^--images s3://no-such-bucket-x/images: bucket 'no-such-bucket-x' does not exist"):
        storage.preflight("s3://no-such-bucket-x/images", what="--images")


def test_preflight_names_the_url_when_the_endpoint_is_unreachable(s3_server, monkeypatch):
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    _fresh_s3(monkeypatch, AWS_ENDPOINT_URL=dead, AWS_MAX_ATTEMPTS="1")
    with pytest.raises(storage.StorageError) as caught:
        storage.preflight("s3://bucket/out", what="--out")
    message = str(caught.value)
    assert message.startswith(f"--out s3://bucket/out: cannot use the store (endpoint {dead})"), message
    assert "\n" not in message


def test_preflight_names_the_url_when_credentials_are_missing(s3_server, monkeypatch, tmp_path):
    bucket = s3_server.new_bucket()
    _fresh_s3(monkeypatch, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_SESSION_TOKEN=None,
              AWS_PROFILE=None, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
              AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    with pytest.raises(storage.StorageError) as caught:
        storage.preflight(f"s3://{bucket}/out", what="--out")
    message = str(caught.value)
    assert message.startswith(f"--out s3://{bucket}/out: "), message
    assert "credentials" in message.lower() and "\n" not in message


def test_preflight_leaves_local_paths_alone(tmp_path):
    storage.preflight(tmp_path / "not-yet", what="--out", write=True)
    assert not (tmp_path / "not-yet").exists()

