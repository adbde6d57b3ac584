"""End to end: tiny shards -> 2-step training -> sampler (train/sample.py) -> `mcld-data evaluate` on its GEN
folder, the ground truth being the originals the shards' meta.json records."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from tests.train.conftest import add_vae_record, write_tiny_vae
from tools.cli import main as cli_main

sample = pytest.importorskip("train.sample", reason="train/sample.py (the sampling issue) is not in this branch")


def _reset_accelerate() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.slow
def test_sampler_output_evaluates_through_the_cli(eval_models, tmp_path):
    from train.run import main as train_main

    shards = tmp_path / "out"
    write_synthetic_dataset(str(shards), geometry=Geometry(height=64, width=64, clip_dim=24), samples=3,
                            samples_per_shard=3, seed=5)
    add_vae_record(shards, write_tiny_vae(tmp_path / "vae"))
    run = tmp_path / "run"
    try:
        assert train_main(["--shards", str(shards), "--config", "tiny", "--output-dir", str(run),
                           "--max-steps", "2"]) == 0
    finally:
        _reset_accelerate()
    gen = tmp_path / "gen"
    try:
        assert sample.main(["--shards", str(shards), "--weights", str(run / "checkpoint-2"), "--output-dir",
                            str(gen), "--steps", "2"]) == 0
    finally:
        _reset_accelerate()
    index = pq.read_table(gen / "index.parquet").to_pylist()
    # The originals the shards were made from: synthetic shards record `{id}.jpg`; write photos there.
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for path in {row["target_path"] for row in index} | {row["source_path"] for row in index}:
        Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(images / path)
    report = tmp_path / "report"
    assert cli_main(["evaluate", str(gen), "--images", str(images), "--train-images", str(images), "--models",
                     str(eval_models), "-o", str(report), "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
                     "--quiet"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    for folder in ("256x176", "512x352"):
        result = metrics["resolutions"][folder]
        assert result["pairs"] == result["scored"] == len(index) and result["missing_generated"] == []
        assert math.isfinite(result["FID"]) and 0 <= result["LPIPS"] and math.isfinite(result["PSNR"])
    rows = pq.read_table(report / "per_image.parquet").to_pylist()
    assert sorted(r["name"] for r in rows if r["resolution"] == "256x176") == sorted(r["key"] for r in index)
    assert (report / "report.html").stat().st_size > 0
