"""Seeded IUV maps for the parity tests and the benchmark (no DensePose model needed).

Two kinds: `body`, one smooth blob per part with U and V varying linearly across it (what DensePose
predicts: dense, each part covering a patch of its chart), and `scatter`, isolated pixels with random
(I, U, V) (sparse atlases, much inpainting, many duplicate texels).
"""

from __future__ import annotations

import cv2
import numpy as np


def synthetic_iuv(height: int, width: int, *, seed: int, kind: str = "body", parts: int = 18) -> np.ndarray:
    """uint8 [H, W, 3] (I, U, V) with `parts` of the 24 parts present (a seeded choice)."""
    rng = np.random.default_rng(seed)
    iuv = np.zeros((height, width, 3), np.uint8)
    chosen = rng.choice(np.arange(1, 25), size=parts, replace=False)
    if kind == "scatter":
        hit = rng.random((height, width)) < 0.3
        iuv[hit, 0] = rng.choice(chosen, size=int(hit.sum()))
        iuv[hit, 1:] = rng.integers(0, 256, size=(int(hit.sum()), 2))
        return iuv
    if kind != "body":
        raise ValueError(f"synthetic_iuv: kind must be 'body' or 'scatter', got {kind!r}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    for part in chosen:
        blob = np.zeros((height, width), np.uint8)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = tuple(int(rng.integers(max(2, side // 12), max(3, side // 4))) for side in (width, height))
        cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        inside = blob.astype(bool)
        if not inside.any():
            continue
        # U and V: a random affine ramp over the blob, spanning a random sub-range of 0..255, plus noise.
        angle = rng.uniform(0, np.pi)
        along = (xx[inside] - centre[0]) * np.cos(angle) + (yy[inside] - centre[1]) * np.sin(angle)
        across = -(xx[inside] - centre[0]) * np.sin(angle) + (yy[inside] - centre[1]) * np.cos(angle)
        for channel, ramp in ((1, along), (2, across)):
            low, high = np.sort(rng.uniform(0, 255, size=2))
            span = np.ptp(ramp) or 1.0
            value = low + (ramp - ramp.min()) / span * (high - low) + rng.normal(0, 2, size=ramp.shape)
            iuv[inside, channel] = np.clip(value, 0, 255).astype(np.uint8)
        iuv[inside, 0] = part
    return iuv


def synthetic_image(height: int, width: int, *, seed: int) -> np.ndarray:
    """uint8 [H, W, 3]: a smooth colour field with texture noise (never all black)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(6, 4, 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, 12, size=field.shape).astype(np.float32)
    return np.clip(field, 0, 255).astype(np.uint8)
