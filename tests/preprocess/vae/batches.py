"""Batches as the resize stage hands them to the VAE and CLIP stages (shared by both stages' tests)."""

import numpy as np

RESOLUTIONS = [(512, 512), (512, 352), (256, 176)]


def make_batch(images: list[np.ndarray], textures: list[np.ndarray], *, status: list[str] | None = None) -> dict:
    n = len(images)
    status = status or ["ok"] * n
    return {
        "image_id": np.array([f"img-{i}" for i in range(n)], dtype=object),
        "status": np.array(status, dtype=object),
        "reject_stage": np.array(["" if s == "ok" else "densepose" for s in status], dtype=object),
        "detail": np.array(["" if s == "ok" else "img: upstream" for s in status], dtype=object),
        "image_resized": np.stack(images),
        "texture_resized": np.stack(textures),
    }
