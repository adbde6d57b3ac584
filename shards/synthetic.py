"""Small, valid, seeded shard folders with random features, for tests of the readers (CLI, trainer).

Labelled as such in the manifest (``tiny`` is true and the only model is ``synthetic``): never mistake
them for features of real photos.
"""

from __future__ import annotations

import numpy as np

from shards import storage
from shards.manifest import REJECTS_NAME, Counts, Manifest, ModelRecord, toolkit_version, write_manifest
from shards.rejects import Reject, write_rejects
from shards.schema import SCHEMA_VERSION, Geometry, pair_key
from shards.writer import ShardWriter

SCALING_FACTOR = 0.18215


def synthetic_pose(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A crude standing figure: 24 part bands inside an ellipse, U and V ramps; background 0."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height * rng.uniform(0.45, 0.55), width * rng.uniform(0.4, 0.6)
    inside = ((yy - cy) / (0.45 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2 <= 1.0
    part = np.clip((yy / height * 24).astype(np.int32) + 1, 1, 24)
    part = 25 - part  # head (23, 24) at the top
    iuv = np.zeros((height, width, 3), np.uint8)
    iuv[..., 0] = np.where(inside, part, 0)
    iuv[..., 1] = np.where(inside, (xx / width * 255), 0).astype(np.uint8)
    iuv[..., 2] = np.where(inside, (yy / height * 255), 0).astype(np.uint8)
    return iuv


def synthetic_sample(rng: np.random.Generator, *, geometry: Geometry, source_id: str, target_id: str,
                     face_ok: bool, previews: bool) -> dict:
    latent_shape = (geometry.latent_channels, geometry.height // 8, geometry.width // 8)
    half = geometry.latent_channels // 2

    def latent() -> np.ndarray:
        mean = rng.normal(0.0, 1.0, (half, *latent_shape[1:]))
        logvar = rng.uniform(-12.0, -4.0, (half, *latent_shape[1:]))
        return np.concatenate([mean, logvar]).astype(np.float16)

    face = rng.normal(0.0, 1.0, geometry.face_dim).astype(np.float32) * 20 if face_ok else np.zeros(geometry.face_dim, np.float32)
    pose = synthetic_pose(rng, geometry.height, geometry.width)
    sample = {
        "__key__": pair_key(source_id, target_id),
        "tgt_latent": latent(),
        "ref_latent": latent(),
        "src_clip": rng.normal(0.0, 1.0, geometry.clip_dim).astype(np.float16),
        "tex_clip": rng.normal(0.0, 1.0, geometry.clip_dim).astype(np.float16),
        "face_emb": face,
        "tgt_pose": pose,
        "meta": {
            "source_id": source_id,
            "target_id": target_id,
            "source_path": f"{source_id}.jpg",
            "target_path": f"{target_id}.jpg",
            "face_ok": face_ok,
            "face_score": float(rng.uniform(0.5, 1.0)) if face_ok else 0.0,
            "face_emb_norm": float(np.linalg.norm(face)),
            "source_person_score": float(rng.uniform(0.5, 1.0)),
            "target_person_score": float(rng.uniform(0.5, 1.0)),
            "pose_coverage": float((pose[..., 0] > 0).mean()),
        },
    }
    if previews:
        preview_h = 128
        preview_w = max(8, round(preview_h * geometry.width / geometry.height))
        # Smooth pictures (a tinted figure), so preview sizes resemble photos rather than noise.
        for name in ("src", "tgt"):
            figure = synthetic_pose(rng, preview_h, preview_w).astype(np.float32)
            tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
            sample[name] = np.clip(figure[..., [0, 0, 0]] * 10 * tint + 40, 0, 255).astype(np.uint8)
        if face_ok:
            sample["face"] = np.full((64, 64, 3), rng.integers(60, 200, 3), dtype=np.uint8)
    return sample


def write_synthetic_dataset(
    out_dir: str,
    *,
    geometry: Geometry,
    samples: int,
    seed: int = 0,
    images: int | None = None,
    samples_per_shard: int = 4,
    split: str = "train",
    previews: bool = True,
    rejected_images: int = 0,
) -> Manifest:
    """Write ``samples`` pairs over ``images`` image ids into shards + rejects + manifest; return the manifest."""
    rng = np.random.default_rng(seed)
    storage.makedirs(out_dir)
    images = images or max(2, samples)
    ids = [f"img-{i:05d}" for i in range(images)]
    face_ok = {i: bool(rng.random() < 0.75) for i in ids}
    pairs: list[tuple[str, str]] = []
    while len(pairs) < samples:
        s, t = rng.choice(images, 2, replace=False)
        if (ids[s], ids[t]) not in pairs:
            pairs.append((ids[s], ids[t]))
    face_written = sum(face_ok[s] for s, _ in pairs)
    with ShardWriter(out_dir, split=split, geometry=geometry, max_samples=samples_per_shard, max_bytes=None) as writer:
        for source_id, target_id in pairs:
            writer.write(synthetic_sample(rng, geometry=geometry, source_id=source_id, target_id=target_id,
                                          face_ok=face_ok[source_id], previews=previews))
    records = writer.records
    rejects = [
        Reject(kind="image", id=f"bad-{i:03d}", stage="decode", reason="decode_failed",
               detail=f"bad-{i:03d}.jpg: synthetic reject", path=f"bad-{i:03d}.jpg")
        for i in range(rejected_images)
    ]
    write_rejects(storage.join(out_dir, REJECTS_NAME), rejects)
    clip = rng.normal(0.0, 1.0, (16, geometry.clip_dim))
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        toolkit_version=toolkit_version(),
        command=["shards.synthetic.write_synthetic_dataset"],
        tiny=True,
        height=geometry.height,
        width=geometry.width,
        pose_resize="mcld",
        latent_channels=geometry.latent_channels,
        latent_dtype="float16",
        vae_scaling_factor=SCALING_FACTOR,
        clip_dim=geometry.clip_dim,
        clip_dtype="float16",
        clip_null_embedding=[float(v) for v in rng.normal(0.0, 0.1, geometry.clip_dim)],
        clip_mean=[float(v) for v in clip.mean(0)],
        clip_std=[float(v) for v in clip.std(0)],
        face_dim=geometry.face_dim,
        seed=seed,
        models=[ModelRecord(name="synthetic", source="shards.synthetic", files={}, settings={"seed": seed}, tiny=True)],
        shards=records,
        counts=Counts(
            images_in=images + rejected_images,
            images_ok=images,
            images_rejected={"decode_failed": rejected_images} if rejected_images else {},
            pairs_in=samples,
            pairs_written=samples,
            pairs_rejected={},
            pairs_face_ok=face_written,
        ),
    )
    write_manifest(out_dir, manifest)
    return manifest
