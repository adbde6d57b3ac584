import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from preprocess.densepose.tiny import write_tiny_densepose
from tests.conftest import SharedFixtures

# Two threads: the CI machine has two cores, and other suites may run beside this one.
torch.set_num_threads(2)


def _find_cases(root: Path) -> list[tuple[str, dict, dict]]:
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "cases.json").is_file()):
        spec = json.loads((folder / "cases.json").read_text())
        for case in spec["cases"]:
            out.append((folder.name, spec, case))
    return out


#: $MCLD_DENSEPOSE_FIXTURES, else ../shared/fixtures/densepose: subfolders (r50, r101dl, ...) with cases.json.
DENSEPOSE = SharedFixtures.find("MCLD_DENSEPOSE_FIXTURES", "densepose", _find_cases)
FIXTURES = DENSEPOSE.folder


def fixture_cases() -> list[tuple[str, dict, dict]]:
    """(folder, cases.json, case) for every parity case; empty when there is none (see fixtures_root)."""
    return list(DENSEPOSE.cases)


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    """The fixture folder; skips in a clone without ../shared, fails when an override holds no case."""
    return DENSEPOSE.require().resolve()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_densepose(tmp_path_factory.mktemp("tiny-densepose"), seed=0)


@pytest.fixture(scope="session")
def tiny_predictor(tiny):
    from preprocess.densepose.predictor import DensePosePredictor

    return DensePosePredictor(config_path=tiny[0], weights_path=tiny[1])


def child_config(directory: Path, base: Path, text: str, name: str = "child.yaml") -> Path:
    """A yaml that overrides ``base`` through ``_BASE_`` (absolute path, so it may live anywhere)."""
    path = directory / name
    path.write_text(f'_BASE_: "{base}"\n{text}', encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="session")
def group_photo() -> np.ndarray:
    """insightface's sample t1.jpg (several people), RGB."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


def assert_iuv_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Two whole-image IUVs of one person computed by the two chart paths (that person's chart alone, or
    every detection's): equal up to float rounding in the head (see test_person_chart_alone_matches_that_
    chart_among_all): the part index agrees on more than 99.9% of pixels, U and V within one level there."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.uint8
    agree = actual[..., 0] == expected[..., 0]
    assert agree.mean() > 0.999, agree.mean()
    assert (expected[..., 0] > 0).any()
    difference = np.abs(actual[..., 1:].astype(np.int16) - expected[..., 1:].astype(np.int16))[agree]
    assert difference.max(initial=0) <= 1, difference.max()
