"""What every part of the GPU check shares: the run's settings, its time budget, a part's record."""

from __future__ import annotations

import gc
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class Skip(Exception):
    """Raised by a part (or a step of one) that cannot run here; the message is the recorded reason."""


class Budget:
    """The check's wall-clock allowance, read as it goes: a part that would overrun is skipped, not started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def require(self, seconds: float, what: str) -> None:
        """Skip ``what`` unless ``seconds`` (an estimate) are left."""
        if self.left() < seconds:
            raise Skip(f"time budget: {what} needs about {seconds:.0f} s, {max(self.left(), 0):.0f} s left "
                       f"of {self.seconds:.0f} s")


@dataclass(kw_only=True)
class Context:
    """The run's settings. ``sizes``: ``real`` (official architectures, random weights) or ``tiny`` (toy widths)."""

    device: str
    quick: bool
    sizes: str
    fixtures: Path | None
    eval_weights: Path | None
    work: Path
    budget: Budget
    max_cases: int | None = None  # parity cases per fixture (None: every case); the CPU test runs one

    def cases(self, items: list) -> list:
        return items if self.max_cases is None else items[: self.max_cases]

    @property
    def cuda(self) -> bool:
        import torch

        return self.device.startswith("cuda") and torch.cuda.is_available()

    def require_cuda(self, what: str) -> None:
        if not self.device.startswith("cuda"):
            raise Skip(f"{what} compares CUDA with the CPU: run with --device cuda")
        if not self.cuda:
            raise Skip(f"{what}: --device {self.device} but torch.cuda.is_available() is False "
                       f"(torch {torch_version()})")

    def fixture(self, name: str) -> Path:
        if self.fixtures is None or not (self.fixtures / name).is_dir():
            raise Skip(f"fixtures folder {name!r} not found under {self.fixtures} (give --fixtures DIR, the "
                       f"shared/fixtures folder)")
        return self.fixtures / name

    def runs(self) -> list[tuple[str, str]]:
        """(device, dtype) columns of a parity table: the CPU always, then CUDA float32 and bfloat16."""
        columns = [("cpu", "float32")]
        if self.cuda:
            columns += [(self.device, "float32"), (self.device, "bfloat16")]
        return columns


def torch_version() -> str:
    import torch

    return torch.__version__


def missing_modules(*names: str) -> list[str]:
    """Top-level modules that cannot be imported here (found without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_modules(*names: str, what: str) -> None:
    missing = missing_modules(*names)
    if missing:
        raise Skip(f"{what} needs {', '.join(missing)} (not installed here)")


@dataclass(kw_only=True)
class PartRecord:
    name: str
    status: str = "ok"
    why: str = ""
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    parity: list[dict[str, Any]] = field(default_factory=list)

    def compare(self, case: str, actual, expected, *, tolerance: float, rtol: float = 0.0, device: str = "cpu",
                dtype: str = "float32", **extra: Any) -> dict[str, Any]:
        """One parity row: max |actual - expected| against ``tolerance + rtol * |expected|`` (numpy's allclose)."""
        actual = np.asarray(actual, np.float64)
        expected = np.asarray(expected, np.float64)
        if actual.shape != expected.shape:
            return self.add(case, float("inf"), tolerance, device=device, dtype=dtype,
                            note=f"shape {actual.shape} vs {expected.shape}", **extra)
        difference = np.abs(actual - expected)
        max_abs = float(difference.max(initial=0.0))
        within = bool((difference <= tolerance + rtol * np.abs(expected)).all())
        if rtol:
            extra["rtol"] = rtol
        return self.add(case, max_abs, tolerance, device=device, dtype=dtype, within=within, **extra)

    def add(self, case: str, max_abs: float, tolerance: float, *, device: str, dtype: str,
            within: bool | None = None, **extra: Any) -> dict[str, Any]:
        if within is None:
            within = bool(max_abs <= tolerance)
        row = {"case": case, "device": device, "dtype": dtype, "max_abs": _number(max_abs),
               "tolerance": tolerance, "within": within, **extra}
        if not within and np.isfinite(max_abs) and tolerance > 0:
            row["over_tolerance_x"] = _number(max_abs / tolerance)  # how far out: what bf16 costs
        self.parity.append(row)
        return row

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "why": self.why, "seconds": round(self.seconds, 2),
                "figures": self.figures, "parity": self.parity}


def _number(value: float) -> float | str:
    """A JSON-safe float: inf and nan as strings (json.dumps would write bare Infinity/NaN)."""
    value = float(value)
    return float(f"{value:.6g}") if np.isfinite(value) else str(value)


def release_memory() -> None:
    """Between parts: drop what the last one held, so the next one's peak memory is its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def photo(ctx: Context, height: int, width: int) -> np.ndarray:
    """A real photo of a person, squashed to H x W (bicubic): the DensePose fixture's portrait when the fixtures
    are here, else a smooth random picture (timing does not depend on the content)."""
    from PIL import Image

    if ctx.fixtures is not None:
        for candidate in sorted((ctx.fixtures / "densepose").glob("*/portrait_*.png")):
            with Image.open(candidate) as image:
                return np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC))
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))
