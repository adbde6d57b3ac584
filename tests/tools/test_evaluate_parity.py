"""Parity with the reference's evaluate.py on every set_* folder of the evaluation fixtures (random-weight
backbones; expected.json holds what the reference printed and its per-image values)."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from tests.tools.conftest import EVAL
from tools.cli import main

#: The fixture README's suggested tolerances for a CPU evaluator fed the same files.
ABS = {"LPIPS": 1e-6, "SSIM": 2e-6, "SSIM_256": 2e-6, "PSNR": 1e-9,
       "Face cosine similarity": 1e-5, "Face euclidean distance": 1e-4}
PER_IMAGE_ABS = {"lpips": 1e-6, "ssim": 2e-6, "ssim_256": 2e-6, "psnr": 1e-9}
FID_REL = 1e-4
FOLDERS = {"256": "256x176", "512": "512x352"}


def _value(recorded) -> float:
    return float(recorded)  # "inf" / "nan" strings included


def _close(ours, expected: float, tolerance: float, *, relative: bool = False) -> bool:
    ours = float(ours)
    if not math.isfinite(expected):
        return (math.isnan(expected) and math.isnan(ours)) or ours == expected
    if not math.isfinite(ours):
        return False
    bound = tolerance * abs(expected) if relative else tolerance
    return abs(ours - expected) <= bound


@pytest.mark.parametrize("set_name", EVAL.params())
def test_metrics_match_the_reference(set_name, eval_fixture_dir, eval_models, tmp_path):
    folder = eval_fixture_dir / set_name
    expected = json.loads((folder / "expected.json").read_text())
    resolutions = [res for res in ("256", "512") if res in expected["aggregates"]]
    out = tmp_path / "report"
    assert main(["evaluate", str(folder / "mcld"), "--gt", str(folder / "gt"),
                 "--train-images", str(folder / "fashion" / "train"), "--models", str(eval_models),
                 "-o", str(out), "--resolutions", ",".join(resolutions), "--cache-dir", str(tmp_path / "cache"),
                 "--batch-size", "3", "--workers", "0", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = pq.read_table(out / "per_image.parquet").to_pylist()
    failures = []
    for res in resolutions:
        ours = metrics["resolutions"][FOLDERS[res]]
        recorded = expected["aggregates"][res]
        # The reference's *.jpg glob: the held-back set's .png/.JPG/.jpeg training files are not FID's real side.
        if ours["FID_real_images"] != len(expected["resolutions"][res]["fid_real_side_images_in_order"]):
            failures.append(f"{res}: {ours['FID_real_images']} FID real images")
        if not _close(ours["FID"], recorded["FID"]["value"], FID_REL, relative=True):
            failures.append(f"{res} FID {ours['FID']} vs {recorded['FID']['value']}")
        for label, tolerance in ABS.items():
            if label in recorded and not _close(_value(ours[label]), _value(recorded[label]["value"]), tolerance):
                failures.append(f"{res} {label} {ours[label]} vs {recorded[label]['value']}")
        per_image = expected["resolutions"][res]["per_image"]
        ours_by_name = {row["name"]: row for row in rows if row["resolution"] == FOLDERS[res]}
        assert sorted(ours_by_name) == sorted(per_image)
        for name, values in per_image.items():
            for metric, tolerance in PER_IMAGE_ABS.items():
                if not _close(ours_by_name[name][metric], _value(values[metric]), tolerance):
                    failures.append(f"{res} {name} {metric} {ours_by_name[name][metric]} vs {values[metric]}")
    face_recorded = expected["aggregates"].get("face")
    if face_recorded:
        for label in ("Face cosine similarity", "Face euclidean distance"):
            if not _close(_value(metrics["face"][label]), _value(face_recorded[label]["value"]), ABS[label]):
                failures.append(f"face {label} {metrics['face'][label]} vs {face_recorded[label]['value']}")
        ours_256 = {row["name"]: row for row in rows if row["resolution"] == "256x176"}
        for name, pair in expected["face"]["per_pair_in_order"].items():
            row = ours_256[name]
            if pair.get("skipped"):
                # The reference drops the pair silently; we keep it, with the side that has no face.
                if row["face_status"] == "ok":
                    failures.append(f"face {name}: scored, the reference found no face")
                continue
            if row["face_status"] != "ok" or not (_close(row["face_cosine"], pair["cosine"], 1e-5)
                                                  and _close(row["face_euclidean"], pair["euclidean"], 1e-4)):
                failures.append(f"face {name}: {row['face_status']} {row['face_cosine']} {row['face_euclidean']} "
                                f"vs {pair['cosine']} {pair['euclidean']}")
        dropped = sum(1 for pair in expected["face"]["per_pair_in_order"].values() if pair.get("skipped"))
        assert metrics["face"]["pairs_scored"] == len(expected["face"]["per_pair_in_order"]) - dropped
    assert not failures, "\n".join(failures)
