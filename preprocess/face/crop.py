"""Box geometry of the face stage: the 1.5x square around a face, zero-padded crops, the person's head region.

The MCLD reference's ``expand_image_region`` truncates each corner to int separately, so its "square" can be
one pixel off in either side and shifts toward zero for negative corners; here the side is one integer and the
corner is floored, so the crop is always square and centred on the box to within a pixel.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def expand_square(box: np.ndarray, *, scale: float) -> tuple[int, int, int]:
    """(x0, y0, side): the square of side ``scale`` x the box's longer side, centred on the box, in pixels."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(1, int(round(scale * max(x2 - x1, y2 - y1))))
    x0 = math.floor((x1 + x2) / 2 - side / 2)
    y0 = math.floor((y1 + y2) / 2 - side / 2)
    return x0, y0, side


def crop_square(image: np.ndarray, *, x0: int, y0: int, side: int) -> np.ndarray:
    """The side x side window at (x0, y0); where it leaves the image it is zeros (the reference's padding)."""
    height, width = image.shape[:2]
    out = np.zeros((side, side, image.shape[2]), dtype=image.dtype)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(width, x0 + side), min(height, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """To size x size: bicubic when enlarging (the reference's choice), area averaging when shrinking (no aliasing)."""
    if image.shape[0] == size:
        return image.copy()
    interpolation = cv2.INTER_CUBIC if size > image.shape[0] else cv2.INTER_AREA
    return cv2.resize(image, (size, size), interpolation=interpolation)


def clip_box(box: np.ndarray, *, height: int, width: int) -> np.ndarray | None:
    """The box clipped to the image, or None when nothing of it is inside (or it is not finite)."""
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,) or not np.isfinite(box).all():
        return None
    clipped = np.clip(box, 0, [width, height, width, height])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None
    return clipped


def head_region(person_box: np.ndarray, *, upper_fraction: float) -> tuple[int, int, int]:
    """(x0, y0, side): a square over the upper part of a person box, where a standing person's head is.

    Its side is the larger of the box width and ``upper_fraction`` of its height, centred horizontally on the
    box; its top sits a twentieth of the side above the box (DensePose boxes can clip the top of the hair).
    """
    x1, y1, x2, y2 = (float(v) for v in person_box)
    side = max(1, int(round(max(x2 - x1, upper_fraction * (y2 - y1)))))
    x0 = math.floor((x1 + x2) / 2 - side / 2)
    y0 = math.floor(y1 - side / 20)
    return x0, y0, side


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` [4] against boxes ``b`` [k, 4] (xyxy, continuous coordinates)."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
