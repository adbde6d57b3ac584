"""A colour picture of a DensePose result: the chosen person's parts blended over the image, every box outlined."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from preprocess.densepose.predictor import DensePoseResult


def part_colours() -> np.ndarray:
    """25 RGB colours: black for the background, then 24 hues spread around the wheel (neighbours apart)."""
    colours = np.zeros((25, 3), np.uint8)
    for part in range(1, 25):
        hue = ((part - 1) * 7 % 24) / 24.0
        colours[part] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.85, 1.0)) * 255)
    return colours


def render(image: np.ndarray, result: DensePoseResult, *, alpha: float = 0.6) -> Image.Image:
    """RGB image with the person's part colours (alpha-blended where I > 0) and all detection boxes."""
    canvas = np.asarray(image, np.float32).copy()
    if result.iuv is not None:
        parts = result.iuv[:, :, 0]
        body = parts > 0
        canvas[body] = (1 - alpha) * canvas[body] + alpha * part_colours()[parts[body]]
    picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for i, (x1, y1, x2, y2) in enumerate(result.boxes_xyxy.tolist()):
        chosen = i == result.person
        draw.rectangle((x1, y1, x2, y2), outline=(255, 255, 0) if chosen else (0, 200, 255), width=3 if chosen else 1)
    return picture
