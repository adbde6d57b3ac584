"""Issue 18: 8 CPU processes (gloo) train and sample on a dataset of 2 shards; subsets of the pairs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from shards.reader import iter_samples, resolve
from shards.synthetic import write_synthetic_dataset
from tests.train.conftest import GEOMETRY, add_vae_record, reset_accelerate, train_in_process, write_config, write_tiny_vae
from train.data import TrainStream
from train.sample import contiguous_run
from train.sample import main as sample_main

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 8


def _launch(script: str, argv: list[str], *, processes: int = PROCESSES) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), script, *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def _sample(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): same kernels, same bits
    try:
        return sample_main(argv)
    finally:
        torch.set_num_threads(threads)
        reset_accelerate()


def _logs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]


def _pngs(gen: Path) -> dict[str, bytes]:
    return {p.relative_to(gen).as_posix(): p.read_bytes() for p in sorted(gen.rglob("*.png"))}


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> Path:
    """9 pairs in 2 shards (5 + 4), a tiny VAE recorded: far fewer shards than 8 processes."""
    base = tmp_path_factory.mktemp("multirank")
    out = base / "out"
    write_synthetic_dataset(str(out), geometry=GEOMETRY, samples=9, samples_per_shard=5, seed=7, previews=False)
    add_vae_record(out, write_tiny_vae(base / "vae"))
    return out


@pytest.fixture(scope="module")
def trained_8(two_shards, tmp_path_factory) -> Path:
    """An uninterrupted 8-process run of 2 steps (batch 1: 9 pairs make 2 batches per rank per epoch)."""
    base = tmp_path_factory.mktemp("multirank-run")
    config = write_config(base / "c.yaml", validation={"vae_path": None}, checkpoint={"every": 1, "keep_last": 2},
                          data={"num_workers": 0, "batch_size": 1})
    run = base / "run"
    launched = _launch("train/run.py", ["--shards", str(two_shards), "--config", str(config), "--output-dir", str(run),
                                        "--max-steps", "2"])
    assert launched.returncode == 0, launched.stderr[-4000:]
    return run


@pytest.mark.slow
def test_8_processes_train_on_2_shards_and_resume_mid_epoch_exactly(two_shards, trained_8, tmp_path):
    said = (trained_8 / "train.log").read_text()
    # Every rank took its batches (none idle, none short): 2 micro-batches each.
    counts = ", ".join(f"[rank {r}] 2" for r in range(PROCESSES))
    assert f"finished at step 2; micro-batches per rank: {counts}" in said, said[-2000:]
    # The epoch those ranks read (the same code, per rank): the dataset once, plus the stated padding.
    source = resolve(str(two_shards))
    seen: Counter = Counter()
    for rank in range(PROCESSES):
        stream = TrainStream(source=source, rank=rank, world_size=PROCESSES, num_workers=0, batch_size=1, seed=0,
                             shuffle_buffer=16, verify_checksums=True)
        keys = [key for batch in stream for key in batch.keys]
        assert len(keys) == 2
        seen.update(keys)
    dataset = {s["__key__"] for s in iter_samples(str(two_shards), decode=False)}
    assert set(seen) == dataset and sum(seen.values()) - len(dataset) == stream.plan().padding == 7
    # Resumed after step 1 (mid-epoch: each rank has one batch of the epoch left), step 2 is the same step.
    config = trained_8.parent / "c.yaml"
    resumed = tmp_path / "resumed"
    launched = _launch("train/run.py", ["--shards", str(two_shards), "--config", str(config), "--output-dir",
                                        str(resumed), "--max-steps", "2", "--resume", str(trained_8 / "checkpoint-1")])
    assert launched.returncode == 0, launched.stderr[-4000:]
    again = _logs(resumed)
    assert [r["step"] for r in again] == [2]
    whole = _logs(trained_8)[1]
    assert (again[0]["loss"], again[0]["loss_face"]) == (whole["loss"], whole["loss_face"])


@pytest.mark.slow
def test_8_processes_sample_2_shards_all_busy_and_bytes_match_one_process(two_shards, trained_8, tmp_path):
    common = ["--shards", str(two_shards), "--weights", str(trained_8 / "checkpoint-2"), "--steps", "2",
              "--batch-size", "1"]
    one, eight = tmp_path / "one", tmp_path / "eight"
    assert _sample([*common, "--output-dir", str(one)]) == 0
    launched = _launch("train/sample.py", [*common, "--output-dir", str(eight), "--timeout", "600"])
    assert launched.returncode == 0, launched.stderr[-4000:]
    ranks = [json.loads(line) for line in launched.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == list(range(PROCESSES))
    assert all(r["sampled"] > 0 and r["skipped"] == 0 for r in ranks), ranks
    assert sum(r["sampled"] for r in ranks) == 9
    assert _pngs(eight) == _pngs(one) and len(_pngs(one)) == 9 * 3
    assert pq.read_table(eight / "index.parquet").equals(pq.read_table(one / "index.parquet"))


def test_keys_and_limit_sample_a_subset_with_the_same_bytes(two_shards, tmp_path):
    """A few pairs without generating the split; the index keeps rows of pairs sampled earlier."""
    weights = _tiny_weights(two_shards, tmp_path)
    keys = sorted(s["__key__"] for s in iter_samples(str(two_shards), decode=False))
    common = ["--shards", str(two_shards), "--weights", str(weights), "--steps", "1", "--batch-size", "2"]
    gen = tmp_path / "gen"
    listed = tmp_path / "keys.txt"
    listed.write_text(f"# two pairs\n{keys[5]}\n\n{keys[2]}\n")
    assert _sample([*common, "--output-dir", str(gen), "--keys-from", str(listed)]) == 0
    assert {p.split("/")[1] for p in _pngs(gen)} == {f"{keys[2]}.png", f"{keys[5]}.png"}
    first = _pngs(gen)
    assert _sample([*common, "--output-dir", str(gen), "--keys", keys[7], "--limit", "1"]) == 0
    assert {p.split("/")[1] for p in _pngs(gen)} == {f"{k}.png" for k in (keys[2], keys[5], keys[7])}
    assert all(_pngs(gen)[name] == data for name, data in first.items())
    assert pq.read_table(gen / "index.parquet").column("key").to_pylist() == [keys[2], keys[5], keys[7]]
    limited = tmp_path / "limited"
    assert _sample([*common, "--output-dir", str(limited), "--limit", "1"]) == 0
    first_pair = next(iter(iter_samples(str(two_shards), decode=False)))["__key__"]  # the manifest's order
    assert {p.split("/")[1] for p in _pngs(limited)} == {f"{first_pair}.png"}
    assert _sample([*common, "--output-dir", str(limited), "--keys", f"{keys[0]},nobody__nothing"]) == 2


def _tiny_weights(shards: Path, tmp_path: Path) -> Path:
    """Weights to sample with: a 1-step in-process run of the tiny config."""
    config = write_config(tmp_path / "c.yaml", validation={"vae_path": None}, checkpoint={"every": 1, "keep_last": 1},
                          data={"num_workers": 0, "batch_size": 2})
    assert train_in_process(["--shards", str(shards), "--config", str(config), "--output-dir", str(tmp_path / "run"),
                             "--max-steps", "1"]) == 0
    return tmp_path / "run" / "checkpoint-1"


def test_pairs_are_split_in_contiguous_runs_that_differ_by_at_most_one():
    """The sampler's split: no process idles while another has more than one pair more to do."""
    for count, parts in [(9, 8), (8570, 8), (3, 8), (0, 2), (17, 3)]:
        items = list(range(count))
        runs = [contiguous_run(items, parts=parts, index=i) for i in range(parts)]
        assert [x for run in runs for x in run] == items
        assert max(map(len, runs)) - min(map(len, runs)) <= 1
