"""Image helpers shared by the job and the stages: decode bytes, resize as the reference, check columns.

Error details never carry object reprs (``<_io.BytesIO object at 0x...>``): they go into rejects.parquet,
which must be byte-identical between two runs on the same inputs.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocess.common import SampleError
from shards import storage

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def error_text(error: BaseException) -> str:
    """An exception's message without memory addresses, so the same failure reads the same in every run."""
    return _ADDRESS.sub("", str(error))


def read_image_bytes(path: str) -> bytes:
    """A file's bytes (local path or fsspec URL); an unreadable file is the sample's ``unreadable`` reject."""
    try:
        return storage.read_bytes(path)
    except OSError as error:
        raise SampleError("unreadable", f"{path}: {error.strerror or error_text(error)}") from error


def decode_image(data: bytes, *, path: str, max_pixels: int, min_side: int) -> np.ndarray:
    """Bytes -> H x W x 3 uint8 RGB, honouring EXIF orientation; 16-bit images keep their top 8 bits.

    A header claiming more than ``max_pixels`` is refused before any pixel is decoded."""
    if not data:
        raise SampleError("decode_failed", f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise SampleError(
                    "too_large",
                    f"{path}: {width}x{height} = {width * height / 1e6:.0f} MP is over the limit of "
                    f"{max_pixels / 1e6:.0f} MP (--max-pixels)",
                )
            image = ImageOps.exif_transpose(image)
            image.load()
    except SampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SampleError("too_large", f"{path}: {error_text(error)}") from error
    except UnidentifiedImageError as error:
        # PIL's message names the BytesIO object by its address; say what it means instead.
        raise SampleError("decode_failed", f"{path}: not an image format PIL can identify") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # truncated or malformed data
        raise SampleError("decode_failed", f"{path}: {error_text(error)}") from error
    if min(image.size) < min_side:
        raise SampleError("too_small", f"{path}: {image.size[0]}x{image.size[1]} is under {min_side} px on a side")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if image.mode in ("I", "F"):
        raise SampleError("decode_failed", f"{path}: {image.mode!r} images (32-bit integer or float) are not photos")
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def resize_to(
    image: np.ndarray, height: int, width: int, *, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> np.ndarray:
    """The reference's resize: PIL bicubic to height x width, a squash (no crop, aspect not kept).

    PIL filters each channel alone, so an IUV array resizes the same way (``NEAREST`` keeps part indices)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"resize_to needs an H x W x 3 uint8 RGB array, got {array.dtype} {array.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"resize_to: size {height}x{width} must be positive")
    return np.asarray(Image.fromarray(array).resize((width, height), resample=resample))


def image_rows(
    batch: dict[str, np.ndarray], column: str, rows: np.ndarray, *, stage: str, size: tuple[int, int] | None
) -> list[np.ndarray]:
    """The given rows of an image column, each checked to be H x W x 3 uint8 (and `size`, when given).

    A wrong shape is a pipeline bug (the resize stage feeds these columns), not a bad sample: it raises.
    """
    if column not in batch:
        raise ValueError(f"{stage} stage needs column {column!r}; the batch has {sorted(batch)}")
    values = batch[column]
    out = []
    for i in rows:
        row = np.asarray(values[i])
        ok = row.dtype == np.uint8 and row.ndim == 3 and row.shape[2] == 3 and min(row.shape[:2]) > 0
        if not ok or (size is not None and row.shape[:2] != size):
            expected = f"({size[0]}, {size[1]}, 3)" if size is not None else "(H, W, 3)"
            raise ValueError(
                f"{stage} stage: {column} of {batch['image_id'][i]} is {row.dtype} {row.shape}; expected uint8 "
                f"{expected}: the resize stage (resize_to) must feed the configured size"
            )
        out.append(row)
    return out


