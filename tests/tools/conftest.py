from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def eval_fixtures() -> Path:
    """$MCLD_EVAL_FIXTURES, else ../shared/fixtures/mcld_eval next to the repository."""
    return Path(os.environ.get("MCLD_EVAL_FIXTURES") or ROOT.parent / "shared" / "fixtures" / "mcld_eval")


def eval_sets() -> list[str]:
    folder = eval_fixtures()
    return sorted(p.name for p in folder.glob("set_*") if p.is_dir()) if folder.is_dir() else []


@pytest.fixture(scope="session")
def eval_fixture_dir() -> Path:
    folder = eval_fixtures()
    if not (folder / "make_weights.py").is_file():
        pytest.skip(f"evaluation fixtures not found at {folder} (set MCLD_EVAL_FIXTURES)")
    return folder


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
