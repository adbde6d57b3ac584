"""Shard-reading benchmark: samples/s decoding to tensors on one core, and bytes per sample (JSON)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time

import cv2
import torch

from shards.reader import iter_samples
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset


def cpu_model() -> str:
    """The CPU's model name (what every benchmark's JSON reports), or the architecture where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ALLOCATOR_ENV = ("LD_PRELOAD", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "MALLOC_CONF",
                 "TCMALLOC_RELEASE_RATE")


def allocator_in_use() -> dict[str, str]:
    """The allocator settings this process started with (they only act at process start), for the JSON."""
    return {name: os.environ[name] for name in ALLOCATOR_ENV if os.environ.get(name)} or {"allocator": "glibc default"}


class Faults:
    """Minor page faults and CPU seconds (user, system) of this process over a timed block.

    A minor fault per freshly mapped page is what an allocator that hands big blocks back to the kernel
    costs on every forward pass; per image, it shows whether the allocator setting took.
    """

    def __enter__(self) -> "Faults":
        self._start = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc) -> None:
        end = resource.getrusage(resource.RUSAGE_SELF)
        self.minor = end.ru_minflt - self._start.ru_minflt
        self.system_seconds = end.ru_stime - self._start.ru_stime
        self.user_seconds = end.ru_utime - self._start.ru_utime

    def per_item(self, items: int) -> dict[str, float]:
        """Per image; CPU seconds are less disturbed than wall time when other processes share the cores."""
        return {"minor_faults_per_image": round(self.minor / items),
                "user_seconds_per_image": round(self.user_seconds / items, 4),
                "system_seconds_per_image": round(self.system_seconds / items, 4)}


def measure(*, height: int, width: int, clip_dim: int, samples: int, previews: bool, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        manifest = write_synthetic_dataset(
            out, geometry=Geometry(height=height, width=width, clip_dim=clip_dim), samples=samples,
            samples_per_shard=max(1, samples // 4), previews=previews,
        )
        total_bytes = sum(s.bytes for s in manifest.shards)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            count = sum(1 for _ in iter_samples(out, to_torch=True))
            rates.append(count / (time.perf_counter() - start))
    rates.sort()
    return {
        "resolution": f"{height}x{width}",
        "clip_dim": clip_dim,
        "previews": previews,
        "samples": samples,
        "bytes_per_sample": round(total_bytes / samples),
        "samples_per_s_median": round(rates[len(rates) // 2], 1),
        "samples_per_s_min": round(rates[0], 1),
        "samples_per_s_max": round(rates[-1], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards.bench", description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = [
        measure(height=h, width=w, clip_dim=768, samples=args.samples, previews=p, repeats=args.repeats)
        for (h, w) in ((512, 512), (512, 352), (256, 176))
        for p in (False, True)
    ]
    print(json.dumps({
        "benchmark": "shard_read",
        "what": "read + sha256 check + decode + schema check + to torch tensors, one thread, local disk",
        "machine": {"cpu": cpu_model(), "threads": 1},
        "results": results,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
