"""Batches as the resize stage hands them to the VAE and CLIP stages (shared by both stages' tests)."""

import numpy as np

from tests.conftest import stage_batch

RESOLUTIONS = [(512, 512), (512, 352), (256, 176)]


def make_batch(images: list[np.ndarray], textures: list[np.ndarray], *, status: list[str] | None = None) -> dict:
    """What the resize stage hands on: the resized image and texture of each row, stacked."""
    return stage_batch(len(images), status=status, ids=[f"img-{i}" for i in range(len(images))],
                       failed_stage="densepose", failed_detail="img: upstream",
                       image_resized=np.stack(images), texture_resized=np.stack(textures))
