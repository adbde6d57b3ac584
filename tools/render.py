"""Pictures of shard fields for people: the IUV in colour, images side by side."""

from __future__ import annotations

import numpy as np


def part_palette() -> np.ndarray:
    """25 RGB colours: black background, then 24 well-separated hues for the DensePose parts."""
    import matplotlib

    colours = np.zeros((25, 3), np.uint8)
    cmap = matplotlib.colormaps["tab20"]
    extra = matplotlib.colormaps["Dark2"]
    for part in range(1, 25):
        rgba = cmap((part - 1) / 19) if part <= 20 else extra((part - 21) / 7)
        colours[part] = np.round(np.asarray(rgba[:3]) * 255).astype(np.uint8)
    return colours


def iuv_panels(iuv: np.ndarray) -> dict[str, np.ndarray]:
    """The (I, U, V) array as three RGB pictures: parts as a palette, U and V as gradients on the body."""
    parts = np.clip(iuv[..., 0], 0, 24).astype(np.intp)
    body = parts > 0
    palette = part_palette()
    pictures = {"I (part)": palette[parts]}
    for channel, name, colour in ((1, "U", (255, 80, 0)), (2, "V", (0, 120, 255))):
        ramp = iuv[..., channel].astype(np.float32)[..., None] / 255.0
        picture = (ramp * np.asarray(colour, np.float32) + (1 - ramp) * 40).astype(np.uint8)
        picture[~body] = 0
        pictures[name] = picture
    return pictures
