"""MCLD's attention, as processors for stock diffusers ``Attention`` modules (no forked UNet).

- ReferenceNet self-attention records its input (the block's ``norm1`` output) per layer.
- The denoising UNet's self-attention attends over its own tokens plus the ReferenceNet's tokens of the
  same layer (keys and values from the concatenation, the Animate Anyone scheme).
- The denoising UNet's cross-attention is MFCA: ``Attn(Q, K_s, V_s) + lambda * Attn(Q, K_face, V_face)``,
  where the switcher ``s`` is the source-image CLIP token in down blocks, source image and texture-map
  tokens in the mid block and the texture-map token in up blocks; the face branch has its own key/value
  projections (``to_k_ip``/``to_v_ip``, the reference's names).

Per-call state travels as ``cross_attention_kwargs={"mcld": AttentionContext(...)}``, which stock
``UNet2DConditionModel`` hands to every processor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

# Layout of the packed encoder states fed to the denoising UNet: [src CLIP, texture CLIP, face tokens...].
SRC_TOKEN = 0
TEX_TOKEN = 1
CLIP_TOKENS = 2
SWITCHER = {"down": slice(SRC_TOKEN, SRC_TOKEN + 1), "mid": slice(0, CLIP_TOKENS), "up": slice(TEX_TOKEN, TEX_TOKEN + 1)}


@dataclass(kw_only=True)
class AttentionContext:
    """State of one UNet call.

    bank: ReferenceNet tokens per self-attention layer (filled when ``record``; read otherwise).
    ref_keep: (B,) bool, which samples see the bank (False = ReferenceNet skipped for that sample).
    face_keep: (B,) bool, which samples have a face (False = face tokens masked out).
    """

    bank: dict[str, torch.Tensor] | None = None
    record: bool = False
    ref_keep: torch.Tensor | None = None
    face_keep: torch.Tensor | None = None


def _split_heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    batch, length, _ = x.shape
    return x.view(batch, length, attn.heads, -1).transpose(1, 2)


def _attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, heads, Lq, d) attention output for already-projected (B, L, heads*d) inputs."""
    return F.scaled_dot_product_attention(
        _split_heads(attn, query), _split_heads(attn, key), _split_heads(attn, value), attn_mask=mask,
        scale=attn.scale,
    )


def _finish(attn: Attention, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Heads back together, then the output projection (SD attention has no residual or rescale inside)."""
    batch, heads, length, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, length, heads * dim).to(like.dtype)
    return attn.to_out[1](attn.to_out[0](out))


def _check_plain(attn: Attention, name: str) -> None:
    """The processors implement SD's attention only; refuse variants they would silently get wrong."""
    unsupported = [
        feature for feature, present in (
            ("spatial_norm", attn.spatial_norm is not None),
            ("group_norm", attn.group_norm is not None),
            ("norm_cross", attn.norm_cross is not None),
            ("added_kv_proj_dim", getattr(attn, "added_kv_proj_dim", None) is not None),
            ("norm_q/norm_k", getattr(attn, "norm_q", None) is not None),
            ("residual_connection", bool(attn.residual_connection)),
            ("rescale_output_factor", attn.rescale_output_factor != 1.0),
        ) if present
    ]
    if unsupported:
        raise ValueError(f"{name}: attention uses {unsupported}, which the MCLD processors do not implement")


def _no_mask(attention_mask: torch.Tensor | None, name: str) -> None:
    if attention_mask is not None:
        raise ValueError(f"{name}: attention masks are not supported by the MCLD processors")


class PlainAttnProcessor(nn.Module):
    """Stock scaled-dot-product attention that accepts (and ignores) the MCLD context."""

    def __init__(self, *, name: str) -> None:
        super().__init__()
        self.name = name

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 mcld: AttentionContext | None = None) -> torch.Tensor:
        _no_mask(attention_mask, self.name)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = _attend(attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context))
        return _finish(attn, out, hidden_states)


class ReferenceWriteProcessor(PlainAttnProcessor):
    """ReferenceNet self-attention: records its input tokens in the context's bank, then attends as usual."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 mcld: AttentionContext | None = None) -> torch.Tensor:
        if mcld is not None and mcld.record:
            if mcld.bank is None:
                raise ValueError(f"{self.name}: recording ReferenceNet features needs a bank")
            mcld.bank[self.name] = hidden_states
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, mcld)


class ReferenceReadProcessor(PlainAttnProcessor):
    """Denoising self-attention with keys/values over [own tokens, ReferenceNet tokens of this layer]."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 mcld: AttentionContext | None = None) -> torch.Tensor:
        _no_mask(attention_mask, self.name)
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: a reference-reading self-attention got encoder states")
        bank = None if mcld is None or mcld.bank is None else mcld.bank
        if bank is None:
            return super().__call__(attn, hidden_states, None, None, temb, mcld)
        if self.name not in bank:
            raise ValueError(f"{self.name}: no ReferenceNet features for this layer (the two UNets differ)")
        reference = bank[self.name].to(hidden_states.dtype)
        if reference.shape[0] != hidden_states.shape[0] or reference.shape[2] != hidden_states.shape[2]:
            raise ValueError(
                f"{self.name}: ReferenceNet features {tuple(reference.shape)} do not fit {tuple(hidden_states.shape)}"
            )
        context = torch.cat([hidden_states, reference], dim=1)
        mask = None
        if mcld.ref_keep is not None:
            # Masked reference tokens leave exactly the plain self-attention for that sample.
            batch, own = hidden_states.shape[:2]
            keep = mcld.ref_keep.to(device=hidden_states.device, dtype=torch.bool).view(batch, 1, 1, 1)
            mask = torch.cat([
                torch.ones(batch, 1, 1, own, dtype=torch.bool, device=hidden_states.device),
                keep.expand(batch, 1, 1, reference.shape[1]),
            ], dim=-1)
        out = _attend(attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), mask)
        return _finish(attn, out, hidden_states)


class MFCAProcessor(nn.Module):
    """Multi-focal condition aggregation for one cross-attention of the denoising UNet."""

    def __init__(self, *, name: str, stage: str, hidden_size: int, cross_attention_dim: int, face_scale: float) -> None:
        super().__init__()
        self.name = name
        self.stage = stage
        self.face_scale = face_scale
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 mcld: AttentionContext | None = None) -> torch.Tensor:
        _no_mask(attention_mask, self.name)
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= CLIP_TOKENS:
            raise ValueError(
                f"{self.name}: MFCA needs packed encoder states [src CLIP, texture CLIP, face tokens...]"
            )
        switcher = encoder_hidden_states[:, SWITCHER[self.stage]]
        face = encoder_hidden_states[:, CLIP_TOKENS:]
        query = attn.to_q(hidden_states)
        out = _attend(attn, query, attn.to_k(switcher), attn.to_v(switcher))
        face_out = _attend(attn, query, self.to_k_ip(face), self.to_v_ip(face))
        if mcld is not None and mcld.face_keep is not None:
            keep = mcld.face_keep.to(device=face_out.device, dtype=face_out.dtype).view(-1, 1, 1, 1)
            face_out = face_out * keep
        return _finish(attn, out + self.face_scale * face_out, hidden_states)


def _stage_of(name: str) -> str:
    for prefix, stage in (("down_blocks.", "down"), ("mid_block.", "mid"), ("up_blocks.", "up")):
        if name.startswith(prefix):
            return stage
    raise ValueError(f"{name}: not in a down, mid or up block of the UNet")


def _attention_modules(unet: nn.Module) -> dict[str, Attention]:
    """Attention modules keyed by their path (the processor name without ``.processor``)."""
    modules = {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}
    for name, module in modules.items():
        _check_plain(module, name)
    return modules


def install_reference_processors(unet: nn.Module) -> None:
    """ReferenceNet: self-attentions record, cross-attentions are plain."""
    processors = {}
    for name, module in _attention_modules(unet).items():
        cls = PlainAttnProcessor if module.is_cross_attention else ReferenceWriteProcessor
        processors[f"{name}.processor"] = cls(name=name)
    unet.set_attn_processor(processors)


def install_denoising_processors(unet: nn.Module, *, face_scale: float) -> None:
    """Denoising UNet: self-attentions read the ReferenceNet bank, cross-attentions are MFCA."""
    processors: dict[str, nn.Module] = {}
    for name, module in _attention_modules(unet).items():
        if module.is_cross_attention:
            processors[f"{name}.processor"] = MFCAProcessor(
                name=name, stage=_stage_of(name), hidden_size=module.to_k.out_features,
                cross_attention_dim=module.to_k.in_features, face_scale=face_scale,
            )
        else:
            processors[f"{name}.processor"] = ReferenceReadProcessor(name=name)
    unet.set_attn_processor(processors)


def set_face_scale(unet: nn.Module, face_scale: float) -> None:
    """Change lambda of every MFCA face branch (e.g. to sample with another weight than training's)."""
    found = 0
    for processor in unet.attn_processors.values():
        if isinstance(processor, MFCAProcessor):
            processor.face_scale = face_scale
            found += 1
    if not found:
        raise ValueError("no MFCA processors installed in this UNet")
