import json
import tempfile
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from preprocess.clip.tiny import write_tiny_clip
from preprocess.vae import bench
from preprocess.vae.tiny import write_tiny_vae


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
        assert [r["batch"] for r in results] == [1, 2] and all(r["repeats"] == 1 for r in results)
        for r in results:  # the rate is the batch over the mean time, and one repeat's best is its mean
            assert r["seconds_per_batch_best"] == r["seconds_per_batch_mean"] > 0
            assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds_per_batch_mean"], rel=1e-2)
    assert report["vae"]["resolution"] == "256x176"
    assert report["clip"]["embed_dim"] == 32
    # the parameter counts are those of the models the benchmark timed: the tiny VAE's encoder path, tiny CLIP
    with tempfile.TemporaryDirectory() as tmp:
        vae = AutoencoderKL.from_pretrained(write_tiny_vae(Path(tmp) / "vae"))
        clip = CLIPVisionModelWithProjection.from_pretrained(write_tiny_clip(Path(tmp) / "clip"))
    encoder = sum(p.numel() for p in vae.encoder.parameters()) + sum(p.numel() for p in vae.quant_conv.parameters())
    assert report["vae"]["encoder_parameters"] == encoder
    assert report["clip"]["parameters"] == sum(p.numel() for p in clip.parameters())
