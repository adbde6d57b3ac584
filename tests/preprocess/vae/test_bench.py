import json

import torch
from diffusers import AutoencoderKL
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from preprocess.vae import bench


def test_real_size_configs_are_sd_vae_and_clip_vit_l14():
    """Parameter counts of the published models: sd-vae-ft-mse and sd-image-variations' image_encoder."""
    with torch.device("meta"):
        vae = AutoencoderKL(**bench.sd_vae_kwargs())
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**bench.clip_vit_l14_kwargs()))
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in clip.parameters()) == 303_966_208
    assert clip.config.projection_dim == 768


def test_bench_runs_and_prints_json(capsys):
    bench.main(["--models", "tiny", "--batches", "1,2", "--repeats", "1", "--resolution", "256x176"])
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == "tiny"
    for stage in ("vae", "clip"):
        results = report[stage]["results"]
        assert [r["batch"] for r in results] == [1, 2]
        assert all(r["images_per_s"] > 0 for r in results)
    assert report["vae"]["resolution"] == "256x176"
    assert report["clip"]["embed_dim"] == 32
