"""A folder of hostile inputs, built from a real photo: each file is a way real catalogues go wrong."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a huge size (a decompression bomb's header) with a tiny body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(photo: np.ndarray) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    stored = np.ascontiguousarray(np.rot90(photo, k=1))  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def write_hostile_folder(root: Path) -> dict[str, str]:
    """Write the files; return name -> the reject reason expected at decode ("" for files that decode)."""
    root.mkdir(parents=True, exist_ok=True)
    photo = astronaut()
    good = io.BytesIO()
    Image.fromarray(photo).save(good, format="JPEG", quality=90)
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, reason: str) -> None:
        (root / name).write_bytes(data)
        expected[name] = reason

    put("good.jpg", good.getvalue(), "")
    put("zero bytes.jpg", b"", "decode_failed")
    put("truncated.jpg", good.getvalue()[: len(good.getvalue()) // 3], "decode_failed")
    put("notes.jpg", b"this is a text file, not a photo\n", "decode_failed")
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    put("alpha.png", buffer.getvalue(), "")
    buffer = io.BytesIO()
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(buffer, format="PNG")
    put("sixteen bit.png", buffer.getvalue(), "")
    buffer = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(buffer, format="JPEG", quality=90)
    put("cmyk.jpg", buffer.getvalue(), "")
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(buffer, format="PNG")
    put("one pixel.png", buffer.getvalue(), "too_small")
    put("bomb.png", png_header_claiming(20000, 20000), "too_large")
    put("rotated.jpg", exif_rotated_jpeg(photo), "")
    put("portrait ünïcode ü.jpg", good.getvalue(), "")
    put("copy of good.jpg", good.getvalue(), "")  # duplicate content under another name
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    expected["loop_a.jpg"] = "unreadable"
    return expected
