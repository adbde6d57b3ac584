"""Build MCLD training shards from person photos and (source, target) pairs, on a local Ray or a cluster.

    python preprocess/build_shards.py --images DIR --pairs PAIRS.csv --out OUT [--models models.yaml|tiny]
        [--resolution 512x512] [--shard-size 1GB] [--resume] [--max-errors N] [--address auto] [-v]

Quiet by default (warnings, the final table and summary); -v tells what it is doing. OUT/build_shards.log
keeps every run's log whatever the console shows.

Without --images and --pairs it runs on the embedded demo photos (shipped inside installed packages).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

# `python preprocess/build_shards.py` puts preprocess/ first on sys.path; the project root must come first
# so that `preprocess`, `shards` resolve as packages (also under `ray job submit --working-dir .`). A copy
# outside a checkout (`ray submit` runs ~/build_shards.py) uses the installed packages.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if (sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__))
        and os.path.isfile(os.path.join(_ROOT, "preprocess", "__init__.py"))):
    sys.path[0] = _ROOT

from preprocess.job.inputs import InputError  # noqa: E402
from preprocess.job.report import format_table  # noqa: E402
from preprocess.job.config import JobConfig, JobError  # noqa: E402
from preprocess.job.layout import plan_job  # noqa: E402
from preprocess.job.run import run_job  # noqa: E402
from preprocess.models import ModelsError, read_models_file  # noqa: E402
from shards import storage  # noqa: E402
from shards.cli import add_verbosity, setup_console_logging  # noqa: E402
from shards.manifest import STATS_NAME  # noqa: E402
from shards.storage import StorageError, preflight  # noqa: E402
from shards.writer import parse_size  # noqa: E402


def parse_resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: use HEIGHTxWIDTH, e.g. 512x512 or 512x352")
    height, width = int(match.group(1)), int(match.group(2))
    if height % 8 or width % 8 or not height or not width:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be positive multiples of 8")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build_shards.py", description=__doc__.split("\n")[0])
    inputs = parser.add_argument_group("inputs and output")
    inputs.add_argument("--images", help="folder (or fsspec URL) the pairs' paths are relative to")
    inputs.add_argument("--pairs", help="CSV with columns from,to (DeepFashion's published layout)")
    inputs.add_argument("--out", required=True, help="output folder (or fsspec URL): shards, manifest, rejects, features/")
    inputs.add_argument("--split", default="train", help="names the shards {split}-{index:06d}.tar (default train)")
    models = parser.add_argument_group("models and features")
    models.add_argument("--models", default="tiny", help="models YAML naming local weights, or 'tiny' (toy models, tests and demos)")
    models.add_argument("--resolution", type=parse_resolution, default=(512, 512), help="HEIGHTxWIDTH (default 512x512)")
    models.add_argument("--pose-resize", choices=("mcld", "nearest"), default="mcld",
                        help="target IUV resize: 'mcld' bicubic as the reference (default), 'nearest' exact parts")
    models.add_argument("--person", dest="person_policy", choices=("top_score", "largest_box"), default="top_score",
                        help="which DensePose detection is the person (default: highest score, as the reference)")
    models.add_argument("--no-previews", dest="previews", action="store_false",
                        help="do not store small source/target/face JPEG previews in the samples")
    models.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (decompression bombs)")
    shards = parser.add_argument_group("shards")
    shards.add_argument("--shard-size", type=parse_size, default=parse_size("1GB"), help="byte budget per shard (default 1GB)")
    shards.add_argument("--min-shards", type=int, default=None,
                        help="at least this many shards (default: 64, fewer when a shard would hold under 16 samples)")
    shards.add_argument("--seed", type=int, default=0, help="sample shuffle seed (default 0)")
    run = parser.add_argument_group("running")
    run.add_argument("--resume", action="store_true", help="reuse OUT's features (after a kill or a change)")
    run.add_argument("--overwrite", action="store_true", help="delete a previous run in OUT first")
    run.add_argument("--max-errors", default="0.5", help="stop when more images than this are rejected: a count, or a fraction (default 0.5)")
    run.add_argument("--address", help="join a running Ray cluster (auto or HOST:PORT); default: start a local one")
    run.add_argument("--workers", type=int, help="feature workers (default: one per CPU, or per GPU)")
    run.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    run.add_argument("--layout", choices=("auto", "fused", "staged"), default="auto",
                     help="fused: every stage in each worker (default on CPUs); staged: a pool per model stage (default on GPUs)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where models run: auto (default) CUDA where the workers' runtimes have it (torch for "
                          "DensePose/VAE/CLIP, onnxruntime's CUDA provider for the face stage), else the CPU; cuda "
                          "is refused where torch has no CUDA")
    run.add_argument("--stage-device", action="append", default=[], metavar="STAGE=DEVICE",
                     help="one model stage's device (densepose, face, vae, clip = cpu or cuda), e.g. face=cpu; "
                          "repeatable")
    run.add_argument("--dry-run", action="store_true",
                     help="print the devices and the resource plan on the cluster as JSON and exit (nothing computed)")
    run.add_argument("--gpu-dtype", choices=("float32", "bfloat16"), default="float32", help="model precision on GPUs")
    run.add_argument("--local-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    run.add_argument("--node-wait", type=float, default=600.0, metavar="SECONDS",
                     help="when lost nodes leave no node able to run the work, wait this long for nodes to join, "
                          "then stop (rerun with --resume to continue; default 600)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_verbosity(run)
    return parser


def config_from_args(args: argparse.Namespace, argv: list[str]) -> JobConfig:
    images, pairs = args.images, args.pairs
    if (images is None) != (pairs is None):
        raise JobError("give both --images and --pairs, or neither (the embedded demo)")
    if args.node_wait < 0:
        raise JobError(f"--node-wait must not be negative, got {args.node_wait:g}")
    if args.min_shards is not None and args.min_shards < 1:
        raise JobError(f"--min-shards must be at least 1, got {args.min_shards}")
    if images is None:
        from pathlib import Path

        from preprocess.demo import write_demo_inputs
        from preprocess.models import cache_root

        images_dir, pairs_csv = write_demo_inputs(Path(cache_root()) / "demo-inputs-v1")
        images, pairs = str(images_dir), str(pairs_csv)
    return JobConfig(
        images=images,
        pairs=pairs,
        out=args.out,
        models=args.models,
        height=args.resolution[0],
        width=args.resolution[1],
        shard_bytes=args.shard_size,
        resume=args.resume,
        overwrite=args.overwrite,
        max_errors=args.max_errors,
        address=args.address,
        split=args.split,
        seed=args.seed,
        min_shards=args.min_shards,
        workers=args.workers,
        batch_size=args.batch_size,
        layout=args.layout,
        device=args.device,
        gpu_dtype=args.gpu_dtype,
        stage_device=tuple(args.stage_device),
        pose_resize=args.pose_resize,
        person_policy=args.person_policy,
        previews=args.previews,
        max_pixels=args.max_pixels,
        progress=args.progress and sys.stderr.isatty(),
        local_cpus=args.local_cpus,
        node_wait=args.node_wait,
        command=tuple(["build_shards.py", *argv]),
    )


def check_stores(config: JobConfig) -> None:
    """Object-store URLs answer, with their buckets and credentials, before Ray starts or anything is read."""
    preflight(config.images, what="--images")
    preflight(config.pairs, what="--pairs")
    preflight(config.out, what="--out", write=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_console_logging(args.verbose)
    if args.resume and args.overwrite:
        print("build_shards.py: --resume and --overwrite exclude each other", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args, argv)
        if args.dry_run:  # the plan only: no models, no inputs, no output folder
            print(json.dumps(plan_job(config), indent=1))
            return 0
        if config.models != "tiny":
            read_models_file(config.models)  # a bad models file is refused before --out is touched
        check_stores(config)
        manifest = run_job(config)
    except (JobError, InputError, ModelsError, StorageError) as error:
        print(f"build_shards.py: {error}", file=sys.stderr)
        return 1
    counts = manifest.counts
    stats = json.loads(storage.read_bytes(storage.join(args.out, STATS_NAME)))
    print(format_table(stats), file=sys.stderr)
    print(f"{args.out}: {counts.pairs_written} samples in {len(manifest.shards)} shards; "
          f"{sum(counts.images_rejected.values())} images and {sum(counts.pairs_rejected.values())} pairs rejected "
          f"(see mcld-data summary {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
