"""Typed training configuration: YAML in, frozen dataclasses out, every value checked where it is read.

A config names what the shards must be (``expect``) so that a run refuses shards it cannot train on
before any model is built; ``null`` there means "take the manifest's value" (the tiny config does this).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.manifest import Manifest
from shards.schema import SCHEMA_VERSION
from shards.yamlfile import check_keys, load_mapping

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
FACE_MISSING = ("mask", "project_zeros")


class ConfigError(ValueError):
    """A config that cannot be read, or that disagrees with the shards; the message names file and field."""


@dataclass(frozen=True, kw_only=True)
class ExpectConfig:
    """What the shards' manifest must say. ``None``: follow the manifest."""

    schema_version: int = SCHEMA_VERSION
    height: int | None = None
    width: int | None = None
    clip_dim: int | None = None
    vae_scaling_factor: float | None = None
    latent_channels: int = 8
    face_dim: int = 512
    allow_tiny: bool = False


@dataclass(frozen=True, kw_only=True)
class FaceProjectorConfig:
    """The Perceiver resampler from the ArcFace embedding to face tokens (the reference's Resampler)."""

    hidden_dim: int = 1280
    depth: int = 4
    heads: int = 20
    head_dim: int = 64
    tokens: int = 16
    ff_mult: int = 4


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    # A local Stable Diffusion 1.5-family folder (diffusers layout); both UNets start from its UNet.
    base_model_path: str | None = None
    unet_subfolder: str = "unet"
    # Or a UNet2DConditionModel config (tiny); cross_attention_dim null = the manifest's clip_dim.
    unet: dict[str, Any] | None = None
    # A ControlNet (diffusers folder or weights file) whose controlnet_cond_embedding.* seeds the pose guider.
    pose_guider_init: str | None = None
    pose_guider_channels: tuple[int, ...] = (16, 32, 96, 256)
    face_projector: FaceProjectorConfig = field(default_factory=FaceProjectorConfig)
    face_scale: float = 0.5  # lambda of the face branch in MFCA; the switcher branch has lambda 1
    # Samples without a face: "mask" drops the face branch; "project_zeros" feeds the zero ArcFace vector
    # through the projector, as the reference trains and samples (what its released weights expect).
    face_missing: str = "mask"
    gradient_checkpointing: bool = False


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    batch_size: int = 12
    num_workers: int = 4
    shuffle_buffer: int = 1000
    verify_checksums: bool = True


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    steps_offset: int = 1
    clip_sample: bool = False
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    noise_offset: float = 0.05
    snr_gamma: float | None = 5.0
    face_loss_weight: float = 1.0


@dataclass(frozen=True, kw_only=True)
class ConditioningConfig:
    cfg_drop_rate: float = 0.1  # steps trained unconditionally: null CLIP tokens, no ReferenceNet
    src_clip_drop_rate: float = 0.1  # the reference's extra drop of the source-image CLIP token
    clip_noise_scale: float = 0.05  # CLIP-embedding noise: scale * N(0, clip_std)
    # Where clip_std comes from: "manifest" (the std of the shards' own data) or a (D,) float32 .npy file
    # (e.g. the reference's data/clip_std.npy).
    clip_std: str = "manifest"


@dataclass(frozen=True, kw_only=True)
class SolverConfig:
    max_steps: int = 60000
    learning_rate: float = 1.0e-5
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1.0e-2
    adam_epsilon: float = 1.0e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "fp16"


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    every: int = 2000
    keep_last: int = 3


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    every: int = 1000  # 0: never
    pairs: int = 8
    steps: int = 20
    guidance_scale: float = 3.5
    # A diffusers AutoencoderKL folder for decoding; "manifest": the VAE the shards were made with; null: none.
    vae_path: str | None = None
    seed: int = 42


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    seed: int = 12580
    # Experiment trackers (train/tracking.py): tensorboard, wandb, mlflow, a comma-separated list, all or none.
    report_to: str = "tensorboard"
    source: str = ""  # where the config was read from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
        return _build(hint, value, where)
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: must be a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    check_keys(data, names, where=where, error=ConfigError)
    values = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def resolve_config_path(spec: str) -> Path:
    """``tiny`` / ``mcld`` name a packaged config; anything else is a YAML path."""
    if "/" not in spec and "\\" not in spec and not spec.endswith((".yaml", ".yml")):
        path = CONFIG_DIR / f"{spec}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"--config {spec}: no packaged config of that name (known: {known}) and not a path")
        return path
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--config {spec}: no such file")
    return path


def config_from_dict(data: dict[str, Any], *, where: str) -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    config = _build(TrainConfig, data, where)
    config = dataclasses.replace(config, source=where)
    validate_config(config)
    return config


def load_config(spec: str) -> TrainConfig:
    path = resolve_config_path(spec)
    data = load_mapping(path, what="config file", error=ConfigError)
    return config_from_dict(data, where=str(path))


def validate_config(config: TrainConfig) -> None:
    """Settings that cannot work whatever the shards are."""
    where = config.source
    model, noise, solver = config.model, config.noise, config.solver
    if (model.base_model_path is None) == (model.unet is None):
        raise ConfigError(f"{where}: set exactly one of model.base_model_path (a local SD folder) and model.unet")
    if len(model.pose_guider_channels) != 4:
        raise ConfigError(
            f"{where}: model.pose_guider_channels must have 4 entries (three stride-2 steps to latent size)"
        )
    if model.face_missing not in FACE_MISSING:
        raise ConfigError(f"{where}: model.face_missing must be one of {list(FACE_MISSING)}, got {model.face_missing!r}")
    if noise.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"{where}: noise.prediction_type must be epsilon or v_prediction, got {noise.prediction_type!r}")
    if noise.zero_terminal_snr and noise.prediction_type == "epsilon":
        raise ConfigError(
            f"{where}: noise.zero_terminal_snr needs prediction_type v_prediction (epsilon is undefined at SNR 0)"
        )
    if solver.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"{where}: solver.mixed_precision must be no, fp16 or bf16")
    for name, value in (("conditioning.cfg_drop_rate", config.conditioning.cfg_drop_rate),
                        ("conditioning.src_clip_drop_rate", config.conditioning.src_clip_drop_rate)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where}: {name} must be in [0, 1], got {value}")
    positive = {
        "data.batch_size": config.data.batch_size,
        "solver.max_steps": solver.max_steps,
        "solver.gradient_accumulation_steps": solver.gradient_accumulation_steps,
        "checkpoint.every": config.checkpoint.every,
        "checkpoint.keep_last": config.checkpoint.keep_last,
        "validation.pairs": config.validation.pairs,
        "validation.steps": config.validation.steps,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}: {name} must be positive, got {value}")
    from train.tracking import TrackerError, parse_report_to

    try:
        parse_report_to(config.report_to, where=f"{where}: report_to")
    except TrackerError as error:
        raise ConfigError(str(error)) from error
    if config.data.num_workers < 0 or config.validation.every < 0:
        raise ConfigError(f"{where}: data.num_workers and validation.every must not be negative")


@dataclass(frozen=True, kw_only=True)
class ShardFacts:
    """What the trainer takes from the manifest once it has been checked against the config."""

    height: int
    width: int
    clip_dim: int
    latent_channels: int
    face_dim: int
    vae_scaling_factor: float
    clip_null_embedding: tuple[float, ...]
    clip_std: tuple[float, ...]
    samples: int
    face_mode: str  # how the shards' face embeddings were made: "paper" (SSD crop) or "reference"


def check_manifest(config: TrainConfig, manifest: Manifest, *, where: str) -> ShardFacts:
    """Refuse shards the config cannot train on, naming the manifest field, its value and the config's."""
    expect = config.expect
    face_mode = manifest_face_mode(manifest)

    def refuse(name: str, found: Any, wanted: Any) -> ConfigError:
        return ConfigError(
            f"{where}: manifest {name} is {found!r} but the config ({config.source}) expects {wanted!r} "
            f"(shards made with face mode {face_mode!r}); use shards made for this config, or a config made "
            "for these shards"
        )

    if manifest.schema_version != expect.schema_version:
        raise refuse("schema_version", manifest.schema_version, expect.schema_version)
    if manifest.tiny and not expect.allow_tiny:
        raise ConfigError(
            f"{where}: manifest tiny is true (shards made with --models tiny are for tests and demos); "
            f"the config ({config.source}) does not allow them: train them with --config tiny"
        )
    for name in ("height", "width", "clip_dim", "latent_channels", "face_dim"):
        wanted = getattr(expect, name)
        found = getattr(manifest, name)
        if wanted is not None and found != wanted:
            raise refuse(name, found, wanted)
    if expect.vae_scaling_factor is not None and abs(manifest.vae_scaling_factor - expect.vae_scaling_factor) > 1e-9:
        raise refuse("vae_scaling_factor", manifest.vae_scaling_factor, expect.vae_scaling_factor)
    if manifest.latent_channels % 2:
        raise ConfigError(f"{where}: manifest latent_channels {manifest.latent_channels} is not mean ++ logvar (even)")
    for name in ("clip_null_embedding", "clip_std"):
        values = getattr(manifest, name)
        if len(values) != manifest.clip_dim:
            raise ConfigError(f"{where}: manifest {name} has {len(values)} values, clip_dim is {manifest.clip_dim}")
    samples = sum(s.samples for s in manifest.shards)
    return ShardFacts(
        height=manifest.height,
        width=manifest.width,
        clip_dim=manifest.clip_dim,
        latent_channels=manifest.latent_channels,
        face_dim=manifest.face_dim,
        vae_scaling_factor=float(manifest.vae_scaling_factor),
        clip_null_embedding=tuple(float(v) for v in manifest.clip_null_embedding),
        clip_std=tuple(float(v) for v in manifest.clip_std),
        samples=samples,
        face_mode=face_mode,
    )


def manifest_face_mode(manifest: Manifest) -> str:
    """The face mode the shards were built with; shards older than the setting were made the paper's way."""
    return str(manifest.settings.get("face_mode", "paper"))


def load_clip_std(config: TrainConfig, *, manifest_std: tuple[float, ...]) -> tuple[float, ...]:
    """conditioning.clip_std: the manifest's per-dimension std, or a (D,) float32 .npy checked against D."""
    spec = config.conditioning.clip_std
    if spec == "manifest":
        return manifest_std
    import numpy as np

    path = Path(spec)
    key = f"{config.source}: conditioning.clip_std"
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist (give 'manifest' or a .npy file)")
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}: {path} is not a readable .npy file: {error}") from error
    if values.ndim != 1 or values.shape[0] != len(manifest_std):
        raise ConfigError(
            f"{key}: {path} holds shape {tuple(values.shape)}; the shards' CLIP width needs ({len(manifest_std)},)"
        )
    if values.dtype != np.float32:
        raise ConfigError(f"{key}: {path} holds {values.dtype}, a float32 array is expected")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ConfigError(f"{key}: {path} holds negative or non-finite values (a standard deviation is expected)")
    return tuple(float(v) for v in values)


def effective_learning_rate(solver: SolverConfig, *, batch_size: int, num_processes: int) -> float:
    """The reference's scale_lr: lr times the global batch (per-device batch x processes x accumulation)."""
    if not solver.scale_lr:
        return solver.learning_rate
    return solver.learning_rate * batch_size * num_processes * solver.gradient_accumulation_steps
