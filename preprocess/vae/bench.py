"""Benchmark of the VAE and CLIP stages: images per second through each stage's own encode path.

Real-size architectures (SD's VAE, CLIP ViT-L/14 with its 768-d projection) with seeded random weights,
built here from their configs (nothing downloaded), written as diffusers/transformers folders and loaded
through the stages, so the figures cover preprocessing, the device transfer and the model. Prints JSON.

    python -m preprocess.vae.bench [--models real|tiny] [--batches 1,4] [--repeats 2] [--resolution 512x512]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from preprocess.clip.stage import ClipConfig, ClipStage
from preprocess.clip.tiny import write_tiny_clip
from preprocess.common.images import resize_to
from preprocess.vae.stage import VaeConfig, VaeStage
from preprocess.vae.tiny import write_tiny_vae
from shards.bench import Faults, allocator_in_use, cpu_model


def sd_vae_kwargs() -> dict[str, Any]:
    """AutoencoderKL as in Stable Diffusion 1.x / sd-vae-ft-mse (83,653,863 parameters)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }


def clip_vit_l14_kwargs() -> dict[str, Any]:
    """CLIPVisionModelWithProjection as in sd-image-variations' image_encoder (303,966,208 parameters)."""
    return {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    }


def write_real_size_vae(dest: Path, *, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoencoderKL(**sd_vae_kwargs()).save_pretrained(dest)
    return dest


def write_real_size_clip(dest: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_vit_l14_kwargs())).save_pretrained(dest)
    CLIPImageProcessorPil().save_pretrained(dest)
    return dest


def _photos(count: int, height: int, width: int) -> np.ndarray:
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee()]
    return np.stack([resize_to(sources[i % len(sources)], height, width) for i in range(count)])


def _time(run, images: np.ndarray, *, repeats: int) -> dict[str, float]:
    run(images)  # warm-up: first-call allocations and kernel selection are not steady-state cost
    seconds = []
    with Faults() as faults:
        for _ in range(repeats):
            start = time.perf_counter()
            run(images)
            seconds.append(time.perf_counter() - start)
    best, mean = min(seconds), sum(seconds) / len(seconds)
    return {
        "batch": len(images),
        "repeats": repeats,
        # significant digits, not decimals: a tiny model's 3.6 ms batch rounded to 4 decimals was 1% off
        "seconds_per_batch_mean": float(f"{mean:.5g}"),
        "seconds_per_batch_best": float(f"{best:.5g}"),
        "images_per_s": round(len(images) / mean, 4),
        **faults.per_item(len(images) * repeats),
    }


def _machine() -> dict[str, Any]:
    import torch

    cpu = cpu_model()
    return {
        "cpu": cpu,
        "allocator": allocator_in_use(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m preprocess.vae.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=("real", "tiny"), default="real",
                        help="real: real-size architectures with random weights; tiny: the --models tiny toys")
    parser.add_argument("--batches", default="1,4", help="images per forward pass, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per batch size, after one warm-up")
    parser.add_argument("--resolution", default="512x512", help="H x W the VAE encodes (CLIP crops to 224)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("vae", "clip"), default=None)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    height, width = (int(v) for v in args.resolution.lower().split("x"))
    if args.repeats < 1 or min(batches) < 1:
        parser.error("--repeats and every batch size must be at least 1")

    report: dict[str, Any] = {"machine": _machine(), "models": args.models, "device": args.device}
    photos = _photos(max(batches), height, width)
    with tempfile.TemporaryDirectory(prefix="mcld-bench-") as tmp:
        if args.only in (None, "vae"):
            write_vae = write_tiny_vae if args.models == "tiny" else write_real_size_vae
            folder = write_vae(Path(tmp) / "vae")
            results = []
            for batch in batches:
                stage = VaeStage(config=VaeConfig(path=folder, height=height, width=width, device=args.device,
                                                  max_batch=batch))
                results.append(_time(stage.encode, photos[:batch], repeats=args.repeats))
            params = sum(p.numel() for p in stage.vae.encoder.parameters()) + sum(
                p.numel() for p in stage.vae.quant_conv.parameters())
            report["vae"] = {"resolution": f"{height}x{width}", "encoder_parameters": params, "results": results}
        if args.only in (None, "clip"):
            write_clip = write_tiny_clip if args.models == "tiny" else write_real_size_clip
            folder = write_clip(Path(tmp) / "clip")
            results = []
            for batch in batches:
                stage = ClipStage(config=ClipConfig(path=folder, device=args.device, max_batch=batch))
                results.append(_time(stage.embed, photos[:batch], repeats=args.repeats))
            report["clip"] = {
                "input": f"{height}x{width} -> processor 224x224",
                "parameters": sum(p.numel() for p in stage.model.parameters()),
                "embed_dim": stage.embed_dim,
                "results": results,
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
