"""Where shards live: local folders (atomic rename + fsync) or fsspec URLs (s3://, gs://, ...).

Object stores are reached through fsspec (s3fs for s3://, the optional extra ``mcld-data[s3]``); the endpoint
and credentials come the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or ~/.aws), and
:func:`preflight` checks them once, before any work starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

import fsspec

logger = logging.getLogger(__name__)
T = TypeVar("T")


# Stores whose upload publishes an object whole or not at all (a single PUT, or a multipart upload that
# only appears on completion): there a writer writes the final name directly and aborts on error.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
TEMPORARY_PREFIX = "."
TEMPORARY_SUFFIX = ".tmp"


class StorageError(RuntimeError):
    """A store cannot be used (unreachable, no such bucket, no credentials); the message names the URL."""


def is_url(location: str | os.PathLike) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def join(base: str | os.PathLike, *parts: str) -> str:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def name_of(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def _url_fs(location: str | os.PathLike):
    """(filesystem, path) for a URL, with the client's listing cache for that path dropped: other processes
    (Ray workers, a resumed run) change the store behind this one's back."""
    fs, path = fsspec.core.url_to_fs(str(location))
    fs.invalidate_cache(path)
    return fs, path


def exists(location: str | os.PathLike) -> bool:
    if is_url(location):
        fs, path = _url_fs(location)
        return fs.exists(path)
    return os.path.exists(location)


def is_dir(location: str | os.PathLike) -> bool:
    if is_url(location):
        fs, path = _url_fs(location)
        return fs.isdir(path)
    return os.path.isdir(location)


def list_names(location: str | os.PathLike) -> list[str]:
    """File names directly inside a folder, sorted. On an object store a folder is only a key prefix: one
    with no objects under it is an empty folder."""
    if is_url(location):
        fs, path = _url_fs(location)
        try:
            return sorted(name_of(p) for p in fs.ls(path, detail=False) if name_of(p) != name_of(path))
        except FileNotFoundError:
            if protocol_of(location) in ATOMIC_PUT_PROTOCOLS:
                return []
            raise
    return sorted(os.listdir(location))


def list_entries(location: str | os.PathLike) -> dict[str, tuple[bool, int]]:
    """Everything directly inside a folder: name -> (is a folder, size in bytes; -1 where unknown), from
    one listing (on an object store a paginated ListObjectsV2, never a request per object). A folder that
    does not exist raises FileNotFoundError, a path that is a file NotADirectoryError."""
    if is_url(location):
        fs, path = _url_fs(location)
        entries = {}
        for info in fs.ls(path, detail=True):
            name = name_of(info["name"])
            if name and name != name_of(path):
                entries[name] = (info.get("type") == "directory", int(info.get("size") or 0))
        if not entries and not fs.isdir(path):  # one request per empty or absent folder, not per image
            raise FileNotFoundError(2, "No such file or directory", str(location))
        return entries
    entries = {}
    with os.scandir(location) as listing:
        for entry in listing:
            try:
                entries[entry.name] = (entry.is_dir(), -1 if entry.is_dir() else entry.stat().st_size)
            except OSError:  # a dangling or looping link: listed; reading it says why it is unreadable
                entries[entry.name] = (False, -1)
    return entries


def read_whole(location: str | os.PathLike) -> bytes:
    """A file's bytes in one request (an object store's GET; no HEAD first, unlike opening a file object)."""
    if is_url(location):
        fs, path = _url_fs(location)
        if protocol_of(location) in ("s3", "s3a"):
            # s3fs asks for the size first (a HEAD) unless told to read in one request
            return fs.cat_file(path, max_concurrency=1)
        return fs.cat_file(path)
    with open(location, "rb") as stream:
        return stream.read()


def makedirs(location: str | os.PathLike) -> None:
    if is_url(location):
        fs, path = _url_fs(location)
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
    """Delete a file (a folder too, on URLs)."""
    if is_url(location):
        fs, path = _url_fs(location)
        fs.rm(path, recursive=fs.isdir(path))
    else:
        os.remove(location)


def temporary_name(name: str) -> str:
    """The one naming rule for files being written: ``.{name}.{pid}-{random}.tmp`` beside the target."""
    return f"{TEMPORARY_PREFIX}{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def is_temporary(name: str) -> bool:
    """Whether a file name follows :func:`temporary_name` (what a killed writer may leave behind)."""
    return name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX)


def remove_temporaries(folder: str | os.PathLike) -> list[str]:
    """The one cleanup: delete the temporary files directly inside ``folder``; return their names."""
    if not exists(folder):
        return []
    removed = [name for name in list_names(folder) if is_temporary(name)]
    for name in removed:
        with contextlib.suppress(FileNotFoundError):
            remove(join(folder, name))
    return removed


def protocol_of(location: str | os.PathLike) -> str:
    return str(location).split("://", 1)[0].lower() if is_url(location) else "file"


def preflight(location: str | os.PathLike, *, what: str, write: bool = False) -> None:
    """Check once, before any work, that a URL's store answers: endpoint reachable, bucket present,
    credentials accepted. Raises StorageError with one line naming the URL; local paths pass through.

    ``write`` also checks that the bucket accepts a (temporary, deleted) object, so a read-only
    credential fails here rather than after hours of feature computation.
    """
    if not is_url(location):
        return
    url = str(location)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f" (endpoint {endpoint})" if endpoint and protocol_of(url) in ("s3", "s3a") else ""
    try:
        # A fresh client (today's environment, not a cached one) that gives up quickly: one attempt, 10 s.
        quick = ({"config_kwargs": {"connect_timeout": 10, "retries": {"max_attempts": 1}}}
                 if protocol_of(url) in ("s3", "s3a") else {})
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **quick)
        if quick:
            fs.retries = 1  # s3fs's own retry loop, on top of botocore's
    except ImportError as error:
        raise StorageError(f"{what} {url}: {error} (for s3:// install the extra: pip install 'mcld-data[s3]')") from error
    except ValueError as error:
        raise StorageError(f"{what} {url}: {error}") from error
    bucket = path.split("/", 1)[0]
    try:
        if protocol_of(url) in ATOMIC_PUT_PROTOCOLS:
            fs.ls(bucket, detail=False, refresh=True)  # the bucket's top level: reachability, bucket, rights
        else:
            fs.exists(path)
        if write:
            if protocol_of(url) in ATOMIC_PUT_PROTOCOLS:  # where the output goes: rights may be per prefix
                probe = f"{path.rstrip('/')}/{temporary_name('preflight')}"
                fs.pipe_file(probe, b"")
                fs.rm_file(probe)
    except FileNotFoundError as error:
        raise StorageError(f"{what} {url}: bucket {bucket!r} does not exist{where}") from error
    except PermissionError as error:
        raise StorageError(f"{what} {url}: access denied{where}: check the credentials "
                           f"(AWS_ACCESS_KEY_ID / AWS_PROFILE): {_one_line(error)}") from error
    except Exception as error:  # noqa: BLE001 - botocore's errors (no credentials, no endpoint) are not OSErrors
        kind = type(error).__name__
        reason = {
            "NoCredentialsError": "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)",
            "EndpointConnectionError": "the endpoint does not answer (check AWS_ENDPOINT_URL and the network)",
            "ConnectTimeoutError": "the endpoint does not answer (check AWS_ENDPOINT_URL and the network)",
        }.get(kind, f"{kind}: {_one_line(error)}")
        raise StorageError(f"{what} {url}: cannot use the store{where}: {reason}") from error


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


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
    """Readers never see a partial file. Local: a temporary name beside the target (:func:`temporary_name`),
    fsync, rename. Object stores (s3, gcs, azure): the upload itself is atomic, so the final name is written
    and, on any error, the upload is aborted (see :func:`_atomic_write_url`). A killed writer leaves at most
    a temporary file, which :func:`remove_temporaries` deletes; what marks a whole output is the manifest,
    written last.
    """
    location = str(location)
    if is_url(location):
        yield from _atomic_write_url(location)
        return
    directory = os.path.dirname(os.path.abspath(location))
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(location)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f"{TEMPORARY_PREFIX}{name}.{os.getpid()}-",
                                     suffix=TEMPORARY_SUFFIX)
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


def _atomic_write_url(location: str) -> Iterator[HashingWriter]:
    """Object stores with atomic uploads: write the final name and abort on error, so no temporary object
    ever exists. Other fsspec filesystems: a temporary name (:func:`temporary_name`), then a move."""
    fs, path = fsspec.core.url_to_fs(location)
    if protocol_of(location) in ATOMIC_PUT_PROTOCOLS:
        stream = fs.open(path, "wb")
        try:
            writer = HashingWriter(stream)
            yield writer
        except BaseException:
            _abandon(stream)
            raise
        stream.close()  # completes the upload: only now does the object exist
        return
    parent, name = path.rstrip("/").rsplit("/", 1) if "/" in path.rstrip("/") else ("", path)
    temporary = f"{parent}/{temporary_name(name)}" if parent else temporary_name(name)
    try:
        with fs.open(temporary, "wb") as stream:
            writer = HashingWriter(stream)
            yield writer
        fs.mv(temporary, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(temporary):
                fs.rm_file(temporary)
        raise


def _abandon(stream) -> None:
    """Throw away an unfinished upload: abort its multipart upload, never complete it with what was buffered."""
    with contextlib.suppress(Exception):
        stream.discard()
    stream.closed = True  # close() (also from __del__) would otherwise upload the buffer


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


# Errors that say the path or the rights are wrong: trying again gives the same answer.
PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# botocore's and aiohttp's network errors are not OSErrors; known by class name, so s3fs stays optional.
TRANSIENT_ERROR_NAMES = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "HTTPClientError", "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "IncompleteRead",
})


def is_transient(error: BaseException) -> bool:
    """A store that stopped answering (refused, reset, timed out) rather than a wrong path or right."""
    if isinstance(error, PERMANENT_ERRORS):
        return False
    if isinstance(error, OSError):  # ConnectionError, TimeoutError, and the OSErrors s3fs translates to
        return True
    return any(cls.__name__ in TRANSIENT_ERROR_NAMES for cls in type(error).__mro__)


def retry_transient(action: Callable[[], T], *, what: str, attempts: int = 6, first_wait: float = 2.0,
                    max_wait: float = 30.0) -> T:
    """Run ``action`` (a whole, atomic unit: one shard, one feature file) again when the store fails it
    transiently, waiting 2, 4, 8, 16, 30 s between attempts (about a minute of outage in all); a permanent
    error, or the last attempt's, is raised. Each retry is a warning naming ``what`` and the cause.
    """
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - classified below; anything not transient is re-raised
            if attempt == attempts or not is_transient(error):
                raise
            logger.warning("%s: the store failed (%s: %s); writing it again in %.0f s (attempt %d of %d)",
                           what, type(error).__name__, _one_line(error), wait, attempt + 1, attempts)
            time.sleep(wait)
            wait = min(wait * 2, max_wait)
    raise AssertionError("unreachable")
