import cv2
import numpy as np
import pytest

from preprocess.face.crop import box_iou, clip_box, crop_square, expand_square, head_region, resize_square


def reference_expand(box, scale=1.5):
    """MCLD's expand_image_region (preprocess_data/face_interface.py), as the oracle for positive boxes."""
    x1, y1, x2, y2 = box
    h, w = (y2 - y1) * scale, (x2 - x1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    length = h if h > w else w
    return np.array([cx - length / 2, cy - length / 2, cx + length / 2, cy + length / 2], dtype=int)


def padded_window(image, x0, y0, side):
    """An independent formulation of the zero-padded crop: pad everything by `side`, then slice."""
    padded = np.pad(image, ((side, side), (side, side), (0, 0)))
    ys, xs = y0 + side, x0 + side
    window = np.zeros((side, side, image.shape[2]), image.dtype)
    # Beyond the padded area (a window entirely off the image) everything stays zero.
    ys0, xs0 = max(ys, 0), max(xs, 0)
    ys1, xs1 = min(ys + side, padded.shape[0]), min(xs + side, padded.shape[1])
    if ys1 > ys0 and xs1 > xs0:
        window[ys0 - ys : ys1 - ys, xs0 - xs : xs1 - xs] = padded[ys0:ys1, xs0:xs1]
    return window


@pytest.mark.parametrize("box", [(100, 50, 180, 170), (40, 60, 140, 120), (10, 10, 30, 50)])
def test_expand_square_matches_the_reference_on_integer_boxes(box):
    x0, y0, side = expand_square(np.array(box, float), scale=1.5)
    assert np.array_equal([x0, y0, x0 + side, y0 + side], reference_expand(box))


def test_expand_square_is_square_and_centred_where_the_reference_is_not():
    box = np.array([-7.3, 3.6, 40.2, 61.9])
    ref = reference_expand(box)
    assert ref[2] - ref[0] != ref[3] - ref[1]  # the reference's truncation: 87 x 86
    x0, y0, side = expand_square(box, scale=1.5)
    assert side == round(1.5 * (61.9 - 3.6))
    assert 0 <= (box[0] + box[2]) / 2 - (x0 + side / 2) < 1  # floored: within a pixel
    assert 0 <= (box[1] + box[3]) / 2 - (y0 + side / 2) < 1


@pytest.mark.parametrize(
    "x0,y0,side",
    [(10, 20, 30), (-15, -5, 40), (50, 60, 40), (-20, -20, 200), (200, 10, 30), (-100, -100, 50), (0, 0, 1)],
)
def test_crop_square_equals_padding_then_slicing(x0, y0, side):
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (80, 90, 3), dtype=np.uint8)  # no zeros: padding is visible
    crop = crop_square(image, x0=x0, y0=y0, side=side)
    assert crop.shape == (side, side, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, padded_window(image, x0, y0, side))


def test_crop_square_pads_with_zeros_where_it_leaves_the_image():
    image = np.full((50, 50, 3), 200, np.uint8)
    crop = crop_square(image, x0=-10, y0=40, side=20)
    assert (crop[:, :10] == 0).all() and (crop[10:, :] == 0).all()
    assert (crop[:10, 10:] == 200).all()


def test_resize_square_enlarges_bicubic_and_shrinks_by_area():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (37, 37, 3), dtype=np.uint8)
    bicubic = cv2.resize(small, (224, 224), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(resize_square(small, 224), bicubic)
    large = rng.integers(0, 256, (500, 500, 3), dtype=np.uint8)
    area = cv2.resize(large, (224, 224), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_square(large, 224), area)
    same = resize_square(small, 37)
    np.testing.assert_array_equal(same, small)
    assert same is not small


def test_clip_box():
    np.testing.assert_array_equal(clip_box(np.array([-5, 10, 60, 30]), height=40, width=50), [0, 10, 50, 30])
    assert clip_box(np.array([60, 10, 70, 30]), height=40, width=50) is None  # right of the image
    assert clip_box(np.array([10, 10, 10, 30]), height=40, width=50) is None  # empty
    assert clip_box(np.array([np.nan, 10, 20, 30]), height=40, width=50) is None
    assert clip_box(np.array([1, 2, 3]), height=40, width=50) is None


def test_head_region_covers_the_top_of_the_person_box():
    x0, y0, side = head_region(np.array([100, 200, 300, 1000]), upper_fraction=0.4)
    assert side == 320  # max(width 200, 0.4 x height 800)
    assert (x0, y0) == (40, 184)  # centred on x = 200; a twentieth of the side above the box
    x0, y0, side = head_region(np.array([0, 0, 600, 400]), upper_fraction=0.4)
    assert side == 600 and (x0, y0) == (0, -30)  # a wide box: its width wins


def test_box_iou():
    a = np.array([0, 0, 10, 10])
    ious = box_iou(a, np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]]))
    np.testing.assert_allclose(ious, [1.0, 50 / 150, 0.0, 0.0])
    assert box_iou(a, np.zeros((0, 4))).shape == (0,)
