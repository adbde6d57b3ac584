"""Parity with the MCLD reference: on its fixtures, and against the loop oracle on other sizes and IUV maps."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.texture import core, reference
from preprocess.texture.synthetic import synthetic_image, synthetic_iuv

from .conftest import within

# Measured with the derived part masks (docs/ARCHITECTURE.md, "Texture"): case a 0.9965 (atlas) / 0.9963
# (texture), case b 0.99013 / 0.9924. TELEA spreads each boundary texel where the derived masks and the
# reference's mask image disagree (2,262 texels, 0.24% of the atlas) over its neighbours; b, a sparse atlas
# that is mostly inpainted, shows it most: its atlas clears the bar by 126 of 960,000 pixels, so a change
# to the mask rule shows here first. With the reference's own mask image the output is bit-exact (below).
DERIVED_MASKS_MIN_WITHIN_2 = {"a": 0.99, "b": 0.99}
#: A case with no floor recorded above (the held-back ones) is held to this one.
DEFAULT_MIN_WITHIN_2 = 0.99


def test_fixtures_with_the_reference_mask_image_are_bit_exact(fixture_dir, fixture_cases):
    masks = core.read_part_masks(fixture_dir / "reference_part_masks_200.png", atlas_size=200)
    mapper = core.TextureMapper(part_masks=masks)
    for name, case in fixture_cases.items():
        texture, atlas = mapper(case["image"], case["iuv"])
        np.testing.assert_array_equal(atlas, case["atlas"], err_msg=f"case {name} atlas")
        np.testing.assert_array_equal(texture, case["texture"], err_msg=f"case {name} texture")


def test_fixtures_with_the_derived_masks(fixture_cases):
    for name, case in fixture_cases.items():
        texture, atlas = core.map_texture(case["image"], case["iuv"])
        assert atlas.shape == (1200, 800, 3) and texture.shape == (512, 512, 3)
        floor = DERIVED_MASKS_MIN_WITHIN_2.get(name, DEFAULT_MIN_WITHIN_2)
        assert within(atlas, case["atlas"]) >= floor, f"case {name}: atlas {within(atlas, case['atlas']):.4f}"
        assert within(texture, case["texture"]) >= floor, f"case {name}: texture {within(texture, case['texture']):.4f}"


def _full_tile_case(*, uniform: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 256 x 256 patch whose (U, V) take every value once: part 7's tile is sampled everywhere."""
    iuv = np.zeros((300, 280, 3), np.uint8)
    v, u = np.mgrid[0:256, 0:256]
    iuv[10:266, 5:261] = np.stack([np.full_like(u, 7), u, v], axis=-1)
    iuv[270:290, 10:200] = (12, 100, 30)  # and a second, small part
    image = np.full((300, 280, 3), 77, np.uint8) if uniform else synthetic_image(300, 280, seed=5)
    image = np.maximum(image, 1)  # no black pixel: the whole tile counts as sampled
    return image, iuv


def _cases():
    """(name, image, iuv): seeded maps of other sizes, and the corners of the reference's arithmetic."""
    yield "body-97x61", synthetic_image(97, 61, seed=1), synthetic_iuv(97, 61, seed=1, parts=24)
    yield "scatter-333x222", synthetic_image(333, 222, seed=2), synthetic_iuv(333, 222, seed=2, kind="scatter")
    yield "body-640x480", synthetic_image(640, 480, seed=3), synthetic_iuv(640, 480, seed=3)
    image = synthetic_image(400, 260, seed=4)
    iuv = synthetic_iuv(400, 260, seed=4, parts=20)
    image[iuv[:, :, 0] == iuv[200, 130, 0]] = 0  # one part sampled only in black: no sample at all
    image[::7, ::5] = 0  # and black pixels elsewhere, which the reference cannot tell from no sample
    yield "black-400x260", image, iuv
    yield "full-tile", *_full_tile_case(uniform=False)
    yield "full-tile-one-colour", *_full_tile_case(uniform=True)


@pytest.mark.parametrize("name,image,iuv", list(_cases()), ids=lambda value: value if isinstance(value, str) else "")
def test_matches_the_reference_loop_bit_for_bit(name, image, iuv):
    """Same part masks, so any difference is the vectorisation's: there must be none."""
    expected_texture, expected_atlas = reference.reference_texture(image, iuv)
    texture, atlas = core.map_texture(image, iuv)
    assert expected_atlas.any(), name  # the case exercises something
    np.testing.assert_array_equal(atlas, expected_atlas, err_msg=name)
    np.testing.assert_array_equal(texture, expected_texture, err_msg=name)


def test_the_stretch_round_trip_loses_what_the_reference_loses():
    """A tile whose brightest value is 200 goes 0..200 -> 0..255 -> 0..200 through uint8 and loses levels."""
    forward, back = core.rescale_tables(0, 200)
    assert forward[200] == 255 and back[255] == 200
    lost = np.flatnonzero(back[forward[:201]] != np.arange(201))
    assert lost.size > 0 and np.all(back[forward[lost]] == lost - 1)


def test_rgb_in_gives_rgb_out():
    image = synthetic_image(120, 90, seed=9)
    iuv = synthetic_iuv(120, 90, seed=9)
    texture_bgr, atlas_bgr = core.map_texture(image, iuv)
    texture_rgb, atlas_rgb = core.map_texture(np.ascontiguousarray(image[:, :, ::-1]), iuv)
    np.testing.assert_array_equal(texture_rgb, texture_bgr[:, :, ::-1])
    np.testing.assert_array_equal(atlas_rgb, atlas_bgr[:, :, ::-1])
