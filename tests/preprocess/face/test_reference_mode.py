"""face.mode reference: the released MCLD code's face path, checked against insightface's own FaceAnalysis."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from preprocess.demo import demo_photos
from preprocess.face import FaceConfig, FaceStage
from preprocess.face.stage import FACE_OK
from tests.preprocess.face.conftest import make_batch


def face_analysis_embedding(antelopev2, image_rgb: np.ndarray, *, det_size: int = 640) -> np.ndarray | None:
    """What the reference computed: FaceAnalysis on the full image, the largest face by box area, raw embedding."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(antelopev2), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(det_size, det_size))
    faces = app.get(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not faces:
        return None
    largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    return np.asarray(largest.embedding, np.float32)


@pytest.fixture(scope="module")
def reference_stage(tiny_antelopev2) -> FaceStage:
    return FaceStage(config=FaceConfig(mode="reference", antelopev2_dir=tiny_antelopev2, max_batch=1, threads=1))


def test_reference_mode_equals_face_analysis_on_the_demo_photos(reference_stage, tiny_antelopev2):
    photos = demo_photos()
    out = reference_stage(make_batch(list(photos.values())))
    with_face = 0
    for i, name in enumerate(photos):
        expected = face_analysis_embedding(tiny_antelopev2, photos[name])
        assert out["face_ok"][i] == (expected is not None), name
        if expected is None:
            continue
        with_face += 1
        assert out["face_status"][i] == FACE_OK
        np.testing.assert_array_equal(out["face_emb"][i], expected, err_msg=name)
        assert out["face_emb_norm"][i] == pytest.approx(np.linalg.norm(expected.astype(np.float64)), rel=1e-6)
        assert out["face_crop"][i].any()  # the inspection crop around the chosen face
    assert with_face >= 4  # the check compared something


def test_reference_mode_uses_no_ssd(reference_stage, tiny_antelopev2):
    assert reference_stage.ssd is None
    paper = FaceStage(config=FaceConfig(antelopev2_dir=tiny_antelopev2))
    assert paper.ssd is not None


def test_unknown_mode_is_refused(tiny_antelopev2):
    with pytest.raises(ValueError, match="mode must be one of"):
        FaceConfig(mode="insightface", antelopev2_dir=tiny_antelopev2)


def test_failed_rows_are_not_run(reference_stage):
    photo = demo_photos()["astronaut/front.png"]
    out = reference_stage(make_batch([photo, photo], statuses=["decode_failed", "ok"]))
    assert list(out["face_status"]) == ["not_run", FACE_OK]
    assert not out["face_emb"][0].any() and out["face_emb"][1].any()
