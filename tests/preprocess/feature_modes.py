"""Helpers for the feature-mode tests (issue 11): models files that select the modes, part-mask images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from preprocess.texture import uvdata

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
TEXTURE_FIXTURES = SHARED / "fixtures" / "texture"


def write_part_masks_png(path: Path, masks: np.ndarray) -> Path:
    """bool [24, S, S] -> the 6 x 4 tiled mask image the reference reads (255 = valid)."""
    size = masks.shape[1]
    picture = np.zeros((uvdata.ATLAS_ROWS * size, uvdata.ATLAS_COLS * size), np.uint8)
    for part in range(1, masks.shape[0] + 1):
        row, col = uvdata.tile_origin(part, size)
        picture[row : row + size, col : col + size] = masks[part - 1] * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), picture)
    return path


def derived_part_masks_png(path: Path) -> Path:
    """The part masks we derive from DensePose's chart, written as a mask image (no ../shared needed)."""
    return write_part_masks_png(path, uvdata.part_masks(200))


def write_tiny_models_file(path: Path, *, face_mode: str | None = None, part_masks: Path | None = None) -> Path:
    """A models file `tiny: true` with the given feature modes."""
    data: dict = {"tiny": True}
    if face_mode is not None:
        data["face"] = {"mode": face_mode}
    if part_masks is not None:
        data["texture"] = {"part_masks": str(part_masks)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
