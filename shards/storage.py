"""Where shards live: local folders (atomic rename + fsync) or fsspec URLs (s3://, gs://, ...)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import fsspec


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def join(base: str | os.PathLike, *parts: str) -> str:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def name_of(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def exists(location: str | os.PathLike) -> bool:
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(str(location))
        return fs.exists(path)
    return os.path.exists(location)


def is_dir(location: str | os.PathLike) -> bool:
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(str(location))
        return fs.isdir(path)
    return os.path.isdir(location)


def list_names(location: str | os.PathLike) -> list[str]:
    """File names directly inside a folder, sorted."""
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(str(location))
        return sorted(name_of(p) for p in fs.ls(path, detail=False))
    return sorted(os.listdir(location))


def makedirs(location: str | os.PathLike) -> None:
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(str(location))
        fs.makedirs(path, exist_ok=True)
    else:
        os.makedirs(location, exist_ok=True)


def open_read(location: str | os.PathLike) -> BinaryIO:
    if is_url(location):
        return fsspec.open(str(location), "rb").open()
    return open(location, "rb")


def read_bytes(location: str | os.PathLike) -> bytes:
    with open_read(location) as stream:
        return stream.read()


def remove(location: str | os.PathLike) -> None:
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(str(location))
        fs.rm(path)
    else:
        os.remove(location)


class HashingWriter:
    """A write-only stream that hashes and counts what passes through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.bytes += len(data)
        return self._stream.write(data)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._stream.flush()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(location: str | os.PathLike) -> Iterator[HashingWriter]:
    """Write to a temporary name beside the target, fsync, then rename: readers never see a partial file.

    On an object store (no rename) the object is written under a temporary name and moved; what marks a
    whole output there is the manifest, which is written last.
    """
    location = str(location)
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(location)
        temporary = f"{path}.tmp-{os.getpid()}"
        with fs.open(temporary, "wb") as stream:
            writer = HashingWriter(stream)
            yield writer
        fs.mv(temporary, path)
        return
    directory = os.path.dirname(os.path.abspath(location))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(location)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            writer = HashingWriter(stream)
            yield writer
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, location)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_bytes_atomic(location: str | os.PathLike, data: bytes) -> str:
    """Write a whole file atomically; return its sha256."""
    with atomic_write(location) as writer:
        writer.write(data)
    return writer.sha256


def sha256_of(location: str | os.PathLike, *, chunk: int = 1 << 20) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open_read(location) as stream:
        while block := stream.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
