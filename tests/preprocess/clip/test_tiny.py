import json

from preprocess.clip.stage import ClipConfig, ClipStage
from preprocess.clip.tiny import TINY_DIM, write_tiny_clip


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = _files(write_tiny_clip(tmp_path / "a", seed=0))
    b = _files(write_tiny_clip(tmp_path / "b", seed=0))
    c = _files(write_tiny_clip(tmp_path / "c", seed=1))
    assert set(a) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]


def test_vit_l14_layout_at_toy_width_loads_through_the_stage(tiny_clip):
    config = json.loads((tiny_clip / "config.json").read_text())
    assert config["model_type"] == "clip_vision_model"
    assert config["architectures"] == ["CLIPVisionModelWithProjection"]
    assert (config["patch_size"], config["image_size"], config["hidden_act"]) == (14, 224, "quick_gelu")
    processor = json.loads((tiny_clip / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "CLIPImageProcessor"
    stage = ClipStage(config=ClipConfig(path=tiny_clip))
    assert stage.embed_dim == TINY_DIM
    assert sum(p.numel() for p in stage.model.parameters()) < 100_000
