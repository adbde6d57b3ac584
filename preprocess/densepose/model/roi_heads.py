"""ROI pooling over the FPN, the FastRCNN box head and its inference (score threshold, NMS, top k)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from preprocess.densepose.config import BoxHeadSpec
from preprocess.densepose.model.boxes import apply_deltas, box_area, clip_boxes


class ROIPooler(nn.Module):
    """torchvision's RoIAlign on the FPN level each box belongs to (FPN paper: 224 px boxes on level 4).

    ``aligned`` is detectron2's ROIAlignV2 (half-pixel shift); its ROIAlign is the legacy unaligned one.
    """

    def __init__(self, *, output_size: int, scales: tuple[float, ...], sampling_ratio: int, pooler_type: str,
                 canonical_box_size: int = 224, canonical_level: int = 4) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.scales = scales
        self.sampling_ratio = sampling_ratio
        self.aligned = pooler_type == "ROIAlignV2"
        self.min_level = int(round(-math.log2(scales[0])))
        self.max_level = int(round(-math.log2(scales[-1])))
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def level_of(self, boxes: torch.Tensor) -> torch.Tensor:
        """Index (from min_level) of the level each box is pooled from."""
        sizes = torch.sqrt(box_area(boxes))
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_box_size + 1e-8))
        return torch.clamp(levels, min=self.min_level, max=self.max_level).to(torch.int64) - self.min_level

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        """(M, C, S, S) features for the boxes of every image (xyxy in input pixels), in order.

        The boxes stay float32 whatever the features' dtype: bfloat16 keeps 8 significant bits, so a box
        edge near x = 1000 would move in 4-8 px steps before RoIAlign while the chart is pasted at the
        float32 box. RoIAlign then runs in float32 on the (upcast) level and its output takes the features'
        dtype (what torchvision's own autocast rule for roi_align does)."""
        all_boxes = torch.cat(boxes, dim=0).float()
        index = torch.repeat_interleave(
            torch.arange(len(boxes), dtype=all_boxes.dtype, device=all_boxes.device),
            torch.tensor([len(b) for b in boxes], device=all_boxes.device),
        )
        rois = torch.cat([index[:, None], all_boxes], dim=1)
        channels = features[0].shape[1]
        if len(features) == 1:
            return roi_align(features[0].float(), rois, self.output_size, self.scales[0],
                             self.sampling_ratio, self.aligned).to(features[0].dtype)
        levels = self.level_of(all_boxes)
        output = torch.zeros((len(rois), channels, *self.output_size), dtype=features[0].dtype,
                             device=features[0].device)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            pooled = roi_align(feature.float(), rois[inds], self.output_size, scale,
                               self.sampling_ratio, self.aligned)
            output.index_put_((inds,), pooled.to(output.dtype))
        return output


class FastRCNNConvFCHead(nn.Sequential):
    """NUM_CONV 3x3 convs then NUM_FC fully connected layers, each followed by ReLU."""

    def __init__(self, spec: BoxHeadSpec, in_channels: int) -> None:
        super().__init__()
        channels, size = in_channels, spec.pooler_resolution
        for k in range(spec.num_conv):
            self.add_module(f"conv{k + 1}", nn.Conv2d(channels, spec.conv_dim, 3, padding=1))
            self.add_module(f"conv_relu{k + 1}", nn.ReLU())
            channels = spec.conv_dim
        features = channels * size * size
        for k in range(spec.num_fc):
            if k == 0:
                self.add_module("flatten", nn.Flatten())
            self.add_module(f"fc{k + 1}", nn.Linear(features, spec.fc_dim))
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            features = spec.fc_dim
        self.output_size = features


class FastRCNNOutputLayers(nn.Module):
    def __init__(self, spec: BoxHeadSpec, input_size: int) -> None:
        super().__init__()
        self.spec = spec
        self.cls_score = nn.Linear(input_size, spec.num_classes + 1)
        reg_classes = 1 if spec.cls_agnostic_bbox_reg else spec.num_classes
        self.bbox_pred = nn.Linear(input_size, reg_classes * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def fast_rcnn_inference(boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int],
                        spec: BoxHeadSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: (R, K*4) boxes, (R, K+1) probabilities -> kept boxes, scores and classes, best first."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(valid.all()):
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    reg_classes = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), *image_size).view(-1, reg_classes, 4)
    mask = scores > spec.score_thresh
    inds = mask.nonzero()
    boxes = boxes[inds[:, 0], 0] if reg_classes == 1 else boxes[mask]
    scores = scores[mask]
    keep = batched_nms(boxes.float(), scores, inds[:, 1], spec.nms_thresh)[: spec.detections_per_image]
    return boxes[keep], scores[keep], inds[keep, 1]


def box_predictions(predictor: FastRCNNOutputLayers, features: torch.Tensor, proposals: list[torch.Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The box branch's output per image: decode the class-specific deltas, softmax, then inference."""
    logits, deltas = predictor(features)
    boxes = apply_deltas(deltas, torch.cat(proposals, dim=0), predictor.spec.bbox_reg_weights)
    probs = F.softmax(logits.float(), dim=-1)
    counts = [len(p) for p in proposals]
    return [fast_rcnn_inference(b, s, size, predictor.spec)
            for b, s, size in zip(boxes.split(counts), probs.split(counts), image_sizes)]
