"""The embedded demo: real photos of people that ship inside installed packages, plus pairs.

- scikit-image's ``astronaut.png`` (Eileen Collins, NASA: public domain) and ``camera.png`` (CC0, by Lav
  Varshney), both listed with their licences in scikit-image's data documentation;
- insightface's sample ``t1.jpg`` (a group photo shipped with the insightface package, MIT-licensed code).

Mirrored and cropped views of the same photos stand in for "another photo of the same person", so the
demo has (source, target) pairs as DeepFashion does. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the demo needs the installed package {package!r}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the installed package {package!r}")
    return path


def demo_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 photo, all derived from the packaged originals."""
    astronaut = np.asarray(Image.open(_package_file("skimage", "data", "astronaut.png")).convert("RGB"))
    camera = np.asarray(Image.open(_package_file("skimage", "data", "camera.png")).convert("RGB"))
    group = np.asarray(Image.open(_package_file("insightface", "data", "images", "t1.jpg")).convert("RGB"))
    h, w = group.shape[:2]
    return {
        "astronaut/front.png": astronaut,
        "astronaut/mirrored.png": np.ascontiguousarray(astronaut[:, ::-1]),
        "astronaut/portrait crop.png": astronaut[0:400, 40:360],
        "cameraman/front.png": camera,
        "cameraman/mirrored.png": np.ascontiguousarray(camera[:, ::-1]),
        "group/t1.jpg": group,
        "group/left half.jpg": group[:, : w // 2],
        "group/right half.jpg": group[:, w // 2:],
    }


DEMO_PAIRS = [
    ("astronaut/front.png", "astronaut/mirrored.png"),
    ("astronaut/mirrored.png", "astronaut/front.png"),
    ("astronaut/portrait crop.png", "astronaut/front.png"),
    ("astronaut/front.png", "astronaut/portrait crop.png"),
    ("cameraman/front.png", "cameraman/mirrored.png"),
    ("cameraman/mirrored.png", "cameraman/front.png"),
    ("group/t1.jpg", "group/left half.jpg"),
    ("group/left half.jpg", "group/right half.jpg"),
    ("group/right half.jpg", "group/t1.jpg"),
    ("astronaut/front.png", "cameraman/front.png"),
]


def write_demo_inputs(root: Path) -> tuple[Path, Path]:
    """Write the demo photos under root/images and root/pairs.csv; return (images dir, pairs CSV)."""
    images = root / "images"
    for name, photo in demo_photos().items():
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jpg":
            Image.fromarray(photo).save(path, quality=95)
        else:
            Image.fromarray(photo).save(path)
    pairs = root / "pairs.csv"
    with pairs.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["from", "to"])
        writer.writerows(DEMO_PAIRS)
    return images, pairs
