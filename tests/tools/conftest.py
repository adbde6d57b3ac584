from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SharedFixtures


def _find_sets(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("set_*") if p.is_dir())


#: $MCLD_EVAL_FIXTURES, else ../shared/fixtures/mcld_eval next to the repository; its cases are the set_* folders.
EVAL = SharedFixtures.find("MCLD_EVAL_FIXTURES", "mcld_eval", _find_sets)


def eval_fixtures() -> Path:
    return EVAL.folder


def eval_sets() -> list[str]:
    return list(EVAL.cases)


@pytest.fixture(scope="session")
def eval_fixture_dir() -> Path:
    """The fixture folder: skipped in a clone without ../shared; with sets but no make_weights.py (the script
    that writes the backbones' stand-ins), or an override without a set, the test fails naming it."""
    folder = EVAL.require()
    if not (folder / "make_weights.py").is_file():
        pytest.fail(f"{folder} holds {', '.join(EVAL.cases)} but no make_weights.py: the evaluation fixtures "
                    "are incomplete", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def first_set(eval_fixture_dir) -> Path:
    """The first set_* folder found (the visible set_v in ../shared; a held-back folder may name others)."""
    return eval_fixture_dir / EVAL.cases[0]


@pytest.fixture(scope="session")
def eval_models(eval_fixture_dir, tmp_path_factory) -> Path:
    """A models YAML over the fixture's weights; make_weights.py writes the Inception and AlexNet stand-ins
    (about 10 s, 353 MB) once per session."""
    folder = tmp_path_factory.mktemp("eval-weights")
    subprocess.run([sys.executable, str(eval_fixture_dir / "make_weights.py"), str(folder)], check=True,
                   capture_output=True)
    weights = eval_fixture_dir / "weights"
    models = folder / "eval_models.yaml"
    models.write_text(f"inception: {folder / 'inception_v3_google-0cc3c7bd.pth'}\n"
                      f"alexnet: {folder / 'alexnet-owt-7be5be79.pth'}\n"
                      f"lpips: {weights / 'lpips' / 'v0.1' / 'alex.pth'}\n"
                      f"face: {weights / 'insightface' / 'models' / 'buffalo_s'}\n")
    return models
