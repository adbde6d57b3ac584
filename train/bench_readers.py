"""Read amplification of the trainer's readers (JSON): bytes read from storage per byte of dataset, one epoch.

    python -m train.bench_readers [--processes 8] [--workers 4] [--shards 2,16,64] [--samples 768]
        [--batch-size 12] [--resolution 512x512]

Writes a synthetic dataset (seeded random latents and embeddings, a drawn figure as pose, JPEG previews:
the schema's members at their real sizes) once per shard count, then runs every reader of one epoch
(processes x workers, in this process, raw samples only: no decode) and counts the bytes each takes from
storage: tar headers, member data, and for whole shards the stream to the end (the sha256 check).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

from shards.reader import ReadStats, resolve
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from train.data import TrainStream


def parse_resolution(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width)


def measure(out: str, *, processes: int, workers: int, batch_size: int) -> dict:
    source = resolve(out)
    dataset = sum(r.bytes for r in source.manifest.shards)
    stats = ReadStats()
    whole = partial = 0
    padding = 0
    for rank in range(processes):
        stream = TrainStream(source=source, rank=rank, world_size=processes, num_workers=workers,
                             batch_size=batch_size, seed=0, shuffle_buffer=0, verify_checksums=True, stats=stats)
        plan = stream.plan()
        padding = plan.padding
        for role in range(max(1, workers)):
            if not stream.worker_batches(role):
                continue
            pieces = plan.pieces(rank=rank, role=role)
            whole += sum(p.whole for p in pieces)
            partial += sum(not p.whole for p in pieces)
            for _ in stream.raw_samples(role):
                pass
    samples = sum(r.samples for r in source.manifest.shards)
    return {"shards": len(source.urls), "samples": samples, "padding_samples": padding,
            "dataset_bytes": dataset, "bytes_read": stats.bytes,
            "read_amplification": round(stats.bytes / dataset, 4),
            # What one pass plus the padding must read at least (the padding's samples are read twice).
            "ideal_amplification": round((samples + max(0, padding)) / samples, 4),
            "whole_shard_reads": whole, "partial_shard_reads": partial}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench_readers", description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--shards", default="2,16,64", help="comma-separated shard counts")
    parser.add_argument("--samples", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--resolution", type=parse_resolution, default=(512, 512))
    parser.add_argument("--clip-dim", type=int, default=768)
    args = parser.parse_args(argv)
    height, width = args.resolution
    geometry = Geometry(height=height, width=width, clip_dim=args.clip_dim)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as folder:
        for count in [int(c) for c in args.shards.split(",")]:
            out = str(Path(folder) / f"s{count}")
            write_synthetic_dataset(out, geometry=geometry, samples=args.samples, seed=1,
                                    samples_per_shard=math.ceil(args.samples / count))
            results.append(measure(out, processes=args.processes, workers=args.workers, batch_size=args.batch_size))
            shutil.rmtree(out)
    report = {"processes": args.processes, "workers": args.workers, "readers": args.processes * args.workers,
              "batch_size": args.batch_size, "resolution": [height, width], "clip_dim": args.clip_dim,
              "results": results}
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
