"""The benchmark entry point runs and reports both pipelines per step (figures are not asserted)."""

from __future__ import annotations

import json

import cv2

from preprocess.texture.bench import main
from preprocess.texture.synthetic import synthetic_image, synthetic_iuv


def test_bench_reports_both_breakdowns(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "img.png"), synthetic_image(160, 110, seed=41))
    cv2.imwrite(str(tmp_path / "iuv.png"), synthetic_iuv(160, 110, seed=41))
    assert main(["--case", str(tmp_path / "img.png"), str(tmp_path / "iuv.png"), "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["machine"]["opencv_threads"] == 1
    assert set(report["ours_one_time_setup"]) == {"chart_s", "part_masks_s", "gather_index_s"}
    (case,) = report["cases"]
    assert case["case"] == "img" and (case["height"], case["width"]) == (160, 110)
    assert case["identical_output"] is True
    assert {"sample", "inpaint", "atlas2normal_init", "atlas2normal_convert"} <= set(case["reference"]["steps_s"])
    assert {"sample", "inpaint", "tile_prepare", "gather"} == set(case["ours"]["steps_s"])
    assert case["ours_total_over_reference_inpaint"] > 0


def test_bench_names_an_unreadable_case(tmp_path, capsys):
    assert main(["--case", str(tmp_path / "none.png"), str(tmp_path / "none_iuv.png"), "--repeats", "1"]) == 2
    assert "none.png" in capsys.readouterr().err


def test_bench_default_cases_are_deepfashion_sized(capsys):
    assert main(["--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [case["case"] for case in report["cases"]] == ["synthetic-body-1101x750", "synthetic-scatter-1101x750"]
    assert all(case["identical_output"] for case in report["cases"])


def test_bench_needs_a_repeat():
    import pytest

    with pytest.raises(SystemExit):
        main(["--repeats", "0"])
