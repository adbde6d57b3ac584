"""What a job is asked to do (JobConfig, from build_shards' arguments), its error budget, and its error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    images: str
    pairs: str
    out: str
    models: str = "tiny"
    height: int = 512
    width: int = 512
    shard_bytes: int = 10**9
    resume: bool = False
    overwrite: bool = False
    max_errors: str = "0.5"
    address: str | None = None
    split: str = "train"
    seed: int = 0
    min_shards: int | None = None  # None: pairs.default_min_shards (64 unless samples run out)
    workers: int | None = None
    batch_size: int = 4
    layout: Literal["auto", "fused", "staged"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_dtype: Literal["float32", "bfloat16"] = "float32"
    stage_device: tuple[str, ...] = ()  # --stage-device STAGE=DEVICE overrides (preprocess/job/plan.py)
    pose_resize: Literal["mcld", "nearest"] = "mcld"
    person_policy: Literal["top_score", "largest_box"] = "top_score"
    previews: bool = True
    max_pixels: int = 40_000_000
    progress: bool = True
    local_cpus: int | None = None
    node_wait: float = 600.0  # seconds to wait for nodes when none left can run a phase (preprocess/job/watch.py)
    command: tuple[str, ...] = ()


class JobError(RuntimeError):
    """The job cannot go on (bad arguments, error budget spent); the message says what to do."""


@dataclass(kw_only=True)
class ErrorBudget:
    """--max-errors: a count ("20") or a fraction of the images ("0.05"). Rejected images count."""

    limit: float
    fraction: bool

    @classmethod
    def parse(cls, text: str) -> ErrorBudget:
        try:
            value = float(text)
        except ValueError as error:
            raise JobError(f"--max-errors {text!r}: give a count (e.g. 20) or a fraction (e.g. 0.05)") from error
        if value < 0:
            raise JobError(f"--max-errors {text!r}: must not be negative")
        fraction = "." in text or (0 < value < 1)
        if fraction and value > 1:
            raise JobError(f"--max-errors {text!r}: a fraction must be at most 1")
        return cls(limit=value, fraction=fraction)

    def exceeded(self, errors: int, images: int) -> bool:
        allowed = self.limit * images if self.fraction else self.limit
        return errors > allowed

    def describe(self) -> str:
        return f"{self.limit:g} of the images" if self.fraction else f"{int(self.limit)} images"
