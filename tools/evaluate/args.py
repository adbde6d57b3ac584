"""The `evaluate` command's arguments, kept free of heavy imports so `mcld-data --help` stays fast."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from shards.cli import add_verbosity


def _local_path(value: str) -> Path:
    """Evaluation reads and writes local files only (its images go through PIL and DataLoader workers)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise argparse.ArgumentTypeError(f"{value}: evaluate works on local folders only; mount the store or copy "
                                         f"the files first")
    return Path(value)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("generated", type=_local_path,
                        help="sampler output folder (GEN) or the reference layout's method folder (<res>/<name>.png)")
    parser.add_argument("--images", type=_local_path, help="GEN: the root the index's target_path values are under")
    parser.add_argument("--gt", type=_local_path, help="reference layout: the gt folder (<res>/<name>.png)")
    parser.add_argument("--train-images", type=_local_path,
                        help="FID real side: the folder of training *.jpg (the reference's <training_path>/train)")
    parser.add_argument("--models", type=_local_path, required=True,
                        help="eval_models.yaml (see tools/evaluate/models.py)")
    parser.add_argument("-o", "--output", type=_local_path, required=True, help="report folder")
    parser.add_argument("--resolutions", default="256,512", help="comma-separated: 256 (256x176), 512 (512x352)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="image decoding processes")
    parser.add_argument("--cache-dir", type=Path, default=None, help="FID real statistics cache "
                                                                     "(default ~/.cache/mcld-data/fid)")
    parser.add_argument("--worst", type=int, default=8, help="worst pairs per metric shown in the HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbosity(parser)
    return parser
