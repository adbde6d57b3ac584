from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from tests.train.conftest import add_vae_record, train_in_process, write_config, write_tiny_vae
from train.checkpoints import list_checkpoints
from train.run import single_process_launch_warning

ROOT = Path(__file__).resolve().parents[2]
QUIET = {"validation": {"vae_path": None}}


def logs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines()]


def run_log(run_dir: Path) -> str:
    """RUN/train.log: what the run said, whatever the console showed."""
    return (run_dir / "train.log").read_text(encoding="utf-8")


def test_resume_continues_exactly_where_the_run_stopped(shards_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", checkpoint={"every": 2, "keep_last": 2}, **QUIET,
                          data={"num_workers": 2, "batch_size": 2, "shuffle_buffer": 8},
                          solver={"gradient_accumulation_steps": 2})
    common = ["--shards", str(shards_dir), "--config", str(config)]
    assert train_in_process([*common, "--output-dir", str(tmp_path / "straight"), "--max-steps", "6"]) == 0
    assert [step for step, _ in list_checkpoints(tmp_path / "straight")] == [4, 6]  # keep_last 2
    assert train_in_process([*common, "--output-dir", str(tmp_path / "split"), "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert train_in_process([*common, "--output-dir", str(tmp_path / "split"), "--max-steps", "6", "--resume", "latest"]) == 0
    # The console (no -v) shows the one-line summary; the run log, appended by both runs, holds the rest.
    console = capsys.readouterr()
    assert console.out.splitlines() == [f"train/run.py: finished at step 6 (1 process(es)); checkpoints and "
                                        f"train.log in {tmp_path / 'split'}"]
    assert "resumed from" not in console.err
    split = tmp_path / "split"
    said = run_log(split)
    for line in (f"checkpoint: {split / 'checkpoint-2'}", f"checkpoint: {split / 'checkpoint-3'}",
                 f"resumed from {split / 'checkpoint-3'} at step 3",
                 "training 6 steps from step 3: 1 process(es)", f"checkpoint: {split / 'checkpoint-6'}",
                 "finished at step 6; micro-batches per rank: [rank 0] 6"):
        assert f"INFO train.run: {line}" in said, line
    assert said.index("checkpoint-3 at step 3") < said.index("checkpoint-6")
    # Model, optimizer, LR schedule, RNG and data position all restored: the very same weights.
    straight = load_file(tmp_path / "straight" / "checkpoint-6" / "model.safetensors")
    resumed = load_file(tmp_path / "split" / "checkpoint-6" / "model.safetensors")
    assert all((straight[k] == resumed[k]).all() for k in straight)
    assert [r["loss"] for r in logs(tmp_path / "straight")] == [r["loss"] for r in logs(tmp_path / "split")]
    record = logs(tmp_path / "straight")[-1]
    assert record["step"] == 6 and 0.0 <= record["data_wait"] <= 1.0 and record["samples_per_s"] > 0
    assert {"loss", "loss_face", "lr"} <= set(record)


def test_resume_latest_without_checkpoints_starts_fresh_and_bad_paths_are_refused(shards_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", validation={"vae_path": None, "every": 0})
    common = ["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]
    assert train_in_process([*common, "--max-steps", "1", "--resume"]) == 0
    assert f"no checkpoint in {tmp_path / 'run'}; starting at step 0" in run_log(tmp_path / "run")
    assert train_in_process([*common, "--max-steps", "2"]) == 2
    assert "already holds checkpoint-1: pass --resume" in capsys.readouterr().err
    for target, message in ((tmp_path / "nowhere", "no such checkpoint folder"),
                            (tmp_path, "not a checkpoint-STEP folder")):
        assert train_in_process([*common, "--max-steps", "2", "--resume", str(target)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "checkpoint-7").mkdir()
    assert train_in_process([*common, "--max-steps", "8", "--resume", str(tmp_path / "checkpoint-7")]) == 2
    assert "incomplete checkpoint (no model.safetensors)" in capsys.readouterr().err
    assert list_checkpoints(tmp_path / "missing") == []


def test_resuming_an_older_checkpoint_replaces_the_later_ones(shards_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", **QUIET, checkpoint={"every": 2, "keep_last": 5})
    common = ["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]
    assert train_in_process([*common, "--max-steps", "4"]) == 0
    first = load_file(tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    (tmp_path / "run" / "checkpoint-9.partial").mkdir()  # what a killed save leaves
    capsys.readouterr()
    assert train_in_process([*common, "--max-steps", "4", "--resume", str(tmp_path / "run" / "checkpoint-2"), "-v"]) == 0
    message = f"resumed from {tmp_path / 'run' / 'checkpoint-2'} at step 2"
    assert f"[train.run] {message}" in capsys.readouterr().err  # -v: the console says it too
    assert message in run_log(tmp_path / "run")
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    assert not (tmp_path / "run" / "checkpoint-9.partial").exists()
    again = load_file(tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    assert all((first[k] == again[k]).all() for k in first)


def test_bad_command_lines_are_refused(shards_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", **QUIET)
    assert train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path),
                "--max-steps", "0"]) == 2
    assert "--max-steps must be positive" in capsys.readouterr().err
    shard = shards_dir / "train-000000.tar"
    assert train_in_process(["--shards", str(shard), "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    assert "give an output folder with manifest.json" in capsys.readouterr().err


def test_a_diverging_run_stops_with_the_step(shards_dir, tmp_path):
    config = write_config(tmp_path / "c.yaml", **QUIET, solver={"learning_rate": 1e30, "lr_warmup_steps": 0,
                                                                "max_grad_norm": 1e30})
    with pytest.raises(RuntimeError, match=r"step \d+: the loss is (nan|inf)"):
        train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run"),
             "--max-steps", "6"])


def test_a_single_process_cpu_launch_is_pointed_out(shards_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = write_config(tmp_path / "c.yaml", **QUIET)
    assert train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run"),
                "--max-steps", "1"]) == 0
    assert "accelerate launch --cpu started a single process" in capsys.readouterr().err  # a warning: shown
    assert "WARNING train.run: accelerate launch --cpu started a single process" in run_log(tmp_path / "run")


def test_overfit_on_four_samples(tmp_path):
    out = tmp_path / "four"
    write_synthetic_dataset(str(out), geometry=Geometry(height=64, width=64, clip_dim=24), samples=4,
                            samples_per_shard=4, seed=9)
    # The regularisers (CFG dropout, CLIP noise) off: this checks that the model can fit, through the real
    # run. Measured over seeds 0-2: the last-20 mean is 0.20-0.27 of the first-10 mean.
    config = write_config(tmp_path / "c.yaml", **QUIET, data={"batch_size": 4, "num_workers": 0},
                          solver={"learning_rate": 2e-3, "lr_warmup_steps": 5}, noise={"noise_offset": 0.0},
                          conditioning={"cfg_drop_rate": 0.0, "src_clip_drop_rate": 0.0, "clip_noise_scale": 0.0},
                          checkpoint={"every": 1000})
    assert train_in_process(["--shards", str(out), "--config", str(config), "--output-dir", str(tmp_path / "run"),
                "--max-steps", "120"]) == 0
    losses = [r["loss"] for r in logs(tmp_path / "run")]
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < 0.4 * first, (first, last)


def test_validation_images_with_the_manifest_vae(shards_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards_dir, out)
    add_vae_record(out, write_tiny_vae(tmp_path / "vae"))
    config = write_config(tmp_path / "c.yaml", validation={"every": 2, "pairs": 2, "steps": 2})
    assert train_in_process(["--shards", str(out), "--config", str(config), "--output-dir", str(tmp_path / "run"),
                "--max-steps", "2"]) == 0
    assert (tmp_path / "run" / "validation" / "step-000002.png").is_file()


def test_a_missing_validation_vae_stops_the_run_at_start(shards_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", validation={"vae_path": str(tmp_path / "no-vae")})
    assert train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    assert "no-vae: not a diffusers AutoencoderKL folder" in capsys.readouterr().err
    assert not (tmp_path / "run" / "logs.jsonl").exists()


def test_more_readers_than_shards_train(shards_dir, tmp_path):
    """5 DataLoader workers on 4 shards: readers share shards (issue 18), no refusal."""
    config = write_config(tmp_path / "c.yaml", **QUIET, data={"num_workers": 5})
    assert train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run"),
                "--max-steps", "1"]) == 0
    assert [r["step"] for r in logs(tmp_path / "run")] == [1]


def test_single_process_launch_warning_conditions():
    assert single_process_launch_warning({"ACCELERATE_USE_CPU": "True", "MASTER_PORT": "29500"})
    assert single_process_launch_warning({"ACCELERATE_USE_CPU": "True", "MASTER_PORT": "1", "WORLD_SIZE": "2"}) is None
    assert single_process_launch_warning({"ACCELERATE_USE_CPU": "False", "MASTER_PORT": "29500"}) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "train/run.py", *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_step_together_checkpoint_and_resume(shards_dir, tmp_path):
    config = write_config(tmp_path / "c.yaml", **QUIET, checkpoint={"every": 2, "keep_last": 3},
                          data={"num_workers": 1, "batch_size": 2}, solver={"gradient_accumulation_steps": 2})
    common = ["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]
    first = _launch([*common, "--max-steps", "4"])
    assert first.returncode == 0, first.stderr[-3000:]
    # One summary line on the console (the main process), one run log written by the main process alone.
    assert first.stdout.count("train/run.py: finished at step 4 (2 process(es))") == 1, first.stdout[-2000:]
    said = run_log(tmp_path / "run")
    assert "finished at step 4; micro-batches per rank: [rank 0] 8, [rank 1] 8" in said, said[-2000:]
    assert said.count("training 4 steps from step 0: 2 process(es)") == 1
    assert [step for step, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    assert (tmp_path / "run" / "checkpoint-4" / "random_states_1.pkl").is_file()
    second = _launch([*common, "--max-steps", "6", "--resume", "latest"])
    assert second.returncode == 0, second.stderr[-3000:]
    said = run_log(tmp_path / "run")
    assert said.count(f"resumed from {tmp_path / 'run' / 'checkpoint-4'} at step 4") == 1
    assert re.search(r"finished at step 6; micro-batches per rank: \[rank 0\] \d+, \[rank 1\] \d+", said)
    assert [r["step"] for r in logs(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
