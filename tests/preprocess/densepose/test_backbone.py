"""ResNet and FPN against torchvision's own ResNet and FeaturePyramidNetwork, with the same weights."""

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from preprocess.densepose.config import load_config
from preprocess.densepose.model.backbone import FPN, ResNet

from .conftest import child_config


def _config(tiny, tmp_path, *, groups: int, width: int, stride_in_1x1: bool):
    return load_config(child_config(tmp_path, tiny[0], f"""\
MODEL:
  RESNETS:
    DEPTH: 50
    NUM_GROUPS: {groups}
    WIDTH_PER_GROUP: {width}
    STEM_OUT_CHANNELS: 64
    RES2_OUT_CHANNELS: 256
    STRIDE_IN_1X1: {stride_in_1x1}
  FPN:
    OUT_CHANNELS: 16
"""))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights and frozen-BN statistics (positive variances), so that every term matters."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        value = torch.randn(tensor.shape, generator=generator)
        if name.endswith("running_var"):
            value = value.abs() + 0.5
        elif name.endswith("norm.weight"):
            value = 0.5 + 0.3 * value
        elif tensor.dim() == 4:
            value = value * (2.0 / (tensor.shape[1] * tensor.shape[2] * tensor.shape[3])) ** 0.5
        state[name] = value
    module.load_state_dict(state)


def _torchvision_name(name: str) -> str:
    """Our (detectron2's) ResNet parameter name -> torchvision's."""
    parts = name.split(".")
    if parts[0] == "stem":
        return ("conv1." if parts[2] != "norm" else "bn1.") + parts[-1]
    layer = f"layer{int(parts[0][3:]) - 1}.{parts[1]}"
    if parts[2] == "shortcut":
        return f"{layer}.downsample.{'1' if parts[3] == 'norm' else '0'}.{parts[-1]}"
    conv = parts[2][-1]
    return f"{layer}.{'bn' if parts[3] == 'norm' else 'conv'}{conv}.{parts[-1]}"


@pytest.mark.parametrize("groups, width, stride_in_1x1, seed", [
    (1, 64, False, 0),  # torchvision's own layout (stride in the 3x3)
    (1, 64, True, 1),  # detectron2's MSRA layout (stride in the 1x1)
    (2, 16, True, 2),  # grouped 3x3 (ResNeXt-style widths)
])
def test_resnet_matches_torchvision(tiny, tmp_path, groups, width, stride_in_1x1, seed):
    config = _config(tiny, tmp_path, groups=groups, width=width, stride_in_1x1=stride_in_1x1)
    ours = ResNet(config).eval()
    _randomise(ours, seed)
    reference = torchvision.models.resnet.ResNet(
        torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], groups=groups, width_per_group=width
    ).eval()
    state = {_torchvision_name(k): v for k, v in ours.state_dict().items()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") or k.startswith("fc.") for k in missing)
    if stride_in_1x1:
        for layer in (reference.layer2, reference.layer3, reference.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got = ours(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for index, name in enumerate(("res2", "res3", "res4", "res5")):
            y = getattr(reference, f"layer{index + 1}")(y)
            torch.testing.assert_close(got[name], y, rtol=1e-4, atol=1e-4, msg=name)
    assert got["res5"].shape == (2, 2048, 2, 3)


def test_fpn_matches_torchvision(tiny, tmp_path):
    config = _config(tiny, tmp_path, groups=1, width=16, stride_in_1x1=True)
    ours = FPN(config).eval()
    _randomise(ours, 3)
    reference = FeaturePyramidNetwork([256, 512, 1024, 2048], 16, extra_blocks=LastLevelMaxPool()).eval()
    mapping = {}
    for i, level in enumerate((2, 3, 4, 5)):
        for kind, ours_name in (("inner_blocks", "fpn_lateral"), ("layer_blocks", "fpn_output")):
            for p in ("weight", "bias"):
                mapping[f"{kind}.{i}.0.{p}"] = ours.state_dict()[f"{ours_name}{level}.{p}"]
    reference.load_state_dict(mapping)
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = ours(x)
        bottom_up = ours.bottom_up(x)
        want = reference(OrderedDict((k, bottom_up[k]) for k in ("res2", "res3", "res4", "res5")))
    assert list(got) == ["p2", "p3", "p4", "p5", "p6"]
    for ours_name, ref_name in zip(got, want):
        torch.testing.assert_close(got[ours_name], want[ref_name], rtol=1e-5, atol=1e-5, msg=ours_name)
    assert got["p6"].shape[-2:] == (2, 3) and ours.strides["p6"] == 64
