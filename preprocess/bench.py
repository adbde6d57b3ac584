"""End-to-end job benchmark (JSON): images/s through every stage and the shard writing, and the scaling
from 1 to N CPU workers, on real photos at DeepFashion's size (1101 x 750).

With ``--models tiny`` (the default) DensePose, the recogniser, the VAE and CLIP are toy-width, while
decode, the SSD face detector, the texture mapping (OpenCV inpainting) and the shard writing are the real
ones: the figure says what the CPU-bound parts cost. Pass a models file to time real weights.

``--scale N`` times the non-model path instead (planning, feature table, pair join into shards) for N
images and about 2N pairs on synthetic cached features (preprocess/scale.py).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from shards.bench import cpu_model


def write_photos(root: Path, count: int) -> Path:
    """``count`` distinct photos (the demo's, mirrored, shifted and squashed to 1101 x 750) and a pair each."""
    from preprocess.demo import demo_photos

    photos = list(demo_photos().values())
    images = root / "images"
    images.mkdir(parents=True)
    names = []
    for i in range(count):
        photo = photos[i % len(photos)]
        if (i // len(photos)) % 2:
            photo = photo[:, ::-1]  # mirrored (the demo has mirrored views too: shift keeps them apart)
        photo = np.roll(photo, 5 * (i // len(photos)) + 1, axis=1)
        name = f"photo_{i:04d}.jpg"
        Image.fromarray(np.ascontiguousarray(photo)).resize((750, 1101), Image.BICUBIC).save(images / name, quality=92)
        names.append(name)
    pairs = root / "pairs.csv"
    with pairs.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["from", "to"])
        writer.writerows((names[i], names[(i + 1) % count]) for i in range(count))
    return pairs


def run(*, images: Path, pairs: Path, models: str, workers: int, out: Path) -> dict:
    from preprocess.build_shards import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
        code = main(["--images", str(images), "--pairs", str(pairs), "--out", str(out), "--models", models,
                     "--workers", str(workers), "--no-progress", "--no-previews"])
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the job failed with exit code {code}")
    stats = json.loads((out / "stats.json").read_text())
    return {
        "workers": workers,
        "images": stats["images_computed"],
        "feature_phase_s": stats["phases_seconds"]["features"],
        "images_per_s": stats["images_per_second"],
        "job_wall_s": round(wall, 2),
        "per_stage_worker_seconds_per_image": {
            name: round(s["worker_seconds"] / s["images"], 4) for name, s in stats["stages"].items() if s["images"]
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48, help="photos to process (default 48)")
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--scale", type=int, metavar="N",
                        help="time planning + feature table + pair join for N images, ~2N pairs (synthetic features)")
    parser.add_argument("--scale-out", help="with --scale: keep the scratch folder here (default: a deleted temp folder)")
    parser.add_argument("--no-previews", dest="previews", action="store_false", help="with --scale: features without previews")
    parser.add_argument("--shard-size", default="1GB", help="with --scale: byte budget per shard (default 1GB)")
    parser.add_argument("--phase", choices=("all", "plan"), default="all",
                        help="with --scale: 'plan' times the planning phase alone (listing, hashing on workers, ids, "
                             "the pair plan) on N tiny files; 'all' (default) times planning, feature table, shards")
    args = parser.parse_args(argv)
    if args.scale is not None:
        return scale_main(args)
    import ray

    from preprocess.job.layout import ray_runtime_env

    counts = [int(w) for w in args.workers.split(",")]
    ray.init(num_cpus=max(counts), include_dashboard=False, runtime_env=ray_runtime_env(), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        pairs = write_photos(root, args.images)
        run(images=root / "images", pairs=pairs, models=args.models, workers=1, out=root / "warmup")  # model cache
        for workers in counts:
            results.append(run(images=root / "images", pairs=pairs, models=args.models, workers=workers,
                               out=root / f"out-{workers}"))
    ray.shutdown()
    base = results[0]["images_per_s"]
    for result in results:
        result["speedup_vs_first"] = round(result["images_per_s"] / base, 2) if base else None
    reference = 52712 / (8 * 3600)
    print(json.dumps({
        "benchmark": "build_shards end to end",
        "models": args.models,
        "what": "1101x750 JPEG photos; decode, DensePose, SSD face + antelopev2, texture, resize, VAE, CLIP, "
                "feature table, shards; one thread per worker",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "reference_images_per_s": round(reference, 2),
        "reference_note": "MCLD's preprocessing: about 8 hours for DeepFashion's 52,712 images (on a GPU)",
        "results": results,
    }, indent=1))
    return 0


def scale_main(args: argparse.Namespace) -> int:
    import ray

    from preprocess.job.layout import ray_runtime_env
    from preprocess.scale import ScaleConfig, run_plan, run_scale
    from shards.writer import parse_size

    cores = max(int(w) for w in args.workers.split(","))
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address="local", num_cpus=cores, include_dashboard=False, runtime_env=ray_runtime_env(),
                 log_to_driver=False)  # a new local instance, whatever else runs on the machine
    try:
        with contextlib.ExitStack() as stack:
            out = args.scale_out or stack.enter_context(tempfile.TemporaryDirectory())
            config = ScaleConfig(images=args.scale, out=out, previews=args.previews,
                                 shard_bytes=parse_size(args.shard_size))
            if args.phase == "plan":
                result = run_plan(config)
            else:
                result = run_scale(config)
    finally:
        if owns_ray:
            ray.shutdown()
    if args.phase == "plan":
        print(json.dumps({
            "benchmark": "build_shards planning phase at scale",
            "what": "N tiny files, ~2N pairs: read_pairs, folder listings, ids, each file read and hashed once by "
                    "the decode stage on Ray workers, plan_pairs (the pair plan)",
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
            **result,
        }, indent=1))
        return 0
    result.pop("records")
    print(json.dumps({
        "benchmark": "build_shards non-model path at scale",
        "what": "synthetic cached features at 512x512 (8x64x64 fp16 latents, 768-d CLIP, 512-d face, IUV PNG"
                + (", previews" if args.previews else "") + "); scan_features, planning, write_shards",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        **result,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
