import json

from preprocess.vae.stage import VaeConfig, VaeStage
from preprocess.vae.tiny import write_tiny_vae


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = _files(write_tiny_vae(tmp_path / "a", seed=0))
    b = _files(write_tiny_vae(tmp_path / "b", seed=0))
    c = _files(write_tiny_vae(tmp_path / "c", seed=1))
    assert set(a) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert a == b
    assert a["config.json"] == c["config.json"]
    assert a["diffusion_pytorch_model.safetensors"] != c["diffusion_pytorch_model.safetensors"]


def test_sd_layout_at_toy_width_loads_through_the_stage(tiny_vae):
    config = json.loads((tiny_vae / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"
    assert config["latent_channels"] == 4 and len(config["block_out_channels"]) == 4
    stage = VaeStage(config=VaeConfig(path=tiny_vae))
    assert stage.latent_shape == (8, 64, 64)
    assert sum(p.numel() for p in stage.vae.parameters()) < 200_000  # small enough for CPU tests
