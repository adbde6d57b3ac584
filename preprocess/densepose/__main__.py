"""Dump DensePose results per image, in the layout of the parity fixtures.

    python -m preprocess.densepose --config CFG.yaml --weights W.pkl --out DIR [--device cpu] [--vis] IMAGE...

Writes DIR/NAME.npz with boxes_xyxy [N,4], scores [N], boxes_xywh [N,4] (float32), labels_i [h,w] uint8
and uv_i [2,h,w] float32 per detection i (in its box's frame), and iuv_top1 [H,W,3] uint8: the
whole-image IUV of detection 0 (all zeros when N is 0). With --vis also DIR/NAME_vis.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from preprocess.common import SampleError
from preprocess.common.images import decode_image, read_image_bytes
from preprocess.densepose.config import ConfigError
from preprocess.densepose.predictor import DensePosePredictor, DensePoseResult
from preprocess.densepose.vis import render
from preprocess.densepose.weights import WeightsError


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    failures = 0
    images, readable = [], []
    for path in paths:
        try:
            images.append(read_rgb(path))
            readable.append(path)
        except SampleError as error:
            print(f"error: {error.detail}", file=sys.stderr)
            failures += 1
    for start in range(0, len(images), max(args.batch, 1)):
        chunk = slice(start, start + max(args.batch, 1))
        for path, image, result in zip(readable[chunk], images[chunk], predictor.predict(images[chunk])):
            np.savez(out / f"{path.stem}.npz", **result_arrays(result))
            if args.vis:
                render(image, result).save(out / f"{path.stem}_vis.png")
            if result.count == 0:
                print(f"{path}: no detection", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
