"""Benchmark of the DensePose stage: images per second at the official model widths, random weights.

Writes the official R_50_FPN_s1x and R_101_FPN_DL_s1x architectures (our own yaml text with their
settings) with seeded random weights as model-zoo files, loads them through the predictor, and times
``predict(images, charts="person")`` (what the pipeline stage runs) on a real photo squashed to
DeepFashion's 1101x750, at each batch size. The weights are biased to report persons, as tiny's are, so
every stage of the model runs. Prints JSON.

    python -m preprocess.densepose.bench [--device cpu|cuda] [--models r50,r101dl] [--batches 1,4] [--repeats 2]

On CUDA it times float32 and bfloat16 autocast; the DensePose model zoo lists 0.066 s/img (R_50_FPN_s1x)
and 0.083 s/img (R_101_FPN_DL_s1x) at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from preprocess.densepose.tiny import BASE_YAML
from shards.bench import Faults, allocator_in_use, cpu_model

MODELS = {
    "r50": ("R_50_FPN_s1x", "MODEL:\n  RESNETS:\n    DEPTH: 50\n"),
    "r101dl": ("R_101_FPN_DL_s1x",
               "MODEL:\n  RESNETS:\n    DEPTH: 101\n  ROI_DENSEPOSE_HEAD:\n    NAME: \"DensePoseDeepLabHead\"\n"),
}


def official_config(dest: Path, model: str) -> Path:
    """The official architecture's config: a child yaml (depth, head) over the base settings."""
    name, child = MODELS[model]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Base-DensePose-RCNN-FPN.yaml").write_text(BASE_YAML, encoding="utf-8")
    config = dest / f"densepose_rcnn_{name}.yaml"
    config.write_text('_BASE_: "Base-DensePose-RCNN-FPN.yaml"\n' + child, encoding="utf-8")
    return config


def write_official_size(dest: Path, model: str, *, seed: int = 0) -> tuple[Path, Path]:
    """The official architecture's config and seeded weights as a model-zoo .pkl."""
    import torch

    from preprocess.densepose.config import load_config
    from preprocess.densepose.model import DensePoseRCNN
    from preprocess.densepose.tiny import seeded_state

    name, _ = MODELS[model]
    config = official_config(dest, model)
    with torch.device("cpu"):
        network = DensePoseRCNN(load_config(config))
    weights = dest / f"densepose_rcnn_{name}.pkl"
    checkpoint = {"model": seeded_state(network, seed), "__author__": "mcld-data bench"}
    weights.write_bytes(pickle.dumps(checkpoint, protocol=4))
    return config, weights


def photo(height: int = 1101, width: int = 750) -> np.ndarray:
    """skimage's astronaut (a real photo of a person) squashed to DeepFashion's size."""
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC))


def time_predictor(predictor, image: np.ndarray, *, batch: int, repeats: int, device: str) -> dict[str, Any]:
    import torch

    images = [image] * batch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    results = predictor.predict(images, charts="person")  # warm-up (allocator, kernels)
    sync()
    with Faults() as faults:
        start = time.perf_counter()
        for _ in range(repeats):
            predictor.predict(images, charts="person")
        sync()
        seconds = time.perf_counter() - start
    return {
        "batch": batch,
        "images_per_s": round(batch * repeats / seconds, 4),
        "seconds_per_image": float(f"{seconds / (batch * repeats):.5g}"),  # significant digits: tiny models are fast
        **faults.per_item(batch * repeats),
        "detections": int(results[0].count),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.densepose.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--models", default="r50,r101dl", help="comma-separated: r50, r101dl (default both)")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per batch size (after one warm-up)")
    parser.add_argument("--size", default="1101x750", help="image HEIGHTxWIDTH (default DeepFashion's 1101x750)")
    parser.add_argument("--config", help="time this config and weights instead (with --weights)")
    parser.add_argument("--weights")
    args = parser.parse_args(argv)

    import torch

    from preprocess.densepose.predictor import DensePosePredictor

    batches = [int(b) for b in args.batches.split(",")]
    height, width = (int(v) for v in args.size.lower().split("x"))
    image = photo(height, width)
    dtypes = ["float32", "bfloat16"] if args.device.startswith("cuda") else ["float32"]
    report: dict[str, Any] = {
        "device": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                   else cpu_model()),
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator_in_use(),
        "cpu_count": os.cpu_count(),
        "image": f"{height}x{width} (skimage astronaut, bicubic squash)",
        "weights": "seeded random, biased to detect (preprocess.densepose.tiny.seeded_state)",
        "mode": "predict(charts='person'): the pipeline stage's path",
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.config:
            if not args.weights:
                parser.error("--config needs --weights")
            targets = [("custom", Path(args.config), Path(args.weights))]
        else:
            targets = [(m, *write_official_size(Path(tmp) / m, m)) for m in args.models.split(",")]
        for model, config, weights in targets:
            for dtype in dtypes:
                predictor = DensePosePredictor(config_path=config, weights_path=weights, device=args.device,
                                               dtype=dtype, max_batch=max(batches))
                for batch in batches:
                    row = {"model": model, "dtype": dtype}
                    row.update(time_predictor(predictor, image, batch=batch, repeats=args.repeats, device=args.device))
                    report["results"].append(row)
                del predictor
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
