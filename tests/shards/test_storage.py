"""Atomic writes and their one temporary-name rule on fsspec URLs and S3; the store preflight."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import struct
import threading

import numpy as np
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



class CuttableLink:
    """A real TCP path to the store on 127.0.0.1 that can be cut (listener gone, live connections reset:
    what a client sees when the network or the store goes away) and restored on the same port."""

    def __init__(self, upstream_port: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
                connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            with self._lock:
                self._connections.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def test_a_write_that_loses_the_store_midway_is_written_again_whole(s3_server, monkeypatch, caplog):
    """The network to the store is cut halfway through a shard's upload: the write fails, is retried after a
    wait (the link comes back when the retry is announced), and the object is the whole payload."""
    import s3fs

    bucket = s3_server.new_bucket()
    link = CuttableLink(int(s3_server.endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{link.port}")
    s3fs.S3FileSystem.clear_instance_cache()  # a client for the new endpoint
    target = f"s3://{bucket}/out/train-000000.tar"
    payload = np.random.default_rng(0).integers(0, 256, 12 << 20, dtype=np.uint8).tobytes()
    attempts: list[int] = []

    def write_shard() -> str:
        attempts.append(len(attempts) + 1)
        with storage.atomic_write(target) as writer:
            writer.write(payload[: len(payload) // 2])
            if len(attempts) == 1:
                link.cut()
            writer.write(payload[len(payload) // 2:])
        return writer.sha256

    class RestoreWhenRetried(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "writing it again" in record.getMessage():
                link.restore()

    handler = RestoreWhenRetried()
    logging.getLogger("shards.storage").addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="shards.storage"):
            digest = storage.retry_transient(write_shard, what=target, first_wait=0.2)
    finally:
        logging.getLogger("shards.storage").removeHandler(handler)
        link.cut()
        s3fs.S3FileSystem.clear_instance_cache()
    assert attempts == [1, 2]
    assert digest == hashlib.sha256(payload).hexdigest()
    (warning,) = [r.getMessage() for r in caplog.records if "writing it again" in r.getMessage()]
    assert target in warning and "attempt 2 of 6" in warning
    assert s3_server.keys(bucket) == ["out/train-000000.tar"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert storage.sha256_of(target) == (digest, len(payload))


def test_only_a_store_that_stops_answering_is_retried():
    assert storage.is_transient(ConnectionRefusedError(111, "refused")) and storage.is_transient(TimeoutError())
    assert not storage.is_transient(FileNotFoundError("s3://b/none")) and not storage.is_transient(PermissionError())
    assert not storage.is_transient(ValueError("a bug"))
    calls: list[int] = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("s3://bucket/features/part-1.parquet")

    with pytest.raises(FileNotFoundError):
        storage.retry_transient(missing, what="x", first_wait=0)
    assert calls == [1]  # a permanent error is raised at once, not retried

    def always_down() -> None:
        calls.append(1)
        raise ConnectionResetError(104, "reset")

    calls.clear()
    with pytest.raises(ConnectionResetError):
        storage.retry_transient(always_down, what="x", attempts=3, first_wait=0)
    assert calls == [1, 1, 1]
