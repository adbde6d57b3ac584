from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DemoRun:
    """A 2-step tiny training run on the demo shards, checkpoints at steps 1 and 2."""

    shards: Path  # the session's feature-modes job output (tiny models on the packaged demo photos)
    images: Path  # the photos the shards' meta.json names (sub-folders, spaces in names)
    run: Path
    train_images: Path  # FID's real side: the demo photos as one folder of *.jpg, as the reference globs it


@pytest.fixture(scope="session")
def demo_run(feature_modes_run, tmp_path_factory) -> DemoRun:
    """One training run shared by the evaluation end-to-end test and the checkpoint sweep (one, not two)."""
    from PIL import Image

    from tests.train.conftest import train_in_process, write_config

    shards, images, _ = feature_modes_run
    base = tmp_path_factory.mktemp("demo-run")
    config = write_config(base / "tiny.yaml", checkpoint={"every": 1, "keep_last": 2})
    assert train_in_process(["--shards", str(shards), "--config", str(config), "--output-dir", str(base / "run"),
                             "--max-steps", "2"]) == 0
    train = base / "train"
    train.mkdir()
    for number, path in enumerate(sorted(p for p in images.rglob("*") if p.suffix in (".png", ".jpg")
                                         and p.parent.name != "bad")):
        Image.open(path).convert("RGB").save(train / f"{number}.jpg")
    return DemoRun(shards=shards, images=images, run=base / "run", train_images=train)
