"""DensePose's decoder, its two chart heads (V1ConvX, DeepLab with ASPP and optional non-local block),
and the chart predictor (coarse and fine segmentation, U, V, and the optional confidences)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from preprocess.densepose.config import DensePoseHeadSpec
from preprocess.densepose.model.backbone import Conv2d


class _ConvReLU(nn.Conv2d):
    """detectron2's Conv2d with its activation folded in: one module, so the Sequential indices (and
    with them the parameter names ``p4.0``, ``p4.2``) match detectron2's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class Decoder(nn.Module):
    """Panoptic-FPN style merge of the FPN levels into one map at the common stride.

    Per level: max(1, log2(stride / common)) 3x3 conv + ReLU, each followed by a bilinear 2x upsample
    when the level is coarser than the common stride; the levels are summed, then a 1x1 conv.
    """

    def __init__(self, spec: DensePoseHeadSpec, *, in_features: tuple[str, ...], strides: dict[str, int],
                 in_channels: int) -> None:
        super().__init__()
        self.in_features = in_features
        for name in in_features:
            ops: list[nn.Module] = []
            length = max(1, int(math.log2(strides[name]) - math.log2(spec.decoder_common_stride)))
            for k in range(length):
                ops.append(_ConvReLU(in_channels if k == 0 else spec.decoder_conv_dims, spec.decoder_conv_dims, 3,
                                     padding=1))
                if strides[name] != spec.decoder_common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*ops))
        self.predictor = nn.Conv2d(spec.decoder_conv_dims, spec.decoder_num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = None
        for name, feature in zip(self.in_features, features):
            y = getattr(self, name)(feature)
            x = y if x is None else x + y
        return self.predictor(x)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) through the ATen op directly. ``F.group_norm`` refuses an input with one value per
    group when there is one sample: ASPP's pooled branch is [N, C, 1, 1], so a 32-channel head (the toy
    and fixture widths; the official 256 has 8 values per group) on a single box. The result is defined
    (each value minus its own mean is 0: the output is the bias), and it is what detectron2 computes for
    each box when there are two or more; so we compute it for one too."""

    def __init__(self, num_channels: int) -> None:
        super().__init__(32, num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class DensePoseV1ConvXHead(nn.Module):
    def __init__(self, spec: DensePoseHeadSpec, in_channels: int) -> None:
        super().__init__()
        self.n_stacked_convs = spec.num_stacked_convs
        channels = in_channels
        for i in range(spec.num_stacked_convs):
            self.add_module(f"body_conv_fcn{i + 1}", nn.Conv2d(channels, spec.conv_head_dim, spec.conv_head_kernel,
                                                                padding=spec.conv_head_kernel // 2))
            channels = spec.conv_head_dim
        self.n_out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_stacked_convs):
            x = F.relu(getattr(self, f"body_conv_fcn{i + 1}")(x))
        return x


class ASPP(nn.Module):
    """DeepLabV3's atrous spatial pyramid pooling with GroupNorm(32): 1x1, three dilated 3x3, image pooling."""

    def __init__(self, in_channels: int, rates: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), GroupNorm32(out_channels),
                          nn.ReLU())
        ]
        for rate in rates:
            branches.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
                GroupNorm32(out_channels), nn.ReLU(),
            ))
        branches.append(nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
            GroupNorm32(out_channels), nn.ReLU(),
        ))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(5 * out_channels, out_channels, 1, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outputs = [conv(x) for conv in self.convs[:-1]]
        pooled = self.convs[-1](x)
        outputs.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        return self.project(torch.cat(outputs, dim=1))


class NonLocalBlock2D(nn.Module):
    """Embedded-Gaussian non-local block with 2x2 max-pooled keys/values and a GroupNorm'd residual."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        inter = max(in_channels // 2, 1)
        self.inter_channels = inter
        self.g = nn.Sequential(nn.Conv2d(in_channels, inter, 1), nn.MaxPool2d(kernel_size=(2, 2)))
        self.W = nn.Sequential(nn.Conv2d(inter, in_channels, 1), GroupNorm32(in_channels))
        self.theta = nn.Conv2d(in_channels, inter, 1)
        self.phi = nn.Sequential(nn.Conv2d(in_channels, inter, 1), nn.MaxPool2d(kernel_size=(2, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g_x = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(n, self.inter_channels, -1)
        attention = F.softmax(torch.matmul(theta_x, phi_x), dim=-1)
        y = torch.matmul(attention, g_x).permute(0, 2, 1).contiguous()
        y = y.view(n, self.inter_channels, *x.shape[2:])
        return self.W(y) + x


class DensePoseDeepLabHead(nn.Module):
    ATROUS_RATES = (6, 12, 56)

    def __init__(self, spec: DensePoseHeadSpec, in_channels: int) -> None:
        super().__init__()
        self.n_stacked_convs = spec.num_stacked_convs
        self.ASPP = ASPP(in_channels, self.ATROUS_RATES, in_channels)
        self.NLBlock = NonLocalBlock2D(in_channels) if spec.deeplab_nonlocal else None
        channels = in_channels
        gn = spec.deeplab_norm == "GN"
        for i in range(spec.num_stacked_convs):
            self.add_module(f"body_conv_fcn{i + 1}", Conv2d(
                channels, spec.conv_head_dim, spec.conv_head_kernel, padding=spec.conv_head_kernel // 2,
                bias=not gn, norm=GroupNorm32(spec.conv_head_dim) if gn else None,
            ))
            channels = spec.conv_head_dim
        self.n_out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ASPP(x)
        if self.NLBlock is not None:
            x = self.NLBlock(x)
        for i in range(self.n_stacked_convs):
            x = F.relu(getattr(self, f"body_conv_fcn{i + 1}")(x))
        return x


@dataclass
class ChartOutput:
    """The chart predictor's raw maps for N boxes, each [N, C, S, S] (None: not predicted by this model)."""

    coarse_segm: torch.Tensor
    fine_segm: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    sigma_2: torch.Tensor | None = None
    kappa_u: torch.Tensor | None = None
    kappa_v: torch.Tensor | None = None
    fine_segm_confidence: torch.Tensor | None = None
    coarse_segm_confidence: torch.Tensor | None = None

    def select(self, index: torch.Tensor | slice) -> "ChartOutput":
        return ChartOutput(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                              for f in fields(self)})

    def to_float(self) -> "ChartOutput":
        return ChartOutput(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).float())
                              for f in fields(self)})

    def __len__(self) -> int:
        return len(self.coarse_segm)


class DensePoseChartPredictor(nn.Module):
    """Stride-2 transposed convs to coarse/fine segmentation, U and V (and confidences), then bilinear
    upscaling by UP_SCALE; segmentation confidences rescale the segmentation scores, as DensePose's does."""

    def __init__(self, spec: DensePoseHeadSpec, in_channels: int) -> None:
        super().__init__()
        self.scale_factor = spec.up_scale
        patches = spec.num_patches + 1
        k = spec.deconv_kernel

        def deconv(cout: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(in_channels, cout, k, stride=2, padding=int(k / 2 - 1))

        self.ann_index_lowres = deconv(spec.num_coarse_segm_channels)
        self.index_uv_lowres = deconv(patches)
        self.u_lowres = deconv(patches)
        self.v_lowres = deconv(patches)
        self.uv_confidence = spec.uv_confidence
        self.segm_confidence = spec.segm_confidence
        self.segm_epsilon = spec.segm_confidence_epsilon
        if spec.uv_confidence is not None:
            self.sigma_2_lowres = deconv(patches)
        if spec.uv_confidence == "indep_aniso":
            self.kappa_u_lowres = deconv(patches)
            self.kappa_v_lowres = deconv(patches)
        if spec.segm_confidence:
            self.fine_segm_confidence_lowres = deconv(1)
            self.coarse_segm_confidence_lowres = deconv(1)

    def interp2d(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> ChartOutput:
        out = ChartOutput(
            coarse_segm=self.interp2d(self.ann_index_lowres(x)),
            fine_segm=self.interp2d(self.index_uv_lowres(x)),
            u=self.interp2d(self.u_lowres(x)),
            v=self.interp2d(self.v_lowres(x)),
        )
        if self.uv_confidence is not None:
            out.sigma_2 = self.interp2d(self.sigma_2_lowres(x))
        if self.uv_confidence == "indep_aniso":
            out.kappa_u = self.interp2d(self.kappa_u_lowres(x))
            out.kappa_v = self.interp2d(self.kappa_v_lowres(x))
        if self.segm_confidence:
            out.fine_segm_confidence = (
                F.softplus(self.interp2d(self.fine_segm_confidence_lowres(x))) + self.segm_epsilon
            )
            out.fine_segm = out.fine_segm * torch.repeat_interleave(
                out.fine_segm_confidence, out.fine_segm.shape[1], dim=1
            )
            out.coarse_segm_confidence = (
                F.softplus(self.interp2d(self.coarse_segm_confidence_lowres(x))) + self.segm_epsilon
            )
            out.coarse_segm = out.coarse_segm * torch.repeat_interleave(
                out.coarse_segm_confidence, out.coarse_segm.shape[1], dim=1
            )
        return out
