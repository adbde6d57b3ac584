"""Reading shards: a shard list or an output folder -> a stream of decoded, schema-checked samples.

The stream is a webdataset DataPipeline (shard listing, resampling, node/worker splitting and shuffling
are webdataset's); the tar expansion is ours because it must be strict: a member name that is unsafe,
not ``{key}.{field}``, or a non-file entry is an error naming the shard, never a silently skipped file,
and when the manifest is known each shard's sha256 and sample count are checked as it is read.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import braceexpand
import numpy as np
import webdataset as wds

from shards import storage
from shards.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest
from shards.schema import KEY_PART, Geometry, SchemaError, decode_sample
from shards.writer import ShardRecord

MEMBER_PATTERN = re.compile(rf"^({KEY_PART}__{KEY_PART})\.([a-z0-9_]+\.[a-z0-9]+)$")


class ShardError(RuntimeError):
    """A shard that cannot be read as written: missing, truncated, corrupt, or off-schema. Names the shard."""


class HashingReader:
    """A read-only stream that hashes what is read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self._stream.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True, kw_only=True)
class ShardSource:
    """Resolved shard URLs and, when they come from an output folder, its manifest."""

    urls: list[str]
    manifest: Manifest | None

    @property
    def geometry(self) -> Geometry | None:
        return self.manifest.geometry if self.manifest else None

    def expected(self) -> dict[str, ShardRecord]:
        if self.manifest is None:
            return {}
        records = {s.name: s for s in self.manifest.shards}
        return {url: records[storage.name_of(url)] for url in self.urls if storage.name_of(url) in records}


def resolve(source: str | list[str] | tuple[str, ...], *, split: str | None = None) -> ShardSource:
    """Turn an output folder, a shard path/URL, a brace pattern or a list of those into shard URLs.

    An output folder is read through its manifest: every shard it lists must exist. A folder without a
    manifest is not accepted (an unfinished job); name its shards explicitly to read them anyway.
    """
    if isinstance(source, (list, tuple)):
        urls = [u for item in source for u in braceexpand.braceexpand(str(item))]
        if not urls:
            raise ShardError("no shards given (empty list)")
        missing = [u for u in urls if not storage.exists(u)]
        if missing:
            raise ShardError(f"shard(s) not found: {', '.join(missing)}")
        return ShardSource(urls=urls, manifest=None)
    text = str(source)
    if "{" in text:
        return resolve(list(braceexpand.braceexpand(text)), split=split)
    try:
        storage.preflight(text, what="shards")
    except storage.StorageError as error:
        raise ShardError(str(error)) from error
    if not storage.exists(text):
        raise ShardError(f"{text}: no such file or directory")
    if not storage.is_dir(text):
        return ShardSource(urls=[text], manifest=None)
    if not storage.exists(storage.join(text, MANIFEST_NAME)):
        tars = [n for n in storage.list_names(text) if n.endswith(".tar")]
        if not tars:
            raise ShardError(f"{text}: empty output folder (no manifest.json and no shards)")
        raise ShardError(
            f"{text}: {len(tars)} shard(s) but no manifest.json: the job did not finish "
            "(rerun it with --resume), or pass the shard files explicitly"
        )
    try:
        manifest = read_manifest(text)
    except ManifestError as error:
        raise ShardError(str(error)) from error
    records = manifest.shards_of(split)
    if not records:
        wanted = f" of split {split!r}" if split else ""
        raise ShardError(f"{text}: the manifest lists no shards{wanted} (splits: {manifest.splits})")
    urls = [storage.join(text, r.name) for r in records]
    missing = [u for u in urls if not storage.exists(u)]
    if missing:
        raise ShardError(
            f"{text}: {len(missing)} shard(s) listed in the manifest are missing: "
            + ", ".join(storage.name_of(u) for u in missing)
        )
    return ShardSource(urls=urls, manifest=manifest)


def iter_shard_members(url: str, *, expected: ShardRecord | None = None,
                       stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", member: bytes, ...}`` per sample of one shard, strictly."""
    try:
        raw = storage.open_read(url)
    except OSError as error:
        raise ShardError(f"{url}: cannot open: {error}") from error
    stream = HashingReader(CountingReader(raw, stats) if stats is not None else raw)
    count = 0
    try:
        current: dict[str, Any] | None = None
        finished: set[str] = set()
        try:
            archive = tarfile.open(fileobj=stream, mode="r|")
            for info in archive:
                name = info.name
                if not info.isreg():
                    raise ShardError(f"{url}: member {name!r} is not a regular file")
                match = MEMBER_PATTERN.match(name)
                if match is None:
                    raise ShardError(
                        f"{url}: member {name!r} is not '{{source_id}}__{{target_id}}.{{field}}.{{ext}}' "
                        "(dot-free ids, no path separators)"
                    )
                key, member = match.groups()
                if current is None or current["__key__"] != key:
                    if current is not None:
                        finished.add(current["__key__"])
                        count += 1
                        yield current
                    if key in finished:
                        raise ShardError(f"{url}: members of sample {key} are not contiguous")
                    current = {"__key__": key, "__url__": url}
                if member in current:
                    raise ShardError(f"{url}: sample {key} has member {member} twice")
                current[member] = archive.extractfile(info).read()
            if current is not None:
                count += 1
                yield current
            stream.drain()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ShardError(f"{url}: truncated or corrupt tar: {error}") from error
        if expected is not None:
            if stream.sha256 != expected.sha256:
                raise ShardError(
                    f"{url}: sha256 {stream.sha256[:16]}... differs from the manifest's "
                    f"{expected.sha256[:16]}...: the shard is corrupt or was replaced"
                )
            if count != expected.samples:
                raise ShardError(f"{url}: {count} samples, the manifest says {expected.samples}")
    finally:
        stream.close()


@dataclass(kw_only=True)
class ReadStats:
    """Bytes taken from storage (tar headers and member data), for read-amplification figures."""

    bytes: int = 0


class CountingReader:
    """A seekable read-only stream that counts the bytes read through it (a seek costs nothing)."""

    def __init__(self, stream: BinaryIO, stats: ReadStats) -> None:
        self._stream = stream
        self._stats = stats

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._stats.bytes += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._stream.close()


def _open_counted(url: str, stats: ReadStats | None) -> CountingReader:
    try:
        # Unbuffered locally: a header read costs its 512 bytes, not a read-ahead block.
        raw = open(url, "rb", buffering=0) if not storage.is_url(url) else storage.open_read(url)
    except OSError as error:
        raise ShardError(f"{url}: cannot open: {error}") from error
    return CountingReader(raw, stats if stats is not None else ReadStats())


def _member_key(url: str, info: tarfile.TarInfo) -> tuple[str, str]:
    if not info.isreg():
        raise ShardError(f"{url}: member {info.name!r} is not a regular file")
    match = MEMBER_PATTERN.match(info.name)
    if match is None:
        raise ShardError(
            f"{url}: member {info.name!r} is not '{{source_id}}__{{target_id}}.{{field}}.{{ext}}' "
            "(dot-free ids, no path separators)"
        )
    key, member = match.groups()
    return key, member


def iter_shard_span(url: str, start: int, stop: int, *, stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Samples ``start <= i < stop`` (in file order) of one shard, read by seeking: the members of earlier
    samples cost their 512-byte tar headers only, nothing after sample ``stop - 1`` is read.

    As strict as :func:`iter_shard_members` on names and layout; the shard's sha256 needs the whole file,
    so a span is not hashed (readers of whole shards check it, and so does ``mcld-data verify``).
    """
    if not 0 <= start < stop:
        raise ValueError(f"empty or negative span [{start}, {stop}) of {url}")
    yield from iter_shard_positions(url, range(start, stop), stats=stats)


def iter_shard_positions(url: str, positions: range | list[int], *,
                         stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """The samples at the given sorted positions (file order) of one shard, by seeking, as :func:`iter_shard_span`."""
    if not len(positions):
        return
    wanted = positions if isinstance(positions, range) else set(positions)
    stop = max(positions) + 1
    stream = _open_counted(url, stats)
    try:
        try:
            archive = tarfile.open(fileobj=stream, mode="r:")
            seen = 0  # samples begun so far
            current: dict[str, Any] | None = None
            finished: set[str] = set()
            previous = None
            for info in archive:
                key, member = _member_key(url, info)
                if key != previous:
                    if previous is not None:
                        finished.add(previous)
                    if key in finished:
                        raise ShardError(f"{url}: members of sample {key} are not contiguous")
                    if current is not None:
                        yield current
                        current = None
                    if seen == stop:
                        break
                    seen += 1
                    previous = key
                    if seen - 1 in wanted:
                        current = {"__key__": key, "__url__": url}
                if current is not None:
                    if member in current:
                        raise ShardError(f"{url}: sample {key} has member {member} twice")
                    current[member] = archive.extractfile(info).read()
                # The archive keeps every header it has seen; a long shard need not.
                archive.members.clear()
            if current is not None:
                yield current
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ShardError(f"{url}: truncated or corrupt tar: {error}") from error
        if seen < stop:
            raise ShardError(f"{url}: {seen} samples, fewer than the {stop} the manifest promises this reader")
    finally:
        stream.close()


def shard_keys(url: str, *, stats: ReadStats | None = None) -> list[str]:
    """The sample keys of one shard in file order, from its tar headers alone (no member data is read)."""
    stream = _open_counted(url, stats)
    keys: list[str] = []
    try:
        try:
            archive = tarfile.open(fileobj=stream, mode="r:")
            for info in archive:
                key, _ = _member_key(url, info)
                if not keys or keys[-1] != key:
                    keys.append(key)
                archive.members.clear()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ShardError(f"{url}: truncated or corrupt tar: {error}") from error
    finally:
        stream.close()
    return keys


def _expand(expected: dict[str, ShardRecord]) -> Callable[[Iterable[dict]], Iterator[dict]]:
    def expand(shards: Iterable[dict]) -> Iterator[dict]:
        for shard in shards:
            url = shard["url"]
            yield from iter_shard_members(url, expected=expected.get(url))

    return expand


def _decoder(geometry: Geometry | None, to_torch: bool) -> Callable[[dict], dict]:
    def decode(members: dict[str, Any]) -> dict[str, Any]:
        url = members["__url__"]
        try:
            sample = decode_sample(members, geometry=geometry)
        except SchemaError as error:
            raise ShardError(f"{url}: {error}") from error
        sample["__url__"] = url
        return sample_to_torch(sample) if to_torch else sample

    return decode


def _shuffle(buffer: int, seed: int) -> Callable[[Iterable[dict]], Iterator[dict]]:
    def shuffle(samples: Iterable[dict]) -> Iterator[dict]:
        # Each (rank, worker) reader shuffles with its own stream, reproducibly from the seed.
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        mixed = seed * 1_000_003 + rank * 1009 + worker
        yield from wds.filters._shuffle(iter(samples), bufsize=buffer, initial=max(1, buffer // 2), seed=mixed)

    return shuffle


def sample_to_torch(sample: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays -> torch tensors (same dtype and layout; images stay H x W x C uint8)."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in sample.items()}


def pipeline(
    source: ShardSource,
    *,
    decode: bool = True,
    to_torch: bool = False,
    resampled: bool = False,
    seed: int = 0,
    split_by_node: bool = False,
    split_by_worker: bool = False,
    shuffle_buffer: int = 0,
    check_checksums: bool = True,
) -> wds.DataPipeline:
    """A webdataset pipeline over the shards. Shuffling happens on raw bytes, before decode.

    With ``resampled`` the shard stream is infinite (each reader draws shards at random with its own
    seed), which is what keeps DDP ranks in step; the caller bounds it (e.g. ``.with_epoch(n)``).
    Checksums are checked when the shards are read whole from an output folder; a resampled stream reads
    whole shards too, so the check holds there as well.
    """
    stages: list[Any] = []
    if resampled:
        stages.append(wds.ResampledShards(source.urls, seed=seed, deterministic=True))
    else:
        stages.append(wds.SimpleShardList(source.urls))
    if split_by_node:
        stages.append(wds.split_by_node)
    if split_by_worker:
        stages.append(wds.split_by_worker)
    stages.append(_expand(source.expected() if check_checksums else {}))
    if shuffle_buffer > 0:
        stages.append(_shuffle(shuffle_buffer, seed))
    if decode:
        stages.append(wds.map(_decoder(source.geometry, to_torch)))
    return wds.DataPipeline(*stages)


def iter_samples(
    source: str | list[str],
    *,
    split: str | None = None,
    decode: bool = True,
    to_torch: bool = False,
    check_checksums: bool = True,
) -> Iterator[dict[str, Any]]:
    """Every sample of the given shards, in order (the inspection CLI and tests read this way)."""
    yield from pipeline(resolve(source, split=split), decode=decode, to_torch=to_torch, check_checksums=check_checksums)
