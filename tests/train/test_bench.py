from __future__ import annotations

import json

import pytest
import torch
from tests.train.conftest import reset_accelerate

from train.bench import ARCHS, main, measure_steps


def test_cpu_benchmark_reports_every_figure(capsys):
    try:
        assert main(["--arch", "tiny", "--resolution", "64x64", "--repeats", "1", "--samples", "8", "--steps", "3"]) == 0
    finally:
        reset_accelerate()
    report = json.loads(capsys.readouterr().out)
    online, shard, wait = report["online_extraction"], report["shard_read"], report["data_wait_tiny"]
    assert online["arch"] == "tiny" and online["seconds_per_sample"] > 0
    assert shard["samples"] == 8 and shard["seconds_per_sample"] > 0 and shard["bytes_per_sample"] > 0
    assert 0.0 <= wait["data_wait_fraction_mean"] <= 1.0 and wait["steps"] == 3
    assert report["online_over_shard_core_seconds"] > 0


def test_step_rate_runs_with_and_without_online_extraction():
    # The GPU mode's measurement, on the CPU at toy size: same code, no CUDA needed.
    for online in (False, True):
        result = measure_steps(arch=ARCHS["tiny"], device=torch.device("cpu"), batch_size=2, height=64, width=64,
                               steps=2, online=online, mixed_precision=False)
        assert result["online_extraction"] == online and result["steps_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the refusal cannot happen here")
def test_gpu_mode_refuses_without_cuda(capsys):
    assert main(["--mode", "gpu", "--arch", "tiny"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_real_arch_is_sd15_with_the_reference_face_projector():
    from diffusers import UNet2DConditionModel

    from train.bench import _model_config
    from train.config import config_from_dict

    config = config_from_dict(_model_config(ARCHS["real"]), where="bench-real")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config.model.unet)
    assert unet.config.block_out_channels == (320, 640, 1280, 1280) and unet.config.cross_attention_dim == 768
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964  # SD 1.5's UNet
    assert config.model.face_projector.hidden_dim == 1280 and config.model.face_projector.heads == 20


def test_sample_mode_reports_pairs_per_second(capsys):
    assert main(["--mode", "sample", "--arch", "tiny", "--resolution", "64x64", "--batch-size", "2",
                 "--sample-steps", "2", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)["result"]
    assert result["pairs_per_s"] > 0 and result["batch_size"] == 2 and result["ddim_steps"] == 2
