"""The models file's feature modes (face.mode, texture.part_masks): read, recorded, refused when bad."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
import yaml

from preprocess.build_shards import main as build_shards
from preprocess.job.features import fingerprint
from preprocess.job.config import JobConfig
from preprocess.job.layout import build_pipeline
from preprocess.models import ModelsError, read_models_file, tiny_models
from preprocess.texture import uvdata
from preprocess.texture.stage import TextureStage
from tests.preprocess.feature_modes import (
    TEXTURE_FIXTURES,
    derived_part_masks_png,
    write_part_masks_png,
    write_tiny_models_file,
)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, monkeypatch_module):
    cache = tmp_path_factory.mktemp("models-cache")
    monkeypatch_module.setenv("MCLD_DATA_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def masks_png(tmp_path_factory):
    return derived_part_masks_png(tmp_path_factory.mktemp("masks") / "texture_bg_200.png")


def test_modes_are_read_and_default_to_paper(tmp_path, tiny_cache, masks_png):
    paths = read_models_file(write_tiny_models_file(tmp_path / "m.yaml", face_mode="reference", part_masks=masks_png))
    assert paths.tiny and paths.face_mode == "reference" and paths.texture_part_masks == str(masks_png)
    assert paths.vae == tiny_models().vae
    plain = read_models_file(write_tiny_models_file(tmp_path / "plain.yaml"))
    assert plain.face_mode == "paper" and plain.texture_part_masks is None


def _settings_and_fingerprint(models_file, tmp_path) -> tuple[dict, str]:
    config = JobConfig(images=str(tmp_path), pairs=str(tmp_path / "p.csv"), out=str(tmp_path / "o"),
                       models=str(models_file), device="cpu")
    _, description = build_pipeline(config)
    return description, fingerprint(description["fingerprint"])


def test_modes_reach_the_manifest_settings_records_and_fingerprint(tmp_path, tiny_cache, masks_png):
    paper, paper_fp = _settings_and_fingerprint(write_tiny_models_file(tmp_path / "a.yaml"), tmp_path)
    reference, reference_fp = _settings_and_fingerprint(
        write_tiny_models_file(tmp_path / "b.yaml", face_mode="reference"), tmp_path)
    masked, masked_fp = _settings_and_fingerprint(
        write_tiny_models_file(tmp_path / "c.yaml", part_masks=masks_png), tmp_path)
    assert paper["settings"]["face_mode"] == "paper" and paper["settings"]["texture_part_masks_sha256"] is None
    assert reference["settings"]["face_mode"] == "reference"
    digest = hashlib.sha256(masks_png.read_bytes()).hexdigest()
    assert masked["settings"]["texture_part_masks_sha256"] == digest
    assert len({paper_fp, reference_fp, masked_fp}) == 3  # each mode is its own feature cache
    records = {m.name: m for m in reference["models"]}
    assert "face_detector" not in records and records["arcface"].settings["mode"] == "reference"
    assert {m.name: m for m in paper["models"]}["arcface"].settings["mode"] == "paper"
    texture = {m.name: m for m in masked["models"]}["texture"]
    assert texture.files == {masks_png.name: digest} and texture.settings["part_masks_sha256"] == digest
    json.dumps(masked["settings"])  # JSON-able as the manifest needs


def _models_file_with(tmp_path, data) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_bad_modes_are_refused_naming_key_and_file(tmp_path, tiny_cache, masks_png):
    bad = _models_file_with(tmp_path, {"tiny": True, "face": {"mode": "insightface"}})
    with pytest.raises(ModelsError, match=r"models\.yaml: face\.mode = 'insightface' is not one of"):
        read_models_file(bad)

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((600, 400), 255, np.uint8))
    with pytest.raises(ModelsError, match=r"texture\.part_masks = .*small\.png.*600x400.*needs 1200x800"):
        read_models_file(_models_file_with(tmp_path, {"tiny": True, "texture": {"part_masks": str(small)}}))

    masks = uvdata.part_masks(200).copy()
    masks[6] = False  # part 7 has no texel: not 24 parts
    missing_part = write_part_masks_png(tmp_path / "23parts.png", masks)
    with pytest.raises(ModelsError, match=r"texture\.part_masks = .*23parts\.png.*23 of 24 parts.*\[7\]"):
        read_models_file(_models_file_with(tmp_path, {"tiny": True, "texture": {"part_masks": str(missing_part)}}))

    with pytest.raises(ModelsError, match=r"texture\.part_masks = nope\.png: .* does not exist"):
        read_models_file(_models_file_with(tmp_path, {"tiny": True, "texture": {"part_masks": "nope.png"}}))
    with pytest.raises(ModelsError, match="with tiny: true, give only face.mode"):
        read_models_file(_models_file_with(tmp_path, {"tiny": True, "vae": "x"}))


def test_build_shards_refuses_a_bad_models_file_before_any_work(tmp_path, tiny_cache, capsys):
    bad = _models_file_with(tmp_path, {"tiny": True, "face": {"mode": "nope"}})
    (tmp_path / "images").mkdir()
    (tmp_path / "pairs.csv").write_text("from,to\na.jpg,b.jpg\n")
    out = tmp_path / "out"
    code = build_shards(["--images", str(tmp_path / "images"), "--pairs", str(tmp_path / "pairs.csv"),
                         "--out", str(out), "--models", bad, "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "face.mode = 'nope'" in err and bad in err
    assert not out.exists()  # nothing was started


def _fixture_cases() -> list[str]:
    cases = TEXTURE_FIXTURES / "cases.json"
    if not cases.is_file():
        return ["(fixtures absent)"]
    return [case["name"] for case in json.loads(cases.read_text())["cases"]]


@pytest.mark.parametrize("name", _fixture_cases())
def test_a_run_with_the_reference_part_masks_is_bit_exact(name, tmp_path, tiny_cache):
    """The texture stage as a job configures it from `texture: {part_masks: ...}` reproduces the reference."""
    if not (TEXTURE_FIXTURES / "cases.json").is_file():
        pytest.skip(f"texture parity fixtures not found at {TEXTURE_FIXTURES} (a user's clone has no ../shared)")
    from tests.preprocess.texture.conftest import read_case

    case = next(c for c in json.loads((TEXTURE_FIXTURES / "cases.json").read_text())["cases"] if c["name"] == name)
    arrays = read_case(TEXTURE_FIXTURES, case)
    models = write_tiny_models_file(tmp_path / "m.yaml", part_masks=TEXTURE_FIXTURES / "reference_part_masks_200.png")
    pipeline, description = build_pipeline(JobConfig(images=str(tmp_path), pairs=str(tmp_path / "p.csv"),
                                                     out=str(tmp_path / "o"), models=str(models), device="cpu"))
    spec = next(s for s in pipeline.specs if s.name == "texture")
    stage = TextureStage(config=spec.config)
    image = np.empty(1, dtype=object)
    image[0] = cv2.cvtColor(arrays["image"], cv2.COLOR_BGR2RGB)
    iuv = np.empty(1, dtype=object)
    iuv[0] = arrays["iuv"]
    out = stage({"image_id": np.array([name], object), "status": np.array(["ok"], object),
                 "reject_stage": np.array([""], object), "detail": np.array([""], object), "image": image, "iuv": iuv})
    assert out["status"][0] == "ok"
    np.testing.assert_array_equal(cv2.cvtColor(out["texture"][0], cv2.COLOR_RGB2BGR), arrays["texture"],
                                  err_msg=f"case {name}")
    expected = hashlib.sha256((TEXTURE_FIXTURES / "reference_part_masks_200.png").read_bytes()).hexdigest()
    assert description["settings"]["texture_part_masks_sha256"] == expected
