"""From the chart predictor's maps to per-box results, exactly as DensePose's DensePoseResultExtractor
(ToChartResultConverterWithConfidences) does it, and the whole-image IUV MCLD pastes from one box."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from preprocess.densepose.model.densepose_heads import ChartOutput

CONFIDENCE_NAMES = ("sigma_2", "kappa_u", "kappa_v", "fine_segm_confidence", "coarse_segm_confidence")


@dataclass(frozen=True)
class Chart:
    """One detection's chart in its box's frame: ``labels`` 0..24 and ``uv`` [2, h, w] as DensePose returns.

    ``box_xywh`` is the integer box DensePose resamples to (``long()`` of x, y, w, h); the arrays are
    max(h, 1) x max(w, 1). ``confidences`` holds the model's confidence maps, if it predicts any.
    """

    box_xywh: tuple[int, int, int, int]
    labels: np.ndarray  # uint8 [h, w]
    uv: np.ndarray  # float32 [2, h, w]
    confidences: dict[str, np.ndarray] = field(default_factory=dict)  # float32 [h, w] each


def int_box(box_xywh: torch.Tensor) -> tuple[int, int, int, int]:
    x, y, w, h = box_xywh.long().tolist()
    return int(x), int(y), int(w), int(h)


def extract_chart(output: ChartOutput, box_xywh: tuple[int, int, int, int]) -> Chart:
    """``output`` holds one box ([1, C, S, S] maps, float32). Bilinear resampling to the box size, labels
    = argmax(fine) where argmax(coarse) > 0, U and V of each pixel's label (0 on background)."""
    _, _, w, h = box_xywh
    size = (max(int(h), 1), max(int(w), 1))

    def resample(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size, mode="bilinear", align_corners=False)

    coarse = resample(output.coarse_segm).argmax(dim=1)
    labels = (resample(output.fine_segm).argmax(dim=1) * (coarse > 0).long()).squeeze(0)  # [h, w] int64
    parts = output.u.shape[1]
    foreground = (labels > 0) & (labels < parts)
    index = labels.clamp(max=parts - 1)[None, None]

    def per_label(x: torch.Tensor) -> torch.Tensor:
        """The channel of each pixel's label; 0 where the label is background."""
        picked = torch.gather(resample(x), 1, index)[0, 0]
        return torch.where(foreground, picked, torch.zeros((), dtype=picked.dtype, device=picked.device))

    uv = torch.stack([per_label(output.u), per_label(output.v)]).float()
    confidences = {}
    for name in CONFIDENCE_NAMES:
        value = getattr(output, name)
        if value is None:
            continue
        if value.shape[1] == parts:
            confidences[name] = per_label(value).float().cpu().numpy()
        else:  # one channel: the same confidence for every label, background included
            confidences[name] = resample(value)[0, 0].float().cpu().numpy()
    return Chart(
        box_xywh=box_xywh,
        labels=labels.to(torch.uint8).cpu().numpy(),
        uv=uv.cpu().numpy(),
        confidences=confidences,
    )


def paste_iuv(chart: Chart, height: int, width: int) -> np.ndarray:
    """The whole-image IUV MCLD writes: (I, U*255, V*255) at the box's integer x, y, w, h, zeros elsewhere.

    U and V are clipped to [0, 1] before scaling (DESIGN.md: the reference's cast, made defined), then
    truncated to uint8.
    """
    iuv = np.zeros((height, width, 3), np.uint8)
    x, y, w, h = chart.box_xywh
    w, h = max(min(w, width - x), 0), max(min(h, height - y), 0)
    uv = np.clip(chart.uv[:, :h, :w], 0.0, 1.0) * np.float32(255.0)
    iuv[y : y + h, x : x + w, 0] = chart.labels[:h, :w]
    iuv[y : y + h, x : x + w, 1:] = uv.transpose(1, 2, 0).astype(np.uint8)
    return iuv
