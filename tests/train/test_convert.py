"""MCLD checkpoint conversion both ways, its refusals, and the trainer-side model options it goes with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.conftest import INFER, call, model_inputs, tiny_model, train_in_process, write_config
from train.convert import load_weights, main as convert_main

WEIGHTS = INFER.folder / "weights"
NAMES = ("denoising_unet.pth", "reference_unet.pth", "pose_guider.pth", "image_proj_model.pth")


@pytest.fixture()
def needs_fixture():
    """The reference weights: skipped in a clone without ../shared, failing when MCLD_INFER_FIXTURES names
    a folder without a case."""
    INFER.require()


def _from_mcld(ckpt: Path, out: Path) -> int:
    return convert_main(["from-mcld", str(ckpt), "--base-model", str(WEIGHTS), "-o", str(out),
                         "--projector", str(WEIGHTS / "image_proj_model.json"),
                         "--pose-guider", str(WEIGHTS / "pose_guider.json")])


@pytest.mark.usefixtures("needs_fixture")
def test_round_trip_gives_byte_equal_tensors(tmp_path):
    assert _from_mcld(WEIGHTS, tmp_path / "ours") == 0
    assert convert_main(["to-mcld", str(tmp_path / "ours"), "-o", str(tmp_path / "back")]) == 0
    for name in NAMES:
        original = torch.load(WEIGHTS / name, weights_only=True)
        back = torch.load(tmp_path / "back" / name, weights_only=True)  # the reference's strict loads need equal keys
        assert set(back) == set(original), name
        for key, value in original.items():
            assert back[key].dtype == value.dtype and back[key].numpy().tobytes() == value.numpy().tobytes(), key
    # The README's name for the projector file is accepted too.
    alias = tmp_path / "alias"
    shutil.copytree(WEIGHTS, alias)
    (alias / "image_proj_model.pth").rename(alias / "image_projector.pth")
    assert _from_mcld(alias, tmp_path / "ours2") == 0


@pytest.mark.usefixtures("needs_fixture")
@pytest.mark.parametrize("damage, message", [
    ("missing", "pose_guider.pth: missing"),
    ("shape", "pose_guider.pth: 'conv_in.weight' has shape (1, 2)"),
    ("unexpected", "image_proj_model.pth: unexpected key 'extra.weight'"),
    ("lacking", "reference_unet.pth: missing key 'conv_in.bias'"),
])
def test_bad_checkpoints_are_refused_naming_file_and_key(tmp_path, capsys, damage, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(WEIGHTS, ckpt)
    if damage == "missing":
        (ckpt / "pose_guider.pth").unlink()
    elif damage == "shape":
        state = torch.load(ckpt / "pose_guider.pth", weights_only=True)
        state["conv_in.weight"] = torch.zeros(1, 2)
        torch.save(state, ckpt / "pose_guider.pth")
    elif damage == "unexpected":
        state = torch.load(ckpt / "image_proj_model.pth", weights_only=True)
        state["extra.weight"] = torch.zeros(1)
        torch.save(state, ckpt / "image_proj_model.pth")
    else:
        state = torch.load(ckpt / "reference_unet.pth", weights_only=True)
        del state["conv_in.bias"]
        torch.save(state, ckpt / "reference_unet.pth")
    assert _from_mcld(ckpt, tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("needs_fixture")
def test_pickled_objects_are_refused(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(WEIGHTS, ckpt)
    torch.save({"conv_in.weight": torch.zeros(1), "x": Path("/")}, ckpt / "pose_guider.pth")
    assert _from_mcld(ckpt, tmp_path / "out") == 2
    assert "pose_guider.pth: not a readable torch weights file (weights_only load)" in capsys.readouterr().err


def test_project_zeros_equals_the_projector_run_on_zeros():
    inputs = model_inputs(batch=2, face_ok=[False, True])
    projecting = tiny_model(face_missing="project_zeros").eval()
    masking = tiny_model(face_missing="mask").eval()
    for module in (projecting, masking):
        torch.nn.init.normal_(module.pose_guider.conv_out.weight, std=0.05)
    masking.load_state_dict(projecting.state_dict())
    with torch.no_grad():
        got = call(projecting, inputs)
        zeros = inputs["face_emb"].clone()
        zeros[0] = 0
        expected = call(masking, inputs, face_emb=zeros, face_ok=torch.tensor([True, True]))
        masked = call(masking, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got[0] - masked[0]).abs().max() > 1e-4  # the projected zero vector is not masking
    torch.testing.assert_close(got[1], masked[1])


def test_clip_std_file_of_the_wrong_length_is_refused_before_any_work(shards_dir, tmp_path, capsys):
    bad = tmp_path / "clip_std.npy"
    np.save(bad, np.ones(7, np.float32))
    config = write_config(tmp_path / "c.yaml", conditioning={"clip_std": str(bad)}, validation={"vae_path": None})
    assert train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "conditioning.clip_std" in err and str(bad) in err and "(24,)" in err
    assert not (tmp_path / "run").exists()
    config = write_config(tmp_path / "c2.yaml", model={"face_missing": "drop"})
    assert train_in_process(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    assert "model.face_missing must be one of" in capsys.readouterr().err


def test_init_from_starts_at_step_zero_from_those_weights(shards_dir, tmp_path, capsys):
    good = tmp_path / "clip_std.npy"
    np.save(good, np.full(24, 0.5, np.float32))
    config = write_config(tmp_path / "c.yaml", validation={"vae_path": None}, checkpoint={"every": 1, "keep_last": 1},
                          data={"num_workers": 0, "batch_size": 2}, conditioning={"clip_std": str(good)},
                          solver={"learning_rate": 0.0})
    common = ["--shards", str(shards_dir), "--config", str(config), "--max-steps", "1"]
    assert train_in_process([*common, "--output-dir", str(tmp_path / "first")]) == 0
    first = load_weights(tmp_path / "first" / "checkpoint-1").model.state_dict()
    # Another seed would give other initial weights; --init-from replaces them all (lr 0 keeps them).
    other = write_config(tmp_path / "c2.yaml", validation={"vae_path": None}, checkpoint={"every": 1, "keep_last": 1},
                         data={"num_workers": 0, "batch_size": 2}, solver={"learning_rate": 0.0}, seed=5)
    capsys.readouterr()
    assert train_in_process(["--shards", str(shards_dir), "--config", str(other), "--max-steps", "1",
                   "--output-dir", str(tmp_path / "second"), "--init-from", str(tmp_path / "first" / "checkpoint-1")]) == 0
    checkpoint = tmp_path / "first" / "checkpoint-1"
    assert f"initial weights: {checkpoint} (sha256 " in (tmp_path / "second" / "train.log").read_text()
    second = load_weights(tmp_path / "second" / "checkpoint-1").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert train_in_process([*common, "--output-dir", str(tmp_path / "third"), "--init-from", str(tmp_path / "nowhere")]) == 2
    assert "--init-from" in capsys.readouterr().err


def test_a_training_checkpoint_exports_to_mcld_and_converts_back_tensor_for_tensor(trained, tmp_path):
    """RUN/checkpoint-STEP (2 tiny steps) -> the reference's four files -> our weights -> the four files again:
    every tensor of both exports byte-equal, and every tensor the reference keeps equal to the checkpoint's."""
    _, checkpoint = trained
    assert convert_main(["to-mcld", str(checkpoint), "-o", str(tmp_path / "mcld")]) == 0
    assert sorted(p.name for p in (tmp_path / "mcld").glob("*.pth")) == sorted(NAMES)

    # What the reference needs beside the four files: an SD folder (unet/config.json) and the two JSONs.
    trained = load_weights(checkpoint)
    spec, model = trained.spec, trained.model
    base = tmp_path / "sd"
    model.denoising_unet.save_config(str(base / "unet"))
    projector = spec.model.face_projector
    (tmp_path / "projector.json").write_text(json.dumps({
        "dim": projector.hidden_dim, "depth": projector.depth, "dim_head": projector.head_dim,
        "heads": projector.heads, "num_queries": projector.tokens, "embedding_dim": spec.face_dim,
        "output_dim": spec.clip_dim, "ff_mult": projector.ff_mult, "ip_scale_in_set_ip_adapter": spec.model.face_scale}))
    (tmp_path / "guider.json").write_text(json.dumps({
        "conditioning_embedding_channels": model.denoising_unet.config.block_out_channels[0],
        "conditioning_channels": 3, "block_out_channels": list(spec.model.pose_guider_channels)}))
    assert convert_main(["from-mcld", str(tmp_path / "mcld"), "--base-model", str(base), "-o", str(tmp_path / "ours"),
                         "--projector", str(tmp_path / "projector.json"),
                         "--pose-guider", str(tmp_path / "guider.json")]) == 0
    assert convert_main(["to-mcld", str(tmp_path / "ours"), "-o", str(tmp_path / "again")]) == 0
    for name in NAMES:
        first = torch.load(tmp_path / "mcld" / name, weights_only=True)
        again = torch.load(tmp_path / "again" / name, weights_only=True)
        assert set(first) == set(again) and first, name
        for key, value in first.items():
            assert again[key].dtype == value.dtype and again[key].numpy().tobytes() == value.numpy().tobytes(), key
    original = model.state_dict()
    back = load_weights(tmp_path / "ours").model.state_dict()
    assert set(back) == set(original)
    # The reference's ReferenceNet has no output head (nothing reads it): the only tensors not carried over.
    head = {k for k in original if k.startswith(("reference_unet.conv_norm_out.", "reference_unet.conv_out."))}
    assert head
    for key in sorted(set(original) - head):
        assert back[key].dtype == original[key].dtype and torch.equal(back[key], original[key]), key
