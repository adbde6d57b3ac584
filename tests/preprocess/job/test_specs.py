"""The models' records and the feature fingerprint, without Ray: where the files are never counts."""

from __future__ import annotations

import json
import shutil

from preprocess.job.config import JobConfig
from preprocess.job.features import fingerprint
from preprocess.job.layout import build_pipeline
from preprocess.models import tiny_models
from tests.preprocess.job.conftest import models_file_for


def fingerprint_of(models: str, **settings) -> str:
    _, description = build_pipeline(JobConfig(images="unused", pairs="unused", out="unused", models=models,
                                              device="cpu", **settings))
    return fingerprint(description["fingerprint"])


def test_the_fingerprint_follows_checksums_and_settings_not_paths(tmp_path):
    tiny_models(tmp_path / "cache")
    (original,) = (tmp_path / "cache").glob("tiny-*")
    here = models_file_for(original, tmp_path / "here.yaml")
    moved = tmp_path / "another mount" / "renamed models"
    shutil.copytree(original, moved)
    there = models_file_for(moved, tmp_path / "there.yaml")
    assert fingerprint_of(here) == fingerprint_of(there)
    assert fingerprint_of(here) != fingerprint_of(here, pose_resize="nearest")
    # the records still say where the files were, for the manifest
    _, description = build_pipeline(JobConfig(images="-", pairs="-", out="-", models=there, device="cpu"))
    assert all(str(moved) in m.source for m in description["models"] if m.name in ("vae", "clip", "arcface"))
    assert str(moved) not in json.dumps(description["fingerprint"])
    # one flipped byte of one weights file is another model
    weights = next((moved / "clip").glob("model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-4] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprint_of(here) != fingerprint_of(there)
