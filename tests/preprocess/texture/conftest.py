"""Shared by the texture tests: the parity fixtures (../shared/fixtures/texture), skipped when absent."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
FIXTURES = SHARED / "fixtures" / "texture"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURES / "cases.json").is_file():
        pytest.skip(f"texture parity fixtures not found at {FIXTURES} (a user's clone has no ../shared; CI has it)")
    return FIXTURES


def read_case(folder: Path, case: dict) -> dict[str, np.ndarray]:
    flags = {"image": cv2.IMREAD_COLOR, "iuv": cv2.IMREAD_UNCHANGED}
    flags |= {"atlas": cv2.IMREAD_COLOR, "texture": cv2.IMREAD_COLOR}
    arrays = {key: cv2.imread(str(folder / case[key]), flag) for key, flag in flags.items()}
    for key, array in arrays.items():
        assert array is not None, f"{folder / case[key]} unreadable"
    return arrays


@pytest.fixture(scope="session")
def fixture_cases(fixture_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    cases = json.loads((fixture_dir / "cases.json").read_text())["cases"]
    return {case["name"]: read_case(fixture_dir, case) for case in cases}


def within(a: np.ndarray, b: np.ndarray, levels: int = 2) -> float:
    """Fraction of pixels whose every channel differs by at most `levels`."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float(np.mean((np.abs(a.astype(np.int16) - b.astype(np.int16)) <= levels).all(axis=-1)))
