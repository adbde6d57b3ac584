"""``--models tiny`` VAE: SD's AutoencoderKL layout (4 blocks, downsampling 8, 4 latent channels) at toy width."""

from __future__ import annotations

from pathlib import Path

TINY_BLOCKS = (8, 16, 16, 16)


def write_tiny_vae(dest_dir: Path, *, seed: int = 0) -> Path:
    """A seeded toy AutoencoderKL saved as a diffusers folder (safetensors), byte-identical per seed."""
    import torch
    from diffusers import AutoencoderKL

    dest_dir = Path(dest_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(TINY_BLOCKS),
            up_block_types=("UpDecoderBlock2D",) * len(TINY_BLOCKS),
            block_out_channels=TINY_BLOCKS,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.18215,
        )
    vae.save_pretrained(dest_dir, safe_serialization=True)
    return dest_dir
