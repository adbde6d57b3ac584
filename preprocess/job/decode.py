"""Decode: file bytes -> H x W x 3 uint8 RGB, EXIF-rotated; anything else is a reject with the reason.

This is where the job reads each input image, once: the content hash (the feature cache's key, the
dedupe of identical content, ``source_sha256`` in meta.json) is computed here from the bytes read for
decoding, not by the driver beforehand (docs/ARCHITECTURE.md, "Where images are read")."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from preprocess.common import SampleError, batch_len, images, mark_failed, object_column, ok_indices
from shards import storage

STAGE = "decode"
READ_STAGE = "read"  # reject_stage of a file that could not be read (the driver reports it as listing did)
STATUS_CACHED = "cached"  # read, and its content hash is in the feature cache: nothing to compute


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    images_root: str
    max_pixels: int = 40_000_000  # a header claiming more is refused before any pixel is decoded
    min_side: int = 32  # smaller images carry no usable person


def decode_image(data: bytes, *, path: str, config: DecodeConfig) -> np.ndarray:
    """Bytes -> RGB uint8 under the job's size limits (preprocess.common.images.decode_image)."""
    return images.decode_image(data, path=path, max_pixels=config.max_pixels, min_side=config.min_side)


def read_file(location: str) -> bytes:
    """One request for the whole file (no HEAD first); a store that stops answering is retried in place."""
    if storage.is_url(location):
        return storage.retry_transient(lambda: storage.read_whole(location), what=location)
    return storage.read_whole(location)


class DecodeStage:
    """Reads each row's file below the images root, hashes the bytes it read, and decodes them.

    Input columns: ``source_path``, ``listed_size`` (from the folder's listing, -1 if unknown) and
    ``cached_hash`` (the hash the feature cache holds for this image id, or ""). Output: ``content_hash``
    and ``read_size`` of what was read, ``read_error`` (the OSError's text of an unreadable file), and
    the image. A row whose hash equals ``cached_hash`` gets status ``cached`` and is not decoded."""

    def __init__(self, *, config: DecodeConfig) -> None:
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        n = batch_len(batch)
        decoded: list[np.ndarray] = [np.zeros((0, 0, 3), np.uint8)] * n
        hashes = np.array(batch.get("content_hash", [""] * n), dtype=object)
        sizes = np.full(n, -1, np.int64)
        read_errors = np.full(n, "", dtype=object)
        for i in ok_indices(batch):
            relative = str(batch["source_path"][i])
            path = storage.join(self.config.images_root, relative)
            try:
                data = read_file(path)
            except OSError as error:
                reason = "missing_file" if isinstance(error, FileNotFoundError) else "unreadable"
                read_errors[i] = error.strerror or images.error_text(error)
                mark_failed(batch, i, stage=READ_STAGE, error=SampleError(reason, f"{relative}: {read_errors[i]}"))
                continue
            hashes[i] = hashlib.sha256(data).hexdigest()
            sizes[i] = len(data)
            try:
                listed = int(batch["listed_size"][i])
                if listed >= 0 and listed != len(data):
                    raise SampleError("changed_during_run", f"{relative}: the file changed after the job listed it "
                                                            f"({listed} bytes listed, {len(data)} read)")
                if hashes[i] == batch["cached_hash"][i]:
                    for column in ("status", "reject_stage", "detail"):
                        batch[column] = np.array(batch[column], dtype=object)
                    batch["status"][i] = STATUS_CACHED
                    continue
                decoded[i] = decode_image(data, path=relative, config=self.config)
            except SampleError as error:
                mark_failed(batch, i, stage=STAGE, error=error)
        batch["content_hash"] = hashes
        batch["read_size"] = sizes
        batch["read_error"] = read_errors
        batch["image"] = object_column(decoded)
        batch["orig_h"] = np.array([im.shape[0] for im in decoded], np.int32)
        batch["orig_w"] = np.array([im.shape[1] for im in decoded], np.int32)
        return batch
