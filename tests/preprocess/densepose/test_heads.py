"""DensePose heads and result extraction against independent formulations."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from preprocess.densepose.charts import Chart, extract_chart, paste_iuv
from preprocess.densepose.config import DensePoseHeadSpec
from preprocess.densepose.model.densepose_heads import (
    ASPP,
    ChartOutput,
    DensePoseChartPredictor,
    DensePoseDeepLabHead,
    NonLocalBlock2D,
)


def _randomise(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.3 if p.dim() > 1 else 1.0))


def test_aspp_matches_torchvision_deeplabv3_with_groupnorm():
    """torchvision's DeepLabV3 ASPP with its batch norms swapped for DensePose's GroupNorm(32) and no
    norm in the projection: the same computation."""
    ours = ASPP(64, (6, 12, 56), 32).eval()
    _randomise(ours, 0)
    reference = TorchvisionASPP(64, [6, 12, 56], 32).eval()
    for branch in reference.convs:
        index = 2 if isinstance(branch[0], nn.AdaptiveAvgPool2d) else 1
        branch[index] = nn.GroupNorm(32, 32)
    reference.project[1] = nn.Identity()
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected
    x = torch.randn(3, 64, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_nonlocal_block_matches_its_definition():
    """z = W(softmax(theta(x)^T phi_pool(x)) g_pool(x)) + x, with W a 1x1 conv then GroupNorm(32)."""
    block = NonLocalBlock2D(64).eval()
    _randomise(block, 2)
    x = torch.randn(2, 64, 8, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = block(x).numpy()

        def conv(module, t):
            return F.conv2d(t, module.weight, module.bias)

        theta = conv(block.theta, x).flatten(2).numpy()  # (N, C/2, HW)
        phi = F.max_pool2d(conv(block.phi[0], x), 2).flatten(2).numpy()  # (N, C/2, HW/4)
        g = F.max_pool2d(conv(block.g[0], x), 2).flatten(2).numpy()
    logits = np.einsum("nci,ncj->nij", theta, phi)
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    y = np.einsum("nij,ncj->nci", attention, g).reshape(2, 32, 8, 6)
    with torch.no_grad():
        w = conv(block.W[0], torch.tensor(y))
        expected = F.group_norm(w, 32, block.W[1].weight, block.W[1].bias).numpy() + x.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _spec(**overrides) -> DensePoseHeadSpec:
    values = dict(name="DensePoseDeepLabHead", num_stacked_convs=2, conv_head_dim=32, conv_head_kernel=3,
                  deeplab_norm="GN", deeplab_nonlocal=True, decoder_on=True, decoder_num_classes=32,
                  decoder_conv_dims=32, decoder_common_stride=4, pooler_type="ROIAlign", pooler_resolution=14,
                  pooler_sampling_ratio=2, num_patches=24, num_coarse_segm_channels=2, deconv_kernel=4, up_scale=2,
                  uv_confidence="indep_aniso", segm_confidence=True, segm_confidence_epsilon=0.01)
    values.update(overrides)
    return DensePoseHeadSpec(**values)


def test_deeplab_head_parameter_names_are_detectron2s():
    names = set(DensePoseDeepLabHead(_spec(), 32).state_dict())
    for name in ("ASPP.convs.4.1.weight", "ASPP.project.0.weight", "NLBlock.g.0.weight", "NLBlock.phi.0.bias",
                 "NLBlock.theta.weight", "NLBlock.W.0.weight", "NLBlock.W.1.bias", "body_conv_fcn2.norm.weight"):
        assert name in names
    assert "body_conv_fcn1.bias" not in names  # GN convs have no bias
    plain = DensePoseDeepLabHead(_spec(deeplab_norm="", deeplab_nonlocal=False), 32)
    assert "body_conv_fcn1.bias" in set(plain.state_dict()) and plain.NLBlock is None


def test_chart_predictor_confidences_follow_densepose():
    """Segmentation confidences: softplus(...) + eps multiplies the scores; UV confidences are raw maps."""
    predictor = DensePoseChartPredictor(_spec(), 16).eval()
    _randomise(predictor, 4)
    x = torch.randn(3, 16, 7, 7, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = predictor(x)

        def up(layer):
            lowres = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)
            return F.interpolate(lowres, scale_factor=2, mode="bilinear", align_corners=False)

        fine_conf = F.softplus(up(predictor.fine_segm_confidence_lowres)) + 0.01
        coarse_conf = F.softplus(up(predictor.coarse_segm_confidence_lowres)) + 0.01
        torch.testing.assert_close(out.fine_segm, up(predictor.index_uv_lowres) * fine_conf)
        torch.testing.assert_close(out.coarse_segm, up(predictor.ann_index_lowres) * coarse_conf)
        torch.testing.assert_close(out.fine_segm_confidence, fine_conf)
        for name in ("u", "v", "sigma_2", "kappa_u", "kappa_v"):
            torch.testing.assert_close(getattr(out, name), up(getattr(predictor, f"{name}_lowres")))
    assert out.fine_segm.shape == (3, 25, 28, 28) and out.coarse_segm.shape == (3, 2, 28, 28)
    plain = DensePoseChartPredictor(_spec(uv_confidence=None, segm_confidence=False), 16)
    assert not any("confidence" in n or "sigma" in n or "kappa" in n for n in plain.state_dict())


def _naive_chart(output: ChartOutput, box_xywh) -> Chart:
    """DensePose's converter as written there: per-part boolean-mask assignment."""
    x, y, w, h = box_xywh
    w, h = max(int(w), 1), max(int(h), 1)

    def resample(t):
        return F.interpolate(t, (h, w), mode="bilinear", align_corners=False)

    coarse = resample(output.coarse_segm).argmax(dim=1)
    labels = (resample(output.fine_segm).argmax(dim=1) * (coarse > 0).long()).squeeze(0)
    u, v = resample(output.u), resample(output.v)
    uv = torch.zeros([2, h, w])
    for part in range(1, u.size(1)):
        uv[0][labels == part] = u[0, part][labels == part]
        uv[1][labels == part] = v[0, part][labels == part]
    confidences = {}
    for name in ("sigma_2", "kappa_u", "kappa_v", "fine_segm_confidence", "coarse_segm_confidence"):
        value = getattr(output, name)
        if value is None:
            continue
        resampled = resample(value)
        result = torch.zeros([h, w])
        if resampled.size(1) == u.size(1):
            for part in range(1, u.size(1)):
                result[labels == part] = resampled[0, part][labels == part]
        else:
            result = resampled[0, 0]
        confidences[name] = result.numpy()
    return Chart(box_xywh=box_xywh, labels=labels.numpy().astype(np.uint8), uv=uv.numpy(), confidences=confidences)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("box", [(3, 5, 37, 61), (0, 0, 1, 1), (10, 10, 0, 4), (2, 1, 113, 7)])
def test_extract_chart_matches_densepose_converter(seed, box):
    generator = torch.Generator().manual_seed(seed)

    def maps(channels):
        return torch.randn(1, channels, 28, 28, generator=generator)

    output = ChartOutput(coarse_segm=maps(2), fine_segm=maps(25), u=maps(25), v=maps(25), sigma_2=maps(25),
                         kappa_u=maps(25), kappa_v=maps(25), fine_segm_confidence=maps(1).exp(),
                         coarse_segm_confidence=maps(1).exp())
    got, want = extract_chart(output, box), _naive_chart(output, box)
    assert got.box_xywh == box
    assert got.labels.dtype == np.uint8 and got.uv.dtype == np.float32
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.uv, want.uv)
    assert set(got.confidences) == set(want.confidences)
    for name in want.confidences:
        np.testing.assert_array_equal(got.confidences[name], want.confidences[name])
    assert (got.labels > 0).any() and (got.labels == 0).any() or got.labels.size < 10


def test_extract_chart_without_confidences():
    generator = torch.Generator().manual_seed(9)
    output = ChartOutput(*(torch.randn(1, c, 28, 28, generator=generator) for c in (15, 25, 25, 25)))
    chart = extract_chart(output, (1, 2, 30, 40))
    assert chart.confidences == {} and chart.labels.shape == (40, 30)
    np.testing.assert_array_equal(chart.labels, _naive_chart(output, (1, 2, 30, 40)).labels)


def test_paste_iuv_places_clips_and_truncates():
    labels = np.array([[0, 3, 24], [7, 7, 1]], np.uint8)
    uv = np.array([[[0.5, -0.2, 1.7], [0.999, 0.0, 0.00392]], [[0.25, 0.1, 1.0], [0.3, 2.0, -5.0]]], np.float32)
    iuv = paste_iuv(Chart(box_xywh=(4, 1, 3, 2), labels=labels, uv=uv), 5, 8)
    assert iuv.shape == (5, 8, 3) and iuv.dtype == np.uint8
    np.testing.assert_array_equal(iuv[1:3, 4:7, 0], labels)
    expected_u = np.trunc(np.clip(uv[0], 0, 1) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(iuv[1:3, 4:7, 1], expected_u)
    assert iuv[1, 4, 1] == 127 and iuv[1, 6, 1] == 255 and iuv[1, 5, 1] == 0  # 127.5 truncates; clipped
    assert iuv[2, 6, 2] == 0 and iuv[2, 5, 2] == 255
    outside = np.ones((5, 8), bool)
    outside[1:3, 4:7] = False
    assert not iuv[outside].any()
    # A box of zero integer width (the chart is then 1 pixel wide) pastes nothing, as MCLD's slice does.
    thin = Chart(box_xywh=(2, 1, 0, 2), labels=np.ones((2, 1), np.uint8), uv=np.zeros((2, 2, 1), np.float32))
    assert not paste_iuv(thin, 5, 8).any()


def test_chart_output_select_and_float():
    out = ChartOutput(*(torch.randn(4, c, 2, 2, dtype=torch.bfloat16) for c in (2, 25, 25, 25)))
    picked = out.select(slice(1, 3)).to_float()
    assert len(picked) == 2 and picked.u.dtype == torch.float32 and picked.sigma_2 is None
    assert [f.name for f in dataclasses.fields(picked)][:4] == ["coarse_segm", "fine_segm", "u", "v"]


def test_deeplab_head_runs_aspp_then_nonlocal_then_the_stacked_convs():
    head = DensePoseDeepLabHead(_spec(num_stacked_convs=2), 32).eval()
    _randomise(head, 6)
    x = torch.randn(2, 32, 14, 14, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = head.NLBlock(head.ASPP(x))
        for name in ("body_conv_fcn1", "body_conv_fcn2"):
            conv = getattr(head, name)
            y = F.relu(F.group_norm(F.conv2d(y, conv.weight, None, padding=1), 32, conv.norm.weight, conv.norm.bias))
        torch.testing.assert_close(head(x), y)
        # One box alone: the pooled branch's GroupNorm sees one value per group; its output is the bias.
        torch.testing.assert_close(head(x[:1]), head(x)[:1], rtol=1e-4, atol=1e-4)
