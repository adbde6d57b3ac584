"""Helpers for the feature-mode tests (issue 11): models files that select the modes, part-mask images."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import yaml

from preprocess.texture import uvdata

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
TEXTURE_FIXTURES = Path(os.environ.get("MCLD_TEXTURE_FIXTURES") or SHARED / "fixtures" / "texture")


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


MODES_PAIRS = [  # a few demo photos (preprocess/demo.py), and two bad inputs
    ("astronaut/front.png", "astronaut/portrait crop.png"),
    ("astronaut/portrait crop.png", "cameraman/front.png"),
    ("cameraman/front.png", "group/left half.jpg"),
    ("group/left half.jpg", "astronaut/front.png"),
    ("bad/broken.jpg", "astronaut/front.png"),
    ("bad/black.png", "astronaut/front.png"),
]


def run_feature_modes_job(folder: Path) -> tuple[Path, Path, Path]:
    """Write the inputs and a `tiny: true` models file with both reference modes, run build_shards."""
    from PIL import Image

    from preprocess.build_shards import main
    from preprocess.demo import demo_photos

    root = folder / "images"
    photos = demo_photos()
    for path in {p for pair in MODES_PAIRS for p in pair if not p.startswith("bad/")}:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photos[path]).save(root / path)
    (root / "bad").mkdir()
    (root / "bad" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    Image.fromarray(np.zeros((320, 240, 3), np.uint8)).save(root / "bad" / "black.png")
    pairs = folder / "pairs.csv"
    pairs.write_text("from,to\n" + "".join(f"{a},{b}\n" for a, b in MODES_PAIRS))
    masks = derived_part_masks_png(folder / "texture_bg_200.png")
    models = write_tiny_models_file(folder / "models.yaml", face_mode="reference", part_masks=masks)
    out = folder / "out"
    code = main(["--images", str(root), "--pairs", str(pairs), "--out", str(out), "--models", str(models),
                 "--no-progress", "--resolution", "256x176", "--max-errors", "0.5", "--device", "cpu"])
    assert code == 0, "the feature-modes job failed (see its stderr)"
    return out, root, masks
