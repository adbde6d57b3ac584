"""ResNet (frozen batch norm, Caffe2-style stride in the 1x1 conv) and the FPN with a max-pooled top level.

Module and buffer names follow detectron2 (``stem.conv1.norm.running_var``, ``res4.22.conv2.weight``,
``fpn_lateral3.bias``), so a model-zoo state dict loads into it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from preprocess.densepose.config import RCNNConfig


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all buffers (detectron2 keeps them out of
    the optimiser). eval-mode ``F.batch_norm`` computes ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


class Conv2d(nn.Conv2d):
    """A conv with an optional ``norm`` submodule applied after it (detectron2's layers.Conv2d)."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.norm(x) if self.norm is not None else x


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1) -> Conv2d:
    return Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False,
                  norm=FrozenBatchNorm2d(cout))


class BasicStem(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (grouped) -> 1x1 with a projection shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, *, bottleneck: int, stride: int, groups: int, stride_in_1x1: bool) -> None:
        super().__init__()
        self.shortcut = _conv_bn(cin, cout, 1, stride=stride) if cin != cout else None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv_bn(cin, bottleneck, 1, stride=stride_1x1)
        self.conv2 = _conv_bn(bottleneck, bottleneck, 3, stride=stride_3x3, padding=1, groups=groups)
        self.conv3 = _conv_bn(bottleneck, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


class ResNet(nn.Module):
    """Stem and the stages up to the last requested output (detectron2 builds no more than that)."""

    def __init__(self, config: RCNNConfig) -> None:
        super().__init__()
        spec = config.resnet
        self.stem = BasicStem(3, spec.stem_out_channels)
        last = max(STAGE_NAMES.index(name) for name in spec.out_features)
        cin, cout = spec.stem_out_channels, spec.res2_out_channels
        bottleneck = spec.num_groups * spec.width_per_group
        self.stage_names = STAGE_NAMES[: last + 1]
        self.out_channels: dict[str, int] = {}
        for index, name in enumerate(self.stage_names):
            blocks = []
            for b in range(BLOCKS_PER_STAGE[spec.depth][index]):
                stride = 2 if (b == 0 and index > 0) else 1
                blocks.append(BottleneckBlock(cin if b == 0 else cout, cout, bottleneck=bottleneck, stride=stride,
                                              groups=spec.num_groups, stride_in_1x1=spec.stride_in_1x1))
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = cout
            cin, cout, bottleneck = cout, cout * 2, bottleneck * 2
        self.out_features = spec.out_features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs


class FPN(nn.Module):
    """Lateral 1x1 + nearest 2x top-down sum + 3x3 output per level, and p(last+1) = max_pool(k=1, s=2)."""

    def __init__(self, config: RCNNConfig) -> None:
        super().__init__()
        bottom_up = ResNet(config)
        self.in_features = config.fpn_in_features
        channels = config.fpn_out_channels
        self.levels = [int(name[3:]) for name in self.in_features]
        for name, level in zip(self.in_features, self.levels):
            cin = bottom_up.out_channels[name]
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(cin, channels, 1))
            self.add_module(f"fpn_output{level}", nn.Conv2d(channels, channels, 3, padding=1))
        self.bottom_up = bottom_up  # registered after the FPN convs: detectron2's state-dict order
        self.out_features = [f"p{level}" for level in self.levels] + [f"p{self.levels[-1] + 1}"]
        self.strides = {f"p{level}": 2**level for level in [*self.levels, self.levels[-1] + 1]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        results: list[torch.Tensor] = []
        prev = None
        for name, level in zip(reversed(self.in_features), reversed(self.levels)):
            lateral = getattr(self, f"fpn_lateral{level}")(bottom_up[name])
            prev = lateral if prev is None else lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return dict(zip(self.out_features, results))
