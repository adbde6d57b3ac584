"""Texture benchmark: the reference algorithm (per-part loop + UVTextureConverter) against ours, per step.

Same inputs, same part masks, one OpenCV thread, runs interleaved so machine load hits both alike. Prints
JSON: per case the per-step seconds of each (median over repeats), the totals (median, min, max), ours
over the reference's own inpainting time (the target: at most 1.3), and whether the outputs are identical.

    python -m preprocess.texture.bench [--case IMAGE IUV]... [--repeats 5]

Without --case: seeded synthetic IUV maps at DeepFashion's 1101 x 750 (a dense `body` one and a sparse
`scatter` one) on a synthetic image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from preprocess.texture import uvdata
from preprocess.texture.core import StepTimer, TextureMapper
from preprocess.texture.reference import reference_texture
from preprocess.texture.synthetic import synthetic_image, synthetic_iuv

DEFAULT_SIZE = (1101, 750)


def _median_steps(runs: list[dict[str, float]]) -> dict[str, float]:
    steps = sorted({step for run in runs for step in run})
    return {step: round(statistics.median(run.get(step, 0.0) for run in runs), 4) for step in steps}


def _summary(totals: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(totals), 4), "min": round(min(totals), 4), "max": round(max(totals), 4)}


def bench_case(name: str, image: np.ndarray, iuv: np.ndarray, mapper: TextureMapper, *, repeats: int) -> dict:
    ref_runs, our_runs, ref_totals, our_totals = [], [], [], []
    identical = True
    for _ in range(repeats):
        timer = StepTimer()
        start = time.perf_counter()
        ref_texture, ref_atlas = reference_texture(image, iuv, masks=mapper.part_masks, timer=timer)
        ref_totals.append(time.perf_counter() - start)
        ref_runs.append(timer.seconds)
        timer = StepTimer()
        start = time.perf_counter()
        texture, atlas = mapper(image, iuv, timer=timer)
        our_totals.append(time.perf_counter() - start)
        our_runs.append(timer.seconds)
        identical &= bool(np.array_equal(texture, ref_texture) and np.array_equal(atlas, ref_atlas))
    ref_steps = _median_steps(ref_runs)
    ref_inpaint = statistics.median(run["inpaint"] for run in ref_runs)
    return {
        "case": name,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "identical_output": identical,
        "reference": {"total_s": _summary(ref_totals), "steps_s": ref_steps},
        "ours": {"total_s": _summary(our_totals), "steps_s": _median_steps(our_runs)},
        "ours_total_over_reference_inpaint": round(statistics.median(our_totals) / ref_inpaint, 3),
        "speedup_over_reference_total": round(statistics.median(ref_totals) / statistics.median(our_totals), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.texture.bench", description="Texture: reference vs ours"
    )
    parser.add_argument(
        "--case", nargs=2, action="append", metavar=("IMAGE", "IUV"), default=[], help="an image and its IUV PNG"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    cv2.setNumThreads(1)

    cases = []
    for image_path, iuv_path in args.case:
        image, iuv = cv2.imread(image_path, cv2.IMREAD_COLOR), cv2.imread(iuv_path, cv2.IMREAD_UNCHANGED)
        if image is None or iuv is None:
            print(f"error: cannot read {image_path if image is None else iuv_path}", file=sys.stderr)
            return 2
        cases.append((Path(image_path).stem, image, iuv))
    if not cases:
        height, width = DEFAULT_SIZE
        image = synthetic_image(height, width, seed=0)
        for kind in ("body", "scatter"):
            cases.append((f"synthetic-{kind}-{height}x{width}", image, synthetic_iuv(height, width, seed=0, kind=kind)))

    # Each piece of the one-time setup timed on its own, bypassing the per-process caches.
    setup = {}
    builds = (
        ("chart_s", uvdata.load_chart.__wrapped__),
        ("part_masks_s", lambda: uvdata.part_masks.__wrapped__(200)),
        ("gather_index_s", lambda: uvdata.gather_index.__wrapped__(200, 512)),
    )
    for label, build in builds:
        start = time.perf_counter()
        build()
        setup[label] = round(time.perf_counter() - start, 4)
    mapper = TextureMapper()
    report = {
        "benchmark": "texture",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "opencv_threads": cv2.getNumThreads(),
        },
        "repeats": args.repeats,
        "ours_one_time_setup": setup,
        "cases": [bench_case(name, image, iuv, mapper, repeats=args.repeats) for name, image, iuv in cases],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
