"""python -m preprocess.texture --image IMG --iuv IUV.png --out TEX.png [--atlas-out ATLAS.png]

Files as the MCLD reference reads and writes them: the image and the outputs BGR through OpenCV; the IUV
the array (I, U, V) as OpenCV wrote it (read unchanged, so a 16-bit, grey or 4-channel file is refused
rather than silently converted).

One image, one output file: a file it cannot use ends the command with one ``error: ...`` line (exit 2);
``-v`` says what was written. No run log: there is no output folder to keep it in.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from preprocess.common import SampleError
from preprocess.texture.core import PartMasksError, TextureMapper, default_mapper, read_part_masks
from shards.cli import add_verbosity, setup_console_logging

log = logging.getLogger("preprocess.texture.cli")  # not __name__: that is "__main__" under -m


class InputError(Exception):
    """A file the command cannot use; the message names it."""


def _read(path: Path, flags: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    array = cv2.imread(str(path), flags)
    if array is None:
        raise InputError(f"{what} {path}: OpenCV cannot decode it as an image")
    return array


def _check_writable(path: Path, what: str) -> None:
    if not cv2.haveImageWriter(str(path)):
        suffix = path.suffix or "a name without extension"
        raise InputError(f"{what} {path}: OpenCV has no writer for {suffix} (use .png)")


def _write(path: Path, array: np.ndarray) -> None:
    """Atomically: encode, write a temporary file beside it, rename."""
    ok, encoded = cv2.imencode(path.suffix, array)
    if not ok:
        raise InputError(f"{path}: OpenCV could not encode the image")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(encoded.tobytes())
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.texture", description="Image + DensePose IUV -> SMPL UV texture (MCLD's algorithm)."
    )
    parser.add_argument("--image", type=Path, required=True, help="person photo")
    parser.add_argument("--iuv", type=Path, required=True, help="DensePose IUV PNG of the same size")
    parser.add_argument("--out", type=Path, required=True, help="512 x 512 SMPL UV texture (PNG)")
    parser.add_argument("--atlas-out", type=Path, default=None, help="also write the 24-part atlas (1200 x 800)")
    parser.add_argument(
        "--part-masks",
        type=Path,
        default=None,
        help="6 x 4 tiled part-mask image (MCLD's texture_bg_200.png) instead of the derived masks",
    )
    add_verbosity(parser)
    args = parser.parse_args(argv)
    setup_console_logging(args.verbose)
    try:
        _check_writable(args.out, "texture")
        if args.atlas_out is not None:
            _check_writable(args.atlas_out, "atlas")
        image = _read(args.image, cv2.IMREAD_COLOR, "image")
        iuv = _read(args.iuv, cv2.IMREAD_UNCHANGED, "IUV")
        if args.part_masks is not None:
            mapper = TextureMapper(part_masks=read_part_masks(args.part_masks, atlas_size=200))
        else:
            mapper = default_mapper()
        try:
            texture, atlas = mapper(image, iuv)
        except SampleError as error:
            raise InputError(f"{args.image} with IUV {args.iuv}: {error.reason}: {error.detail}") from error
        _write(args.out, texture)
        log.info("texture %s (from %s and %s)", args.out, args.image, args.iuv)
        if args.atlas_out is not None:
            _write(args.atlas_out, atlas)
            log.info("atlas %s", args.atlas_out)
    except (InputError, PartMasksError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
