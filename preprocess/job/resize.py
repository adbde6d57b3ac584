"""Resize to the training resolution exactly as the MCLD reference feeds its trainer (DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from preprocess.common import batch_len, ok_indices
from preprocess.common.images import resize_to

STAGE = "resize"


@dataclass(frozen=True, kw_only=True)
class ResizeConfig:
    height: int = 512
    width: int = 512
    # "mcld": bicubic like every other image, as the reference resizes its IUV PNGs (blends part indices at
    # part borders; what released checkpoints saw). "nearest": part indices stay exact.
    pose_resize: Literal["mcld", "nearest"] = "mcld"

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"resolution {self.height}x{self.width} must be positive multiples of 8")
        if self.pose_resize not in ("mcld", "nearest"):
            raise ValueError(f"pose_resize must be 'mcld' or 'nearest', got {self.pose_resize!r}")


def resize_pose(iuv: np.ndarray, *, height: int, width: int, policy: str) -> np.ndarray:
    """The (I, U, V) array at height x width, per the pose_resize policy."""
    resample = Image.Resampling.BICUBIC if policy == "mcld" else Image.Resampling.NEAREST
    return resize_to(iuv, height, width, resample=resample)


class ResizeStage:
    """image, texture, iuv (decoded sizes) -> image_resized, texture_resized, pose_resized at the configured H x W."""

    def __init__(self, *, config: ResizeConfig) -> None:
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        h, w = self.config.height, self.config.width
        n = batch_len(batch)
        image_resized = np.zeros((n, h, w, 3), np.uint8)
        texture_resized = np.zeros((n, h, w, 3), np.uint8)
        pose_resized = np.zeros((n, h, w, 3), np.uint8)
        for i in ok_indices(batch):
            image_resized[i] = resize_to(batch["image"][i], h, w)
            texture_resized[i] = resize_to(batch["texture"][i], h, w)
            pose_resized[i] = resize_pose(batch["iuv"][i], height=h, width=w, policy=self.config.pose_resize)
        batch["image_resized"] = image_resized
        batch["texture_resized"] = texture_resized
        batch["pose_resized"] = pose_resized
        return batch
