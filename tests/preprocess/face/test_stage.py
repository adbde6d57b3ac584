import shutil

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from insightface.model_zoo import get_model
from insightface.utils import face_align
from onnx import numpy_helper
from skimage import data

from preprocess.face import FaceConfig, FaceStage
from preprocess.face.crop import box_iou, crop_square, expand_square, resize_square
from preprocess.face.ssd import SsdFaceDetector, default_ssd_files
from preprocess.face.stage import FACE_NO_FACE, FACE_NO_LANDMARKS, FACE_NONFINITE, FACE_NOT_RUN, FACE_OK
from preprocess.face.tiny import GLINTR_FILE, SCRFD_FILE, build_tiny_glintr100
from tests.preprocess.face.conftest import full_body_like, insightface_sample, make_batch

CONTRACT = {  # column: (dtype, per-row shape), docs/ARCHITECTURE.md's face row plus the stage's flags
    "face_ok": (np.bool_, ()),
    "face_emb": (np.float32, (512,)),
    "face_emb_norm": (np.float32, ()),
    "face_box": (np.float32, (4,)),
    "face_score": (np.float32, ()),
    "face_det_score": (np.float32, ()),
    "face_crop": (np.uint8, (224, 224, 3)),
    "face_count": (np.int32, ()),
    "face_det_box": (np.float32, (4,)),
    "face_kps": (np.float32, (5, 2)),
}


def ssd_faces(image_rgb):
    prototxt, caffemodel = default_ssd_files()
    boxes, scores = SsdFaceDetector(prototxt=prototxt, caffemodel=caffemodel).detect(
        cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), threshold=0.5
    )
    height, width = image_rgb.shape[:2]
    return np.clip(boxes * [width, height, width, height], 0, [width, height, width, height]), scores


def assert_no_face(out, i):
    assert not out["face_ok"][i]
    for column in ("face_emb", "face_emb_norm", "face_box", "face_score", "face_det_score", "face_crop",
                   "face_det_box", "face_kps", "face_count"):
        assert not np.asarray(out[column][i]).any(), column
    assert out["face_found_by"][i] == ""


def test_columns_follow_the_contract(stage):
    images = [data.astronaut(), data.coffee()]
    out = stage(make_batch(images))
    for column, (dtype, shape) in CONTRACT.items():
        assert out[column].dtype == dtype, column
        assert out[column].shape == (2, *shape), column
    assert list(out["face_status"]) == [FACE_OK, FACE_NO_FACE]
    assert out["image"][0] is images[0] and list(out["status"]) == ["ok", "ok"]  # never rejects, keeps inputs


def test_astronaut_embedding_is_insightface_run_on_the_crop(stage, tiny_antelopev2):
    """The stored features equal what insightface's own classes give on the 1.5x crop, done by hand here."""
    image = data.astronaut()
    out = stage(make_batch([image]))
    assert out["face_ok"][0] and out["face_status"][0] == FACE_OK and out["face_found_by"][0] == "image"

    boxes, scores = ssd_faces(image)
    np.testing.assert_allclose(out["face_box"][0], boxes[0], atol=1e-4)
    assert out["face_score"][0] == np.float32(scores[0]) and out["face_count"][0] == 1

    x0, y0, side = expand_square(boxes[0], scale=1.5)
    crop = crop_square(image, x0=x0, y0=y0, side=side)
    np.testing.assert_array_equal(out["face_crop"][0], resize_square(crop, 224))

    detector = get_model(str(tiny_antelopev2 / SCRFD_FILE), providers=["CPUExecutionProvider"])
    recognizer = get_model(str(tiny_antelopev2 / GLINTR_FILE), providers=["CPUExecutionProvider"])
    bgr = cv2.cvtColor(resize_square(crop, 640), cv2.COLOR_RGB2BGR)
    det, kps = detector.detect(bgr, input_size=(640, 640))
    assert len(det) == 1
    expected = recognizer.get_feat(face_align.norm_crop(bgr, landmark=kps[0], image_size=112))[0]
    np.testing.assert_allclose(out["face_emb"][0], expected, rtol=1e-6, atol=1e-6)
    assert out["face_emb_norm"][0] == pytest.approx(np.linalg.norm(expected), rel=1e-5)
    assert out["face_det_score"][0] == pytest.approx(det[0, 4])
    scale = side / 640
    np.testing.assert_allclose(out["face_det_box"][0], det[0, :4] * scale + [x0, y0, x0, y0], atol=1e-3)
    np.testing.assert_allclose(out["face_kps"][0], kps[0] * scale + [x0, y0], atol=1e-3)
    # The landmarks are on the face: inside the SSD box.
    kps_img = out["face_kps"][0]
    assert ((kps_img >= boxes[0][:2]) & (kps_img <= boxes[0][2:])).all()
    # Channel order matters: the RGB crop fed as if it were BGR gives another embedding.
    wrong = recognizer.get_feat(face_align.norm_crop(bgr[:, :, ::-1].copy(), landmark=kps[0], image_size=112))[0]
    assert np.abs(wrong - expected).max() > 1e-3


def test_the_largest_of_six_faces_in_t1(stage):
    image = insightface_sample("t1.jpg")
    out = stage(make_batch([image]))
    boxes, _ = ssd_faces(image)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert out["face_count"][0] == 6
    np.testing.assert_allclose(out["face_box"][0], boxes[np.argmax(areas)], atol=1e-4)
    assert out["face_ok"][0]


def test_no_face_is_face_ok_false_with_zeros(stage):
    out = stage(make_batch([data.coffee(), np.zeros((64, 48, 3), np.uint8)]))
    for i in range(2):
        assert out["face_status"][i] == FACE_NO_FACE
        assert_no_face(out, i)
    assert list(out["status"]) == ["ok", "ok"]


def test_small_face_in_a_full_body_photo_is_found_in_the_person_box(stage):
    canvas, person, face = full_body_like()
    out = stage(make_batch([canvas, canvas], person_boxes=[np.zeros(4), person]))
    assert out["face_status"][0] == FACE_NO_FACE  # the whole-image pass alone misses it
    assert_no_face(out, 0)
    assert out["face_ok"][1] and out["face_found_by"][1] == "person_box"
    assert box_iou(face, out["face_box"][1][None])[0] > 0.7  # mapped back to image coordinates
    # The kept crop is the 1.5x square around the mapped-back box.
    x0, y0, side = expand_square(out["face_box"][1], scale=1.5)
    np.testing.assert_array_equal(out["face_crop"][1], resize_square(crop_square(canvas, x0=x0, y0=y0, side=side), 224))


def test_a_person_box_outside_the_image_counts_as_unknown(stage):
    canvas, _, _ = full_body_like()
    out = stage(make_batch([canvas], person_boxes=[[5000, 5000, 6000, 7000]]))
    assert out["face_status"][0] == FACE_NO_FACE


@pytest.mark.parametrize("window", [(slice(60, None), slice(185, None)), (slice(0, 150), slice(0, 260))],
                         ids=["top-left", "bottom-right"])
def test_face_at_the_image_border_is_zero_padded(stage, window):
    image = np.ascontiguousarray(data.astronaut()[window])
    out = stage(make_batch([image]))
    assert out["face_ok"][0]
    x0, y0, side = expand_square(out["face_box"][0], scale=1.5)
    assert x0 < 0 or y0 < 0 or x0 + side > image.shape[1] or y0 + side > image.shape[0]
    crop = crop_square(image, x0=x0, y0=y0, side=side)
    np.testing.assert_array_equal(out["face_crop"][0], resize_square(crop, 224))
    # The part outside the image is black in the kept crop.
    outside = np.ones((side, side), bool)
    outside[max(0, -y0) : image.shape[0] - y0, max(0, -x0) : image.shape[1] - x0] = False
    assert outside.any() and not crop[outside].any()


def test_grayscale_rgba_and_16_bit_images_give_the_rgb_result(stage):
    rgb = data.astronaut()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    wide = rgb.astype(np.uint16) * 257  # 16-bit: the top byte is the 8-bit value
    out = stage(make_batch([rgb, rgba, wide, gray, gray[:, :, None]]))
    for i in (1, 2):
        for column in CONTRACT:
            np.testing.assert_array_equal(out[column][i], out[column][0], err_msg=column)
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    reference = stage(make_batch([gray3]))
    assert out["face_ok"][3] and out["face_ok"][4]
    for column in CONTRACT:
        np.testing.assert_array_equal(out[column][3], reference[column][0], err_msg=column)
        np.testing.assert_array_equal(out[column][4], reference[column][0], err_msg=column)


def test_an_image_decode_should_have_rejected_is_an_error_naming_it(stage):
    with pytest.raises(ValueError, match="img1.*float32"):
        stage(make_batch([data.astronaut(), data.astronaut().astype(np.float32)]))
    with pytest.raises(ValueError, match="person_box"):
        batch = make_batch([data.astronaut()])
        del batch["person_box"]
        stage(batch)


def test_failed_rows_pass_through_with_placeholders(stage):
    batch = make_batch([data.astronaut(), data.astronaut()], statuses=["ok", "no_person"])
    batch["reject_stage"][1] = "densepose"
    out = stage(batch)
    assert out["face_ok"][0] and out["face_status"][1] == FACE_NOT_RUN
    assert_no_face(out, 1)
    assert out["status"][1] == "no_person" and out["reject_stage"][1] == "densepose"


def test_empty_batch(stage):
    out = stage(make_batch([]))
    for column, (dtype, shape) in CONTRACT.items():
        assert out[column].shape == (0, *shape), column


def test_ssd_face_without_landmarks_is_flagged_not_embedded(tiny_antelopev2):
    """The tiny SCRFD peaks near 0.93: a 0.99 threshold makes it find nothing in the SSD's crop."""
    stage = FaceStage(config=FaceConfig(antelopev2_dir=tiny_antelopev2, det_threshold=0.99, crop_size=96))
    out = stage(make_batch([data.astronaut()]))
    assert not out["face_ok"][0] and out["face_status"][0] == FACE_NO_LANDMARKS
    assert out["face_score"][0] > 0.99 and out["face_box"][0].any() and out["face_found_by"][0] == "image"
    assert out["face_crop"].shape == (1, 96, 96, 3) and out["face_crop"][0].any()  # kept for inspection
    for column in ("face_emb", "face_emb_norm", "face_det_score", "face_det_box", "face_kps"):
        assert not np.asarray(out[column][0]).any(), column


def test_a_non_finite_embedding_is_flagged_not_stored(tmp_path, tiny_antelopev2):
    folder = tmp_path / "nan"
    shutil.copytree(tiny_antelopev2, folder)
    model = onnx.load(str(folder / GLINTR_FILE))
    bias = next(t for t in model.graph.initializer if t.name.startswith("fc_b"))
    values = numpy_helper.to_array(bias).copy()
    values[7] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(folder / GLINTR_FILE))
    out = FaceStage(config=FaceConfig(antelopev2_dir=folder))(make_batch([data.astronaut()]))
    assert not out["face_ok"][0] and out["face_status"][0] == FACE_NONFINITE
    assert not out["face_emb"][0].any() and out["face_emb_norm"][0] == 0
    assert out["face_det_score"][0] > 0.5  # the landmarks were found


def test_fixed_batch_recogniser_is_run_one_face_at_a_time(tmp_path, tiny_antelopev2, stage):
    folder = tmp_path / "fixed"
    shutil.copytree(tiny_antelopev2, folder)
    (folder / GLINTR_FILE).write_bytes(build_tiny_glintr100(seed=0, batch=1))  # same weights, batch fixed to 1
    fixed = FaceStage(config=FaceConfig(antelopev2_dir=folder))
    assert fixed.embedder.max_batch == 1 and stage.embedder.max_batch == 32
    images = [data.astronaut(), insightface_sample("t1.jpg"), data.chelsea()]
    out, expected = fixed(make_batch(images)), stage(make_batch(images))
    assert out["face_ok"].all()
    np.testing.assert_allclose(out["face_emb"], expected["face_emb"], rtol=1e-5, atol=1e-5)


def test_nested_antelopev2_layout_is_accepted(tmp_path, tiny_antelopev2):
    shutil.copytree(tiny_antelopev2, tmp_path / "models" / "antelopev2" / "antelopev2")
    stage = FaceStage(config=FaceConfig(antelopev2_dir=tmp_path / "models" / "antelopev2"))
    assert stage.embedder.detector_path == tmp_path / "models" / "antelopev2" / "antelopev2" / SCRFD_FILE
    assert stage(make_batch([data.astronaut()]))["face_ok"][0]


def test_missing_or_misassigned_model_files_are_clear_errors(tmp_path, tiny_antelopev2):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FaceStage(config=FaceConfig(antelopev2_dir=tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_antelopev2 / SCRFD_FILE, partial)
    with pytest.raises(FileNotFoundError, match=r"glintr100.onnx.*found \['scrfd_10g_bnkps.onnx'\]"):
        FaceStage(config=FaceConfig(antelopev2_dir=partial))
    with pytest.raises(ValueError, match="not take it for an SCRFD detector"):
        FaceStage(config=FaceConfig(antelopev2_dir=tiny_antelopev2, detector_file=GLINTR_FILE))
    with pytest.raises(ValueError, match="not take it for an ArcFace recogniser"):
        FaceStage(config=FaceConfig(antelopev2_dir=tiny_antelopev2, recognizer_file=SCRFD_FILE))


def test_config_validation(tiny_antelopev2):
    for bad, message in (({"det_size": 300}, "det_size must be a positive multiple of 32"),
                         ({"confidence": 1.5}, r"confidence must be in \[0, 1\]"),
                         ({"crop_scale": 0.5}, "crop_scale must be at least 1"),
                         ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
                         ({"person_upper_fraction": 0.0}, r"person_upper_fraction must be in \(0, 1\]"),
                         ({"crop_size": 0}, "crop_size must be positive"),
                         ({"max_batch": 0}, "max_batch >= 1")):
        with pytest.raises(ValueError, match=message):
            FaceConfig(antelopev2_dir=tiny_antelopev2, **bad)


def test_provider_is_reported_and_cuda_never_silently_falls_back(stage, tiny_antelopev2):
    assert stage.provider == "CPUExecutionProvider"
    config = FaceConfig(antelopev2_dir=tiny_antelopev2, device="cuda")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert FaceStage(config=config).provider == "CUDAExecutionProvider"
    else:
        with pytest.raises(RuntimeError, match="asked onnxruntime .* for CUDAExecutionProvider"):
            FaceStage(config=config)


def test_nothing_is_downloaded(tiny_antelopev2, no_network):
    stage = FaceStage(config=FaceConfig(antelopev2_dir=tiny_antelopev2))
    assert stage(make_batch([data.astronaut()]))["face_ok"][0]


def test_an_scrfd_face_that_is_not_the_ssd_face_is_not_used(tiny_antelopev2):
    """match_iou 1.0 demands the SCRFD box be the SSD box exactly: the tiny SCRFD's central square is not."""
    strict = FaceStage(config=FaceConfig(antelopev2_dir=tiny_antelopev2, match_iou=1.0))
    out = strict(make_batch([data.astronaut()]))
    assert out["face_status"][0] == FACE_NO_LANDMARKS and not out["face_emb"][0].any()
