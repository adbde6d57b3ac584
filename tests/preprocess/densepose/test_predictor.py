"""The predictor's preprocessing and postprocessing (what DefaultPredictor does around the model), its
batching, and the person policies. Runs the tiny model."""

import numpy as np
import pytest
import torch
from PIL import Image

from preprocess.densepose.predictor import DensePosePredictor, choose_person, resized_shape
from preprocess.densepose.tiny import seeded_state

from .conftest import child_config


@pytest.mark.parametrize("size, expected", [
    ((480, 640), (800, 1067)),  # fixture: upscaled landscape
    ((1101, 750), (1174, 800)),  # DeepFashion portrait
    ((512, 352), (1164, 800)),  # fixture: small portrait upscaled
    ((400, 1000), (533, 1333)),  # long side capped at MAX_SIZE_TEST
    ((3000, 500), (1333, 222)),  # very tall: capped
    ((10, 7), (1143, 800)),  # tiny image, upscaled
    ((800, 800), (800, 800)),
])
def test_resized_shape_is_resize_shortest_edge(size, expected):
    assert resized_shape(*size, min_size=800, max_size=1333) == expected
    assert resized_shape(*size, min_size=0, max_size=1333) == size  # MIN_SIZE_TEST 0: no resize


def _predictor(path, weights, **kwargs):
    return DensePosePredictor(config_path=path, weights_path=weights, **kwargs)


@pytest.fixture(scope="module")
def no_resize(tiny, tmp_path_factory):
    """The tiny model without test-time resizing: the network sees the image as given."""
    return _predictor(child_config(tmp_path_factory.mktemp("cfg"), tiny[0], "INPUT:\n  MIN_SIZE_TEST: 0\n"), tiny[1])


@pytest.mark.parametrize("shape", [(300, 900), (1000, 150), (40, 30), (257, 255)])
def test_resize_path_equals_resizing_first_then_scaling_boxes_back(tiny_predictor, no_resize, astronaut, shape):
    """Capped, upscaled and near-square images: predicting on the image must equal predicting, without
    resizing, on the PIL-bilinear-resized image and mapping its boxes back to the image's pixels."""
    height, width = shape
    image = np.asarray(Image.fromarray(astronaut).resize((width, height), Image.BICUBIC))
    config = tiny_predictor.config
    new_h, new_w = resized_shape(height, width, min_size=config.min_size_test, max_size=config.max_size_test)
    bgr = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
    resized_bgr = np.asarray(bgr.resize((new_w, new_h), Image.BILINEAR))
    direct = tiny_predictor.predict([image])[0]
    manual = no_resize.predict([np.ascontiguousarray(resized_bgr[:, :, ::-1])])[0]
    boxes = torch.tensor(manual.boxes_xyxy)
    boxes[:, 0::2] *= width / new_w
    boxes[:, 1::2] *= height / new_h
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    assert direct.count == int(keep.sum()) > 0
    np.testing.assert_array_equal(direct.boxes_xyxy, boxes[keep].numpy())
    np.testing.assert_array_equal(direct.scores, manual.scores[keep.numpy()])
    assert direct.iuv.shape == (height, width, 3) and direct.height == height and direct.width == width


def test_input_format_rgb_feeds_the_network_the_other_channel_order(tiny, tmp_path, tiny_predictor, astronaut):
    """A BGR model on an image equals an RGB model on the channel-swapped image (same network input)."""
    rgb_model = _predictor(child_config(tmp_path, tiny[0], "INPUT:\n  FORMAT: RGB\n"), tiny[1])
    image = astronaut[100:400, 50:300]
    a = tiny_predictor.predict([image])[0]
    b = rgb_model.predict([np.ascontiguousarray(image[:, :, ::-1])])[0]
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)
    np.testing.assert_array_equal(a.iuv, b.iuv)
    c = rgb_model.predict([image])[0]
    assert not np.array_equal(a.boxes_xyxy, c.boxes_xyxy)  # the order matters to the model


def test_batching_does_not_change_results(tiny_predictor, astronaut, group_photo):
    """Same-size images share a forward pass; other sizes go in their own; each equals its single run
    (to float rounding: a batched convolution may sum in another order, which can move a U or V value
    across an integer step of the uint8 IUV)."""
    a = astronaut
    b = np.ascontiguousarray(astronaut[::-1])
    c = group_photo
    singles = [tiny_predictor.predict([x])[0] for x in (a, b, c)]
    batched = tiny_predictor.predict([a, c, b])
    for single, together in zip(singles, (batched[0], batched[2], batched[1])):
        assert single.count == together.count
        np.testing.assert_allclose(single.boxes_xyxy, together.boxes_xyxy, atol=1e-3)
        np.testing.assert_allclose(single.scores, together.scores, atol=1e-5)
        assert (single.iuv[..., 0] == together.iuv[..., 0]).mean() > 0.995
        assert (np.abs(single.iuv.astype(int) - together.iuv).max(-1) <= 1).mean() > 0.995


def test_person_chart_alone_matches_that_chart_among_all(tiny_predictor, group_photo):
    every = tiny_predictor.predict([group_photo], charts="all")[0]
    person = tiny_predictor.predict([group_photo], charts="person")[0]
    assert sorted(every.charts) == list(range(every.count)) and list(person.charts) == [0]
    assert every.count > 1
    # Equal to float rounding (the head's convolutions run over 1 box instead of all of them; float64
    # shows the branch itself is per box: test_densepose_branch_is_per_box).
    a, b = every.charts[0], person.charts[0]
    assert a.box_xywh == b.box_xywh
    agree = a.labels == b.labels
    assert agree.mean() > 0.999
    np.testing.assert_allclose(a.uv[:, agree], b.uv[:, agree], atol=2e-3)


def test_densepose_branch_is_per_box(tiny_predictor, group_photo):
    """In float64 (no rounding to speak of), a box's chart maps do not depend on the other boxes run with it:
    what lets the stage compute only the chosen person's chart."""
    model = tiny_predictor.model
    x, sizes = model.batch([tiny_predictor.input_tensor(group_photo)])
    with torch.no_grad():
        features, detections = model.detect(x, sizes)
        model.double()
        try:
            features = {k: v.double() for k, v in features.items()}
            boxes = detections[0].boxes.double()
            every = model.charts(features, [boxes])
            for k in (0, len(boxes) - 1):
                alone = model.charts(features, [boxes[k : k + 1]])
                for name in ("coarse_segm", "fine_segm", "u", "v"):
                    torch.testing.assert_close(getattr(alone, name)[0], getattr(every, name)[k], rtol=0, atol=1e-9)
        finally:
            model.float()


def test_largest_box_policy(tiny, group_photo, tiny_predictor):
    largest = _predictor(*tiny, person_policy="largest_box")
    result = largest.predict([group_photo])[0]
    boxes = result.boxes_xyxy.astype(np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert result.person == int(np.argmax(areas))
    top = tiny_predictor.predict([group_photo])[0]
    assert top.person == 0 and top.scores[0] == top.scores.max()
    x, y, w, h = result.charts[result.person].box_xywh
    assert (x, y) == (int(boxes[result.person, 0]), int(boxes[result.person, 1]))
    assert result.iuv[y : y + h, x : x + w, 0].any() and not result.iuv[:y].any()
    ties = torch.tensor([[0, 0, 2, 2], [0, 0, 1, 4], [5, 5, 7, 7]], dtype=torch.float32)
    assert choose_person(ties, "largest_box") == 0  # the first (best scoring) of equal areas
    assert choose_person(ties[:0], "top_score") is None


def test_bad_arguments_and_images(tiny, tiny_predictor):
    with pytest.raises(ValueError, match="image 1 is uint8 \\(0, 5, 3\\)"):
        tiny_predictor.predict([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="image 0 is float32"):
        tiny_predictor.predict([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="person_policy"):
        _predictor(*tiny, person_policy="tallest")
    with pytest.raises(ValueError, match="charts must be"):
        tiny_predictor.predict([], charts="some")
    assert tiny_predictor.predict([]) == []


def test_tiny_image_is_upscaled_and_predicted(tiny_predictor):
    result = tiny_predictor.predict([np.full((3, 2, 3), 200, np.uint8)])[0]
    assert result.height == 3 and result.width == 2 and result.iuv.shape == (3, 2, 3)
    assert (result.boxes_xyxy[:, [0, 2]] <= 2).all() and (result.boxes_xyxy[:, [1, 3]] <= 3).all()


def test_legacy_config_without_decoder_and_with_confidences(tiny, tmp_path, astronaut):
    """DensePose's legacy settings (no decoder: the pyramid pooler; 15 coarse channels; 14 px pooling),
    V1ConvX head, and every confidence map; weights seeded, loaded through the same path."""
    import pickle

    from preprocess.densepose.config import load_config
    from preprocess.densepose.model import DensePoseRCNN

    config = child_config(tmp_path, tiny[0], """\
MODEL:
  ROI_BOX_HEAD:
    NUM_CONV: 1
    CONV_DIM: 16
    POOLER_TYPE: ROIAlignV2
  ROI_DENSEPOSE_HEAD:
    NAME: DensePoseV1ConvXHead
    NUM_COARSE_SEGM_CHANNELS: 15
    POOLER_RESOLUTION: 14
    DECODER_ON: False
    UV_CONFIDENCE:
      ENABLED: True
      TYPE: indep_aniso
    SEGM_CONFIDENCE:
      ENABLED: True
""")
    model = DensePoseRCNN(load_config(config))
    assert model.roi_heads.decoder is None and len(model.roi_heads.densepose_pooler.scales) == 4
    weights = tmp_path / "legacy.pkl"
    state = seeded_state(model, 1)
    state["roi_heads.densepose_predictor.ann_index_lowres.bias"][0] = -3.0  # mostly foreground
    weights.write_bytes(pickle.dumps({"model": state, "__author__": "test"}))
    result = _predictor(config, weights).predict([astronaut])[0]
    assert result.count > 0
    chart = result.charts[0]
    x, y, w, h = chart.box_xywh
    assert chart.labels.shape == (max(h, 1), max(w, 1))
    assert set(chart.confidences) == {"sigma_2", "kappa_u", "kappa_v", "fine_segm_confidence", "coarse_segm_confidence"}
    assert (chart.confidences["fine_segm_confidence"] >= 0.01).all()  # softplus + epsilon
    assert (chart.confidences["sigma_2"][chart.labels == 0] == 0).all()  # per-part maps are 0 on background
    assert (chart.labels > 0).mean() > 0.3


def test_bfloat16_autocast_runs_the_same_path(tiny, tiny_predictor, astronaut):
    """bfloat16 autocast (the CUDA option) exercised on the CPU: same detections to bfloat16 precision,
    float32 results."""
    bf16 = _predictor(*tiny, dtype="bfloat16")
    a = tiny_predictor.predict([astronaut])[0]
    b = bf16.predict([astronaut])[0]
    assert a.count == b.count
    np.testing.assert_allclose(np.sort(b.scores), np.sort(a.scores), atol=2e-2)
    assert b.boxes_xyxy.dtype == np.float32 and b.charts[0].uv.dtype == np.float32 and b.iuv.dtype == np.uint8
    assert (b.iuv[..., 0] > 0).mean() > 0.01


def test_constructor_checks(tiny):
    with pytest.raises(ValueError, match="dtype must be"):
        _predictor(*tiny, dtype="float16")
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        _predictor(*tiny, max_batch=0)
