"""The training objective: latents drawn from the stored distributions, noise, targets, MCLD's loss.

Randomness comes from torch's global generator (per process, seeded, and saved/restored with checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.training_utils import compute_snr

from train.config import ConditioningConfig, NoiseConfig
from train.data import TrainBatch

FACE_PARTS = (23, 24)  # DensePose head parts
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps logvar so


def build_scheduler(config: NoiseConfig) -> DDIMScheduler:
    """One scheduler for training (add_noise, get_velocity) and validation sampling (DDIM), as the reference."""
    kwargs = dict(
        num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start, beta_end=config.beta_end,
        beta_schedule=config.beta_schedule, steps_offset=config.steps_offset, clip_sample=config.clip_sample,
        prediction_type=config.prediction_type,
    )
    if config.zero_terminal_snr:
        kwargs.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return DDIMScheduler(**kwargs)


def sample_latents(distribution: torch.Tensor, *, scaling_factor: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(mean ++ logvar) -> (mean + exp(logvar / 2) * noise) * scaling_factor, as ``latent_dist.sample()``."""
    mean, logvar = distribution.float().chunk(2, dim=1)
    logvar = logvar.clamp(*LOGVAR_RANGE)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + torch.exp(0.5 * logvar) * noise) * scaling_factor


def latent_mean(distribution: torch.Tensor, *, scaling_factor: float) -> torch.Tensor:
    return distribution.float().chunk(2, dim=1)[0] * scaling_factor


def pose_input(pose: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in (V, U, I) order -> float in [0, 1]: what the reference's pose guider saw."""
    return pose.float() / 255.0


def face_mask(pose: torch.Tensor, *, latent_size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) float mask of DensePose head parts (I in {23, 24}), nearest-resized to latent size."""
    part = pose[:, 2:3]  # channel order (V, U, I)
    mask = torch.zeros_like(part, dtype=torch.float32)
    for index in FACE_PARTS:
        mask = mask + (part == index).float()
    return (F.interpolate(mask, size=latent_size, mode="nearest") > 0).float()


def snr_weights(scheduler: DDIMScheduler, timesteps: torch.Tensor, *, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample, in the reference's form.

    epsilon: min(SNR, gamma) / SNR. v-prediction: the reference adds one to SNR first, min(SNR+1, gamma) /
    (SNR+1), which keeps weight 1 at the zero-SNR terminal step (the textbook min(SNR, gamma)/(SNR+1) would
    give that step weight 0).
    """
    if not gamma:
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    snr = compute_snr(scheduler, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        snr = snr + 1.0
    return torch.minimum(snr, torch.full_like(snr, gamma)) / snr


@dataclass(frozen=True, kw_only=True)
class LossParts:
    loss: torch.Tensor  # what is back-propagated
    mse: torch.Tensor  # the weighted MSE term alone (detached)
    face: torch.Tensor  # the weighted face-region term alone (detached)


def mcld_loss(prediction: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor, mask: torch.Tensor,
              face_weight: float) -> LossParts:
    """MSE plus the same MSE inside the face mask, each averaged over the whole latent, min-SNR weighted."""
    error = (prediction.float() - target.float()) ** 2
    dims = tuple(range(1, error.ndim))
    mse = error.mean(dim=dims)
    face = (error * mask).mean(dim=dims)
    loss = ((mse + face_weight * face) * weights).mean()
    return LossParts(loss=loss, mse=(mse * weights).mean().detach(), face=(face * weights).mean().detach())


@dataclass(frozen=True, kw_only=True)
class ClipStats:
    null: torch.Tensor  # (D,) the embedding of the encoder's all-zeros input
    std: torch.Tensor  # (D,) per-dimension std over the dataset

    def to(self, device: torch.device) -> ClipStats:
        return ClipStats(null=self.null.to(device), std=self.std.to(device))


@dataclass(frozen=True, kw_only=True)
class Conditions:
    src_clip: torch.Tensor
    tex_clip: torch.Tensor
    uncond: bool


def augment_conditions(batch: TrainBatch, *, config: ConditioningConfig, stats: ClipStats) -> Conditions:
    """Classifier-free-guidance dropout and CLIP-embedding noise, as the reference trains.

    A whole step is unconditional with probability cfg_drop_rate (both CLIP tokens null, no ReferenceNet);
    otherwise each sample's source-image token is nulled with probability src_clip_drop_rate. The source
    token then gets noise scale * N(0, std) (the reference's data/clip_std.npy augmentation).
    """
    src = batch.src_clip.float()
    tex = batch.tex_clip.float()
    size = src.shape[0]
    null = stats.null.to(src.dtype).expand_as(src)
    uncond = bool(torch.rand(()) < config.cfg_drop_rate)
    if uncond:
        src, tex = null, null
    elif config.src_clip_drop_rate > 0:
        drop = (torch.rand(size) < config.src_clip_drop_rate).to(src.device)[:, None]
        src = torch.where(drop, null, src)
    if config.clip_noise_scale > 0:
        noise = torch.randn(src.shape).to(src.device) * stats.std.to(src.dtype)
        src = src + config.clip_noise_scale * noise
    return Conditions(src_clip=src, tex_clip=tex, uncond=uncond)


@dataclass(frozen=True, kw_only=True)
class StepResult:
    parts: LossParts
    uncond: bool


def training_step(model: torch.nn.Module, batch: TrainBatch, *, scheduler: DDIMScheduler, noise: NoiseConfig,
                  conditioning: ConditioningConfig, stats: ClipStats, scaling_factor: float) -> StepResult:
    """Forward one micro-batch and compute its loss (the caller back-propagates)."""
    latents = sample_latents(batch.tgt_latent, scaling_factor=scaling_factor)
    ref_latents = sample_latents(batch.ref_latent, scaling_factor=scaling_factor)
    size = latents.shape[0]
    eps = torch.randn(latents.shape).to(latents.device)
    if noise.noise_offset > 0:
        eps = eps + noise.noise_offset * torch.randn(size, latents.shape[1], 1, 1).to(latents.device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,)).to(latents.device)
    noisy = scheduler.add_noise(latents, eps, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        target = eps
    else:
        target = scheduler.get_velocity(latents, eps, timesteps)
    conditions = augment_conditions(batch, config=conditioning, stats=stats)
    prediction = model(
        noisy, timesteps, src_clip=conditions.src_clip, tex_clip=conditions.tex_clip, face_emb=batch.face_emb.float(),
        face_ok=batch.face_ok, pose=pose_input(batch.tgt_pose),
        ref_latents=None if conditions.uncond else ref_latents,
    )
    weights = snr_weights(scheduler, timesteps, gamma=noise.snr_gamma)
    mask = face_mask(batch.tgt_pose, latent_size=tuple(latents.shape[-2:]))
    parts = mcld_loss(prediction, target, weights=weights, mask=mask, face_weight=noise.face_loss_weight)
    return StepResult(parts=parts, uncond=conditions.uncond)
