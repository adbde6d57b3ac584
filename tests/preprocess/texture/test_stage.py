"""TextureStage on a Ray-style batch: per-row failures recorded, RGB in and out, placeholders for failures."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.common import STATUS_OK
from preprocess.texture import core
from preprocess.texture.stage import TextureConfig, TextureStage
from preprocess.texture.synthetic import synthetic_image, synthetic_iuv
from tests.conftest import stage_batch


def _batch(rows: list[tuple[str, np.ndarray, np.ndarray, str]]) -> dict[str, np.ndarray]:
    """Rows of (image id, image, iuv, status), as DensePose hands them on."""
    return stage_batch(len(rows), status=[r[3] for r in rows], ids=[r[0] for r in rows], failed_stage="densepose",
                       failed_detail="no person found", image=[r[1] for r in rows], iuv=[r[2] for r in rows])


@pytest.fixture(scope="module")
def stage() -> TextureStage:
    return TextureStage(config=TextureConfig())


def test_maps_good_rows_and_records_bad_ones(stage):
    rgb, iuv = synthetic_image(120, 80, seed=31), synthetic_iuv(120, 80, seed=31)
    grey = synthetic_image(90, 70, seed=32)[:, :, 0]
    grey_iuv = synthetic_iuv(90, 70, seed=32)
    too_big = iuv.copy()
    too_big[0, 0, 0] = 30
    batch = _batch(
        [
            ("good", rgb, iuv, STATUS_OK),
            ("mismatch", rgb, iuv[:60], STATUS_OK),
            ("empty", rgb, np.zeros_like(iuv), STATUS_OK),
            ("part30", rgb, too_big, STATUS_OK),
            ("upstream", rgb, iuv, "no_person"),
            ("grey", grey, grey_iuv, STATUS_OK),
            ("float", rgb.astype(np.float32), iuv, STATUS_OK),
        ]
    )
    out = stage(batch)
    assert out["texture"].shape == (7, 512, 512, 3) and out["texture"].dtype == np.uint8
    statuses = [STATUS_OK, "bad_iuv", "texture_empty", "bad_iuv", "no_person", STATUS_OK, "bad_image"]
    assert list(out["status"]) == statuses
    assert list(out["reject_stage"]) == ["", "texture", "texture", "texture", "densepose", "", "texture"]
    assert out["detail"][1] == "mismatch: IUV is 60x80 (HxW) but the image is 120x80; they must be the same size"
    assert out["detail"][4] == "no person found"  # an upstream failure passes through untouched
    assert "float32" in out["detail"][6]
    for failed in (1, 2, 3, 4, 6):
        assert not out["texture"][failed].any()
    # RGB in, RGB out: the BGR mapping of the BGR image, channels swapped back.
    expected_bgr, _ = core.map_texture(np.ascontiguousarray(rgb[:, :, ::-1]), iuv)
    np.testing.assert_array_equal(out["texture"][0], expected_bgr[:, :, ::-1])
    expected_grey, _ = core.map_texture(np.repeat(grey[:, :, None], 3, axis=2), grey_iuv)
    np.testing.assert_array_equal(out["texture"][5], expected_grey)
    assert batch["status"][1] == STATUS_OK  # the caller's batch is not modified


def test_with_the_reference_mask_image(fixture_dir, fixture_cases):
    stage = TextureStage(config=TextureConfig(part_masks=fixture_dir / "reference_part_masks_200.png"))
    case = fixture_cases["a"]
    out = stage(_batch([("a", np.ascontiguousarray(case["image"][:, :, ::-1]), case["iuv"], STATUS_OK)]))
    np.testing.assert_array_equal(out["texture"][0], case["texture"][:, :, ::-1])


def test_config_refuses_sizes_without_a_mapping():
    with pytest.raises(ValueError, match="no atlas -> normal mapping for atlas_size=200, normal_size=256"):
        TextureConfig(normal_size=256)


def test_a_batch_without_the_iuv_column_is_a_pipeline_error(stage):
    batch = _batch([("good", synthetic_image(20, 20, seed=1), synthetic_iuv(20, 20, seed=1), STATUS_OK)])
    del batch["iuv"]
    with pytest.raises(ValueError, match="texture stage needs column 'iuv'"):
        stage(batch)
