"""The pose guider: ControlNet's conditioning embedding (diffusers), optionally seeded from a ControlNet.

The reference builds the same conv stack (16, 32, 96, 256 channels, three stride-2 steps, zero-initialised
output) and copies ``controlnet_cond_embedding.*`` from control_v11p_sd15_seg, all but ``conv_out``, which
stays zero so the guider adds nothing at step 0.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

PREFIX = "controlnet_cond_embedding."
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class PoseGuiderInitError(ValueError):
    """A ControlNet file that cannot seed the pose guider; names the file and the reason."""


def build_pose_guider(*, out_channels: int, channels: tuple[int, ...]) -> ControlNetConditioningEmbedding:
    return ControlNetConditioningEmbedding(
        conditioning_embedding_channels=out_channels, conditioning_channels=3, block_out_channels=tuple(channels),
    )


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        raise PoseGuiderInitError(f"{path}: a ControlNet folder needs one of {list(WEIGHT_NAMES)}")
    raise PoseGuiderInitError(f"{path}: no such ControlNet folder or weights file")


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as error:
            raise PoseGuiderInitError(f"{file}: not a readable safetensors file: {error}") from error
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise PoseGuiderInitError(f"{file}: not a readable torch weights file: {error}") from error
    if not isinstance(state, dict):
        raise PoseGuiderInitError(f"{file}: holds a {type(state).__name__}, not a state dict")
    return state


def load_pose_guider_from_controlnet(guider: ControlNetConditioningEmbedding, source: str | Path) -> list[str]:
    """Copy a ControlNet's conditioning embedding into ``guider`` (conv_out excluded); return the keys copied."""
    file = _weights_file(Path(source))
    state = _read_state_dict(file)
    wanted = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX) and not k.startswith(PREFIX + "conv_out")}
    if not wanted:
        raise PoseGuiderInitError(f"{file}: no {PREFIX}* weights (is this a ControlNet checkpoint?)")
    own = guider.state_dict()
    missing = sorted(k for k in own if not k.startswith("conv_out") and k not in wanted)
    if missing:
        raise PoseGuiderInitError(f"{file}: lacks pose guider weights {missing}")
    for key, value in wanted.items():
        if key not in own:
            raise PoseGuiderInitError(f"{file}: {PREFIX}{key} has no place in the pose guider")
        if tuple(value.shape) != tuple(own[key].shape):
            raise PoseGuiderInitError(
                f"{file}: {PREFIX}{key} has shape {tuple(value.shape)}, the pose guider's is {tuple(own[key].shape)} "
                "(model.pose_guider_channels must match the ControlNet's)"
            )
    guider.load_state_dict(wanted, strict=False)
    return sorted(wanted)
