"""The experiment trackers, read back with their own libraries: TensorBoard's event reader and MLflow's client on
its file store hold what logs.jsonl holds (same tags, steps, values) and the validation images; a resumed run
(from an older checkpoint) continues the same tracker run."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.train.conftest import add_vae_record, train_in_process, write_config, write_tiny_vae
from train.tracking import TrackerError, check_installed, parse_report_to, split_grid

PAIRS = 2


@pytest.fixture(scope="module")
def tracked_run(shards_dir, tmp_path_factory) -> Path:
    """3 steps (validation at 2), then resumed from checkpoint-2 up to step 4 (validation at 4): step 3 is logged
    twice, and what the trackers show must be the second attempt's, as the last logs.jsonl records are."""
    base = tmp_path_factory.mktemp("tracked")
    out = base / "out"
    shutil.copytree(shards_dir, out)
    add_vae_record(out, write_tiny_vae(base / "vae"))
    config = write_config(base / "c.yaml", validation={"every": 2, "pairs": PAIRS, "steps": 2},
                          checkpoint={"every": 2, "keep_last": 5}, data={"num_workers": 1, "batch_size": 2})
    common = ["--shards", str(out), "--config", str(config), "--output-dir", str(base / "run"),
              "--report-to", "tensorboard,mlflow"]
    assert train_in_process([*common, "--max-steps", "3"]) == 0
    assert train_in_process([*common, "--max-steps", "4", "--resume", str(base / "run" / "checkpoint-2")]) == 0
    return base / "run"


def _last_records(run: Path) -> dict[int, dict]:
    """logs.jsonl's record of each step; a step logged again after a resume: the later record."""
    records = [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]
    return {record["step"]: record for record in records}


def _scalar_keys(record: dict) -> list[str]:
    return [key for key, value in record.items() if key != "step" and isinstance(value, (int, float))]


def _accumulator(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()


def test_tensorboard_scalars_are_the_logs_jsonl_figures_at_their_steps(tracked_run):
    records = _last_records(tracked_run)
    assert sorted(records) == [1, 2, 3, 4]
    events = _accumulator(tracked_run)
    keys = _scalar_keys(records[4])
    assert {"loss", "loss_mse", "loss_face", "lr", "grad_norm", "samples_per_s", "data_wait", "step_time"} <= set(keys)
    assert {f"train/{key}" for key in keys} <= set(events.Tags()["scalars"])
    for key in keys:
        scalars = events.Scalars(f"train/{key}")
        # The resumed attempt purged the first attempt's step 3: one value per step, the later one.
        assert [s.step for s in scalars] == [1, 2, 3, 4], key
        for event in scalars:
            assert event.value == pytest.approx(records[event.step][key], rel=1e-6, abs=1e-12), (key, event.step)


def _decoded(image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))


def test_tensorboard_images_are_the_validation_grid_and_its_pairs(tracked_run):
    events = _accumulator(tracked_run)
    tags = events.Tags()["images"]
    pair_tags = [tag for tag in tags if tag != "validation/grid"]
    assert "validation/grid" in tags and len(pair_tags) == PAIRS and all(t.startswith("validation/") for t in pair_tags)
    assert [image.step for image in events.Images("validation/grid")] == [2, 4]
    for image in events.Images("validation/grid"):
        written = np.asarray(Image.open(tracked_run / "validation" / f"step-{image.step:06d}.png").convert("RGB"))
        assert (_decoded(image) == written).all(), image.step
        # each pair's image is one row of the grid
        shown = sorted(_decoded(next(i for i in events.Images(tag) if i.step == image.step)).tobytes()
                       for tag in pair_tags)
        assert shown == sorted(row.tobytes() for row in split_grid(written, PAIRS)), image.step


def test_mlflow_file_store_holds_one_run_continued_across_the_resume(tracked_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked_run / "mlruns").resolve().as_uri())
    run_id = json.loads((tracked_run / "trackers.json").read_text())["mlflow"]
    runs = [run for experiment in client.search_experiments() for run in
            client.search_runs([experiment.experiment_id])]
    assert [run.info.run_id for run in runs] == [run_id]  # the resume reopened it, no second run
    assert runs[0].data.params["data.batch_size"] == "2"  # the config, flattened
    records = _last_records(tracked_run)
    for key in ("loss", "lr", "grad_norm"):
        history = client.get_metric_history(run_id, f"train/{key}")
        assert {m.step for m in history} == {1, 2, 3, 4}
        latest = {}
        for metric in sorted(history, key=lambda m: m.timestamp):
            latest[metric.step] = metric.value
        assert latest == pytest.approx({step: records[step][key] for step in latest}, rel=1e-6)
    images = [item.path for item in client.list_artifacts(run_id, "images")]
    assert any("validation_grid+step+2+" in path for path in images), images


def test_report_to_values_and_a_missing_package_name_the_extra(monkeypatch, shards_dir, tmp_path, capsys):
    assert parse_report_to("all") == ("tensorboard", "wandb", "mlflow")
    assert parse_report_to("none") == ()
    assert parse_report_to("mlflow, tensorboard") == ("tensorboard", "mlflow")
    for bad, message in (("comet", "unknown tracker 'comet'"), ("none,wandb", "'none' cannot be combined"),
                         ("", "empty")):
        with pytest.raises(TrackerError, match=message):
            parse_report_to(bad)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrackerError, match=r"the wandb package is not installed; pip install 'mcld-data\[wandb\]'"):
        check_installed(("tensorboard", "wandb"))
    config = write_config(tmp_path / "c.yaml", validation={"vae_path": None})
    assert train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run"),
                 "--report-to", "wandb"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "train/run.py: error: --report-to wandb: the wandb package is not installed; pip install 'mcld-data[wandb]'"]
    bad = write_config(tmp_path / "bad.yaml", report_to="tensorbored")
    assert train_in_process(["--shards", str(shards_dir), "--config", str(bad), "--output-dir", str(tmp_path / "run2")]) == 2
    assert "report_to tensorbored: unknown tracker 'tensorbored'" in capsys.readouterr().err
