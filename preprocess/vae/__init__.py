"""SD VAE stage: diffusers AutoencoderKL latent distributions of the resized image and texture."""

from preprocess.vae.stage import VaeConfig, VaeStage

__all__ = ["VaeConfig", "VaeStage"]
