"""Trainer benchmark (JSON): what one training sample costs with online extraction vs. read from shards.

    python -m train.bench                      # CPU: online extraction vs. shard read, data-wait (tiny config)
    python -m train.bench --mode gpu           # GPU: steps/s at real size, with and without online extraction
    python -m train.bench --mode sample        # sampler: pairs/s per device (20 DDIM steps + VAE decode)

Online extraction is what the MCLD reference computes per sample while training: decode the target and
source photos (JPEG) and the texture map (PNG), squash to H x W, the SD VAE encoder on two images (target
and texture map) and CLIP ViT-L/14 on two (source and texture map). Models are the real-size architectures
with seeded random weights, configs built here: timing does not depend on the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

from shards.reader import resolve
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from train.config import ConditioningConfig, NoiseConfig, config_from_dict
from train.data import TrainBatch, TrainStream
from train.model import build_mcld
from train.objective import ClipStats, build_scheduler, training_step
from shards.bench import cpu_model

SOURCE_SIZE = (1101, 750)  # DeepFashion In-shop photos: height, width
TINY_CLIP_DIM = 32  # the projection size of preprocess's tiny CLIP (read from the manifest when training)


@dataclass(frozen=True, kw_only=True)
class Arch:
    """Sizes of the encoders and the MCLD model under test: ``real`` (SD 1.5, ViT-L/14) or ``tiny``."""

    name: str
    vae_blocks: tuple[int, ...]
    vae_layers: int
    vae_groups: int
    clip_hidden: int
    clip_layers: int
    clip_heads: int
    clip_dim: int


ARCHS = {
    "real": Arch(name="real", vae_blocks=(128, 256, 512, 512), vae_layers=2, vae_groups=32, clip_hidden=1024,
                 clip_layers=24, clip_heads=16, clip_dim=768),
    "tiny": Arch(name="tiny", vae_blocks=(8, 16, 16, 16), vae_layers=1, vae_groups=4, clip_hidden=32,
                 clip_layers=2, clip_heads=4, clip_dim=TINY_CLIP_DIM),
}


def build_encoders(arch: Arch, *, seed: int = 0):
    """SD's AutoencoderKL and CLIPVisionModelWithProjection (ViT-L/14 layout) with seeded random weights."""
    from diffusers import AutoencoderKL
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=arch.vae_blocks, layers_per_block=arch.vae_layers, latent_channels=4,
        norm_num_groups=arch.vae_groups, sample_size=512,
    ).eval()
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=arch.clip_hidden, intermediate_size=4 * arch.clip_hidden, num_hidden_layers=arch.clip_layers,
        num_attention_heads=arch.clip_heads, image_size=224, patch_size=14, projection_dim=arch.clip_dim,
        hidden_act="quick_gelu",
    )).eval()
    return vae, clip, CLIPImageProcessor()


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random picture (photo-like compressibility), uint8 RGB."""
    small = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _encoded_inputs(*, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for name, ext in (("target", ".jpg"), ("source", ".jpg"), ("texture", ".png")):
        size = (512, 512) if name == "texture" else SOURCE_SIZE
        ok, data = cv2.imencode(ext, _photo(rng, *size))
        files[name] = data.tobytes()
    return files


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure_online_extraction(*, arch: Arch, height: int, width: int, repeats: int) -> dict:
    """Seconds per training sample of the reference's online path, by part (after one warm-up run)."""
    vae, clip, processor = build_encoders(arch)
    files = _encoded_inputs(seed=1)

    def load():
        images = {k: Image.open(io.BytesIO(v)).convert("RGB").resize((width, height), Image.BICUBIC)
                  for k, v in files.items()}
        pixels = torch.stack([torch.from_numpy(np.array(images[k])).permute(2, 0, 1) for k in ("target", "texture")])
        pixels = pixels.float() / 127.5 - 1.0
        clip_pixels = processor(images=[images["source"], images["texture"]], return_tensors="pt").pixel_values
        return pixels, clip_pixels

    with torch.no_grad():
        _, (pixels, clip_pixels) = _timed(load, 1)
        vae.encode(pixels)
        clip(pixel_values=clip_pixels)
        load_s, _ = _timed(load, repeats)
        vae_s, _ = _timed(lambda: vae.encode(pixels).latent_dist, repeats)
        clip_s, _ = _timed(lambda: clip(pixel_values=clip_pixels).image_embeds, repeats)
    threads = torch.get_num_threads()
    total = load_s + vae_s + clip_s
    return {
        "arch": arch.name, "resolution": f"{height}x{width}", "threads": threads, "repeats": repeats,
        "decode_resize_clip_preprocess_s": round(load_s, 4), "vae_encoder_2_images_s": round(vae_s, 4),
        "clip_2_images_s": round(clip_s, 4), "seconds_per_sample": round(total, 4),
        "core_seconds_per_sample": round(total * threads, 4),
    }


def measure_shard_read(*, geometry: Geometry, samples: int, repeats: int) -> dict:
    """Seconds per sample for one reader: read, sha256 check, shuffle, decode, schema check, collate."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as out:
        manifest = write_synthetic_dataset(out, geometry=geometry, samples=samples, samples_per_shard=max(1, samples // 4))
        stream = TrainStream(source=resolve(out), rank=0, world_size=1, num_workers=0, batch_size=1,
                             batches_per_epoch=samples, seed=0, shuffle_buffer=min(100, samples), verify_checksums=True)

        def one_epoch() -> int:
            return sum(len(batch) for batch in stream)

        one_epoch()
        seconds, count = _timed(one_epoch, repeats)
        bytes_per_sample = sum(s.bytes for s in manifest.shards) / samples
    return {
        "resolution": f"{geometry.height}x{geometry.width}", "clip_dim": geometry.clip_dim, "threads": 1,
        "samples": count, "repeats": repeats, "bytes_per_sample": round(bytes_per_sample),
        "seconds_per_sample": round(seconds / count, 6), "core_seconds_per_sample": round(seconds / count, 6),
    }


def measure_data_wait(*, geometry: Geometry, steps: int) -> dict:
    """Run the tiny config through train/run.py on synthetic shards; the logged data-wait fraction."""
    from train.run import main as run_main

    with tempfile.TemporaryDirectory() as tmp:
        out, run = Path(tmp) / "shards", Path(tmp) / "run"
        write_synthetic_dataset(str(out), geometry=geometry, samples=64, samples_per_shard=8)
        config = yaml.safe_load((Path(__file__).parent / "configs" / "tiny.yaml").read_text())
        config["validation"]["vae_path"] = None
        config["checkpoint"]["every"] = steps + 1
        (Path(tmp) / "tiny.yaml").write_text(yaml.safe_dump(config))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = run_main(["--shards", str(out), "--config", str(Path(tmp) / "tiny.yaml"), "--output-dir", str(run),
                             "--max-steps", str(steps)])
        if code != 0:
            raise RuntimeError(f"the tiny training run failed with exit code {code}")
        records = [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]
    steady = records[2:] if len(records) > 4 else records  # the first steps include worker start-up
    return {
        "config": "tiny", "resolution": f"{geometry.height}x{geometry.width}", "steps": len(records),
        "batch_size": config["data"]["batch_size"], "num_workers": config["data"]["num_workers"],
        "data_wait_fraction_mean": round(statistics.mean(r["data_wait"] for r in steady), 4),
        "data_wait_fraction_first_step": round(records[0]["data_wait"], 4),
        "samples_per_s_mean": round(statistics.mean(r["samples_per_s"] for r in steady), 3),
    }


def _model_config(arch: Arch) -> dict:
    tiny = yaml.safe_load((Path(__file__).parent / "configs" / "tiny.yaml").read_text())
    if arch.name == "real":
        tiny["model"]["unet"] = {"cross_attention_dim": arch.clip_dim, "sample_size": 64}  # SD 1.5's layout
        tiny["model"]["face_projector"] = {}  # the reference's Resampler sizes
    return tiny


def _built_on(device: torch.device):
    """Parameters created on the device itself: a real-size model's random init on a GPU takes seconds, not minutes."""
    return torch.device(device) if device.type == "cuda" else contextlib.nullcontext()


def measure_steps(*, arch: Arch, device: torch.device, batch_size: int, height: int, width: int, steps: int,
                  online: bool, mixed_precision: bool, dtype: torch.dtype = torch.float16,
                  gradient_checkpointing: bool = False) -> dict:
    """Training steps/s of the real step function; with ``online`` the encoders make the batch first.

    ``dtype`` is the autocast type when ``mixed_precision``; on CUDA the result has the peak memory in GiB.
    """
    data = _model_config(arch)
    data["model"]["gradient_checkpointing"] = gradient_checkpointing
    config = config_from_dict(data, where=f"bench-{arch.name}")
    torch.manual_seed(0)
    with _built_on(device):
        model = build_mcld(config.model, clip_dim=arch.clip_dim, face_dim=512, latent_channels=8, where="bench")
    model = model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scheduler = build_scheduler(NoiseConfig())
    stats = ClipStats(null=torch.zeros(arch.clip_dim), std=torch.ones(arch.clip_dim)).to(device)
    vae = clip = None
    if online:
        vae, clip, _ = build_encoders(arch)
        vae, clip = vae.to(device), clip.to(device)
    dtype = dtype if mixed_precision else torch.float32
    h, w = height // 8, width // 8
    generator = torch.Generator().manual_seed(1)

    def make_batch() -> TrainBatch:
        if online:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=mixed_precision):
                pixels = torch.randn(2 * batch_size, 3, height, width, generator=generator).to(device)
                dist = vae.encode(pixels).latent_dist
                latents = torch.cat([dist.mean, dist.logvar], 1).half()
                clip_pixels = torch.randn(2 * batch_size, 3, 224, 224, generator=generator).to(device)
                embeds = clip(pixel_values=clip_pixels).image_embeds.half()
            tgt, ref = latents.chunk(2)
            src, tex = embeds.chunk(2)
        else:
            tgt = torch.randn(batch_size, 8, h, w, generator=generator).half().to(device)
            ref = torch.randn(batch_size, 8, h, w, generator=generator).half().to(device)
            src = torch.randn(batch_size, arch.clip_dim, generator=generator).half().to(device)
            tex = torch.randn(batch_size, arch.clip_dim, generator=generator).half().to(device)
        return TrainBatch(
            keys=[f"k{i}" for i in range(batch_size)], tgt_latent=tgt, ref_latent=ref, src_clip=src, tex_clip=tex,
            face_emb=torch.randn(batch_size, 512, generator=generator).to(device),
            face_ok=torch.ones(batch_size, dtype=torch.bool, device=device),
            tgt_pose=torch.randint(0, 25, (batch_size, 3, height, width), generator=generator, dtype=torch.uint8).to(device),
        )

    def step() -> None:
        batch = make_batch()
        with torch.autocast(device.type, dtype=dtype, enabled=mixed_precision):
            result = training_step(model, batch, scheduler=scheduler, noise=NoiseConfig(),
                                   conditioning=ConditioningConfig(cfg_drop_rate=0.0), stats=stats,
                                   scaling_factor=0.18215)
        result.parts.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    elapsed = time.perf_counter() - started
    result = {"online_extraction": online, "steps": steps, "steps_per_s": round(steps / elapsed, 4),
              "samples_per_s": round(steps * batch_size / elapsed, 3), "seconds_per_step": float(f"{elapsed / steps:.5g}"),
              "autocast": str(dtype).removeprefix("torch.") if mixed_precision else None,
              "gradient_checkpointing": gradient_checkpointing}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result


def measure_sampling(*, arch: Arch, device: torch.device, batch_size: int, height: int, width: int, steps: int,
                     dtype: torch.dtype, repeats: int) -> dict:
    """Pairs/s of the sampler's own code (train.sample.denoise + decode_images) on one device."""
    from train.sampling import REFERENCE_SCHEDULER, decode_images, denoise, pair_noise
    from diffusers import DDIMScheduler

    config = config_from_dict(_model_config(arch), where=f"bench-{arch.name}")
    torch.manual_seed(0)
    with _built_on(device):
        model = build_mcld(config.model, clip_dim=arch.clip_dim, face_dim=512, latent_channels=8, where="bench")
    model = model.to(device, dtype=dtype).eval()
    vae, _, _ = build_encoders(arch)
    vae = vae.to(device).eval()
    generator = torch.Generator().manual_seed(1)
    h, w = height // 8, width // 8
    batch = TrainBatch(
        keys=[f"s{i}__t{i}" for i in range(batch_size)],
        tgt_latent=torch.randn(batch_size, 8, h, w, generator=generator).half(),
        ref_latent=torch.randn(batch_size, 8, h, w, generator=generator).half(),
        src_clip=torch.randn(batch_size, arch.clip_dim, generator=generator).half(),
        tex_clip=torch.randn(batch_size, arch.clip_dim, generator=generator).half(),
        face_emb=torch.randn(batch_size, 512, generator=generator),
        face_ok=torch.ones(batch_size, dtype=torch.bool),
        tgt_pose=torch.randint(0, 25, (batch_size, 3, height, width), generator=generator, dtype=torch.uint8),
    ).to(device)
    scheduler = DDIMScheduler(**REFERENCE_SCHEDULER)

    def once() -> None:
        noise = pair_noise(42, batch.keys, (4, h, w))
        latents = denoise(model, batch, noise=noise, scheduler=scheduler, steps=steps, guidance_scale=3.5,
                          scaling_factor=0.18215)
        decode_images(vae, latents.float(), scaling_factor=0.18215)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    once()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    best = min(times)
    return {"arch": arch.name, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "resolution": f"{height}x{width}", "batch_size": batch_size, "ddim_steps": steps,
            "seconds_per_batch": round(best, 4), "pairs_per_s": round(batch_size / best, 4),
            "threads": torch.get_num_threads(),
            **({"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
               if device.type == "cuda" else {})}


def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match is None or int(match.group(1)) % 64 or int(match.group(2)) % 8:
        raise argparse.ArgumentTypeError(f"{text!r}: use HEIGHTxWIDTH, height a multiple of 64, width of 8")
    return int(match.group(1)), int(match.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("cpu", "gpu", "sample"), default="cpu")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="real", help="encoder/model sizes (tiny: for tests)")
    parser.add_argument("--resolution", type=_resolution, default=(512, 512))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200, help="samples per shard-read repeat")
    parser.add_argument("--steps", type=int, default=30, help="training steps for data-wait / GPU steps/s")
    parser.add_argument("--batch-size", type=int, default=8, help="GPU and sample modes: per-step batch")
    parser.add_argument("--sample-steps", type=int, default=20, help="sample mode: DDIM steps")
    args = parser.parse_args(argv)
    arch = ARCHS[args.arch]
    height, width = args.resolution
    machine = {"platform": platform.platform(), "cpu": cpu_model(),
               "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if args.mode == "sample":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            machine["gpu"] = torch.cuda.get_device_name(device)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        result = measure_sampling(arch=arch, device=device, batch_size=args.batch_size, height=height, width=width,
                                  steps=args.sample_steps, dtype=dtype, repeats=args.repeats)
        report = {"benchmark": "sample_pairs_per_s", "machine": machine, "result": result}
    elif args.mode == "gpu":
        if not torch.cuda.is_available():
            print("python -m train.bench --mode gpu: no CUDA device here", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        machine["gpu"] = torch.cuda.get_device_name(device)
        runs = [measure_steps(arch=arch, device=device, batch_size=args.batch_size, height=height, width=width,
                              steps=args.steps, online=online, mixed_precision=True) for online in (False, True)]
        report = {"benchmark": "train_gpu_steps", "arch": arch.name, "resolution": f"{height}x{width}",
                  "batch_size": args.batch_size, "precision": "fp16 autocast", "machine": machine, "results": runs,
                  "speedup_without_online_extraction": round(runs[0]["steps_per_s"] / runs[1]["steps_per_s"], 3)}
    else:
        threads = torch.get_num_threads()
        online = measure_online_extraction(arch=arch, height=height, width=width, repeats=args.repeats)
        shard = measure_shard_read(geometry=Geometry(height=height, width=width, clip_dim=arch.clip_dim),
                                   samples=args.samples, repeats=args.repeats)
        torch.set_num_threads(threads)
        wait = measure_data_wait(geometry=Geometry(height=height, width=width, clip_dim=TINY_CLIP_DIM), steps=args.steps)
        report = {
            "benchmark": "train_sample_cost", "machine": machine,
            "online_extraction": online, "shard_read": shard,
            "online_over_shard_core_seconds": round(online["core_seconds_per_sample"] / shard["core_seconds_per_sample"], 1),
            "data_wait_tiny": wait,
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
