"""manifest.json: what an output folder holds and how it was made; written last, read first."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from shards import storage
from shards.schema import SCHEMA_VERSION, Geometry
from shards.writer import ShardRecord

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.parquet"
STATS_NAME = "stats.json"
FEATURES_NAME = "features"  # the per-image feature cache: features/{fingerprint[:16]}/*.parquet


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, or of a version or shape this toolkit does not read."""


def toolkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcld-data")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(kw_only=True)
class ModelRecord:
    """One model a run used: enough to tell whether two runs used the same one."""

    name: str  # the stage: densepose, face_detector, arcface, vae, clip
    source: str  # where it was loaded from (a local path)
    files: dict[str, str]  # file name relative to source -> sha256
    settings: dict[str, Any]  # everything that changes its output (resolution, dtype, thresholds)
    tiny: bool = False


@dataclass(kw_only=True)
class Counts:
    """Where every input went. images_in == images_ok + sum(images_rejected); likewise for pairs."""

    images_in: int = 0
    images_ok: int = 0
    images_rejected: dict[str, int] = field(default_factory=dict)
    pairs_in: int = 0
    pairs_written: int = 0
    pairs_rejected: dict[str, int] = field(default_factory=dict)
    pairs_face_ok: int = 0  # written samples whose source has a face embedding

    def problems(self) -> list[str]:
        found = []
        rejected_images = sum(self.images_rejected.values())
        if self.images_in != self.images_ok + rejected_images:
            found.append(
                f"images: {self.images_in} in != {self.images_ok} ok + {rejected_images} rejected"
            )
        rejected_pairs = sum(self.pairs_rejected.values())
        if self.pairs_in != self.pairs_written + rejected_pairs:
            found.append(f"pairs: {self.pairs_in} in != {self.pairs_written} written + {rejected_pairs} rejected")
        return found


@dataclass(kw_only=True)
class Manifest:
    schema_version: int
    toolkit_version: str
    command: list[str]
    tiny: bool  # True when any model is a --models tiny toy: such shards are for tests and demos only
    height: int
    width: int
    pose_resize: str  # "mcld" (bicubic, the reference's) or "nearest"
    latent_channels: int
    latent_dtype: str
    vae_scaling_factor: float
    clip_dim: int
    clip_dtype: str
    clip_null_embedding: list[float]
    clip_mean: list[float]
    clip_std: list[float]
    face_dim: int
    seed: int
    models: list[ModelRecord]
    shards: list[ShardRecord]
    counts: Counts
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def geometry(self) -> Geometry:
        return Geometry(
            height=self.height,
            width=self.width,
            clip_dim=self.clip_dim,
            latent_channels=self.latent_channels,
            face_dim=self.face_dim,
        )

    def shards_of(self, split: str | None = None) -> list[ShardRecord]:
        return [s for s in self.shards if split is None or s.split == split]

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shards"] = [s.to_json() for s in self.shards]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{where}: schema_version is {version!r}; this toolkit ({toolkit_version()}) reads "
                f"schema version {SCHEMA_VERSION} only"
            )
        expected = {f for f in cls.__dataclass_fields__}
        missing = sorted(expected - set(data) - {"settings"})
        if missing:
            raise ManifestError(f"{where}: missing field(s) {missing}")
        unknown = sorted(set(data) - expected)
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {unknown}")
        try:
            values = dict(data)
            values["models"] = [ModelRecord(**m) for m in data["models"]]
            values["shards"] = [ShardRecord.from_json(s) for s in data["shards"]]
            values["counts"] = Counts(**data["counts"])
            manifest = cls(**values)
            manifest.geometry  # validates the sizes
        except (TypeError, KeyError, ValueError) as error:
            raise ManifestError(f"{where}: malformed: {error}") from error
        return manifest


def write_manifest(out_dir: str, manifest: Manifest) -> str:
    """Write manifest.json atomically. Call it last: its presence means the output is complete."""
    location = storage.join(out_dir, MANIFEST_NAME)
    text = json.dumps(manifest.to_json(), indent=1, sort_keys=True, allow_nan=False)
    storage.write_bytes_atomic(location, (text + "\n").encode("utf-8"))
    return location


def read_manifest(out_dir: str) -> Manifest:
    location = storage.join(str(out_dir), MANIFEST_NAME)
    if not storage.exists(location):
        if not storage.is_dir(str(out_dir)):
            raise ManifestError(f"{out_dir}: no such directory")
        raise ManifestError(f"{location}: no manifest (the job has not finished, or this is not an output folder)")
    try:
        data = json.loads(storage.read_bytes(location).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{location}: not valid JSON: {error}") from error
    return Manifest.from_json(data, where=location)
