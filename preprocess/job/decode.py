"""Decode: file bytes -> H x W x 3 uint8 RGB, EXIF-rotated; anything else is a reject with the reason."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from preprocess.common import SampleError, batch_len, images, mark_failed, object_column, ok_indices
from shards import storage

STAGE = "decode"


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    images_root: str
    max_pixels: int = 40_000_000  # a header claiming more is refused before any pixel is decoded
    min_side: int = 32  # smaller images carry no usable person


def decode_image(data: bytes, *, path: str, config: DecodeConfig) -> np.ndarray:
    """Bytes -> RGB uint8 under the job's size limits (preprocess.common.images.decode_image)."""
    return images.decode_image(data, path=path, max_pixels=config.max_pixels, min_side=config.min_side)


class DecodeStage:
    """Reads each row's file below the images root; checks it is still the content the job listed."""

    def __init__(self, *, config: DecodeConfig) -> None:
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        n = batch_len(batch)
        decoded: list[np.ndarray] = [np.zeros((0, 0, 3), np.uint8)] * n
        for i in ok_indices(batch):
            relative = str(batch["source_path"][i])
            path = storage.join(self.config.images_root, relative)
            try:
                data = images.read_image_bytes(path)
                if hashlib.sha256(data).hexdigest() != batch["content_hash"][i]:
                    raise SampleError("changed_during_run", f"{relative}: the file changed after the job listed it")
                decoded[i] = decode_image(data, path=relative, config=self.config)
            except SampleError as error:
                mark_failed(batch, i, stage=STAGE, error=error)
        batch["image"] = object_column(decoded)
        batch["orig_h"] = np.array([im.shape[0] for im in decoded], np.int32)
        batch["orig_w"] = np.array([im.shape[1] for im in decoded], np.int32)
        return batch
