"""Image + DensePose IUV -> 24-part atlas -> SMPL UV texture (the MCLD reference, vectorised)."""

from preprocess.texture.core import TextureMapper, map_texture, read_part_masks

__all__ = ["TextureMapper", "map_texture", "read_part_masks"]
