from __future__ import annotations

import dataclasses

import pytest

from shards.manifest import read_manifest
from tests.train.conftest import CLIP_DIM, tiny_config_dict, tiny_model, write_config
from train.config import (
    ConfigError,
    SolverConfig,
    check_manifest,
    config_from_dict,
    effective_learning_rate,
    load_config,
)
from train.run import main


def test_packaged_configs_load_by_name():
    mcld = load_config("mcld")
    assert mcld.expect.clip_dim == 768 and mcld.expect.height == 512
    assert mcld.model.face_projector.heads == 20 and mcld.model.face_scale == 0.5
    assert mcld.noise.prediction_type == "v_prediction" and mcld.noise.zero_terminal_snr
    assert mcld.solver.learning_rate == 1e-5 and mcld.data.batch_size == 12
    tiny = load_config("tiny")
    assert tiny.expect.clip_dim is None and tiny.expect.allow_tiny
    assert tiny.model.unet["cross_attention_dim"] is None


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.solver: unknown key\(s\) \['learning_rat'\]"):
        config_from_dict(tiny_config_dict(solver={"learning_rat": 1}), where="cfg")
    with pytest.raises(ConfigError, match=r"cfg\.data\.batch_size: must be an integer"):
        config_from_dict(tiny_config_dict(data={"batch_size": "two"}), where="cfg")
    with pytest.raises(ConfigError, match="zero_terminal_snr needs prediction_type v_prediction"):
        config_from_dict(tiny_config_dict(noise={"prediction_type": "epsilon"}), where="cfg")
    with pytest.raises(ConfigError, match="no packaged config"):
        load_config("huge")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("solver: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("height", 128, "manifest height is 64 but the config"),
    ("clip_dim", 768, "manifest clip_dim is 24 but the config"),
    ("vae_scaling_factor", 0.13025, "manifest vae_scaling_factor is 0.18215 but the config"),
    ("schema_version", 2, "manifest schema_version is 1 but the config"),
])
def test_manifest_mismatch_is_refused_naming_the_field(shards_dir, field, value, message):
    config = config_from_dict(tiny_config_dict(expect={field: value}), where="cfg.yaml")
    with pytest.raises(ConfigError, match=message):
        check_manifest(config, read_manifest(str(shards_dir)), where=str(shards_dir))


def test_tiny_shards_are_refused_by_the_full_config(shards_dir):
    config = dataclasses.replace(load_config("mcld"), expect=dataclasses.replace(load_config("mcld").expect,
                                                                                 height=64, width=64, clip_dim=CLIP_DIM))
    with pytest.raises(ConfigError, match="manifest tiny is true"):
        check_manifest(config, read_manifest(str(shards_dir)), where=str(shards_dir))


def test_tiny_config_follows_the_manifest(shards_dir):
    facts = check_manifest(load_config("tiny"), read_manifest(str(shards_dir)), where=str(shards_dir))
    assert (facts.height, facts.width, facts.clip_dim, facts.samples) == (64, 64, CLIP_DIM, 16)
    model = tiny_model(clip_dim=facts.clip_dim)
    assert model.clip_dim == CLIP_DIM
    assert model.face_projector.proj_out.out_features == CLIP_DIM


def test_run_refuses_mismatched_shards_with_a_clear_message(shards_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", expect={"clip_dim": 768})
    code = main(["--shards", str(shards_dir), "--config", str(config), "--output-dir", str(tmp_path / "run")])
    assert code == 2
    error = capsys.readouterr().err
    assert "manifest clip_dim is 24 but the config" in error and str(shards_dir) in error
    assert not (tmp_path / "run").exists()


def test_scale_lr_multiplies_by_the_global_batch():
    solver = SolverConfig(learning_rate=1e-5, scale_lr=True, gradient_accumulation_steps=2)
    assert effective_learning_rate(solver, batch_size=12, num_processes=2) == pytest.approx(1e-5 * 48)
    assert effective_learning_rate(dataclasses.replace(solver, scale_lr=False), batch_size=12, num_processes=2) == 1e-5


@pytest.mark.parametrize(("sections", "message"), [
    ({"model": {"pose_guider_channels": 16}}, r"model\.pose_guider_channels: must be a list"),
    ({"model": {"face_projector": 3}}, r"model\.face_projector: must be a mapping"),
    ({"model": {"unet": [1]}}, r"model\.unet: must be a mapping"),
    ({"noise": {"clip_sample": "no"}}, r"noise\.clip_sample: must be true or false"),
    ({"noise": {"beta_start": "small"}}, r"noise\.beta_start: must be a number"),
    ({"noise": {"beta_schedule": 3}}, r"noise\.beta_schedule: must be a string"),
    ({"noise": {"snr_gamma": "five"}}, r"noise\.snr_gamma: must be a number"),
    ({"model": {"unet_subfolder": None}}, r"model\.unet_subfolder: must be a string, got None"),
    ({"model": {"base_model_path": "sd"}}, "set exactly one of model.base_model_path"),
    ({"model": {"pose_guider_channels": [16, 32, 96]}}, "must have 4 entries"),
    ({"noise": {"prediction_type": "sample"}}, "must be epsilon or v_prediction"),
    ({"solver": {"mixed_precision": "fp8"}}, "must be no, fp16 or bf16"),
    ({"conditioning": {"cfg_drop_rate": 1.5}}, r"conditioning\.cfg_drop_rate must be in \[0, 1\]"),
    ({"checkpoint": {"keep_last": 0}}, "checkpoint.keep_last must be positive"),
    ({"data": {"num_workers": -1}}, "must not be negative"),
])
def test_impossible_settings_are_refused(sections, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_config_dict(**sections), where="cfg")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_dict([1], where="cfg")


def test_a_field_type_the_loader_does_not_know_is_an_error():
    from train.config import _convert

    with pytest.raises(ConfigError, match="x: unsupported type <class 'complex'>"):
        _convert(1, complex, "x")


def test_inconsistent_manifests_are_refused(shards_dir):
    manifest = read_manifest(str(shards_dir))
    config = load_config("tiny")
    odd = dataclasses.replace(manifest, latent_channels=7)
    with pytest.raises(ConfigError, match="latent_channels 7 is not mean"):
        check_manifest(dataclasses.replace(config, expect=dataclasses.replace(config.expect, latent_channels=7)),
                       odd, where="x")
    short = dataclasses.replace(manifest, clip_std=manifest.clip_std[:3])
    with pytest.raises(ConfigError, match="manifest clip_std has 3 values, clip_dim is 24"):
        check_manifest(config, short, where="x")
