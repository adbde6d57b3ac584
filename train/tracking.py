"""Experiment trackers through accelerate: TensorBoard (the default, embedded: event files in RUN/tb/, no server),
Weights & Biases (offline unless WANDB_MODE says otherwise) and MLflow (a local file store, RUN/mlruns, unless
MLFLOW_TRACKING_URI says otherwise).

Scalars are logged under ``train/<name>`` where <name> is the key logs.jsonl uses, at the optimizer step that
logs.jsonl records; validation logs the grid and one image per validation pair under ``validation/``.
A resumed run continues the same tracker run: TensorBoard's writer purges what an earlier attempt logged past
the resumed step, W&B and MLflow reopen the run whose id RUN/trackers.json keeps.

wandb and mlflow are optional extras (``pip install 'mcld-data[wandb]'`` / ``'mcld-data[mlflow]'``), imported
only when chosen; a missing package stops the run at start with one line naming the extra.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("train.tracking")

REPORT_TO = ("tensorboard", "wandb", "mlflow", "all", "none")
TRACKERS = ("tensorboard", "wandb", "mlflow")
#: The Python package each tracker needs and the extra that installs it.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
TB_DIR = "tb"
MLFLOW_DIR = "mlruns"
IDS_NAME = "trackers.json"
SCALAR_PREFIX = "train/"
IMAGE_PREFIX = "validation/"
PROJECT = "mcld"  # W&B project and MLflow experiment name (overridable by WANDB_PROJECT, MLFLOW_EXPERIMENT_NAME)


class TrackerError(ValueError):
    """A --report-to value that is unknown, or names a tracker whose package is not installed."""


def parse_report_to(spec: str, *, where: str = "--report-to") -> tuple[str, ...]:
    """``tensorboard``, ``wandb``, ``mlflow``, a comma-separated list of them, ``all`` or ``none``."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise TrackerError(f"{where}: empty; give one of {', '.join(REPORT_TO)}")
    unknown = [name for name in names if name not in REPORT_TO]
    if unknown:
        raise TrackerError(f"{where} {spec}: unknown tracker {unknown[0]!r} (known: {', '.join(REPORT_TO)})")
    if "none" in names:
        if len(names) > 1:
            raise TrackerError(f"{where} {spec}: 'none' cannot be combined with trackers")
        return ()
    if "all" in names:
        return TRACKERS
    return tuple(name for name in TRACKERS if name in names)


def check_installed(trackers: tuple[str, ...], *, where: str = "--report-to") -> None:
    """Without importing them: a tracker whose package is missing is refused in one line naming the extra."""
    for name in trackers:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(f"{where} {name}: the {module} package is not installed; "
                               f"pip install 'mcld-data[{extra}]'")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"solver.learning_rate": 1e-5, ...}; lists and None as strings (what trackers accept)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def split_grid(grid: np.ndarray, rows: int) -> list[np.ndarray]:
    """The validation grid (one row per pair) -> one image per pair."""
    if rows <= 0 or grid.shape[0] % rows:
        raise ValueError(f"a grid {grid.shape[0]} pixels high does not split into {rows} equal rows")
    height = grid.shape[0] // rows
    return [grid[index * height:(index + 1) * height] for index in range(rows)]


class Tracking:
    """The run's trackers, started once the resume step is known; every call is a no-op off the main process
    and when no tracker was chosen."""

    def __init__(self, accelerator, *, trackers: tuple[str, ...], run_dir: Path) -> None:
        self.accelerator = accelerator
        self.trackers = trackers
        self.run_dir = Path(run_dir)
        self.active = bool(trackers) and accelerator.is_main_process

    @property
    def ids_path(self) -> Path:
        return self.run_dir / IDS_NAME

    def _saved_ids(self) -> dict[str, str]:
        if not self.ids_path.is_file():
            return {}
        try:
            return json.loads(self.ids_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TrackerError(f"{self.ids_path}: not JSON ({error}); delete it to start new tracker runs") from error

    def start(self, *, step: int, config: Mapping[str, Any]) -> None:
        """Open the trackers; ``step`` > 0 is a resumed run, continued in the same tracker run."""
        if not self.active:
            return
        saved = self._saved_ids() if step > 0 else {}
        init_kwargs: dict[str, dict[str, Any]] = {}
        if "tensorboard" in self.trackers:
            # Events an earlier attempt logged after the resumed step are hidden, as logs.jsonl is replayed.
            init_kwargs["tensorboard"] = {"purge_step": step + 1} if step > 0 else {}
        if "wandb" in self.trackers:
            wandb_kwargs: dict[str, Any] = {"dir": str(self.run_dir), "mode": os.environ.get("WANDB_MODE", "offline")}
            if "wandb" in saved:
                wandb_kwargs.update(id=saved["wandb"], resume="allow")
            init_kwargs["wandb"] = wandb_kwargs
        if "mlflow" in self.trackers:
            import mlflow

            if not os.environ.get("MLFLOW_TRACKING_URI"):
                # MLflow 3 keeps its file store in maintenance mode behind this opt-in; a local folder needs no
                # server nor database (set MLFLOW_TRACKING_URI for either).
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri((self.run_dir / MLFLOW_DIR).resolve().as_uri())
            init_kwargs["mlflow"] = {"run_id": saved["mlflow"]} if "mlflow" in saved else {}
        # TensorBoard writes into <project_dir>/<project name> = RUN/tb.
        self.accelerator.init_trackers(TB_DIR if "tensorboard" in self.trackers else PROJECT,
                                       init_kwargs=init_kwargs)
        ids = dict(saved)
        flat = flatten(config)
        for name in ("wandb", "mlflow"):
            if name not in self.trackers:
                continue
            tracker = self.accelerator.get_tracker(name)
            if name not in saved:
                tracker.store_init_configuration(flat)
            run = tracker.tracker
            ids[name] = run.id if name == "wandb" else run.info.run_id
        if ids:
            self.ids_path.write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
        log.info("trackers: %s (step %d)%s", ", ".join(self.trackers), step,
                 f"; {self.run_dir / TB_DIR}" if "tensorboard" in self.trackers else "")

    def log_step(self, record: Mapping[str, Any], *, step: int) -> None:
        """One logs.jsonl record as ``train/<key>`` scalars at its step."""
        if not self.active:
            return
        values = {f"{SCALAR_PREFIX}{key}": float(value) for key, value in record.items()
                  if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        self.accelerator.log(values, step=step)

    def log_validation(self, grid_path: Path, *, keys: list[str], step: int) -> None:
        """The validation grid and each pair's row, as images at the step."""
        if not self.active:
            return
        from PIL import Image

        with Image.open(grid_path) as picture:
            grid = np.asarray(picture.convert("RGB"))
        images = {f"{IMAGE_PREFIX}grid": grid}
        for key, row in zip(keys, split_grid(grid, len(keys)), strict=True):
            images[f"{IMAGE_PREFIX}{key}"] = row
        for name in self.trackers:
            if name == "tensorboard":
                writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
                for tag, image in images.items():
                    writer.add_image(tag, image, global_step=step, dataformats="HWC")
                writer.flush()
            elif name == "wandb":
                import wandb

                self.accelerator.get_tracker("wandb", unwrap=True).log(
                    {tag: wandb.Image(image) for tag, image in images.items()}, step=step)
            elif name == "mlflow":
                import mlflow

                for tag, image in images.items():
                    mlflow.log_image(image, key=tag.replace("/", "_"), step=step)
