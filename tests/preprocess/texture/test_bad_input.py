"""Inputs the mapping cannot use fail with a reason and a message that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.common import SampleError
from preprocess.texture import core
from preprocess.texture.synthetic import synthetic_image, synthetic_iuv


@pytest.fixture(scope="module")
def image_iuv() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_image(64, 48, seed=11), synthetic_iuv(64, 48, seed=11)


def test_iuv_of_another_size(image_iuv):
    image, iuv = image_iuv
    with pytest.raises(SampleError, match=r"IUV is 32x48 \(HxW\) but the image is 64x48") as caught:
        core.map_texture(image, iuv[:32])
    assert caught.value.reason == "bad_iuv"


def test_part_index_above_24(image_iuv):
    image, iuv = image_iuv
    iuv = iuv.copy()
    iuv[3, 4, 0] = 25
    iuv[5, 6, 0] = 200
    with pytest.raises(SampleError, match=r"must be 0\.\.24; 2 pixel\(s\) exceed it \(max 200\)") as caught:
        core.map_texture(image, iuv)
    assert caught.value.reason == "bad_iuv"


@pytest.mark.parametrize(
    "iuv,what",
    [
        (np.zeros((64, 48), np.uint8), r"uint8 \(64, 48\)"),
        (np.zeros((64, 48, 3), np.uint16), r"uint16 \(64, 48, 3\)"),
        (np.zeros((64, 48, 4), np.uint8), r"uint8 \(64, 48, 4\)"),
        ([[0]], "list"),
    ],
)
def test_iuv_of_another_layout(image_iuv, iuv, what):
    with pytest.raises(SampleError, match=r"IUV must be an H x W x 3 uint8 array \(I, U, V\), got " + what) as caught:
        core.map_texture(image_iuv[0], iuv)
    assert caught.value.reason == "bad_iuv"


def test_no_body_pixel_is_texture_empty(image_iuv):
    image, _ = image_iuv
    iuv = np.zeros((64, 48, 3), np.uint8)
    iuv[:, :, 1:] = 128  # U and V without a part do not count
    with pytest.raises(SampleError, match="no body pixels") as caught:
        core.map_texture(image, iuv)
    assert caught.value.reason == "texture_empty"


def test_only_black_body_pixels_is_texture_empty(image_iuv):
    _, iuv = image_iuv
    with pytest.raises(SampleError, match=r"pure black \(0, 0, 0\)") as caught:
        core.map_texture(np.zeros((64, 48, 3), np.uint8), iuv)
    assert caught.value.reason == "texture_empty"


def test_an_empty_image_is_texture_empty():
    with pytest.raises(SampleError, match="no pixels") as caught:
        core.map_texture(np.zeros((0, 5, 3), np.uint8), np.zeros((0, 5, 3), np.uint8))
    assert caught.value.reason == "texture_empty"


def test_a_malformed_image_is_a_programming_error(image_iuv):
    _, iuv = image_iuv
    with pytest.raises(ValueError, match=r"image must be an H x W x 3 uint8 array, got float32 \(64, 48, 3\)"):
        core.map_texture(np.zeros((64, 48, 3), np.float32), iuv)


def test_part_masks_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"part_masks must be bool \[24, 200, 200\], got uint8"):
        core.TextureMapper(part_masks=np.zeros((24, 200, 200), np.uint8))


def test_part_mask_files_are_checked(tmp_path):
    import cv2

    with pytest.raises(core.PartMasksError, match=r"masks\.png: no such file"):
        core.read_part_masks(tmp_path / "masks.png", atlas_size=200)
    (tmp_path / "masks.png").write_bytes(b"not a png")
    with pytest.raises(core.PartMasksError, match=r"masks\.png: OpenCV cannot decode"):
        core.read_part_masks(tmp_path / "masks.png", atlas_size=200)
    cv2.imwrite(str(tmp_path / "masks.png"), np.zeros((600, 400), np.uint8))
    with pytest.raises(core.PartMasksError, match=r"600x400 \(HxW\); atlas_size=200 needs 1200x800"):
        core.read_part_masks(tmp_path / "masks.png", atlas_size=200)


def test_unknown_synthetic_kind():
    with pytest.raises(ValueError, match="kind must be 'body' or 'scatter'"):
        synthetic_iuv(10, 10, seed=0, kind="dense")
