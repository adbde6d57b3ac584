"""MCLD checkpoints in and out: the reference's four .pth files <-> our weights folder.

    python -m train.convert from-mcld CKPT_DIR --base-model SD_FOLDER -o WEIGHTS [--projector JSON] [--pose-guider JSON]
    python -m train.convert to-mcld RUN/checkpoint-STEP|WEIGHTS -o CKPT_DIR

A weights folder holds ``model.safetensors`` (the MCLD module's state dict, float as stored) and
``mcld.yaml`` (the model config, the training scheduler's config, the CLIP and face widths, and where the
weights came from), so the trainer (--init-from) and the sampler (--weights) build the model without the
SD folder. The reference's layout differs in two places only: its ReferenceNet has no output head
(conv_norm_out/conv_out, which nothing reads; we fill them from the denoising UNet's and drop them on the
way back) and its face projector's keys (PROJECTOR_TABLE).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shards.yamlfile import load_mapping
from train.config import (
    ConfigError,
    FaceProjectorConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    _build,
    _plain,
    config_from_dict,
)
from train.model import MCLD, build_mcld


WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "mcld.yaml"
FORMAT = "mcld-weights/1"
# The reference's files, by our sub-module; the face projector's README name is accepted too.
MCLD_FILES: dict[str, tuple[str, ...]] = {
    "denoising_unet": ("denoising_unet.pth",),
    "reference_unet": ("reference_unet.pth",),
    "pose_guider": ("pose_guider.pth",),
    "face_projector": ("image_proj_model.pth", "image_projector.pth"),
}
# Present in our ReferenceNet, absent from the reference's (its class deletes the unused output head).
REFERENCE_HEAD = ("conv_norm_out.", "conv_out.")
# The reference's Resampler constructor defaults (dim 1280, 20 heads of 64) and PoseGuider's.
PROJECTOR_DEFAULTS = {"dim": 1280, "depth": 4, "dim_head": 64, "heads": 20, "num_queries": 16, "embedding_dim": 512,
                      "ff_mult": 4}
POSE_GUIDER_DEFAULTS = {"conditioning_embedding_channels": 320, "conditioning_channels": 3,
                        "block_out_channels": [16, 32, 96, 256]}
# Reference Resampler key (inside layers.N.) -> ours (diffusers IPAdapterPlusImageProjection).
PROJECTOR_TABLE = {
    "0.norm1.": "ln0.",
    "0.norm2.": "ln1.",
    "0.to_q.": "attn.to_q.",
    "0.to_out.": "attn.to_out.0.",
    "1.0.": "ff.0.",
    "1.1.": "ff.1.net.0.proj.",
    "1.3.": "ff.1.net.2.",
}
TO_KV = "0.to_kv.weight"  # stacked [to_k; to_v] on dim 0
LAYER = re.compile(r"^layers\.(\d+)\.(.*)$")


class ConvertError(ValueError):
    """A checkpoint that cannot be converted or loaded; names the file and the first offending key."""


@dataclass(frozen=True, kw_only=True)
class WeightsSpec:
    """What building the model needs besides the tensors."""

    model: ModelConfig
    noise: NoiseConfig
    clip_dim: int
    face_dim: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": _plain(dataclasses.asdict(self.model)),
                "noise": dataclasses.asdict(self.noise), "clip_dim": self.clip_dim, "face_dim": self.face_dim}


@dataclass(frozen=True, kw_only=True)
class LoadedWeights:
    model: MCLD
    spec: WeightsSpec
    fingerprint: str  # sha256 over the weight files read
    where: str


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_pth(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file, through torch's restricted unpickler (weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ConvertError(f"{path}: not a readable torch weights file (weights_only load): {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(f"{path}: does not hold a state dict of tensors")
    return state


def _read_json(path: Path | None, defaults: dict[str, Any], *, what: str) -> dict[str, Any]:
    values = dict(defaults)
    if path is None:
        return values
    try:
        given = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConvertError(f"{path}: cannot read the {what} kwargs JSON: {error}") from error
    if not isinstance(given, dict):
        raise ConvertError(f"{path}: the {what} kwargs must be a JSON object")
    values.update(given)
    return values


def mcld_model_config(*, base_model: Path, projector_json: Path | None, pose_guider_json: Path | None,
                      face_missing: str = "project_zeros") -> tuple[ModelConfig, int]:
    """Our ModelConfig for the reference's modules: UNet config from SD_FOLDER/unet, the rest from JSON."""
    unet_config_path = base_model / "unet" / "config.json"
    if not unet_config_path.is_file():
        raise ConvertError(f"--base-model {base_model}: no unet/config.json (a Stable Diffusion folder is expected)")
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(base_model / "unet")))
    unet_kwargs = {k: _plain(v) for k, v in unet.config.items() if not k.startswith("_")}
    clip_dim = int(unet.config.cross_attention_dim)
    projector = _read_json(projector_json, PROJECTOR_DEFAULTS, what="projector")
    guider = _read_json(pose_guider_json, POSE_GUIDER_DEFAULTS, what="pose guider")
    if int(projector.get("output_dim", clip_dim)) != clip_dim:
        raise ConvertError(f"{projector_json}: output_dim {projector['output_dim']} != the UNet's cross_attention_dim "
                           f"{clip_dim}")
    if int(guider["conditioning_embedding_channels"]) != int(unet.config.block_out_channels[0]):
        raise ConvertError(f"{pose_guider_json}: conditioning_embedding_channels {guider['conditioning_embedding_channels']}"
                           f" != the UNet's first block width {unet.config.block_out_channels[0]}")
    if int(guider["conditioning_channels"]) != 3:
        raise ConvertError(f"{pose_guider_json}: conditioning_channels must be 3 (the IUV image)")
    face_scale = float(projector.get("ip_scale_in_set_ip_adapter", 0.5))
    config = ModelConfig(
        base_model_path=None, unet=unet_kwargs, pose_guider_channels=tuple(int(c) for c in guider["block_out_channels"]),
        face_projector=FaceProjectorConfig(hidden_dim=int(projector["dim"]), depth=int(projector["depth"]),
                                           heads=int(projector["heads"]), head_dim=int(projector["dim_head"]),
                                           tokens=int(projector["num_queries"]), ff_mult=int(projector["ff_mult"])),
        face_scale=face_scale, face_missing=face_missing,
    )
    return config, int(projector["embedding_dim"])


def projector_from_mcld(state: dict[str, torch.Tensor], *, where: Path) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        match = LAYER.match(key)
        if match is None:
            out[key] = value  # latents, proj_in, proj_out, norm_out: same names
            continue
        index, rest = match.groups()
        if rest == TO_KV:
            if value.shape[0] % 2:
                raise ConvertError(f"{where}: {key} has shape {tuple(value.shape)}, not [to_k; to_v] stacked")
            key_half, value_half = value.chunk(2, dim=0)
            out[f"layers.{index}.attn.to_k.weight"] = key_half.clone()
            out[f"layers.{index}.attn.to_v.weight"] = value_half.clone()
            continue
        for theirs, ours in PROJECTOR_TABLE.items():
            if rest.startswith(theirs):
                out[f"layers.{index}.{ours}{rest[len(theirs):]}"] = value
                break
        else:
            raise ConvertError(f"{where}: unexpected key {key!r} (not a Resampler key)")
    return out


def projector_to_mcld(state: dict[str, torch.Tensor], *, where: str) -> dict[str, torch.Tensor]:
    out = {}
    inverse = {ours: theirs for theirs, ours in PROJECTOR_TABLE.items()}
    for key, value in state.items():
        match = LAYER.match(key)
        if match is None:
            out[key] = value
            continue
        index, rest = match.groups()
        if rest == "attn.to_v.weight":
            continue
        if rest == "attn.to_k.weight":
            other = state.get(f"layers.{index}.attn.to_v.weight")
            if other is None:
                raise ConvertError(f"{where}: face_projector.layers.{index}.attn.to_v.weight is missing")
            out[f"layers.{index}.{TO_KV}"] = torch.cat([value, other], dim=0)
            continue
        for ours, theirs in inverse.items():
            if rest.startswith(ours):
                out[f"layers.{index}.{theirs}{rest[len(ours):]}"] = value
                break
        else:
            raise ConvertError(f"{where}: face_projector.{key} has no place in the reference's Resampler")
    return out


def _find_file(ckpt_dir: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (ckpt_dir / name).is_file():
            return ckpt_dir / name
    raise ConvertError(f"{ckpt_dir / names[0]}: missing (an MCLD checkpoint folder holds {list(_all_names())})")


def _all_names() -> list[str]:
    return [names[0] for names in MCLD_FILES.values()]


def _check_part(part: dict[str, torch.Tensor], own: dict[str, torch.Tensor], *, file: Path, prefix: str,
                optional: tuple[str, ...] = ()) -> None:
    """Every key of ``part`` has a place of the same shape in ``own``, and every place is filled."""
    for key, value in part.items():
        if prefix + key not in own:
            raise ConvertError(f"{file}: unexpected key {key!r} (no such weight in the model built from the config)")
        if tuple(value.shape) != tuple(own[prefix + key].shape):
            raise ConvertError(f"{file}: {key!r} has shape {tuple(value.shape)}, the model's is "
                               f"{tuple(own[prefix + key].shape)}")
    for key in own:
        if key.startswith(prefix):
            name = key[len(prefix):]
            if name not in part and not name.startswith(optional):
                raise ConvertError(f"{file}: missing key {name!r}")


def state_from_mcld_files(files: dict[str, Path], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's files (by our sub-module) -> a complete state dict for a model whose state is ``own``."""
    state: dict[str, torch.Tensor] = {}
    for module, file in files.items():
        part = load_pth(file)
        if module == "face_projector":
            part = projector_from_mcld(part, where=file)
        optional = REFERENCE_HEAD if module == "reference_unet" else ()
        _check_part(part, own, file=file, prefix=f"{module}.", optional=optional)
        state.update({f"{module}.{k}": v for k, v in part.items()})
    for key in own:
        if key.startswith("reference_unet.") and key not in state:
            # Never read (only the ReferenceNet's self-attention inputs are); the denoising UNet's head
            # has the same shapes and both UNets start from the same SD weights.
            state[key] = state["denoising_unet." + key[len("reference_unet."):]].clone()
    return state


def mcld_files(ckpt_dir: Path) -> dict[str, Path]:
    if not ckpt_dir.is_dir():
        raise ConvertError(f"{ckpt_dir}: no such MCLD checkpoint folder")
    return {module: _find_file(ckpt_dir, names) for module, names in MCLD_FILES.items()}


def from_mcld(ckpt_dir: Path, *, base_model: Path, projector_json: Path | None = None,
              pose_guider_json: Path | None = None) -> tuple[dict[str, torch.Tensor], WeightsSpec, str]:
    """The reference's four files -> (our MCLD state dict, spec, sha256 of the files)."""
    files = mcld_files(ckpt_dir)
    model_config, face_dim = mcld_model_config(base_model=base_model, projector_json=projector_json,
                                               pose_guider_json=pose_guider_json)
    clip_dim = int(model_config.unet["cross_attention_dim"])
    model = build_mcld(model_config, clip_dim=clip_dim, face_dim=face_dim,
                       latent_channels=2 * int(model_config.unet["in_channels"]), where=str(base_model))
    state = state_from_mcld_files(files, model.state_dict())
    spec = WeightsSpec(model=model_config, noise=NoiseConfig(), clip_dim=clip_dim, face_dim=face_dim)
    return state, spec, file_sha256(*files.values())


def to_mcld(state: dict[str, torch.Tensor], *, where: str) -> dict[str, dict[str, torch.Tensor]]:
    """Our MCLD state dict -> the reference's four state dicts (by file name)."""
    parts: dict[str, dict[str, torch.Tensor]] = {module: {} for module in MCLD_FILES}
    for key, value in state.items():
        module, _, rest = key.partition(".")
        if module not in parts:
            raise ConvertError(f"{where}: unexpected key {key!r} (not part of an MCLD model)")
        if module == "reference_unet" and rest.startswith(REFERENCE_HEAD):
            continue
        parts[module][rest] = value.contiguous()
    parts["face_projector"] = projector_to_mcld(parts["face_projector"], where=where)
    return {MCLD_FILES[module][0]: part for module, part in parts.items()}


# -- our weights: converted folders and training checkpoints ---------------------------------------------

def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DDP-wrapped save prefixes every key with ``module.``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return _strip_module(load_file(str(path)))
    except (SafetensorError, OSError) as error:
        raise ConvertError(f"{path}: not a readable safetensors file: {error}") from error


def _checkpoint_spec(checkpoint: Path) -> WeightsSpec:
    """A run's checkpoint-STEP: the model config is the run's (RUN/config.yaml, written at the start)."""
    run_config = checkpoint.parent / "config.yaml"
    if not run_config.is_file():
        raise ConvertError(f"{checkpoint}: no {run_config.name} in its run folder {checkpoint.parent}")
    record = load_mapping(run_config, what="run config", error=ConvertError)
    try:
        config: TrainConfig = config_from_dict(record["config"], where=str(run_config))
        facts = record["manifest"]
        return WeightsSpec(model=config.model, noise=config.noise, clip_dim=int(facts["clip_dim"]),
                           face_dim=int(facts["face_dim"]))
    except (KeyError, TypeError, ConfigError) as error:
        raise ConvertError(f"{run_config}: not a run config this version reads: {error}") from error


def _folder_spec(folder: Path) -> WeightsSpec:
    path = folder / SPEC_NAME
    data = load_mapping(path, what="weights spec", error=ConvertError)
    if data.get("format") != FORMAT:
        raise ConvertError(f"{path}: not a {FORMAT} spec")
    try:
        model = _build(ModelConfig, data["model"], f"{path}: model")
        noise = _build(NoiseConfig, data["noise"], f"{path}: noise")
        return WeightsSpec(model=model, noise=noise, clip_dim=int(data["clip_dim"]), face_dim=int(data["face_dim"]))
    except (KeyError, TypeError, ConfigError) as error:
        raise ConvertError(f"{path}: {error}") from error


def is_mcld_layout(folder: Path) -> bool:
    return (folder / MCLD_FILES["denoising_unet"][0]).is_file()


def read_weights(spec: str | Path, *, base_model: Path | None = None, projector_json: Path | None = None,
                 pose_guider_json: Path | None = None) -> tuple[dict[str, torch.Tensor], WeightsSpec, str]:
    """Any weights we take -> (state dict, spec, fingerprint). A weights folder (mcld.yaml), a run's
    checkpoint-STEP, or an MCLD checkpoint folder (then base_model is needed, as for from-mcld)."""
    folder = Path(spec)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: no such weights folder")
    if (folder / SPEC_NAME).is_file():
        file = folder / WEIGHTS_NAME
        if not file.is_file():
            raise ConvertError(f"{file}: missing")
        return _read_safetensors(file), _folder_spec(folder), file_sha256(file)
    if is_mcld_layout(folder):
        if base_model is None:
            raise ConvertError(f"{folder}: an MCLD checkpoint folder needs the SD folder its UNets start from "
                               "(--base-model), or convert it first (python -m train.convert from-mcld)")
        return from_mcld(folder, base_model=base_model, projector_json=projector_json,
                         pose_guider_json=pose_guider_json)
    file = folder / WEIGHTS_NAME
    if file.is_file():
        return _read_safetensors(file), _checkpoint_spec(folder), file_sha256(file)
    raise ConvertError(f"{folder}: neither a weights folder ({SPEC_NAME} + {WEIGHTS_NAME}), a training checkpoint "
                       f"({WEIGHTS_NAME} in RUN/checkpoint-STEP) nor an MCLD checkpoint ({', '.join(_all_names())})")


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, where: str) -> None:
    """Strict load with the first offending key named (missing, unexpected or of another shape)."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise ConvertError(f"{where}: unexpected key {key!r} for this model")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ConvertError(f"{where}: {key!r} has shape {tuple(value.shape)}, the model's is {tuple(own[key].shape)}")
    missing = [key for key in own if key not in state]
    if missing:
        raise ConvertError(f"{where}: missing key {missing[0]!r} ({len(missing)} missing)")
    model.load_state_dict(state, strict=True)


def build_from_spec(spec: WeightsSpec, *, where: str) -> MCLD:
    return build_mcld(spec.model, clip_dim=spec.clip_dim, face_dim=spec.face_dim,
                      latent_channels=2 * _in_channels(spec.model), where=where)


def _in_channels(model: ModelConfig) -> int:
    if model.unet is not None:
        return int(model.unet.get("in_channels", 4))
    config = UNet2DConditionModel.load_config(str(Path(model.base_model_path) / model.unet_subfolder))
    return int(config["in_channels"])


def init_state(model: torch.nn.Module, source: str | Path) -> str:
    """Load any weights we take into an already built model (the trainer's --init-from); returns the
    fingerprint. An MCLD checkpoint folder is mapped onto the model directly (its architecture is the run's)."""
    folder = Path(source)
    if folder.is_dir() and is_mcld_layout(folder) and not (folder / SPEC_NAME).is_file():
        files = mcld_files(folder)
        state = state_from_mcld_files(files, model.state_dict())
        fingerprint = file_sha256(*files.values())
    else:
        state, _, fingerprint = read_weights(folder)
    load_state_into(model, state, where=str(folder))
    return fingerprint


def load_weights(spec: str | Path, **options: Any) -> LoadedWeights:
    state, weights_spec, fingerprint = read_weights(spec, **options)
    model = build_from_spec(weights_spec, where=str(spec))
    load_state_into(model, state, where=str(spec))
    return LoadedWeights(model=model.eval(), spec=weights_spec, fingerprint=fingerprint, where=str(spec))


def write_weights_folder(folder: Path, state: dict[str, torch.Tensor], spec: WeightsSpec, *,
                         source: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / (WEIGHTS_NAME + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(temporary))
    temporary.replace(folder / WEIGHTS_NAME)
    record = dict(spec.to_dict(), source=source)
    (folder / SPEC_NAME).write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    return folder


def write_mcld_folder(folder: Path, parts: dict[str, dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        temporary = folder / (name + ".tmp")
        torch.save(part, temporary)
        temporary.replace(folder / name)
    return folder


# -- CLI ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.convert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inward = commands.add_parser("from-mcld", help="the reference's checkpoint folder -> our weights folder")
    inward.add_argument("ckpt_dir", type=Path)
    inward.add_argument("--base-model", type=Path, required=True, help="the SD folder its UNets start from")
    inward.add_argument("-o", "--output", type=Path, required=True)
    inward.add_argument("--projector", type=Path, default=None, help="Resampler kwargs JSON (default: the reference's)")
    inward.add_argument("--pose-guider", type=Path, default=None, help="PoseGuider kwargs JSON (default: the reference's)")
    outward = commands.add_parser("to-mcld", help="our checkpoint or weights folder -> the reference's layout")
    outward.add_argument("weights", type=Path)
    outward.add_argument("-o", "--output", type=Path, required=True)
    return parser


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.command == "from-mcld":
        state, spec, fingerprint = from_mcld(args.ckpt_dir, base_model=args.base_model, projector_json=args.projector,
                                             pose_guider_json=args.pose_guider)
        write_weights_folder(args.output, state, spec, source={"kind": "mcld", "path": str(args.ckpt_dir),
                                                               "sha256": fingerprint})
        return {"written": str(args.output), "tensors": len(state), "source_sha256": fingerprint}
    state, _, fingerprint = read_weights(args.weights)
    parts = to_mcld(state, where=str(args.weights))
    write_mcld_folder(args.output, parts)
    return {"written": str(args.output), "files": sorted(parts), "source_sha256": fingerprint}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(argv)
    except (ConvertError, ConfigError) as error:
        print(f"train.convert: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
