"""Region proposal network: anchors on every FPN level, objectness and deltas, per-level top-k, NMS."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from preprocess.densepose.config import RPNSpec
from preprocess.densepose.model.boxes import apply_deltas, clip_boxes, nonempty


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """xyxy anchors centred at (0, 0): for each size, for each aspect ratio (height / width)."""
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors).float()


def grid_anchors(cells: torch.Tensor, grid: tuple[int, int], stride: int, offset: float) -> torch.Tensor:
    """Cell anchors shifted to every location of a (height, width) grid, row-major, then per cell anchor."""
    height, width = grid
    device = cells.device
    shifts_x = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)


class StandardRPNHead(nn.Module):
    def __init__(self, in_channels: int, num_anchors: int, conv_dim: int) -> None:
        super().__init__()
        hidden = in_channels if conv_dim == -1 else conv_dim
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, num_anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    def __init__(self, spec: RPNSpec, *, in_channels: int, strides: dict[str, int]) -> None:
        super().__init__()
        self.spec = spec
        self.strides = [strides[name] for name in spec.in_features]
        self.cells = [cell_anchors(s, r) for s, r in zip(spec.anchor_sizes, spec.anchor_aspect_ratios)]
        self.rpn_head = StandardRPNHead(in_channels, len(self.cells[0]), spec.conv_dim)

    def forward(self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Proposals (xyxy, in the resized image's pixels) per image, best objectness first."""
        maps = [features[name] for name in self.spec.in_features]
        logits, deltas = self.rpn_head(maps)
        n = maps[0].shape[0]
        level_logits, level_boxes = [], []
        for feature, cells, stride, logit, delta in zip(maps, self.cells, self.strides, logits, deltas):
            anchors = grid_anchors(cells.to(feature.device), tuple(feature.shape[-2:]), stride, self.spec.anchor_offset)
            # (N, A, H, W) -> (N, H*W*A), and (N, A*4, H, W) -> (N, H*W*A, 4): the anchors' order.
            level_logits.append(logit.permute(0, 2, 3, 1).flatten(1))
            delta = delta.view(n, -1, 4, delta.shape[-2], delta.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
            boxes = apply_deltas(delta.reshape(-1, 4), anchors.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4),
                                 self.spec.bbox_reg_weights)
            level_boxes.append(boxes.view(n, -1, 4))
        return self._top_proposals(level_boxes, level_logits, image_sizes)

    def _top_proposals(self, boxes: list[torch.Tensor], logits: list[torch.Tensor],
                       image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Per level the pre-NMS top k, then per image: drop non-finite, clip, drop empty, NMS per level."""
        n = len(image_sizes)
        batch = torch.arange(n, device=boxes[0].device)
        top_scores, top_boxes, level_ids = [], [], []
        for level, (boxes_i, logits_i) in enumerate(zip(boxes, logits)):
            k = min(logits_i.shape[1], self.spec.pre_nms_topk)
            scores_i, index = logits_i.topk(k, dim=1)
            top_scores.append(scores_i)
            top_boxes.append(boxes_i[batch[:, None], index])
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=boxes_i.device))
        scores_all = torch.cat(top_scores, dim=1).float()
        boxes_all = torch.cat(top_boxes, dim=1)
        levels_all = torch.cat(level_ids, dim=0)
        proposals = []
        for i, (height, width) in enumerate(image_sizes):
            b, s, lvl = boxes_all[i], scores_all[i], levels_all
            valid = torch.isfinite(b).all(dim=1) & torch.isfinite(s)
            if not bool(valid.all()):
                b, s, lvl = b[valid], s[valid], lvl[valid]
            b = clip_boxes(b, height, width)
            keep = nonempty(b, self.spec.min_size)
            if not bool(keep.all()):
                b, s, lvl = b[keep], s[keep], lvl[keep]
            keep = batched_nms(b.float(), s, lvl, self.spec.nms_thresh)[: self.spec.post_nms_topk]
            proposals.append(b[keep])
        return proposals
