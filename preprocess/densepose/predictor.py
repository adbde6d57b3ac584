"""Batched DensePose inference, computing per image what detectron2's DefaultPredictor computes.

Per image, as DefaultPredictor: channels in INPUT.FORMAT order, PIL bilinear resize of the shortest edge
to MIN_SIZE_TEST with the longest capped at MAX_SIZE_TEST, float32; the model normalises with the pixel
mean/std and zero-pads to a multiple of 32; boxes come back scaled to the image, clipped, and empty boxes
dropped (detector_postprocess). Batching never changes a result: images are batched only with images of
the same padded size, since padding a smaller image to a larger one's size changes its border features
and adds anchors.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from preprocess.densepose.charts import Chart, extract_chart, int_box, paste_iuv
from preprocess.densepose.config import RCNNConfig, load_config
from preprocess.densepose.model import DensePoseRCNN
from preprocess.densepose.model.boxes import box_area, clip_boxes, nonempty
from preprocess.densepose.weights import LoadReport, load_state_strict, read_weights

PERSON_POLICIES = ("top_score", "largest_box")
PersonPolicy = Literal["top_score", "largest_box"]


@dataclass(frozen=True)
class DensePoseResult:
    """One image's detections (best score first) in the image's own pixels, and charts.

    ``charts`` maps a detection's index to its chart: every detection, or only the chosen person's
    (``predict(..., charts="person")``). ``person`` is the chosen detection (None: nothing detected) and
    ``iuv`` its whole-image H x W x 3 uint8 (I, U, V) as DESIGN.md lays it out.
    """

    height: int
    width: int
    boxes_xyxy: np.ndarray  # float32 [N, 4]
    scores: np.ndarray  # float32 [N]
    charts: dict[int, Chart]
    person: int | None
    iuv: np.ndarray | None

    @property
    def count(self) -> int:
        return len(self.scores)

    @property
    def boxes_xywh(self) -> np.ndarray:
        """x, y, width, height: the boxes as DensePose's result extractor reports them."""
        boxes = self.boxes_xyxy.copy()
        boxes[:, 2] -= boxes[:, 0]
        boxes[:, 3] -= boxes[:, 1]
        return boxes


def resized_shape(height: int, width: int, *, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape: shortest side to min_size, longest capped."""
    if min_size == 0:
        return height, width
    size = min_size * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def choose_person(boxes_xyxy: torch.Tensor, policy: str) -> int | None:
    """Index of the person among detections sorted by score: the first, or the largest box (first on ties)."""
    if len(boxes_xyxy) == 0:
        return None
    if policy == "top_score":
        return 0
    areas = box_area(boxes_xyxy.double())
    return int(torch.nonzero(areas == areas.max())[0, 0])


class DensePosePredictor:
    """Loads a DensePose R-CNN from a detectron2 config and model-zoo weights; ``predict`` runs it."""

    def __init__(self, *, config_path: str | os.PathLike, weights_path: str | os.PathLike, device: str = "cpu",
                 dtype: str = "float32", person_policy: PersonPolicy = "top_score", max_batch: int = 4) -> None:
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"densepose: dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        if person_policy not in PERSON_POLICIES:
            raise ValueError(f"densepose: person_policy must be one of {PERSON_POLICIES}, got {person_policy!r}")
        if max_batch < 1:
            raise ValueError(f"densepose: max_batch must be at least 1, got {max_batch}")
        self.config: RCNNConfig = load_config(config_path)
        model = DensePoseRCNN(self.config)
        self.load_report: LoadReport = load_state_strict(model, read_weights(weights_path), source=weights_path)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.dtype = dtype
        self.person_policy = person_policy
        self.max_batch = max_batch

    # ------------------------------------------------------------------------------------------------
    def input_tensor(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 H x W x 3 -> the network's CHW float32 input (channel order, resize) on the CPU."""
        if self.config.input_format == "BGR":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        new_h, new_w = resized_shape(height, width, min_size=self.config.min_size_test,
                                     max_size=self.config.max_size_test)
        if self.config.min_size_test != 0:
            image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR))
        return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))

    def padded_size(self, tensor: torch.Tensor) -> tuple[int, int]:
        div = self.config.size_divisibility
        return (-(-tensor.shape[-2] // div) * div, -(-tensor.shape[-1] // div) * div)

    def predict(self, images: list[np.ndarray], *, charts: Literal["all", "person"] = "all") -> list[DensePoseResult]:
        """RGB uint8 H x W x 3 images -> one result each, in order."""
        if charts not in ("all", "person"):
            raise ValueError(f"charts must be 'all' or 'person', got {charts!r}")
        for i, image in enumerate(images):
            array = np.asarray(image)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) == 0:
                raise ValueError(f"densepose: image {i} is {array.dtype} {array.shape}; expected H x W x 3 uint8 RGB "
                                 "with at least one pixel")
        tensors = [self.input_tensor(np.asarray(image)) for image in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, tensor in enumerate(tensors):
            groups.setdefault(self.padded_size(tensor), []).append(i)
        results: list[DensePoseResult | None] = [None] * len(images)
        for members in groups.values():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start : start + self.max_batch]
                outputs = self._run([tensors[i] for i in chunk], [images[i].shape[:2] for i in chunk], charts)
                for i, result in zip(chunk, outputs):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _autocast(self):
        if self.dtype == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    def _run(self, tensors: list[torch.Tensor], original_sizes: list[tuple[int, int]],
             charts: str) -> list[DensePoseResult]:
        with self._autocast():
            x, sizes = self.model.batch(tensors)
            features, detections = self.model.detect(x, sizes)
        chosen: list[list[int]] = []  # per image: indices (into the kept detections) that need a chart
        kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]] = []
        for det, (in_h, in_w), (height, width) in zip(detections, sizes, original_sizes):
            # detector_postprocess: scale to the image, clip, drop empty boxes.
            boxes = det.boxes.float().clone()
            boxes[:, 0::2] *= width / in_w
            boxes[:, 1::2] *= height / in_h
            boxes = clip_boxes(boxes, height, width)
            keep = nonempty(boxes)
            boxes, scores, input_boxes = boxes[keep], det.scores[keep].float(), det.boxes[keep]
            person = choose_person(boxes, self.person_policy)
            wanted = list(range(len(boxes))) if charts == "all" else ([] if person is None else [person])
            chosen.append(wanted)
            kept.append((boxes, scores, input_boxes, person))
        if any(chosen):
            with self._autocast():
                maps = self.model.charts(features, [k[2][wanted] for k, wanted in zip(kept, chosen)]).to_float()
        results = []
        offset = 0
        for (boxes, scores, _, person), wanted, (height, width) in zip(kept, chosen, original_sizes):
            xywh = boxes.clone()
            xywh[:, 2:] -= xywh[:, :2]
            image_charts = {}
            for k, index in enumerate(wanted):
                one = maps.select(slice(offset + k, offset + k + 1))
                image_charts[index] = extract_chart(one, int_box(xywh[index]))
            offset += len(wanted)
            iuv = paste_iuv(image_charts[person], height, width) if person is not None else None
            results.append(DensePoseResult(
                height=height, width=width, boxes_xyxy=boxes.cpu().numpy().astype(np.float32),
                scores=scores.cpu().numpy().astype(np.float32), charts=image_charts, person=person, iuv=iuv,
            ))
        return results
