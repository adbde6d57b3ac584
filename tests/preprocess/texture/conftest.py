"""Shared by the texture tests: the parity fixtures ($MCLD_TEXTURE_FIXTURES, else ../shared/fixtures/texture),
skipped when absent from a user's clone, failing when the variable names a folder without a case."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import SharedFixtures


def case_specs(folder: Path) -> list[dict]:
    """cases.json's cases (every one, held-back ones included); none without cases.json."""
    index = folder / "cases.json"
    return json.loads(index.read_text())["cases"] if index.is_file() else []


TEXTURE = SharedFixtures.find("MCLD_TEXTURE_FIXTURES", "texture", case_specs)
FIXTURES = TEXTURE.folder


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return TEXTURE.require()


def read_case(folder: Path, case: dict) -> dict[str, np.ndarray]:
    flags = {"image": cv2.IMREAD_COLOR, "iuv": cv2.IMREAD_UNCHANGED}
    flags |= {"atlas": cv2.IMREAD_COLOR, "texture": cv2.IMREAD_COLOR}
    arrays = {key: cv2.imread(str(folder / case[key]), flag) for key, flag in flags.items()}
    for key, array in arrays.items():
        assert array is not None, f"{folder / case[key]} unreadable"
    return arrays


@pytest.fixture(scope="session")
def fixture_cases(fixture_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {case["name"]: read_case(fixture_dir, case) for case in case_specs(fixture_dir)}


def within(a: np.ndarray, b: np.ndarray, levels: int = 2) -> float:
    """Fraction of pixels whose every channel differs by at most `levels`."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float(np.mean((np.abs(a.astype(np.int16) - b.astype(np.int16)) <= levels).all(axis=-1)))
