import hashlib

import cv2
import numpy as np
import onnx
import pytest
from insightface.model_zoo import ArcFaceONNX, SCRFD, get_model
from insightface.utils.face_align import arcface_dst
from skimage import data

from preprocess.face.tiny import GLINTR_FILE, SCRFD_FILE, write_tiny_antelopev2
from tests.preprocess.face.conftest import insightface_sample

CPU = ["CPUExecutionProvider"]


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_byte_identical_per_seed(tmp_path, tiny_antelopev2):
    again = write_tiny_antelopev2(tmp_path / "again", seed=0)
    other = write_tiny_antelopev2(tmp_path / "other", seed=1)
    assert set(digests(again)) == {SCRFD_FILE, GLINTR_FILE}
    assert digests(again) == digests(tiny_antelopev2)
    assert all(a != b for a, b in zip(digests(again).values(), digests(other).values()))


def test_signatures_are_those_of_scrfd_10g_bnkps_and_glintr100(tiny_antelopev2):
    def dims(value):
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]

    scrfd = onnx.load(str(tiny_antelopev2 / SCRFD_FILE)).graph
    assert [dims(v) for v in scrfd.input] == [[1, 3, "?", "?"]]
    assert len(scrfd.output) == 9
    assert [dims(v)[1] for v in scrfd.output] == [1, 1, 1, 4, 4, 4, 10, 10, 10]  # scores, boxes, kps x 8/16/32
    glint = onnx.load(str(tiny_antelopev2 / GLINTR_FILE)).graph
    assert [dims(v) for v in glint.input] == [["None", 3, 112, 112]]
    assert [dims(v) for v in glint.output] == [["None", 512]]


def test_insightface_router_recognises_them(tiny_antelopev2):
    detector = get_model(str(tiny_antelopev2 / SCRFD_FILE), providers=CPU)
    assert isinstance(detector, SCRFD)
    assert detector.use_kps and detector.fmc == 3 and detector._num_anchors == 2
    assert detector._feat_stride_fpn == [8, 16, 32]
    recognizer = get_model(str(tiny_antelopev2 / GLINTR_FILE), providers=CPU)
    assert isinstance(recognizer, ArcFaceONNX)
    assert recognizer.input_size == (112, 112) and recognizer.input_mean == 127.5  # a pytorch-style export
    aligned = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    feats = recognizer.get_feat(list(aligned))
    assert feats.shape == (3, 512) and np.isfinite(feats).all()
    assert np.linalg.norm(feats[0] - feats[1]) > 1e-3  # depends on the face


@pytest.mark.parametrize("size", [320, 640])
def test_tiny_scrfd_reports_one_central_face_with_template_landmarks(tiny_antelopev2, size):
    detector = get_model(str(tiny_antelopev2 / SCRFD_FILE), providers=CPU)
    detector.prepare(0, input_size=(size, size), det_thresh=0.5)
    crops = [data.astronaut()[20:220, 125:325], insightface_sample("t1.jpg")[200:480, 420:700], data.chelsea()]
    results = []
    for crop in crops:
        bgr = cv2.resize(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR), (size, size))
        boxes, kps = detector.detect(bgr, input_size=(size, size))
        assert boxes.shape == (1, 5) and kps.shape == (1, 5, 2)
        assert 0.5 < boxes[0, 4] < 1.0
        # The central square of side 2/3 (the face in a 1.5x crop), to within a few pixels.
        np.testing.assert_allclose(boxes[0, :4], np.array([1, 1, 5, 5]) * size / 6, atol=0.03 * size)
        expected = (1 / 6 + (2 / 3) * arcface_dst / 112) * size
        np.testing.assert_allclose(kps[0], expected, atol=0.03 * size)
        results.append(boxes[0])
    assert not np.allclose(results[0], results[1])  # image-dependent, not a constant


def test_tiny_scrfd_scores_stay_below_a_high_threshold(tiny_antelopev2):
    detector = get_model(str(tiny_antelopev2 / SCRFD_FILE), providers=CPU)
    detector.prepare(0, input_size=(640, 640), det_thresh=0.99)
    bgr = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (640, 640))
    boxes, kps = detector.detect(bgr, input_size=(640, 640))
    assert boxes.shape == (0, 5)
