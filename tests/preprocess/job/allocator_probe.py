"""Run in a fresh process (the allocator is chosen at process start): every stage of the job after decode,
fused as a CPU worker runs them, on the demo photos at full size; save every output array to one .npz.

    python -m tests.preprocess.job.allocator_probe OUT.npz
"""

from __future__ import annotations

import os
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from preprocess.common import STATUS_OK, object_column
    from preprocess.demo import demo_photos
    from preprocess.job.chain import StageChain
    from preprocess.job.config import JobConfig
    from preprocess.job.layout import build_pipeline

    (out,) = argv if argv is not None else sys.argv[1:]
    photos = demo_photos()
    names = sorted(photos)
    images = [np.asarray(photos[name]) for name in names]
    n = len(images)
    batch = {
        "image_id": np.array(names, dtype=object),
        "status": np.array([STATUS_OK] * n, dtype=object),
        "reject_stage": np.array([""] * n, dtype=object),
        "detail": np.array([""] * n, dtype=object),
        "image": object_column(images),
        "orig_h": np.array([im.shape[0] for im in images], np.int32),
        "orig_w": np.array([im.shape[1] for im in images], np.int32),
    }
    pipeline, _ = build_pipeline(JobConfig(images="", pairs="", out="", models="tiny", device="cpu"))
    assert pipeline.specs[0].name == "decode"
    result = StageChain(specs=pipeline.specs[1:])(batch)  # the photos are decoded above
    arrays = {}
    for column, values in result.items():
        if column.startswith("seconds_"):
            continue  # wall time, not output
        if values.dtype == object:
            for i, value in enumerate(values):
                arrays[f"{column}/{i}"] = np.asarray(value)
        else:
            arrays[column] = values
    with open("/proc/self/maps", encoding="utf-8") as maps:
        loaded = sorted({line.split()[-1] for line in maps if "malloc.so" in line})
    arrays["process"] = np.array([f"MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', '')}", *loaded])
    np.savez(out, **arrays)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
