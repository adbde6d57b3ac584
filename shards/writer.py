"""Deterministic, atomic WebDataset shard writing under the schema.

Identical samples in identical order give byte-identical tars: members are sorted by name and every tar
header carries the same mtime, owner and mode.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import asdict, dataclass
from typing import Any

import webdataset as wds

from shards import storage
from shards.schema import Geometry, SchemaError, check_encoded, decode_sample, encode_sample

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z: any constant works; a real date keeps `tar tv` readable
FIXED_MODE = 0o444
SPLIT_PATTERN = re.compile(r"^[a-z0-9]+$")
TAR_BLOCK = 512


def _member_size(name: str, data: bytes) -> int:
    # One header block, plus a PAX extended header (2 blocks) for names past the ustar limit.
    header = TAR_BLOCK if len(name.encode("utf-8")) <= 100 else 3 * TAR_BLOCK
    return header + -(-len(data) // TAR_BLOCK) * TAR_BLOCK


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True, kw_only=True)
class ShardRecord:
    """What the manifest says of one shard."""

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardRecord:
        return cls(**{k: data[k] for k in ("name", "split", "samples", "bytes", "sha256")})


def parse_size(text: str | int) -> int:
    """'1GB', '512MiB', '300k', or a number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if match is None:
        raise ValueError(f"cannot read size {text!r}; use e.g. 1GB, 512MB, 300kB or a number of bytes")
    number, prefix, binary = match.groups()
    base = 1024 if binary.startswith("i") else 1000
    return int(float(number) * base ** " kmgt".index(prefix or " "))


class ShardWriter:
    """Writes samples of one split into ``{split}-{index:06d}.tar`` shards in ``out_dir``.

    A shard is closed when the next sample would take it past ``max_bytes``, or when it holds
    ``max_samples`` samples (the pipeline uses the latter to make shard sizes equal). Every shard is
    written to a temporary name and renamed when complete.
    """

    def __init__(
        self,
        out_dir: str,
        *,
        split: str,
        geometry: Geometry,
        max_bytes: int | None = None,
        max_samples: int | None = None,
        start_index: int = 0,
    ) -> None:
        if not SPLIT_PATTERN.match(split):
            raise ValueError(f"split name {split!r} must be lowercase letters and digits")
        if max_bytes is None and max_samples is None:
            raise ValueError("give max_bytes, max_samples or both")
        self.out_dir = str(out_dir)
        self.split = split
        self.geometry = geometry
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.records: list[ShardRecord] = []
        self._index = start_index
        self._context = None
        self._hashing: storage.HashingWriter | None = None
        self._tar: wds.TarWriter | None = None
        self._samples = 0
        self._seen_keys: set[str] = set()

    def write(self, sample: dict[str, Any]) -> None:
        self._write(encode_sample(sample, geometry=self.geometry))

    def write_encoded(self, members: dict[str, bytes], *, decode_pixels: bool = True) -> None:
        """Write already-encoded members (``{"__key__": key, "tgt_latent.npy": bytes, ...}``).

        They are decoded and checked against the schema first: what is stored is what the reader accepts.
        ``decode_pixels=False`` checks PNG/JPEG members by their headers only (members the job's encoder
        made, copied by the pair join: decoding every pose PNG again was 40% of the join's time).
        """
        if decode_pixels:
            decode_sample(members, geometry=self.geometry)
        else:
            check_encoded(members, geometry=self.geometry)
        self._write(members)

    def _write(self, encoded: dict[str, bytes]) -> None:
        key = encoded["__key__"]
        if key in self._seen_keys:
            raise SchemaError(f"{key}: duplicate sample key in split {self.split}")
        self._seen_keys.add(key)
        size = sum(_member_size(f"{key}.{k}", v) for k, v in encoded.items() if k != "__key__")
        if self._tar is not None and self._full(size):
            self._close_shard()
        if self._tar is None:
            self._open_shard()
        self._tar.write(encoded)
        self._samples += 1

    def _full(self, next_size: int) -> bool:
        if self.max_samples is not None and self._samples >= self.max_samples:
            return True
        # Closing appends end-of-archive blocks and pads to a whole tar record.
        closing = tarfile.RECORDSIZE
        return self.max_bytes is not None and self._hashing.bytes + next_size + closing > self.max_bytes

    def _open_shard(self) -> None:
        location = storage.join(self.out_dir, shard_name(self.split, self._index))
        self._context = storage.atomic_write(location)
        self._hashing = self._context.__enter__()
        self._tar = wds.TarWriter(
            self._hashing, encoder=False, mtime=FIXED_MTIME, mode=FIXED_MODE, user="", group=""
        )
        self._samples = 0

    def _close_shard(self) -> None:
        self._tar.close()
        self._context.__exit__(None, None, None)
        self.records.append(
            ShardRecord(
                name=shard_name(self.split, self._index),
                split=self.split,
                samples=self._samples,
                bytes=self._hashing.bytes,
                sha256=self._hashing.sha256,
            )
        )
        self._index += 1
        self._tar = self._hashing = self._context = None

    def close(self) -> list[ShardRecord]:
        if self._tar is not None:
            self._close_shard()
        return list(self.records)

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed; nothing is renamed)."""
        if self._context is not None:
            self._tar.close()  # finish the tar stream into the temporary file, which is then removed
            try:
                self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass
        self._tar = self._hashing = self._context = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
