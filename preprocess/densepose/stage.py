"""The DensePose stage: decoded RGB images -> the chosen person's whole-image IUV, box, score, count.

Only the chosen person's chart is computed (the DensePose branch runs on that one box), which gives the
same IUV as computing every detection's chart and keeping one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.common import SampleError, as_rgb_uint8, batch_len, mark_failed, object_column, ok_indices
from preprocess.common.device import check_device_dtype
from preprocess.densepose.predictor import PERSON_POLICIES, DensePosePredictor

STAGE = "densepose"


@dataclass(frozen=True, kw_only=True)
class DensePoseConfig:
    config_path: Path  # detectron2/DensePose yaml (its _BASE_ chain is read too)
    weights_path: Path  # model-zoo .pkl (or .pth)
    device: str = "cpu"
    dtype: str = "float32"  # "bfloat16": autocast, CUDA only
    person_policy: str = "top_score"  # or "largest_box"
    max_batch: int = 4  # images per forward pass (only images of the same padded size share one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_path", Path(self.config_path))
        object.__setattr__(self, "weights_path", Path(self.weights_path))
        check_device_dtype(device=self.device, dtype=self.dtype, what="densepose")
        if self.person_policy not in PERSON_POLICIES:
            raise ValueError(f"densepose: person_policy must be one of {PERSON_POLICIES}, got {self.person_policy!r}")
        if self.max_batch < 1:
            raise ValueError(f"densepose: max_batch must be at least 1, got {self.max_batch}")


class DensePoseStage:
    """image -> iuv (H0 x W0 x 3 uint8 (I, U, V)), person_box float32[4] xyxy, person_score, person_count."""

    def __init__(self, *, config: DensePoseConfig) -> None:
        self.config = config
        self.predictor = DensePosePredictor(
            config_path=config.config_path, weights_path=config.weights_path, device=config.device,
            dtype=config.dtype, person_policy=config.person_policy, max_batch=config.max_batch,
        )


    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        n = batch_len(batch)
        iuv: list[np.ndarray] = [np.zeros((0, 0, 3), np.uint8)] * n
        boxes = np.zeros((n, 4), np.float32)
        scores = np.zeros(n, np.float32)
        counts = np.zeros(n, np.int32)
        rows, images = [], []
        for i in ok_indices(batch):
            try:
                images.append(as_rgb_uint8(batch["image"][i], what=f"image of {batch['image_id'][i]}"))
                rows.append(i)
            except SampleError as error:
                mark_failed(batch, i, stage=STAGE, error=error)
        results = self.predictor.predict(images, charts="person") if images else []
        for i, image, result in zip(rows, images, results):
            counts[i] = result.count
            if result.person is None:
                threshold = self.predictor.config.box_head.score_thresh
                mark_failed(batch, i, stage=STAGE, error=SampleError(
                    "no_person", f"DensePose found no person scoring above {threshold:g} in the "
                                 f"{image.shape[1]}x{image.shape[0]} image",
                ))
                continue
            iuv[i] = result.iuv
            boxes[i] = result.boxes_xyxy[result.person]
            scores[i] = result.scores[result.person]
        batch["iuv"] = object_column(iuv)
        batch["person_box"] = boxes
        batch["person_score"] = scores
        batch["person_count"] = counts
        return batch
