"""Texture stage: image + IUV -> the 512 x 512 SMPL UV texture the MCLD ReferenceNet sees.

A CPU stage (OpenCV inpainting dominates); the setup (part masks, gather index) is built once in
__init__, so Ray pays it once per worker. The mapping is channel-order agnostic, so the RGB image gives
the RGB texture directly (the reference works in BGR and writes BGR files: the same bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.common import SampleError, as_rgb_uint8, batch_len, mark_failed, ok_indices
from preprocess.texture.core import TextureMapper, read_part_masks
from preprocess.texture.uvdata import check_sizes

STAGE = "texture"


@dataclass(frozen=True, kw_only=True)
class TextureConfig:
    atlas_size: int = 200  # texels per part tile (the reference's `solution`)
    normal_size: int = 512  # side of the SMPL UV texture
    # None: part masks derived from DensePose's chart (UV_Processed.mat). A path: a 6 x 4 tiled mask image,
    # e.g. MCLD's preprocess_data/texture_bg_200.png, for bit-exact parity with the reference.
    part_masks: Path | None = None

    def __post_init__(self) -> None:
        if self.part_masks is not None:
            object.__setattr__(self, "part_masks", Path(self.part_masks))
        check_sizes(self.atlas_size, self.normal_size)


class TextureStage:
    """image, iuv -> texture: uint8 [N, normal_size, normal_size, 3] RGB; zeros for failed rows."""

    def __init__(self, *, config: TextureConfig) -> None:
        self.config = config
        masks = None
        if config.part_masks is not None:
            masks = read_part_masks(config.part_masks, atlas_size=config.atlas_size)
        self.mapper = TextureMapper(atlas_size=config.atlas_size, normal_size=config.normal_size, part_masks=masks)


    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        for column in ("image", "iuv"):
            if column not in batch:
                raise ValueError(f"{STAGE} stage needs column {column!r}; the batch has {sorted(batch)}")
        size = self.config.normal_size
        textures = np.zeros((batch_len(batch), size, size, 3), np.uint8)
        for i in ok_indices(batch):
            try:
                image = as_rgb_uint8(batch["image"][i], what="image")
                textures[i], _ = self.mapper(image, np.asarray(batch["iuv"][i]))
            except SampleError as error:
                mark_failed(batch, i, stage=STAGE, error=error)
        batch["texture"] = textures
        return batch
