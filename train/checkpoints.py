"""Checkpoint folders RUN/checkpoint-STEP: finding, naming, pruning; the trainer state saved with them."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_SUFFIX = ".partial"


class CheckpointError(ValueError):
    """A --resume target that is not a complete checkpoint; names the path."""


@dataclass(kw_only=True)
class TrainState:
    """What accelerate does not save: the step and the data stream's position."""

    step: int = 0
    data_epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this rank consumed in data_epoch

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.data_epoch = int(state["data_epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (a save in progress has a ``.partial`` name), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(spec: str, run_dir: Path) -> Path | None:
    """``latest``: the newest complete checkpoint in the run folder (None if there is none); else a path."""
    if spec == "latest":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"--resume {spec}: no such checkpoint folder")
    if not CHECKPOINT_PATTERN.match(path.name):
        raise CheckpointError(f"--resume {spec}: not a checkpoint-STEP folder")
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"--resume {spec}: incomplete checkpoint (no model.safetensors)")
    return path


def prune_checkpoints(run_dir: Path, *, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints, and leftovers of interrupted saves."""
    removed = []
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path)
        removed.append(path)
    for path in Path(run_dir).glob(f"checkpoint-*{PARTIAL_SUFFIX}"):
        shutil.rmtree(path)
        removed.append(path)
    return removed
