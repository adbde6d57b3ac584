from pathlib import Path

import numpy as np
import pytest
from skimage import data

from preprocess.vae.tiny import write_tiny_vae


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    return write_tiny_vae(tmp_path_factory.mktemp("tiny-vae") / "vae", seed=0)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos at their own sizes: the astronaut as the person image, the cat as a stand-in texture."""
    return {"image": data.astronaut(), "texture": data.chelsea()}
