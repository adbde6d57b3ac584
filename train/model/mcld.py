"""MCLD: denoising UNet + ReferenceNet + pose guider + face projector, on stock diffusers modules."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from torch import nn

from train.config import ConfigError, FaceProjectorConfig, ModelConfig
from train.model.attention import AttentionContext, install_denoising_processors, install_reference_processors
from train.model.pose_guider import build_pose_guider, load_pose_guider_from_controlnet


def build_face_projector(config: FaceProjectorConfig, *, face_dim: int, output_dim: int) -> IPAdapterPlusImageProjection:
    """The reference's Perceiver resampler (IP-Adapter Plus), as diffusers ships it."""
    return IPAdapterPlusImageProjection(
        embed_dims=face_dim, output_dims=output_dim, hidden_dims=config.hidden_dim, depth=config.depth,
        dim_head=config.head_dim, heads=config.heads, num_queries=config.tokens, ffn_ratio=config.ff_mult,
    )


def reference_unused_prefixes(unet: UNet2DConditionModel) -> tuple[str, ...]:
    """ReferenceNet parameters kept frozen: the last up block (as the reference) and the output head,
    whose results nothing reads (only the self-attention inputs are)."""
    return (f"up_blocks.{len(unet.up_blocks) - 1}.", "conv_norm_out.", "conv_out.")


class MCLD(nn.Module):
    def __init__(self, *, denoising_unet: UNet2DConditionModel, reference_unet: UNet2DConditionModel,
                 pose_guider: nn.Module, face_projector: nn.Module, face_scale: float,
                 face_missing: str = "mask") -> None:
        super().__init__()
        self.face_missing = face_missing
        self.denoising_unet = denoising_unet
        self.reference_unet = reference_unet
        self.pose_guider = pose_guider
        self.face_projector = face_projector
        install_reference_processors(reference_unet)
        install_denoising_processors(denoising_unet, face_scale=face_scale)
        frozen = reference_unused_prefixes(reference_unet)
        for name, parameter in reference_unet.named_parameters():
            parameter.requires_grad_(not name.startswith(frozen))
        self._pose_features: torch.Tensor | None = None
        # Pose features join the noisy latent's features right after conv_in (the reference's UNet does
        # `sample = conv_in(sample) + pose_cond_fea`); a hook does it on the stock UNet.
        denoising_unet.conv_in.register_forward_hook(self._add_pose_features)

    def _add_pose_features(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self._pose_features is None:
            raise RuntimeError("the MCLD denoising UNet was called without pose features (call MCLD, not the UNet)")
        return output + self._pose_features.to(output.dtype)

    @contextlib.contextmanager
    def _pose(self, features: torch.Tensor) -> Iterator[None]:
        self._pose_features = features
        try:
            yield
        finally:
            self._pose_features = None

    @property
    def clip_dim(self) -> int:
        return int(self.denoising_unet.config.cross_attention_dim)

    def reference_bank(self, ref_latents: torch.Tensor, src_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the ReferenceNet at timestep 0 on the texture-map latent; return its self-attention inputs."""
        context = AttentionContext(bank={}, record=True)
        timesteps = torch.zeros(ref_latents.shape[0], dtype=torch.long, device=ref_latents.device)
        self.reference_unet(ref_latents, timesteps, encoder_hidden_states=src_tokens,
                            cross_attention_kwargs={"mcld": context}, return_dict=False)
        return context.bank

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, *, src_clip: torch.Tensor,
                tex_clip: torch.Tensor, face_emb: torch.Tensor, face_ok: torch.Tensor, pose: torch.Tensor,
                ref_latents: torch.Tensor | None = None, bank: dict[str, torch.Tensor] | None = None,
                ref_keep: torch.Tensor | None = None, face_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the diffusion target.

        src_clip, tex_clip: (B, D) CLIP embeddings; face_emb: (B, 512); face_ok: (B,) bool;
        pose: (B, 3, H, W) in [0, 1], channels (V, U, I). ref_latents (B, 4, h, w) scaled, or a precomputed
        ``bank``; neither = no ReferenceNet (an unconditional step). ref_keep masks the bank per sample;
        face_keep masks the face branch per sample on top of face_ok (the sampler's unconditional half).
        Without a face (face_ok False), ``face_missing`` decides: "mask" drops the face branch,
        "project_zeros" projects the zero ArcFace vector as the reference does.
        """
        src_tokens = src_clip[:, None, :]
        if bank is None and ref_latents is not None:
            bank = self.reference_bank(ref_latents, src_tokens)
        face_ok = face_ok.to(device=face_emb.device, dtype=torch.bool)
        if self.face_missing == "project_zeros":
            face_emb = torch.where(face_ok[:, None], face_emb, torch.zeros_like(face_emb))
            keep = torch.ones_like(face_ok)
        else:
            keep = face_ok
        if face_keep is not None:
            keep = keep & face_keep.to(device=keep.device, dtype=torch.bool)
        face_tokens = self.face_projector(face_emb[:, None, :].to(src_clip.dtype))
        states = torch.cat([src_tokens, tex_clip[:, None, :], face_tokens.to(src_clip.dtype)], dim=1)
        context = AttentionContext(bank=bank, ref_keep=ref_keep, face_keep=keep)
        with self._pose(self.pose_guider(pose)):
            return self.denoising_unet(noisy_latents, timesteps, encoder_hidden_states=states,
                                       cross_attention_kwargs={"mcld": context}, return_dict=False)[0]


def _load_unet(path: str, subfolder: str) -> UNet2DConditionModel:
    folder = Path(path) / subfolder
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.base_model_path: {folder} has no config.json (a diffusers UNet folder is expected)")
    return UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, local_files_only=True)


def build_mcld(config: ModelConfig, *, clip_dim: int, face_dim: int, latent_channels: int, where: str) -> MCLD:
    """Both UNets start from the same weights (a local SD folder, or one seeded init of a UNet config)."""
    if config.base_model_path is not None:
        denoising = _load_unet(config.base_model_path, config.unet_subfolder)
        reference = _load_unet(config.base_model_path, config.unet_subfolder)
    else:
        kwargs = dict(config.unet or {})
        if kwargs.get("cross_attention_dim") is None:
            kwargs["cross_attention_dim"] = clip_dim
        try:
            denoising = UNet2DConditionModel(**kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: model.unet is not a valid UNet2DConditionModel config: {error}") from error
        reference = copy.deepcopy(denoising)
    unet_config = denoising.config
    if unet_config.cross_attention_dim != clip_dim:
        raise ConfigError(
            f"{where}: the UNet's cross_attention_dim is {unet_config.cross_attention_dim} but the manifest's clip_dim "
            f"is {clip_dim}: the CLIP embeddings would not fit the UNet"
        )
    if 2 * unet_config.in_channels != latent_channels:
        raise ConfigError(
            f"{where}: the UNet takes {unet_config.in_channels} latent channels but the manifest's latent_channels is "
            f"{latent_channels} (mean ++ logvar of {latent_channels // 2})"
        )
    pose_guider = build_pose_guider(out_channels=unet_config.block_out_channels[0], channels=config.pose_guider_channels)
    if config.pose_guider_init is not None:
        load_pose_guider_from_controlnet(pose_guider, config.pose_guider_init)
    face_projector = build_face_projector(config.face_projector, face_dim=face_dim, output_dim=clip_dim)
    model = MCLD(denoising_unet=denoising, reference_unet=reference, pose_guider=pose_guider,
                 face_projector=face_projector, face_scale=config.face_scale, face_missing=config.face_missing)
    if config.gradient_checkpointing:
        denoising.enable_gradient_checkpointing()
        reference.enable_gradient_checkpointing()
    return model
