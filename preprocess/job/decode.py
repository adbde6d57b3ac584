"""Decode: file bytes -> H x W x 3 uint8 RGB, EXIF-rotated; anything else is a reject with the reason."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocess.common import SampleError, batch_len, mark_failed, object_column, ok_indices
from shards import storage

STAGE = "decode"


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    images_root: str
    max_pixels: int = 40_000_000  # a header claiming more is refused before any pixel is decoded
    min_side: int = 32  # smaller images carry no usable person


def read_image_bytes(path: str) -> bytes:
    try:
        return storage.read_bytes(path)
    except OSError as error:
        raise SampleError("unreadable", f"{path}: {error.strerror or error}") from error


def decode_image(data: bytes, *, path: str, config: DecodeConfig) -> np.ndarray:
    """Bytes -> RGB uint8, honouring EXIF orientation; 16-bit images keep their top 8 bits."""
    if not data:
        raise SampleError("decode_failed", f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > config.max_pixels:
                raise SampleError(
                    "too_large",
                    f"{path}: {width}x{height} = {width * height / 1e6:.0f} MP is over the limit of "
                    f"{config.max_pixels / 1e6:.0f} MP (--max-pixels)",
                )
            image = ImageOps.exif_transpose(image)
            image.load()
    except SampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SampleError("too_large", f"{path}: {error}") from error
    except UnidentifiedImageError as error:
        raise SampleError("decode_failed", f"{path}: {error}") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # truncated or malformed data
        raise SampleError("decode_failed", f"{path}: {error}") from error
    if min(image.size) < config.min_side:
        raise SampleError("too_small", f"{path}: {image.size[0]}x{image.size[1]} is under {config.min_side} px on a side")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if image.mode in ("I", "F"):
        raise SampleError("decode_failed", f"{path}: {image.mode!r} images (32-bit integer or float) are not photos")
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


class DecodeStage:
    """Reads each row's file below the images root; checks it is still the content the job listed."""

    def __init__(self, *, config: DecodeConfig) -> None:
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        n = batch_len(batch)
        images: list[np.ndarray] = [np.zeros((0, 0, 3), np.uint8)] * n
        for i in ok_indices(batch):
            relative = str(batch["source_path"][i])
            path = storage.join(self.config.images_root, relative)
            try:
                data = read_image_bytes(path)
                if hashlib.sha256(data).hexdigest() != batch["content_hash"][i]:
                    raise SampleError("changed_during_run", f"{relative}: the file changed after the job listed it")
                images[i] = decode_image(data, path=relative, config=self.config)
            except SampleError as error:
                mark_failed(batch, i, stage=STAGE, error=error)
        batch["image"] = object_column(images)
        batch["orig_h"] = np.array([im.shape[0] for im in images], np.int32)
        batch["orig_w"] = np.array([im.shape[1] for im in images], np.int32)
        return batch
