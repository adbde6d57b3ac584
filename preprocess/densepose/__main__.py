"""Dump DensePose results per image, in the layout of the parity fixtures.

    python -m preprocess.densepose --config CFG.yaml --weights W.pkl --out DIR [--device cpu] [--vis] IMAGE...

Writes DIR/NAME.npz with boxes_xyxy [N,4], scores [N], boxes_xywh [N,4] (float32), labels_i [h,w] uint8
and uv_i [2,h,w] float32 per detection i (in its box's frame), and iuv_top1 [H,W,3] uint8: the
whole-image IUV of detection 0 (all zeros when N is 0). With --vis also DIR/NAME_vis.png.

An image that cannot be read, or one with no detection, is a warning naming the file (on the console and in
DIR/densepose.log) and counted in the summary line; the run goes on with the other images.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from preprocess.common import SampleError
from preprocess.common.images import decode_image, read_image_bytes
from preprocess.densepose.config import ConfigError
from preprocess.densepose.predictor import DensePosePredictor, DensePoseResult
from preprocess.densepose.vis import render
from preprocess.densepose.weights import WeightsError
from shards.cli import RunLog, add_verbosity, setup_console_logging

LOG_NAME = "densepose.log"
log = logging.getLogger("preprocess.densepose.cli")  # not __name__: that is "__main__" under -m

MAX_PIXELS = 40_000_000  # the job's default --max-pixels: a decompression bomb is refused here too


def read_rgb(path: Path) -> np.ndarray:
    """The pipeline's decoder (EXIF rotation, 16-bit to 8-bit, any mode to RGB), without its size limits."""
    data = read_image_bytes(str(path))
    return decode_image(data, path=str(path), max_pixels=MAX_PIXELS, min_side=1)


def result_arrays(result: DensePoseResult) -> dict[str, np.ndarray]:
    """The fixture keys, for a result predicted with every detection's chart."""
    arrays = {
        "boxes_xyxy": result.boxes_xyxy.astype(np.float32),
        "scores": result.scores.astype(np.float32),
        "boxes_xywh": result.boxes_xywh.astype(np.float32),
    }
    for i in range(result.count):
        arrays[f"labels_{i}"] = result.charts[i].labels
        arrays[f"uv_{i}"] = result.charts[i].uv.astype(np.float32)
    arrays["iuv_top1"] = result.iuv if result.iuv is not None else np.zeros((result.height, result.width, 3), np.uint8)
    return arrays


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preprocess.densepose", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="detectron2/DensePose yaml (its _BASE_ chain is followed)")
    parser.add_argument("--weights", required=True, help="model-zoo .pkl (or .pth) weights")
    parser.add_argument("--out", required=True, help="output folder for NAME.npz (and NAME_vis.png)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 autocast (CUDA only); default float32")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (same padded size only)")
    parser.add_argument("--vis", action="store_true", help="also write a colour visualisation NAME_vis.png")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_console_logging(args.verbose)
    paths = [Path(p) for p in args.images]
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise SystemExit(f"error: {stems[path.stem]} and {path} would both write {path.stem}.npz")
        stems[path.stem] = path
    try:
        predictor = DensePosePredictor(config_path=args.config, weights_path=args.weights, device=args.device,
                                       dtype=args.dtype, max_batch=max(args.batch, 1))
    except (ConfigError, WeightsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLog(str(out / LOG_NAME), names=("preprocess", "shards")):
        written, empty, failures = dump(predictor, paths, out, batch=max(args.batch, 1), vis=args.vis)
    print(f"{out}: {written} written ({empty} with no detection), {failures} unreadable; log {out / LOG_NAME}")
    return 1 if failures else 0


def dump(predictor: DensePosePredictor, paths: list[Path], out: Path, *, batch: int, vis: bool) -> tuple[int, int, int]:
    """Write each readable image's arrays; (written, with no detection, unreadable), each failure logged."""
    log.info("%d image(s) -> %s", len(paths), out)
    failures = 0
    images, readable = [], []
    for path in paths:
        try:
            images.append(read_rgb(path))
            readable.append(path)
        except SampleError as error:
            log.warning("skipped: %s", error)
            failures += 1
    written = empty = 0
    for start in range(0, len(images), batch):
        chunk = slice(start, start + batch)
        for path, image, result in zip(readable[chunk], images[chunk], predictor.predict(images[chunk])):
            np.savez(out / f"{path.stem}.npz", **result_arrays(result))
            if vis:
                render(image, result).save(out / f"{path.stem}_vis.png")
            written += 1
            if result.count == 0:
                log.warning("%s: no detection (empty arrays written)", path)
                empty += 1
            else:
                log.info("%s: %d detection(s)", path, result.count)
    return written, empty, failures


if __name__ == "__main__":
    sys.exit(main())
