"""MCLD checkpoint conversion both ways, its refusals, and the trainer-side model options it goes with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from tests.train.conftest import call, model_inputs, tiny_model, write_config
from train.convert import load_weights, main as convert_main
from train.run import main as train_main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("MCLD_INFER_FIXTURES", ROOT.parent / "shared" / "fixtures" / "mcld_infer"))
WEIGHTS = FIXTURES / "weights"
NAMES = ("denoising_unet.pth", "reference_unet.pth", "pose_guider.pth", "image_proj_model.pth")
needs_fixture = pytest.mark.skipif(not (WEIGHTS / "denoising_unet.pth").is_file(),
                                   reason=f"MCLD inference fixtures not found at {FIXTURES} (set MCLD_INFER_FIXTURES)")


def _from_mcld(ckpt: Path, out: Path) -> int:
    return convert_main(["from-mcld", str(ckpt), "--base-model", str(WEIGHTS), "-o", str(out),
                         "--projector", str(WEIGHTS / "image_proj_model.json"),
                         "--pose-guider", str(WEIGHTS / "pose_guider.json")])


@needs_fixture
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


@needs_fixture
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


@needs_fixture
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


def _train(argv: list[str]) -> int:
    try:
        return train_main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_clip_std_file_of_the_wrong_length_is_refused_before_any_work(shards_dir, tmp_path, capsys):
    bad = tmp_path / "clip_std.npy"
    np.save(bad, np.ones(7, np.float32))
    config = write_config(tmp_path / "c.yaml", conditioning={"clip_std": str(bad)}, validation={"vae_path": None})
    assert _train(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "conditioning.clip_std" in err and str(bad) in err and "(24,)" in err
    assert not (tmp_path / "run").exists()
    config = write_config(tmp_path / "c2.yaml", model={"face_missing": "drop"})
    assert _train(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    assert "model.face_missing must be one of" in capsys.readouterr().err


def test_init_from_starts_at_step_zero_from_those_weights(shards_dir, tmp_path, capsys):
    good = tmp_path / "clip_std.npy"
    np.save(good, np.full(24, 0.5, np.float32))
    config = write_config(tmp_path / "c.yaml", validation={"vae_path": None}, checkpoint={"every": 1, "keep_last": 1},
                          data={"num_workers": 0, "batch_size": 2}, conditioning={"clip_std": str(good)},
                          solver={"learning_rate": 0.0})
    common = ["--shards", str(shards_dir), "--config", str(config), "--max-steps", "1"]
    assert _train([*common, "--output-dir", str(tmp_path / "first")]) == 0
    first = load_weights(tmp_path / "first" / "checkpoint-1").model.state_dict()
    # Another seed would give other initial weights; --init-from replaces them all (lr 0 keeps them).
    other = write_config(tmp_path / "c2.yaml", validation={"vae_path": None}, checkpoint={"every": 1, "keep_last": 1},
                         data={"num_workers": 0, "batch_size": 2}, solver={"learning_rate": 0.0}, seed=5)
    capsys.readouterr()
    assert _train(["--shards", str(shards_dir), "--config", str(other), "--max-steps", "1",
                   "--output-dir", str(tmp_path / "second"), "--init-from", str(tmp_path / "first" / "checkpoint-1")]) == 0
    checkpoint = tmp_path / "first" / "checkpoint-1"
    assert f"initial weights: {checkpoint} (sha256 " in (tmp_path / "second" / "train.log").read_text()
    second = load_weights(tmp_path / "second" / "checkpoint-1").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert _train([*common, "--output-dir", str(tmp_path / "third"), "--init-from", str(tmp_path / "nowhere")]) == 2
    assert "--init-from" in capsys.readouterr().err
