from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from preprocess.face import FaceConfig, FaceStage
from preprocess.face.tiny import write_tiny_antelopev2
from tests.conftest import stage_batch

ASTRONAUT_FACE = np.array([179.4, 58.0, 271.6, 177.1])  # the res10 SSD's box on skimage's astronaut (measured)


def insightface_sample(name: str) -> np.ndarray:
    """An RGB sample image shipped inside the insightface package (t1.jpg: a group of six)."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / name
    return np.asarray(Image.open(path).convert("RGB"))


def make_batch(images: list, person_boxes=None, statuses=None) -> dict[str, np.ndarray]:
    """What the face stage receives: images and DensePose's person boxes (zeros: none)."""
    n = len(images)
    boxes = np.zeros((n, 4), np.float32) if person_boxes is None else np.asarray(person_boxes, np.float32)
    return stage_batch(n, status=statuses, image=list(images), person_box=boxes)


def full_body_like(scale: float = 0.35, height: int = 1101, width: int = 750):
    """The astronaut shrunk and pasted near the top of a DeepFashion-sized canvas (coffee photo background),
    with a person box from her top to the canvas bottom: a face too small for the whole-image SSD pass.
    Returns the canvas, the person box and where the astronaut's face box lands."""
    import cv2

    canvas = cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)
    side = int(512 * scale)
    small = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    px, py = (width - side) // 2, height // 10
    canvas[py : py + side, px : px + side] = small
    person = np.array([px, py, px + side, height - 10], np.float32)
    face = ASTRONAUT_FACE * (side / 512) + np.array([px, py, px, py])
    return canvas, person, face


@pytest.fixture(scope="session")
def tiny_antelopev2(tmp_path_factory) -> Path:
    return write_tiny_antelopev2(tmp_path_factory.mktemp("tiny-face") / "antelopev2", seed=0)


@pytest.fixture(scope="session")
def stage(tiny_antelopev2) -> FaceStage:
    return FaceStage(config=FaceConfig(antelopev2_dir=tiny_antelopev2))
