"""SD VAE encoder on the resized image and texture: the latent distribution (mean, logvar) as float16.

The trainer draws ``(mean + exp(logvar / 2) * noise) * scaling_factor`` each step, which is what the MCLD
reference's online ``vae.encode(x).latent_dist.sample() * 0.18215`` does; so we store the distribution,
unscaled, and the manifest records ``scaling_factor`` (DESIGN.md, "Latents").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from preprocess.common import ok_indices, store_float16
from preprocess.common.device import check_device_dtype
from preprocess.common.images import image_rows

STAGE = "vae"
COLUMN_PAIRS = (  # (input column, output column)
    ("image_resized", "img_latent"), ("texture_resized", "tex_latent"),
)
DOWNSAMPLE = 8  # the schema's H/8 x W/8 latent grid


@dataclass(frozen=True, kw_only=True)
class VaeConfig:
    path: Path  # a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.*)
    height: int = 512
    width: int = 512
    device: str = "cpu"
    dtype: str = "float32"
    max_batch: int = 8  # images per forward pass on the device (image and texture rows share passes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.height <= 0 or self.width <= 0 or self.height % DOWNSAMPLE or self.width % DOWNSAMPLE:
            raise ValueError(
                f"vae: resolution {self.height}x{self.width} must be positive multiples of {DOWNSAMPLE} "
                "(the VAE's downsampling factor)"
            )
        check_device_dtype(device=self.device, dtype=self.dtype, what="vae")
        if self.max_batch < 1:
            raise ValueError(f"vae: max_batch must be at least 1, got {self.max_batch}")


def _read_vae_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise FileNotFoundError(f"VAE folder {path} does not exist or is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"VAE folder {path} has no config.json: expected a diffusers AutoencoderKL folder "
            "(config.json + diffusion_pytorch_model.safetensors), e.g. sd-vae-ft-mse"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file}: unreadable: {error}") from error
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_file}: _class_name is {found!r}; the vae stage loads AutoencoderKL folders")
    return config


class VaeStage:
    """image_resized, texture_resized -> img_latent, tex_latent: float16 [8, H/8, W/8] = mean ++ logvar, unscaled."""

    def __init__(self, *, config: VaeConfig) -> None:
        import torch
        from diffusers import AutoencoderKL

        self.config = config
        raw = _read_vae_config(config.path)
        for key in ("shift_factor", "latents_mean", "latents_std"):
            if raw.get(key) is not None:
                raise ValueError(
                    f"{config.path / 'config.json'}: sets {key}; the shard format records only scaling_factor "
                    "(SD-style VAEs such as sd-vae-ft-mse)"
                )
        self.torch_dtype = getattr(torch, config.dtype)
        try:
            vae = AutoencoderKL.from_pretrained(config.path, local_files_only=True, torch_dtype=self.torch_dtype)
        except (OSError, ValueError) as error:
            raise ValueError(f"VAE folder {config.path}: cannot load AutoencoderKL: {error}") from error
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if factor != DOWNSAMPLE:
            raise ValueError(
                f"VAE folder {config.path}: downsampling factor {factor} (from {len(vae.config.block_out_channels)} "
                f"blocks); the shard format needs {DOWNSAMPLE}"
            )
        self.vae = vae.to(config.device).eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = 2 * int(vae.config.latent_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.config.height // DOWNSAMPLE, self.config.width // DOWNSAMPLE)


    def encode(self, images: np.ndarray) -> np.ndarray:
        """[n, H, W, 3] uint8 -> float32 [n, 8, H/8, W/8] (mean ++ clamped logvar), batched on the device."""
        import torch

        out = np.empty((len(images), *self.latent_shape), np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self.config.max_batch):
                chunk = torch.tensor(images[start : start + self.config.max_batch], device=self.config.device)
                # Contiguous NCHW as ToTensor gives: CPU GroupNorm on channels-last strides differs by ~1e-3.
                chunk = chunk.permute(0, 3, 1, 2).contiguous()
                # torchvision's ToTensor (x / 255) then Normalize(0.5, 0.5), as the reference's transform.
                x = chunk.to(torch.float32).div(255).sub(0.5).div(0.5)
                dist = self.vae.encode(x.to(self.torch_dtype)).latent_dist
                moments = torch.cat([dist.mean, dist.logvar], dim=1)
                out[start : start + len(chunk)] = moments.to(torch.float32).cpu().numpy()
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        rows = ok_indices(batch)
        height, width = self.config.height, self.config.width
        size = (height, width)
        images = [row for column, _ in COLUMN_PAIRS for row in image_rows(batch, column, rows, stage=STAGE, size=size)]
        moments = self.encode(np.stack(images)) if images else np.empty((0, *self.latent_shape), np.float32)
        outputs = store_float16(batch, rows, moments, columns=COLUMN_PAIRS, shape=self.latent_shape, stage=STAGE,
                                reason="vae_nonfinite", what="latent")
        batch.update(outputs)
        return batch
