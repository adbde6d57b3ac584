"""The DensePose R-CNN: FPN backbone, RPN, box head, and the DensePose branch, as detectron2's
GeneralizedRCNN with DensePoseROIHeads computes them at inference.

The two halves are separate methods so that the predictor can run the DensePose branch on the boxes it
needs (every detection, or only the chosen person): the branch is per box (RoIAlign, convs, per-sample
GroupNorm), so a box's chart does not depend on which other boxes are computed with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from preprocess.densepose.config import RCNNConfig
from preprocess.densepose.model.backbone import FPN
from preprocess.densepose.model.densepose_heads import (
    ChartOutput,
    DensePoseChartPredictor,
    DensePoseDeepLabHead,
    DensePoseV1ConvXHead,
    Decoder,
)
from preprocess.densepose.model.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, ROIPooler, box_predictions
from preprocess.densepose.model.rpn import RPN


@dataclass
class Detections:
    """One image's detections in the network input's pixels (resized, unpadded), best score first."""

    boxes: torch.Tensor  # [K, 4] xyxy, clipped to the input size
    scores: torch.Tensor  # [K]
    classes: torch.Tensor  # [K] int64 (0: person)


class DensePoseROIHeads(nn.Module):
    def __init__(self, config: RCNNConfig, *, strides: dict[str, int], channels: int) -> None:
        super().__init__()
        box = config.box_head
        self.in_features = box.in_features
        self.box_pooler = ROIPooler(
            output_size=box.pooler_resolution, scales=tuple(1.0 / strides[f] for f in box.in_features),
            sampling_ratio=box.pooler_sampling_ratio, pooler_type=box.pooler_type,
        )
        self.box_head = FastRCNNConvFCHead(box, channels)
        self.box_predictor = FastRCNNOutputLayers(box, self.box_head.output_size)

        dp = config.densepose
        if dp.decoder_on:
            self.decoder = Decoder(dp, in_features=box.in_features, strides=strides, in_channels=channels)
        else:
            self.decoder = None
        # With the decoder, one merged map pooled at the finest input's scale; without, the pyramid.
        features = box.in_features[:1] if dp.decoder_on else box.in_features
        self.densepose_pooler = ROIPooler(
            output_size=dp.pooler_resolution, scales=tuple(1.0 / strides[f] for f in features),
            sampling_ratio=dp.pooler_sampling_ratio, pooler_type=dp.pooler_type,
        )
        head_in = dp.decoder_num_classes if dp.decoder_on else channels
        head_class = DensePoseDeepLabHead if dp.name == "DensePoseDeepLabHead" else DensePoseV1ConvXHead
        self.densepose_head = head_class(dp, head_in)
        self.densepose_predictor = DensePoseChartPredictor(dp, self.densepose_head.n_out_channels)

    def boxes(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
              image_sizes: list[tuple[int, int]]) -> list[Detections]:
        maps = [features[f] for f in self.in_features]
        pooled = self.box_head(self.box_pooler(maps, proposals))
        return [Detections(boxes=b, scores=s, classes=c)
                for b, s, c in box_predictions(self.box_predictor, pooled, proposals, image_sizes)]

    def charts(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor]) -> ChartOutput:
        maps = [features[f] for f in self.in_features]
        if self.decoder is not None:
            maps = [self.decoder(maps)]
        pooled = self.densepose_pooler(maps, boxes)
        return self.densepose_predictor(self.densepose_head(pooled))


class DensePoseRCNN(nn.Module):
    """Parameter names as detectron2's: backbone.*, proposal_generator.rpn_head.*, roi_heads.*."""

    def __init__(self, config: RCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = FPN(config)
        strides = self.backbone.strides
        channels = config.fpn_out_channels
        self.proposal_generator = RPN(config.rpn, in_channels=channels, strides=strides)
        self.roi_heads = DensePoseROIHeads(config, strides=strides, channels=channels)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    def batch(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise CHW float images and zero-pad them into one batch whose sides divide by 32."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        div = self.config.size_divisibility
        height = -(-max(h for h, _ in sizes) // div) * div
        width = -(-max(w for _, w in sizes) // div) * div
        device = self.pixel_mean.device
        out = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=device)
        for i, image in enumerate(images):
            image = image.to(device)
            out[i, :, : image.shape[-2], : image.shape[-1]] = (image - self.pixel_mean) / self.pixel_std
        return out, sizes

    def detect(self, x: torch.Tensor,
               image_sizes: list[tuple[int, int]]) -> tuple[dict[str, torch.Tensor], list[Detections]]:
        features = self.backbone(x)
        proposals = self.proposal_generator(features, image_sizes)
        return features, self.roi_heads.boxes(features, proposals, image_sizes)

    def charts(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor]) -> ChartOutput:
        """The chart predictor's maps for the given boxes (input pixels) of every image, concatenated."""
        return self.roi_heads.charts(features, boxes)
