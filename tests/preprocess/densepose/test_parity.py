"""Acceptance: the dump CLI reproduces what detectron2 itself computed for every fixture case."""

from pathlib import Path

import numpy as np
import pytest

from preprocess.densepose.__main__ import main

from .conftest import fixture_cases

CASES = [pytest.param(c, id=f"{c[0]}-{c[2]['image']}") for c in fixture_cases()] or [
    pytest.param(None, id="no-fixtures")
]


@pytest.mark.parametrize("case", CASES)
def test_dump_cli_reproduces_detectron2(case, fixtures_root, tmp_path):
    folder, spec, item = case
    root = fixtures_root / folder
    status = main(["--config", str(root / spec["config"]), "--weights", str(root / spec["weights"]),
                   "--out", str(tmp_path), "--device", "cpu", str(root / item["image"])])
    assert status == 0
    got = np.load(tmp_path / (Path(item["image"]).stem + ".npz"))
    want = np.load(root / item["expected"])

    assert sorted(got.files) == sorted(want.files)
    n = len(want["scores"])
    assert n == item["detections"]
    assert len(got["scores"]) == n
    for key in ("boxes_xyxy", "scores", "boxes_xywh"):
        assert got[key].dtype == want[key].dtype
        np.testing.assert_allclose(got[key], want[key], atol=1e-3, rtol=0, err_msg=key)
    for i in range(n):
        labels, expected = got[f"labels_{i}"], want[f"labels_{i}"]
        assert labels.dtype == np.uint8 and labels.shape == expected.shape, i
        agree = labels == expected
        # Float32 rounding differs between CPU kinds (the fixtures were made with AVX-512; an AVX2 machine runs
        # other kernels) and flips a pixel at a part border now and then. 0.5% of a small detection is under one
        # pixel (detection 60 of r101dl small_512x352 has 171), so one flipped pixel is always allowed.
        allowed = max(1, int(0.005 * agree.size))
        assert (~agree).sum() <= allowed, f"detection {i}: labels agree on {agree.mean():.4f} of {agree.size} pixels"
        uv, uv_expected = got[f"uv_{i}"], want[f"uv_{i}"]
        assert uv.shape == uv_expected.shape == (2, *labels.shape)
        assert np.abs(uv[:, agree] - uv_expected[:, agree]).max(initial=0) <= 1e-2, i
    iuv, iuv_expected = got["iuv_top1"], want["iuv_top1"]
    assert iuv.dtype == np.uint8 and iuv.shape == iuv_expected.shape == (item["height"], item["width"], 3)
    assert (iuv == iuv_expected).all(axis=-1).mean() >= 0.995
