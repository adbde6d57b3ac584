"""The scale bench's path (preprocess.bench --scale) at tiny N: its shards hold every pair and decode strictly."""

from __future__ import annotations

import json

from preprocess.bench import main
from preprocess.scale import image_path, pair_rows
from shards.reader import iter_samples


def test_scale_bench_writes_every_pair_into_shards_that_decode(tmp_path, capsys):
    images = 24
    assert main(["--scale", str(images), "--scale-out", str(tmp_path), "--shard-size", "3MB", "--workers", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = {(image_path(s), image_path(t)) for s, t in pair_rows(images, 2)}
    assert result["images"] == images and result["pairs"] == len(expected) == 2 * images
    for name in ("seconds", "pairs_per_second", "cores", "peak_rss_driver_mb", "peak_rss_workers_mb"):
        assert name in result
    shards = sorted(str(p) for p in tmp_path.glob("train-*.tar"))
    assert len(shards) == result["shards"] > 1
    found = set()
    for sample in iter_samples(shards):  # full decode of every member, pixels included, and the schema checks
        meta = sample["meta"]
        assert sample["__key__"] == f"{meta['source_id']}__{meta['target_id']}"
        assert sample["tgt_pose"].shape == (512, 512, 3) and sample["tgt_latent"].shape == (8, 64, 64)
        found.add((meta["source_path"], meta["target_path"]))
    assert found == expected


def test_plan_phase_bench_reads_every_tiny_file_and_plans_every_pair(tmp_path, capsys):
    """--phase plan: the planning phase on N tiny files (the hashes come from the workers' one read each)."""
    images = 30
    assert main(["--scale", str(images), "--scale-out", str(tmp_path), "--phase", "plan", "--workers", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == images and result["pairs"] == len(pair_rows(images, 2))
    for name in ("plan_seconds", "driver_rss_baseline_mb", "driver_rss_peak_mb", "workers_rss_peak_mb"):
        assert result[name] > 0, name
    assert (tmp_path / "images" / image_path(images - 1)).read_bytes() == f"scale-image-{images - 1}".encode()
