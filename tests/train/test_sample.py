"""End to end: a 2-step tiny run, then sampling its checkpoint with 1 and 2 processes, reruns and edits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

from shards.reader import iter_samples
from shards.synthetic import write_synthetic_dataset
from tests.train.conftest import GEOMETRY, add_vae_record, write_config, write_tiny_vae
from train.run import main as train_main
from train.sample import main as sample_main
from train.sampling import EVAL_SIZES, pair_noise

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--batch-size", "3"]


def _reset() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def in_process(main, argv: list[str]) -> int:
    try:
        return main(argv)
    finally:
        _reset()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic shards (5 pairs in 3 shards, a VAE recorded) and a 2-step tiny run's checkpoint."""
    base = tmp_path_factory.mktemp("sample-e2e")
    shards = base / "out"
    write_synthetic_dataset(str(shards), geometry=GEOMETRY, samples=5, samples_per_shard=2, seed=11)
    add_vae_record(shards, write_tiny_vae(base / "vae"))
    config = write_config(base / "c.yaml", validation={"vae_path": None}, checkpoint={"every": 2, "keep_last": 1},
                          data={"num_workers": 0, "batch_size": 2})
    run = base / "run"
    assert in_process(train_main, ["--shards", str(shards), "--config", str(config), "--output-dir", str(run),
                                   "--max-steps", "2"]) == 0
    return shards, run / "checkpoint-2"


def _pngs(gen: Path) -> dict[str, bytes]:
    return {p.relative_to(gen).as_posix(): p.read_bytes() for p in sorted(gen.rglob("*.png"))}


def _launch(argv: list[str]) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "train/sample.py", *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _pixels(gen: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(gen).as_posix(): np.asarray(Image.open(p)).astype(np.int16) for p in sorted(gen.rglob("*.png"))}


@pytest.mark.slow
def test_images_do_not_depend_on_processes_or_batching_and_reruns_skip(trained, tmp_path, capsys):
    shards, checkpoint = trained
    common = ["--shards", str(shards), "--weights", str(checkpoint), "--steps", "2"]
    one, two, batched = tmp_path / "one", tmp_path / "two", tmp_path / "batched"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): same kernels, same bits
    try:
        assert in_process(sample_main, [*common, "--batch-size", "1", "--output-dir", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    keys = sorted(s["__key__"] for s in iter_samples(str(shards)))
    sizes = {f"{GEOMETRY.height}x{GEOMETRY.width}", *(f"{h}x{w}" for h, w in EVAL_SIZES)}
    assert set(_pngs(one)) == {f"{size}/{key}.png" for size in sizes for key in keys}
    for height, width in [(GEOMETRY.height, GEOMETRY.width), *EVAL_SIZES]:
        image = Image.open(one / f"{height}x{width}" / f"{keys[0]}.png")
        assert image.mode == "RGB" and image.size == (width, height)
    index = pq.read_table(one / "index.parquet").to_pylist()
    assert [row["key"] for row in index] == keys
    meta = {s["__key__"]: s["meta"] for s in iter_samples(str(shards))}
    for row in index:
        assert (row["source_id"], row["target_id"]) == (meta[row["key"]]["source_id"], meta[row["key"]]["target_id"])
        assert row["target_path"] == meta[row["key"]]["target_path"] and row["seed"] == 42
    settings = json.loads((one / "settings.json").read_text())
    assert settings["steps"] == 2 and settings["scheduler"] == "reference" and settings["resolution"] == [64, 64]

    launched = _launch([*common, "--batch-size", "1", "--output-dir", str(two)])
    assert launched.returncode == 0, launched.stderr[-3000:]
    ranks = [json.loads(line) for line in launched.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["sampled"] > 0 for r in ranks)
    assert _pngs(two) == _pngs(one)  # same bytes whatever the process count and order
    assert pq.read_table(two / "index.parquet").equals(pq.read_table(one / "index.parquet"))
    # On the CPU the networks see one pair at a time: another batch size gives the same bytes.
    whole = tmp_path / "whole"
    torch.set_num_threads(1)
    try:
        assert in_process(sample_main, [*common, "--batch-size", "3", "--output-dir", str(batched)]) == 0
        assert in_process(sample_main, [*common, "--batch-size", "3", "--batch-invariant", "off",
                                        "--output-dir", str(whole)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert _pngs(batched) == _pngs(one)
    # Whole batches (what a GPU runs by default) use other kernels: the same images up to float rounding.
    expected, found = _pixels(one), _pixels(whole)
    assert expected.keys() == found.keys()
    assert all(np.abs(expected[k] - found[k]).max() <= 1 for k in expected)
    assert json.loads((whole / "settings.json").read_text())["batch_invariant"] is False

    capsys.readouterr()
    assert in_process(sample_main, [*common, "--batch-size", "1", "--output-dir", str(one)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sampled"] == 0 and summary["skipped"] == len(keys) and summary["pairs"] == len(keys)

    # A changed setting is refused (naming it), unless --overwrite.
    assert in_process(sample_main, [*common, "--output-dir", str(one), "--seed", "7"]) == 2
    assert "seed differ" in capsys.readouterr().err
    assert in_process(sample_main, [*common, "--output-dir", str(one), "--seed", "7", "--overwrite"]) == 0
    assert _pngs(one).keys() == _pngs(two).keys() and _pngs(one) != _pngs(two)


def test_pair_noise_depends_on_seed_and_key_only():
    first = pair_noise(42, ["a__b", "c__d"], (4, 2, 2))
    np.testing.assert_array_equal(first[1].numpy(), pair_noise(42, ["c__d"], (4, 2, 2))[0].numpy())
    assert not np.array_equal(first[0].numpy(), first[1].numpy())
    assert not np.array_equal(first[0].numpy(), pair_noise(43, ["a__b"], (4, 2, 2))[0].numpy())


def test_face_and_appearance_edits_write_contact_sheets(trained, tmp_path):
    shards, checkpoint = trained
    keys = sorted(s["__key__"] for s in iter_samples(str(shards)))
    common = ["--shards", str(shards), "--weights", str(checkpoint), *FAST]
    plain, edited = tmp_path / "plain", tmp_path / "edited"
    assert in_process(sample_main, [*common, "--output-dir", str(plain)]) == 0
    assert in_process(sample_main, [*common, "--output-dir", str(edited), "--face-from", keys[0],
                                    "--appearance-from", f"{shards}:{keys[1]}"]) == 0
    own = f"{GEOMETRY.height}x{GEOMETRY.width}"
    for key in keys:
        sheet = np.asarray(Image.open(edited / "edits" / f"{key}.png"))
        assert sheet.shape == (2 * GEOMETRY.height, 4 * GEOMETRY.width, 3)  # one row per edit
        result = np.asarray(Image.open(edited / own / f"{key}.png"))
        assert np.array_equal(sheet[:GEOMETRY.height, 3 * GEOMETRY.width:], result)
    # Every pair now wears keys[1]'s appearance: keys[1] itself only changes by the face.
    assert (edited / own / f"{keys[2]}.png").read_bytes() != (plain / own / f"{keys[2]}.png").read_bytes()
    settings = json.loads((edited / "settings.json").read_text())
    assert settings["edits"] == {"face_from": keys[0], "appearance_from": f"{shards}:{keys[1]}"}
    assert in_process(sample_main, [*common, "--output-dir", str(tmp_path / "x"), "--face-from", "no__such"]) == 2
