"""The job end to end on the demo photos with tiny models, on a real local Ray instance."""

from __future__ import annotations

import json
import os

import pytest

from preprocess.build_shards import main
from shards.manifest import read_manifest
from shards.reader import iter_samples
from shards.verify import verify_output
from tests.preprocess.job.conftest import models_file_for, shard_bytes
from tools.cli import main as cli


def build(demo_inputs, out, *extra: str) -> int:
    images, pairs = demo_inputs
    return main(["--images", str(images), "--pairs", str(pairs), "--out", str(out), "--models", "tiny",
                 "--no-progress", "--device", "cpu", *extra])  # bytes are compared: the CPU even on a GPU machine


def test_demo_job_writes_verified_shards_and_accounts_for_everything(reference_run, capsys):
    report = verify_output(str(reference_run), progress=False)
    assert report.ok, report.problems
    manifest = read_manifest(str(reference_run))
    assert manifest.tiny and manifest.counts.images_in == 8 and manifest.counts.pairs_in == 10
    assert manifest.counts.images_ok + sum(manifest.counts.images_rejected.values()) == 8
    assert manifest.counts.pairs_written + sum(manifest.counts.pairs_rejected.values()) == 10
    assert manifest.counts.pairs_written >= 8  # the tiny DensePose finds a person on the demo photos
    assert len(manifest.shards) >= 2  # the 1.2 MB budget splits the output
    sizes = [s.samples for s in manifest.shards]
    assert max(sizes) - min(sizes) <= 1
    assert len(manifest.clip_null_embedding) == manifest.clip_dim == len(manifest.clip_mean)
    assert {m.name for m in manifest.models} == {"densepose", "face_detector", "arcface", "texture", "vae", "clip"}
    for sample in iter_samples(str(reference_run)):
        meta = sample["meta"]
        assert meta["source_path"].count("/") == 1 and meta["source_sha256"]
        # pose_resize "mcld" blends part indices bicubically at part borders (values past 24 appear there)
        parts = sample["tgt_pose"][..., 0]
        assert (parts > 0).any() and ((parts > 0) & (parts <= 24)).mean() > 0.9 * (parts > 0).mean()
        assert {"src", "tgt"} <= set(sample)
    stats = json.loads((reference_run / "stats.json").read_text())
    assert set(stats["stages"]) == {"decode", "densepose", "face", "texture", "resize", "vae", "clip", "features"}
    assert stats["stages"]["densepose"]["images"] == 8 and stats["stages"]["densepose"]["worker_seconds"] > 0
    assert cli(["summary", str(reference_run)]) == 0
    assert "counts add up" in capsys.readouterr().out


def test_staged_layout_gives_the_same_shards(reference_run, demo_inputs, tmp_path):
    out = tmp_path / "out"
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "7", "--layout", "staged", "--batch-size", "2") == 0
    assert shard_bytes(out) == shard_bytes(reference_run)


def test_rerun_uses_the_cache_and_a_changed_setting_does_not(reference_run, demo_inputs, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "7") == 1
    assert "holds a previous run" in capsys.readouterr().err
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "7", "--resume") == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images_computed"] == 0 and stats["images_cached"] == 8
    assert shard_bytes(out) == shard_bytes(reference_run)
    # another seed reshuffles the same features
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "8", "--resume") == 0
    assert json.loads((out / "stats.json").read_text())["images_computed"] == 0
    assert shard_bytes(out) != shard_bytes(reference_run)
    # a setting that changes features gets its own cache entry
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "7", "--resume", "--pose-resize", "nearest") == 0
    assert json.loads((out / "stats.json").read_text())["images_computed"] == 8
    assert len(list((out / "features").iterdir())) == 2
    manifest = read_manifest(str(out))
    assert manifest.pose_resize == "nearest"
    for sample in iter_samples(str(out)):
        assert set(sample["tgt_pose"][..., 0].ravel().tolist()) <= set(range(25))


def test_moving_the_models_keeps_the_feature_cache(reference_run, demo_inputs, model_cache, tmp_path):
    """The fingerprint comes from checksums and settings, never from where the model files are."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    (original,) = model_cache.glob("tiny-*")
    moved = tmp_path / "elsewhere" / "my models"
    shutil.copytree(original, moved)
    models = models_file_for(moved, tmp_path / "models.yaml")
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "7", "--resume", "--models", models) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images_computed"] == 0 and stats["images_cached"] == 8, stats
    assert len(list((out / "features").iterdir())) == 1
    assert shard_bytes(out) == shard_bytes(reference_run)
    manifest = read_manifest(str(out))
    assert any(str(moved) in m.source for m in manifest.models)  # the manifest still says where they were
    # one changed byte in a weights file is another model: its own cache entry, every image computed
    vae_weights = next((moved / "vae").glob("diffusion_pytorch_model.*"))
    data = bytearray(vae_weights.read_bytes())
    data[-4] ^= 1  # a low bit of the last weight
    vae_weights.write_bytes(bytes(data))
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "7", "--resume", "--models", models) == 0
    assert json.loads((out / "stats.json").read_text())["images_computed"] == 8
    assert len(list((out / "features").iterdir())) == 2


def _job_command(demo_inputs, out, *extra: str) -> list[str]:
    import sys
    from pathlib import Path

    images, pairs = demo_inputs
    script = Path(__file__).resolve().parents[3] / "preprocess" / "build_shards.py"
    return [sys.executable, str(script), "--images", str(images), "--pairs", str(pairs), "--out", str(out),
            "--models", "tiny", "--no-progress", "--shard-size", "1.2MB", "--seed", "7", "--device", "cpu", *extra]


def _run_detached(command, *, env=None, kill_after: float | None = None):
    """Run the job as its own process group; SIGKILL the driver alone after ``kill_after`` seconds, then
    clear away what it left (Ray's helper processes of that group)."""
    import os
    import signal
    import subprocess

    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=kill_after if kill_after is not None else 600)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate()
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.returncode, output


@pytest.mark.slow
def test_resume_after_sigkill_of_the_driver_gives_the_same_shards(reference_run, demo_inputs, tmp_path):
    import random

    from preprocess.job.features import FEATURES_DIR, scan_features

    out = tmp_path / "out"
    # A seeded delay (MCLD_TEST_KILL_SEED picks another), so a failure can be rerun at the same moment.
    seed = int(os.environ.get("MCLD_TEST_KILL_SEED", "0"))
    delay = random.Random(seed).uniform(8.0, 30.0)  # the message of every assertion below names it
    code, output = _run_detached(_job_command(demo_inputs, out), kill_after=delay)
    finished_before = set()
    for folder in (out / FEATURES_DIR).glob("*"):
        finished_before |= set(scan_features(str(folder)))
    assert build(demo_inputs, out, "--shard-size", "1.2MB", "--seed", "7", "--resume") == 0, output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images_cached"] == len(finished_before), (delay, code)
    assert stats["images_computed"] == 8 - len(finished_before)
    assert shard_bytes(out) == shard_bytes(reference_run), f"killed after {delay:.1f} s (exit {code})"
    assert verify_output(str(out), progress=False).ok


@pytest.mark.slow
def test_a_worker_that_dies_mid_task_does_not_fail_the_job(reference_run, demo_inputs, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "killed-once"
    env = {**os.environ, "MCLD_DATA_KILL_ONCE": str(marker)}
    code, output = _run_detached(_job_command(demo_inputs, out), env=env)
    assert marker.exists()  # a worker really did kill itself
    assert code == 0, output
    assert shard_bytes(out) == shard_bytes(reference_run)


def test_workers_batch_size_and_fsspec_urls_do_not_change_a_byte(reference_run, demo_inputs, tmp_path):
    """1 worker x batch 3 (the reference: 2 x 4) give the same bytes and shard records; and every file access
    goes through fsspec for URLs (`local://` takes that path on this machine). One run checks both: either
    one changing a byte fails it."""
    images, pairs = demo_inputs
    out = tmp_path / "out"
    code = main(["--images", f"local://{images}", "--pairs", f"local://{pairs}", "--out", f"local://{out}",
                 "--models", "tiny", "--no-progress", "--shard-size", "1.2MB", "--seed", "7", "--device", "cpu",
                 "--workers", "1", "--batch-size", "3"])
    assert code == 0
    assert shard_bytes(out) == shard_bytes(reference_run)
    assert read_manifest(str(out)).shards == read_manifest(str(reference_run)).shards
    assert verify_output(f"local://{out}", progress=False).ok


def test_other_resolutions(ray_local, demo_inputs, tmp_path):
    out = tmp_path / "out"
    assert build(demo_inputs, out, "--resolution", "256x176", "--no-previews") == 0
    manifest = read_manifest(str(out))
    assert (manifest.height, manifest.width) == (256, 176)
    sample = next(iter_samples(str(out)))
    assert sample["tgt_latent"].shape == (8, 32, 22) and sample["tgt_pose"].shape == (256, 176, 3)
    assert "src" not in sample and "tgt" not in sample
    assert verify_output(str(out), progress=False).ok
