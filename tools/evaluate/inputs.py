"""Which pairs to score and where their images are: the sampler's GEN folder or the reference's layout.

GEN (train/sample.py): `GEN/{H}x{W}/{key}.png` + `index.parquet` (key, target_path); the ground truth is the
original image under --images, resized as the reference's dataset resizes it (torchvision Resize, bicubic,
antialias, on the PIL image). Reference layout: `GT/<res>/<name>.png` and `PRED/<res>/<name>.png`, pairs named
by the gt listing. FID's real side: `TRAIN/*.jpg` (case-sensitive, as the reference's glob).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


class EvaluationInputError(ValueError):
    """Bad evaluation input (missing folder, unreadable image, size mismatch); the message names the file."""


@dataclass(frozen=True)
class Resolution:
    """One evaluation size: `name` is the reference's folder name ("256", "512")."""
    name: str
    height: int
    width: int

    @property
    def gen_folder(self) -> str:
        return f"{self.height}x{self.width}"


RESOLUTIONS = {"256": Resolution("256", 256, 176), "512": Resolution("512", 512, 352)}


@dataclass(frozen=True)
class Pair:
    """One (generated, ground truth) pair. `gt_resize`: resize the gt file to the resolution on reading (GEN)."""
    name: str
    generated: Path
    ground_truth: Path
    gt_resize: bool


def read_rgb(path: Path, *, size: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB and the file's PIL mode. Grayscale/RGBA/palette files are converted to RGB (the
    reference crashes or broadcasts on them; alpha is dropped, not composited, as cv2.imread does).
    `size` = (height, width): torchvision's bicubic antialiased Resize on the PIL image, as the reference's
    dataset makes its gt_256 / gt_512 and its FID real side."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            image = image.convert("RGB") if mode != "RGB" else image
            if size is not None:
                from torchvision.transforms import InterpolationMode
                from torchvision.transforms.functional import resize

                image = resize(image, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
            array = np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as error:
        raise EvaluationInputError(f"{path}: cannot read image ({error})") from error
    return array, mode


def is_gen_folder(folder: Path) -> bool:
    return (folder / "index.parquet").is_file()


def gen_pairs(gen: Path, images_root: Path, resolution: Resolution) -> list[Pair]:
    """Pairs of a sampler output folder at one resolution, in key order."""
    import pyarrow.parquet as pq

    index_path = gen / "index.parquet"
    try:
        table = pq.read_table(index_path, columns=["key", "target_path"])
    except (OSError, KeyError, ValueError) as error:
        raise EvaluationInputError(f"{index_path}: cannot read the columns key, target_path ({error})") from error
    keys, targets = table.column("key").to_pylist(), table.column("target_path").to_pylist()
    if len(set(keys)) != len(keys):
        raise EvaluationInputError(f"{index_path}: duplicate keys")
    folder = gen / resolution.gen_folder
    pairs = [Pair(name=key, generated=folder / f"{key}.png", ground_truth=images_root / target, gt_resize=True)
             for key, target in sorted(zip(keys, targets))]
    missing_gt = [str(p.ground_truth) for p in pairs if not p.ground_truth.is_file()]
    if missing_gt:
        raise EvaluationInputError(f"{len(missing_gt)} ground-truth image(s) listed in {index_path} are not under "
                                   f"--images {images_root}: {', '.join(missing_gt[:5])}")
    return pairs


def reference_pairs(generated_root: Path, gt_root: Path, resolution: Resolution) -> list[Pair]:
    """Pairs of the reference's layout at one resolution: every file of gt/<res>/, sorted by name (the reference
    takes os.listdir's order; only float summation order differs). Extra generated files are ignored."""
    gt_folder = gt_root / resolution.name
    if not gt_folder.is_dir():
        raise EvaluationInputError(f"{gt_folder}: ground-truth folder not found")
    names = sorted(p.name for p in gt_folder.iterdir() if p.is_file())
    if not names:
        raise EvaluationInputError(f"{gt_folder}: no ground-truth images (the reference fails here too)")
    return [Pair(name=name, generated=generated_root / resolution.name / name, ground_truth=gt_folder / name,
                 gt_resize=False) for name in names]


def training_images(folder: Path) -> list[Path]:
    """FID's real side: `folder/*.jpg`, exactly the reference's case-sensitive glob, sorted. Other files are
    skipped as the reference skips them, but counted in the log."""
    if not folder.is_dir():
        raise EvaluationInputError(f"{folder}: training-images folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    chosen = [p for p in files if p.name.endswith(".jpg") and not p.name.startswith(".")]  # glob skips dotfiles
    ignored = len(files) - len(chosen)
    if ignored:
        log.warning("%s: %d file(s) not named *.jpg ignored for FID, as the reference's glob ignores them",
                    folder, ignored)
    if not chosen:
        raise EvaluationInputError(f"{folder}: no *.jpg training images for FID's real side")
    return chosen
