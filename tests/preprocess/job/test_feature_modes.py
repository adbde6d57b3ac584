"""The job with the reference's feature modes (face.mode reference, texture.part_masks), on the demo photos."""

from __future__ import annotations

import hashlib
import io

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from shards.manifest import read_manifest
from shards.reader import iter_samples
from shards.verify import verify_output
from tests.preprocess.face.test_reference_mode import face_analysis_embedding


@pytest.fixture(scope="module")
def modes_run(feature_modes_run):
    return feature_modes_run


def test_the_manifest_records_the_modes(modes_run):
    out, _, masks = modes_run
    assert verify_output(str(out), progress=False).ok
    manifest = read_manifest(str(out))
    assert manifest.tiny  # tiny: true keeps the label
    assert manifest.settings["face_mode"] == "reference"
    assert manifest.settings["texture_part_masks_sha256"] == hashlib.sha256(masks.read_bytes()).hexdigest()
    records = {m.name: m for m in manifest.models}
    assert "face_detector" not in records and records["arcface"].settings["mode"] == "reference"
    assert manifest.counts.images_rejected.get("decode_failed") == 1


def decoded_original(path) -> np.ndarray:
    """The full original as the job decodes it: EXIF-rotated RGB, before any resize."""
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def test_face_embeddings_are_face_analysis_on_the_full_original(modes_run):
    out, images, _ = modes_run
    antelopev2 = {m.name: m for m in read_manifest(str(out)).models}["arcface"].source  # the run's own files
    checked: dict[str, np.ndarray] = {}
    for sample in iter_samples(str(out)):
        meta = sample["meta"]
        path = meta["source_path"]
        if path not in checked:
            checked[path] = face_analysis_embedding(antelopev2, decoded_original(images / path))
        expected = checked[path]
        assert meta["face_ok"] == (expected is not None), path
        if expected is not None:
            np.testing.assert_array_equal(sample["face_emb"], expected, err_msg=path)
    assert sum(v is not None for v in checked.values()) >= 3


def test_texture_previews_are_in_the_cache_and_the_samples(modes_run):
    out, _, _ = modes_run
    manifest = read_manifest(str(out))
    folder = out / "features" / manifest.settings["features_fingerprint"][:16]
    table = pq.read_table(folder, columns=["image_id", "status", "texture_jpg", "preview_jpg"]).to_pylist()
    by_id = {row["image_id"]: row for row in table}
    for sample in iter_samples(str(out)):
        row = by_id[sample["meta"]["source_id"]]
        tex = sample["tex"]
        assert tex.shape == (256, 256, 3) and tex.std() > 1  # a picture, not a blank
        stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(row["texture_jpg"], np.uint8), cv2.IMREAD_COLOR),
                              cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(tex, stored)
    rejected = {row["image_id"]: row for row in table if row["status"] != "ok"}
    assert rejected  # the broken file at least
    for image_id, row in rejected.items():
        if "broken" in image_id:
            assert row["preview_jpg"] is None  # did not decode: no thumbnail
        else:
            assert row["preview_jpg"]  # decoded, rejected later: its thumbnail is kept


def test_summary_states_the_modes_and_show_draws_the_texture(modes_run, tmp_path, capsys):
    from tools.cli import main as cli
    from tools.show import find_sample, render_sheet

    out, _, masks = modes_run
    assert cli(["summary", str(out)]) == 0
    digest = hashlib.sha256(masks.read_bytes()).hexdigest()
    assert f"feature modes: face reference, texture part masks sha256 {digest[:16]}" in capsys.readouterr().out
    sample = find_sample(str(out), index=0)
    with_texture, without = tmp_path / "with.png", tmp_path / "without.png"
    render_sheet(sample, str(with_texture))
    render_sheet({k: v for k, v in sample.items() if k != "tex"}, str(without))
    drawn = np.asarray(Image.open(with_texture).convert("RGB")).astype(np.int16)
    blank = np.asarray(Image.open(without).convert("RGB")).astype(np.int16)
    assert drawn.shape == blank.shape and np.abs(drawn - blank).sum(-1).astype(bool).mean() > 0.02
