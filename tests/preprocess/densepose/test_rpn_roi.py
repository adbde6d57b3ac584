"""Anchors, box coding, proposal selection, box inference and ROI pooling against their definitions."""

import math

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from preprocess.densepose.config import BoxHeadSpec, load_config
from preprocess.densepose.model.boxes import SCALE_CLAMP, apply_deltas
from preprocess.densepose.model.roi_heads import ROIPooler, fast_rcnn_inference
from preprocess.densepose.model.rpn import RPN, cell_anchors, grid_anchors

from .conftest import child_config
from .naive import class_nms, clip, encode, greedy_nms


def test_cell_anchors_have_the_requested_area_and_aspect():
    sizes, ratios = (32.0, 96.0), (0.5, 1.0, 2.0)
    anchors = cell_anchors(sizes, ratios).double()
    assert anchors.shape == (6, 4)
    for k, (size, ratio) in enumerate((s, r) for s in sizes for r in ratios):
        x0, y0, x1, y1 = anchors[k].tolist()
        assert (x1 - x0) * (y1 - y0) == pytest.approx(size * size, rel=1e-6)
        assert (y1 - y0) / (x1 - x0) == pytest.approx(ratio, rel=1e-6)
        assert (x0 + x1, y0 + y1) == pytest.approx((0.0, 0.0), abs=1e-4)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_grid_anchors_are_row_major_then_per_cell(offset):
    cells = cell_anchors((16.0, 40.0), (1.0, 2.0))
    grid = grid_anchors(cells, (3, 5), 8, offset)
    assert grid.shape == (3 * 5 * 4, 4)
    for y in range(3):
        for x in range(5):
            for a in range(4):
                expected = cells[a] + torch.tensor([offset * 8 + x * 8, offset * 8 + y * 8] * 2)
                torch.testing.assert_close(grid[(y * 5 + x) * 4 + a], expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apply_deltas_inverts_the_box_encoding(seed):
    rng = np.random.default_rng(seed)
    weights = (10.0, 10.0, 5.0, 5.0)
    def boxes(count: int) -> np.ndarray:
        xy = rng.uniform(0, 400, (count, 2))
        return np.concatenate([xy, xy + rng.uniform(20, 300, (count, 2))], axis=1)  # sizes within exp(clamp)

    sources, targets = boxes(40), boxes(40)
    deltas = np.stack([encode(s, t, weights) for s, t in zip(sources, targets)])
    decoded = apply_deltas(torch.tensor(deltas), torch.tensor(sources), weights)
    assert decoded.dtype == torch.float32  # detectron2 decodes in float32
    np.testing.assert_allclose(decoded.numpy(), targets, rtol=1e-4, atol=1e-2)
    # Two groups of four deltas per box (class-specific regression) decode independently.
    both = np.concatenate([deltas, np.zeros_like(deltas)], 1)
    pairs = apply_deltas(torch.tensor(both), torch.tensor(sources), weights)
    np.testing.assert_allclose(pairs[:, 4:].numpy(), sources, rtol=1e-5, atol=1e-3)
    # Log-scale deltas are clamped: no overflow to inf, width at most exp(clamp) times the source's.
    huge = apply_deltas(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]), weights)
    assert huge[0, 2] - huge[0, 0] == pytest.approx(10.0 * math.exp(SCALE_CLAMP), rel=1e-5)


def _rpn(tiny, tmp_path, sizes="[[32], [64]]", ratios="[[0.5, 1.0, 2.0]]"):
    config = load_config(child_config(tmp_path, tiny[0], f"""\
MODEL:
  ANCHOR_GENERATOR:
    SIZES: {sizes}
    ASPECT_RATIOS: {ratios}
  RPN:
    IN_FEATURES: ["p3", "p4"]
    PRE_NMS_TOPK_TEST: 50
    POST_NMS_TOPK_TEST: 30
    NMS_THRESH: 0.62  # anchors a stride apart overlap at IoU 0.6 exactly: keep ties off the threshold
"""))
    return RPN(config.rpn, in_channels=3, strides={"p3": 8, "p4": 16}), config.rpn


def test_rpn_proposals_follow_anchor_order_topk_clip_and_nms(tiny, tmp_path):
    """A head wired so that anchor a at (y, x) scores feature[a, y, x] and keeps its anchor box: the
    proposals must be the per-level top k anchors, clipped, NMS'd per level, best first."""
    rpn, spec = _rpn(tiny, tmp_path)
    head = rpn.rpn_head
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.zero_()
        for c in range(3):
            head.conv.weight[c, c, 1, 1] = 1.0  # identity (inputs are positive, so the ReLU keeps them)
        head.objectness_logits.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        head.objectness_logits.bias.zero_()
        head.anchor_deltas.weight.zero_()
        head.anchor_deltas.bias.zero_()
    generator = torch.Generator().manual_seed(5)
    features = {"p3": torch.rand(2, 3, 12, 10, generator=generator) + 0.01,
                "p4": torch.rand(2, 3, 6, 5, generator=generator) + 0.01}
    sizes = [(90, 75), (96, 80)]
    with torch.no_grad():
        proposals = rpn(features, sizes)
    for n, (height, width) in enumerate(sizes):
        boxes, scores, levels = [], [], []
        for level, name in enumerate(("p3", "p4")):
            f = features[name][n].numpy()
            stride = rpn.strides[level]
            anchors = grid_anchors(rpn.cells[level], tuple(f.shape[-2:]), stride, spec.anchor_offset).numpy()
            values = np.array([f[a, y, x] for y in range(f.shape[1]) for x in range(f.shape[2]) for a in range(3)])
            top = np.argsort(-values, kind="stable")[: spec.pre_nms_topk]
            boxes += [clip(anchors[i], height, width) for i in top]
            scores += list(values[top])
            levels += [level] * len(top)
        boxes, scores, levels = np.array(boxes), np.array(scores), np.array(levels)
        keep = class_nms(boxes, scores, levels, spec.nms_thresh)[: spec.post_nms_topk]
        np.testing.assert_allclose(proposals[n].numpy(), boxes[keep], atol=1e-4)


def _box_spec(**overrides) -> BoxHeadSpec:
    values = dict(in_features=("p2",), num_classes=1, pooler_type="ROIAlign", pooler_resolution=7,
                  pooler_sampling_ratio=2, num_conv=0, conv_dim=8, num_fc=1, fc_dim=8,
                  bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), cls_agnostic_bbox_reg=False, score_thresh=0.3,
                  nms_thresh=0.5, detections_per_image=7)
    values.update(overrides)
    return BoxHeadSpec(**values)


@pytest.mark.parametrize("seed", [0, 1])
def test_box_inference_thresholds_clips_nms_and_keeps_top_k(seed):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(-20, 140, (60, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1) + 2], axis=1).astype(np.float32)
    probs = rng.dirichlet([1.0, 1.0], 60).astype(np.float32)
    spec = _box_spec()
    got_boxes, got_scores, got_classes = fast_rcnn_inference(torch.tensor(boxes), torch.tensor(probs), (100, 120), spec)
    candidates = [i for i in range(60) if probs[i, 0] > spec.score_thresh]
    clipped = np.array([clip(boxes[i], 100, 120) for i in candidates])
    keep = greedy_nms(clipped, probs[candidates, 0], spec.nms_thresh)[: spec.detections_per_image]
    np.testing.assert_allclose(got_boxes.numpy(), clipped[keep], atol=1e-5)
    np.testing.assert_allclose(got_scores.numpy(), probs[candidates, 0][keep])
    assert got_classes.tolist() == [0] * len(keep)
    assert len(keep) == spec.detections_per_image


def test_non_finite_predictions_are_dropped_not_clipped():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [float("nan"), 0.0, 5.0, 5.0], [20.0, 20.0, 40.0, 40.0]])
    probs = torch.tensor([[0.9, 0.1], [0.95, 0.05], [0.8, 0.2]])
    got, scores, _ = fast_rcnn_inference(boxes, probs, (50, 50), _box_spec())
    assert scores.tolist() == pytest.approx([0.9, 0.8])


@pytest.mark.parametrize("pooler_type, aligned", [("ROIAlign", False), ("ROIAlignV2", True)])
def test_roi_pooler_levels_and_per_box_pooling(pooler_type, aligned):
    pooler = ROIPooler(output_size=5, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=2, pooler_type=pooler_type)
    rng = np.random.default_rng(7)
    boxes = []
    for _ in range(2):
        xy = rng.uniform(0, 200, (12, 2))
        side = np.array([8, 60, 111, 113, 150, 223, 225, 300, 447, 449, 600, 900])[rng.permutation(12)]
        wh = side[:, None] * rng.uniform(0.7, 1.4, (12, 2)) ** np.array([1, -1])  # aspect varies, area kept
        boxes.append(torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32))
    all_boxes = torch.cat(boxes)
    levels = pooler.level_of(all_boxes)
    for box, level in zip(all_boxes.tolist(), levels.tolist()):
        size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        expected = min(max(math.floor(4 + math.log2(size / 224 + 1e-8)), 2), 5) - 2
        assert level == expected
    assert set(levels.tolist()) == {0, 1, 2, 3}  # the test spans every level
    generator = torch.Generator().manual_seed(8)
    features = [torch.randn(2, 3, 256 // s, 256 // s, generator=generator) for s in (4, 8, 16, 32)]
    pooled = pooler(features, boxes)
    assert pooled.shape == (24, 3, 5, 5)
    for k, (box, level) in enumerate(zip(all_boxes, levels.tolist())):
        image = k // 12
        rois = torch.cat([torch.tensor([[float(image)]]), box[None]], 1)
        single = roi_align(features[level], rois, (5, 5), 1 / 2 ** (level + 2), 2, aligned)
        torch.testing.assert_close(pooled[k], single[0])



def test_rpn_drops_non_finite_and_empty_proposals(tiny, tmp_path):
    rpn, spec = _rpn(tiny, tmp_path)
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [float("inf"), 0.0, 5.0, 5.0], [3.0, 3.0, 3.0, 9.0],
                           [50.0, 50.0, 70.0, 80.0], [-5.0, -5.0, -1.0, 4.0]]])
    logits = torch.tensor([[0.9, 0.99, 0.95, 0.5, 0.7]])
    got = rpn._top_proposals([boxes], [logits], [(60, 60)])[0]
    # inf: dropped; zero width (and the box clipped to zero width at x = 0): dropped; the rest clipped.
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]))


@pytest.mark.parametrize("levels", [1, 4])
def test_roi_pooler_keeps_boxes_float32_with_bfloat16_features(levels):
    """--gpu-dtype bfloat16: the RoI boxes must not be rounded to bf16 (4-8 px steps near x = 1000) before
    RoIAlign; the pooled values are those of float32 boxes on the (bf16) features, in the features' dtype."""
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)[:levels]
    pooler = ROIPooler(output_size=5, scales=scales, sampling_ratio=2, pooler_type="ROIAlignV2")
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(1, 2, 1200 // s, 1200 // s, generator=generator).to(torch.bfloat16)
                for s in (4, 8, 16, 32)[:levels]]
    # Edges that bf16 cannot hold (it rounds 1001.3 to 1000 and 1109.7 to 1112): a box of level 0 and one
    # of level 3 when there are four.
    boxes = [torch.tensor([[1001.3, 1003.7, 1109.7, 1111.1], [101.3, 203.7, 1109.7, 1111.1]])]
    assert not torch.equal(boxes[0].to(torch.bfloat16).float(), boxes[0])
    pooled = pooler(features, boxes)
    assert pooled.dtype == torch.bfloat16
    level_of = pooler.level_of(boxes[0]).tolist() if levels > 1 else [0, 0]
    for k, level in enumerate(level_of):
        rois = torch.cat([torch.zeros(1, 1), boxes[0][k][None]], 1)
        exact = roi_align(features[level].float(), rois, (5, 5), scales[level], 2, True).to(torch.bfloat16)
        torch.testing.assert_close(pooled[k], exact[0], rtol=0, atol=0)
