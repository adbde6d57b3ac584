"""The sampler core, shared by train/sample.py (the test split) and train/validation.py (training's images):
DDIM with classifier-free guidance as the reference's pipeline runs it, per-pair noise, decoding, test.py's
resizes. An entry point imports this module, never the other way round."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler

from train.config import NoiseConfig
from train.data import TrainBatch
from train.model import MCLD
from train.objective import build_scheduler, latent_mean, pose_input

# test.py's scheduler (inference_v3.yaml): *linear* betas, unlike training's scaled_linear.
REFERENCE_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                           steps_offset=1, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                           timestep_spacing="trailing")
EVAL_SIZES = ((256, 176), (512, 352))  # the reference's evaluation sizes (H, W)
SCALING = 0.18215  # the reference's pipeline hard-codes it

def make_scheduler(name: str, *, noise: NoiseConfig) -> DDIMScheduler:
    """``reference``: test.py's DDIM; ``training``: the scheduler the weights were trained with."""
    if name == "reference":
        return DDIMScheduler(**REFERENCE_SCHEDULER)
    if name == "training":
        return build_scheduler(noise)
    raise ValueError(f"--scheduler must be reference or training, got {name!r}")


def pair_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pair_noise(seed: int, keys: list[str], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) initial noise, one generator per pair seeded from (seed, key)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(pair_seed(seed, k)))
                        for k in keys])


@torch.no_grad()
def denoise(model: MCLD, batch: TrainBatch, *, noise: torch.Tensor, scheduler: DDIMScheduler, steps: int,
            guidance_scale: float, scaling_factor: float, bank_fp16: bool = True) -> torch.Tensor:
    """DDIM with CFG from the given initial noise; returns scaled latents (B, 4, h, w).

    The unconditional half is formed as the reference's pipeline forms it: CLIP tokens zero, face branch off
    (its zero tokens add exactly nothing), no ReferenceNet features. The ReferenceNet runs once (timestep 0,
    texture-latent mean) and its features are rounded to float16 as the reference's attention control
    stores them (``bank_fp16``). Face-less pairs follow the model's ``face_missing``.
    """
    device = batch.tgt_latent.device
    dtype = next(model.parameters()).dtype
    size = len(batch)
    sampler = DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(steps, device=device)
    latents = noise.to(device=device, dtype=torch.float32) * sampler.init_noise_sigma
    src, tex = batch.src_clip.to(dtype), batch.tex_clip.to(dtype)
    zeros = torch.zeros_like(src)
    ref = latent_mean(batch.ref_latent, scaling_factor=scaling_factor).to(dtype)
    bank = model.reference_bank(ref, src[:, None, :])
    if bank_fp16:
        bank = {name: features.to(torch.float16).to(features.dtype) for name, features in bank.items()}
    bank = {name: torch.cat([features, features]) for name, features in bank.items()}
    no = torch.zeros(size, dtype=torch.bool, device=device)
    keep = torch.cat([no, ~no])
    pose = pose_input(batch.tgt_pose).to(dtype).repeat(2, 1, 1, 1)
    face = batch.face_emb.float().repeat(2, 1)
    face_ok = batch.face_ok.repeat(2)
    src_pair, tex_pair = torch.cat([zeros, src]), torch.cat([zeros, tex])
    for t in sampler.timesteps:
        model_input = sampler.scale_model_input(torch.cat([latents, latents]), t).to(dtype)
        prediction = model(
            model_input, t.expand(2 * size), src_clip=src_pair, tex_clip=tex_pair, face_emb=face, face_ok=face_ok,
            pose=pose, bank=bank, ref_keep=keep, face_keep=keep,
        )
        uncond, cond = prediction.float().chunk(2)
        guided = uncond + guidance_scale * (cond - uncond)
        latents = sampler.step(guided, t, latents).prev_sample
    return latents


@torch.no_grad()
def decode_images(vae: AutoencoderKL, latents: torch.Tensor, *, scaling_factor: float) -> torch.Tensor:
    """Scaled latents -> (B, 3, H, W) float32 in [0, 1], one sample at a time as the reference's pipeline."""
    images = [vae.decode(latent[None].to(vae.dtype) / scaling_factor).sample.float() for latent in latents]
    return (torch.cat(images) / 2 + 0.5).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, truncating as the reference (``(x * 255).astype(uint8)``)."""
    return (images.float() * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def evaluation_resize(images: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """test.py's postprocess_image: bicubic with antialias to (H, W), x255, clamp, truncate to uint8."""
    resized = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True)
    return (resized * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
