from pathlib import Path

import numpy as np
import pytest
from skimage import data

from preprocess.clip.tiny import write_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "image_encoder", seed=0)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos at their own sizes: the astronaut as the person image, the cat as a stand-in texture."""
    return {"image": data.astronaut(), "texture": data.chelsea()}
