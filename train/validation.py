"""Validation images: DDIM with classifier-free guidance on fixed pairs, decoded by a VAE loaded for this alone.

The grid has one row per pair: source texture map (its latent mean, decoded), target pose (the IUV PNG as
PIL shows it, channels (V, U, I)), the generated image, and the target preview (the shard's ``tgt`` preview
when it has one, else its latent mean, decoded).

Sampling is the sampler's (train/sample.py): the unconditional half formed as the reference's pipeline
forms it (zero CLIP tokens, no face branch, no ReferenceNet features), the bank rounded to float16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from PIL import Image

from shards.manifest import Manifest
from train.data import TrainBatch, collate
from train.model import MCLD
from train.objective import latent_mean
from shards.storage import sha256_of


class ValidationError(ValueError):
    """A VAE for validation that is missing, altered or does not match the shards; names the file."""


def manifest_vae_folder(manifest: Manifest, *, where: str) -> Path:
    """The VAE the shards were encoded with, as the manifest records it, after checking its files' sha256.

    File names in the record may be relative to the folder or prefixed with the folder's own name.
    """
    records = [m for m in manifest.models if m.name == "vae"]
    if not records:
        raise ValidationError(f"{where}: the manifest records no 'vae' model; set validation.vae_path to a folder")
    record = records[0]
    folder = Path(record.source)
    if not folder.is_dir():
        raise ValidationError(f"{where}: the manifest's VAE folder {folder} does not exist (any more)")
    for name, expected in sorted(record.files.items()):
        candidates = [folder / name, folder.parent / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ValidationError(f"{folder}: {name} (listed in the manifest) is missing")
        if sha256_of(found)[0] != expected:
            raise ValidationError(
                f"{found}: sha256 differs from the manifest's: the VAE was changed since the shards were made"
            )
    return folder


def load_vae_decoder(path: Path, *, scaling_factor: float, device: torch.device) -> AutoencoderKL:
    if not (path / "config.json").is_file():
        raise ValidationError(f"{path}: not a diffusers AutoencoderKL folder (no config.json)")
    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    if abs(float(vae.config.scaling_factor) - scaling_factor) > 1e-9:
        raise ValidationError(
            f"{path / 'config.json'}: scaling_factor {vae.config.scaling_factor} but the shards' manifest says "
            f"{scaling_factor}: not the VAE the latents were made with"
        )
    vae.encoder = None  # decoding needs the decoder only
    return vae.to(device).eval().requires_grad_(False)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: torch.Tensor, *, scaling_factor: float) -> np.ndarray:
    return _to_uint8(vae.decode(latents / scaling_factor).sample)


def sample_images(model: MCLD, batch: TrainBatch, *, scheduler: DDIMScheduler, steps: int, guidance_scale: float,
                  scaling_factor: float, seed: int) -> torch.Tensor:
    """The sampler's DDIM with CFG (train.sample.denoise) from one seeded generator for the batch; returns
    scaled latents (B, 4, h, w)."""
    from train.sampling import denoise

    shape = (len(batch), batch.tgt_latent.shape[1] // 2, *batch.tgt_latent.shape[2:])
    noise = torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(seed))
    return denoise(model, batch, noise=noise, scheduler=scheduler, steps=steps, guidance_scale=guidance_scale,
                   scaling_factor=scaling_factor)


def _pose_view(pose: torch.Tensor) -> np.ndarray:
    return pose.permute(0, 2, 3, 1).cpu().numpy()  # (V, U, I) as RGB, what PIL shows of the PNG


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def render_grid(*, pairs: list[dict], textures: np.ndarray, generated: np.ndarray, targets: np.ndarray,
                poses: np.ndarray) -> Image.Image:
    """Rows of [source texture | target pose | generated | target preview]."""
    height, width = generated.shape[1:3]
    rows = []
    for index, sample in enumerate(pairs):
        target = sample["tgt"] if "tgt" in sample else targets[index]
        cells = [textures[index], poses[index], generated[index], target]
        rows.append(np.concatenate([_fit(c, height, width) for c in cells], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def run_validation(model: MCLD, *, pairs: list[dict], vae: AutoencoderKL, scheduler: DDIMScheduler, steps: int, guidance_scale: float, scaling_factor: float, seed: int,
                   device: torch.device, out_path: Path) -> Path:
    was_training = model.training
    model.eval()
    try:
        batch = collate(pairs).to(device)
        latents = sample_images(model, batch, scheduler=scheduler, steps=steps,
                                guidance_scale=guidance_scale, scaling_factor=scaling_factor, seed=seed)
        # The VAE decodes in float32 whatever the training precision (fp16 SD VAEs can overflow).
        with torch.autocast(device_type=device.type, enabled=False):
            generated = decode(vae, latents.float(), scaling_factor=scaling_factor)
            textures = decode(vae, latent_mean(batch.ref_latent, scaling_factor=scaling_factor),
                              scaling_factor=scaling_factor)
            targets = decode(vae, latent_mean(batch.tgt_latent, scaling_factor=scaling_factor),
                             scaling_factor=scaling_factor)
    finally:
        model.train(was_training)
    grid = render_grid(pairs=pairs, textures=textures, generated=generated, targets=targets,
                       poses=_pose_view(batch.tgt_pose))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_suffix(".tmp.png")
    grid.save(temporary)
    temporary.replace(out_path)
    return out_path
