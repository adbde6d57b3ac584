from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from shards.manifest import read_manifest
from shards.synthetic import write_synthetic_dataset
from tests.train.conftest import GEOMETRY, add_vae_record, tiny_model, write_tiny_vae
from train.data import collate, load_pairs
from train.objective import build_scheduler
from train.config import NoiseConfig
from train.validation import (
    ValidationError,
    load_vae_decoder,
    manifest_vae_folder,
    run_validation,
    sample_images,
)



def _pose_rgb(sample: dict) -> np.ndarray:
    return sample["tgt_pose"][:, :, ::-1]  # (I, U, V) array -> what PIL shows: (V, U, I)


@pytest.mark.parametrize("previews", [True, False])
def test_grid_rows_hold_texture_pose_generated_and_target(tmp_path, previews):
    out = tmp_path / "out"
    write_synthetic_dataset(str(out), geometry=GEOMETRY, samples=2, previews=previews, seed=4)
    pairs = load_pairs(str(out), count=2, geometry=GEOMETRY)
    vae = load_vae_decoder(write_tiny_vae(tmp_path / "vae"), scaling_factor=0.18215, device=torch.device("cpu"))
    path = run_validation(tiny_model(), pairs=pairs, vae=vae, scheduler=build_scheduler(NoiseConfig()),
                          steps=2, guidance_scale=3.5, scaling_factor=0.18215, seed=42, device=torch.device("cpu"),
                          out_path=tmp_path / "val" / "step-000002.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 64, 4 * 64, 3)
    for row, sample in enumerate(pairs):
        cells = [grid[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64] for col in range(4)]
        assert np.array_equal(cells[1], _pose_rgb(sample))
        if previews:
            expected = np.asarray(Image.fromarray(sample["tgt"]).resize((64, 64), Image.BICUBIC))
            assert np.array_equal(cells[3], expected)
        else:
            assert not np.array_equal(cells[3], cells[0])  # target and texture latents decode differently


def test_sampling_is_seeded_and_guidance_changes_it(shards_dir):
    pairs = load_pairs(str(shards_dir), count=2, geometry=GEOMETRY)
    batch = collate(pairs)
    model = tiny_model().eval()
    torch.nn.init.normal_(model.pose_guider.conv_out.weight, std=0.05)
    settings = dict(scheduler=build_scheduler(NoiseConfig()), steps=3, scaling_factor=0.18215)
    first = sample_images(model, batch, guidance_scale=3.5, seed=1, **settings)
    assert first.shape == (2, 4, 8, 8) and torch.isfinite(first).all()
    torch.testing.assert_close(first, sample_images(model, batch, guidance_scale=3.5, seed=1, **settings))
    assert not torch.allclose(first, sample_images(model, batch, guidance_scale=1.0, seed=1, **settings))


def test_manifest_vae_is_checked_against_its_checksums(shards_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards_dir, out)
    with pytest.raises(ValidationError, match="records no 'vae' model"):
        manifest_vae_folder(read_manifest(str(out)), where=str(out))
    vae = write_tiny_vae(tmp_path / "vae")
    add_vae_record(out, vae)
    assert manifest_vae_folder(read_manifest(str(out)), where=str(out)) == vae
    with (vae / "config.json").open("a") as stream:
        stream.write("\n")
    with pytest.raises(ValidationError, match="config.json: sha256 differs"):
        manifest_vae_folder(read_manifest(str(out)), where=str(out))
    (vae / "config.json").unlink()
    with pytest.raises(ValidationError, match="config.json .listed in the manifest. is missing"):
        manifest_vae_folder(read_manifest(str(out)), where=str(out))
    shutil.rmtree(vae)
    with pytest.raises(ValidationError, match="does not exist"):
        manifest_vae_folder(read_manifest(str(out)), where=str(out))


def test_vae_must_match_the_shards_scaling_factor(tmp_path):
    folder = write_tiny_vae(tmp_path / "vae")
    with pytest.raises(ValidationError, match="scaling_factor 0.18215 but the shards' manifest says 0.13025"):
        load_vae_decoder(folder, scaling_factor=0.13025, device=torch.device("cpu"))
    with pytest.raises(ValidationError, match="not a diffusers AutoencoderKL folder"):
        load_vae_decoder(tmp_path, scaling_factor=0.18215, device=torch.device("cpu"))
