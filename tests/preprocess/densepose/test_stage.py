"""The pipeline stage: columns, per-row failures (bad images, no person), grayscale and RGBA inputs."""

import numpy as np
import pytest

from preprocess.densepose.stage import DensePoseConfig, DensePoseStage
from tests.conftest import stage_batch

from .conftest import assert_iuv_close, child_config


def _batch(images, status=None):
    return stage_batch(len(images), status=status, image=list(images))


@pytest.fixture(scope="module")
def stage(tiny):
    return DensePoseStage(config=DensePoseConfig(config_path=tiny[0], weights_path=tiny[1]))


def test_stage_writes_the_columns(stage, tiny_predictor, astronaut, group_photo):
    gray = astronaut.mean(axis=2).astype(np.uint8)
    rgba = np.concatenate([group_photo, np.full((*group_photo.shape[:2], 1), 255, np.uint8)], axis=2)
    images = [astronaut, gray, rgba, np.zeros((0, 0, 3), np.uint8), astronaut]
    batch = _batch(images, status=["ok", "ok", "ok", "ok", "decode_failed"])
    batch["image"].setflags(write=False)  # Ray may hand read-only arrays
    out = stage(batch)
    assert list(out["status"]) == ["ok", "ok", "ok", "bad_image", "decode_failed"]
    assert out["reject_stage"][3] == "densepose" and "img3: image of img3 has no pixels" in out["detail"][3]
    assert out["detail"][4] == "earlier"  # rows failed earlier pass through untouched
    assert out["person_box"].dtype == np.float32 and out["person_box"].shape == (5, 4)
    assert out["person_score"].dtype == np.float32 and out["person_count"].dtype == np.int32
    assert out["iuv"].dtype == object and out["iuv"].shape == (5,)
    # The oracle computes every detection's chart (the stage computes only the chosen person's) and keeps
    # detection 0, the top score: the same IUV by another path.
    expected = tiny_predictor.predict([astronaut, np.repeat(gray[:, :, None], 3, 2), group_photo], charts="all")
    for row, result in zip((0, 1, 2), expected):
        iuv = out["iuv"][row]
        assert iuv.dtype == np.uint8 and iuv.shape == (*images[row].shape[:2], 3)
        assert_iuv_close(iuv, result.iuv)
        np.testing.assert_array_equal(out["person_box"][row], result.boxes_xyxy[0])
        assert out["person_score"][row] == result.scores[0] and out["person_count"][row] == result.count
    for row in (3, 4):  # placeholders
        assert out["iuv"][row].shape == (0, 0, 3) and not out["person_box"][row].any()
        assert out["person_score"][row] == 0 and out["person_count"][row] == 0


def test_no_person_is_a_sample_error(tiny, tmp_path, astronaut):
    """Nothing can score above 1: every row becomes no_person, with the reason, none is dropped."""
    config = child_config(tmp_path, tiny[0], "MODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 1.0\n")
    stage = DensePoseStage(config=DensePoseConfig(config_path=config, weights_path=tiny[1]))
    out = stage(_batch([astronaut, astronaut[:100]]))
    assert list(out["status"]) == ["no_person", "no_person"]
    assert list(out["reject_stage"]) == ["densepose", "densepose"]
    assert out["detail"][1] == "img1: DensePose found no person scoring above 1 in the 512x100 image"
    assert not out["person_count"].any() and all(v.shape == (0, 0, 3) for v in out["iuv"])


def test_empty_and_all_failed_batches(stage):
    out = stage(_batch([np.zeros((0, 0, 3), np.uint8)], status=["decode_failed"]))
    assert list(out["status"]) == ["decode_failed"] and out["person_box"].shape == (1, 4)
    out = stage(_batch([]))
    assert out["iuv"].shape == (0,) and out["person_box"].shape == (0, 4)


def test_largest_box_stage_and_config_checks(tiny, group_photo):
    stage = DensePoseStage(config=DensePoseConfig(config_path=str(tiny[0]), weights_path=str(tiny[1]),
                                                  person_policy="largest_box"))
    out = stage(_batch([group_photo]))
    x1, y1, x2, y2 = out["person_box"][0]
    result = stage.predictor.predict([group_photo])[0]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in result.boxes_xyxy.astype(float)]
    assert (x2 - x1) * (y2 - y1) == pytest.approx(max(areas))
    for bad, message in (({"dtype": "bfloat16"}, "only on CUDA"), ({"device": "tpu"}, "device must be"),
                         ({"person_policy": "first"}, "person_policy"), ({"max_batch": 0}, "max_batch"),
                         ({"dtype": "float16"}, "dtype must be")):
        with pytest.raises(ValueError, match=message):
            DensePoseConfig(config_path=tiny[0], weights_path=tiny[1], **bad)
