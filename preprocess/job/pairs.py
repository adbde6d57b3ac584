"""The pair join: one sample per (source, target) pair, shuffled with a seed, into equal shards."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from preprocess.common import STATUS_OK
from preprocess.job.features import SOURCE_MEMBERS, TARGET_MEMBERS, FeatureIndex, FeatureReader, FeatureRow
from preprocess.job.inputs import ImageInput, ImageTable, PairList
from shards.rejects import Reject
from shards.schema import Geometry, encode_field
from shards.writer import ShardRecord, ShardWriter, shard_name

META_OVERHEAD = 1024 + 10 * 512  # meta.json plus tar headers, per sample (an estimate for planning only)
# The default shard floor serves the trainer: 64 shards give 8 GPUs x 4 DataLoader workers about two whole
# shards per reader (streamed and checksummed whole; only the shards at run boundaries are shared), as long
# as a shard keeps at least DEFAULT_MIN_SHARD_SAMPLES samples (a smaller dataset gets fewer, larger shards).
DEFAULT_MIN_SHARDS = 64
DEFAULT_MIN_SHARD_SAMPLES = 16


def default_min_shards(samples: int) -> int:
    """The shard floor when --min-shards is not given: 64, unless samples run out (16 per shard at least)."""
    return max(1, min(DEFAULT_MIN_SHARDS, samples // DEFAULT_MIN_SHARD_SAMPLES))


@dataclass(frozen=True, kw_only=True)
class PlannedSample:
    key: str
    source: ImageInput
    target: ImageInput


@dataclass(frozen=True, kw_only=True)
class ShardPlan:
    """One shard's samples, in order: what a shard-writing task receives."""

    split: str
    index: int
    samples: list[PlannedSample]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


@dataclass(frozen=True, kw_only=True)
class ShardCut:
    """One shard of the plan as indexes into the samples; its ShardPlan is built when its task is sent, so
    the driver never holds every sample as objects at once."""

    split: str
    index: int
    members: np.ndarray  # indexes into the joined PairList, in shard order

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    def plan(self, samples: PairList) -> ShardPlan:
        images = samples.images
        return ShardPlan(split=self.split, index=self.index, samples=[
            PlannedSample(key=samples.key(i), source=images[samples.source[i]], target=images[samples.target[i]])
            for i in self.members
        ])


@dataclass(frozen=True, kw_only=True)
class ImageFeatures:
    """Each image's feature row (image i of the table: the index's row ``positions[i]``), without an object
    per image: columns are read for all at once, rows made for the few that are asked."""

    index: FeatureIndex
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def column(self, name: str, *, fill=None) -> np.ndarray:
        return self.index.column(name, self.positions, fill=fill)

    def ok(self) -> np.ndarray:
        return self.column("status") == STATUS_OK

    def rows(self, images) -> list[FeatureRow]:
        return self.index.rows_at(self.positions[np.asarray(images, np.int64)])

    def row(self, image: int) -> FeatureRow:
        return self.rows([image])[0]


def image_rows(images: ImageTable, features: FeatureIndex) -> ImageFeatures:
    """Each image's feature row (a KeyError names an image without one)."""
    positions = features.positions(images.catalog.digests[images.order])
    if len(positions) and positions.min() < 0:
        missing = int(np.flatnonzero(positions < 0)[0])
        raise KeyError(f"{images.source_path(missing)}: no feature row for {images.content_hash(missing)}")
    return ImageFeatures(index=features, positions=positions)


def join_pairs(pairs: PairList, features: ImageFeatures) -> tuple[PairList, list[Reject]]:
    """Pairs whose two images have features become samples; the others are rejected with the reason."""
    images = pairs.images
    ok = features.ok()
    good = ok[pairs.source] & ok[pairs.target] if len(pairs) else np.zeros(0, bool)
    rejects: list[Reject] = []
    for i in np.flatnonzero(~good):
        role, image = ("source", pairs.source[i]) if not ok[pairs.source[i]] else ("target", pairs.target[i])
        row = features.row(image)
        rejects.append(Reject(
            kind="pair", id=pairs.key(i), stage="pairs", reason=f"{role}_rejected",
            detail=f"line {pairs.line[i]}: {role} {images.source_path(image)} was rejected "
                   f"({row.values['status']}): {row.values['detail']}",
            path=f"{images.source_path(pairs.source[i])},{images.source_path(pairs.target[i])}"))
    return pairs.subset(np.flatnonzero(good)), rejects


def plan_shards(
    samples: PairList,
    features: ImageFeatures,
    *,
    split: str,
    seed: int,
    shard_bytes: int,
    min_shards: int | None,
) -> list[ShardCut]:
    """Shuffle (seeded, independent of input order) and cut into shards of equal sample counts.

    The order before the shuffle is the samples' keys sorted (Arrow sorts UTF-8 bytes: code point order,
    as Python's sort). The shard count is the larger of what the byte budget needs (with a 5% margin, since
    samples differ in size) and ``min_shards`` (trainer readers; None: :func:`default_min_shards`), and never
    more than the number of samples.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(samples)
    if not n:
        return []
    images = samples.images
    ids = pa.array([images.image_id(i) for i in range(len(images))], pa.string())
    keys = pc.binary_join_element_wise(ids.take(pa.array(samples.source)), ids.take(pa.array(samples.target)), "__")
    ordered = pc.sort_indices(keys).to_numpy()
    del ids, keys
    shuffled = ordered[np.random.default_rng(seed).permutation(n)]
    # a rejected image has no sizes (null), and is in no sample
    source_bytes = features.column("source_bytes", fill=0).astype(np.int64)
    target_bytes = features.column("target_bytes", fill=0).astype(np.int64)
    total = int(source_bytes[samples.source].sum() + target_bytes[samples.target].sum()) + META_OVERHEAD * n
    floor = default_min_shards(n) if min_shards is None else min_shards
    count = max(math.ceil(total * 1.05 / shard_bytes), floor, 1)
    count = min(count, n)
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return [ShardCut(split=split, index=i, members=shuffled[bounds[i]:bounds[i + 1]]) for i in range(count)]


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


def sample_meta(sample: PlannedSample, source: dict, target: dict) -> dict:
    """meta.json: ids, source paths, face and person figures, coverage (docs/ARCHITECTURE.md lists them)."""
    return {
        "source_id": sample.source.image_id,
        "target_id": sample.target.image_id,
        "source_path": sample.source.source_path,
        "target_path": sample.target.source_path,
        "source_sha256": sample.source.content_hash,
        "target_sha256": sample.target.content_hash,
        "source_size": [source["orig_h"], source["orig_w"]],
        "target_size": [target["orig_h"], target["orig_w"]],
        "face_ok": bool(source["face_ok"]),
        "face_status": source["face_status"],
        "face_found_by": source["face_found_by"],
        "face_score": _round(source["face_score"]),
        "face_det_score": _round(source["face_det_score"]),
        "face_box": [_round(v, 2) for v in source["face_box"]],
        "face_emb_norm": _round(source["face_emb_norm"]),
        "source_person_score": _round(source["person_score"]),
        "source_person_box": [_round(v, 2) for v in source["person_box"]],
        "source_person_count": source["person_count"],
        "target_person_score": _round(target["person_score"]),
        "target_person_box": [_round(v, 2) for v in target["person_box"]],
        "target_person_count": target["person_count"],
        "pose_coverage": _round(target["pose_coverage"]),
        "texture_coverage": _round(source["texture_coverage"]),
    }


def write_shard(
    *, out_dir: str, plan: ShardPlan, geometry: Geometry, features: dict[str, FeatureRow], previews: bool,
    window: int = 64,
) -> ShardRecord:
    """Write one planned shard (atomically); samples in plan order, members copied from the feature table.

    The feature rows of ``window`` samples at a time are read together (each file once per window), so a
    task's memory is one window's rows whatever the shard's or the dataset's size."""
    reader = FeatureReader()
    source_columns = [c for c, _ in SOURCE_MEMBERS] + (["preview_jpg", "face_jpg", "texture_jpg"] if previews else [])
    target_columns = [c for c, _ in TARGET_MEMBERS] + (["preview_jpg"] if previews else [])
    writer = ShardWriter(out_dir, split=plan.split, geometry=geometry, max_samples=len(plan.samples),
                         start_index=plan.index)
    with writer:
        for start in range(0, len(plan.samples), window):
            chunk = plan.samples[start:start + window]
            wanted = [(features[s.source.content_hash], source_columns) for s in chunk]
            wanted += [(features[s.target.content_hash], target_columns) for s in chunk]
            rows = reader.read_window(wanted)
            for sample in chunk:
                source_row = features[sample.source.content_hash]
                target_row = features[sample.target.content_hash]
                writer.write_encoded(_members(sample, source_row, target_row, rows[(source_row.file, source_row.row)],
                                              rows[(target_row.file, target_row.row)], previews=previews),
                                     decode_pixels=False)  # members the job's encoder made
    reader.close()
    (record,) = writer.records
    assert record.name == plan.name
    return record


def _members(sample: PlannedSample, source_row: FeatureRow, target_row: FeatureRow, source: dict, target: dict,
             *, previews: bool) -> dict[str, bytes]:
    """One sample's tar members: the source's and target's encoded features, and its meta.json."""
    members: dict[str, bytes] = {"__key__": sample.key}
    for column, field in SOURCE_MEMBERS:
        members[f"{field}.npy"] = source[column]
    members["tgt_latent.npy"] = target["img_latent"]
    members["tgt_pose.png"] = target["pose_png"]
    members["meta.json"] = encode_field("meta", sample_meta(sample, source_row.values, target_row.values))
    if previews:
        members["src.jpg"] = source["preview_jpg"]
        members["tgt.jpg"] = target["preview_jpg"]
        if source["face_jpg"] is not None:
            members["face.jpg"] = source["face_jpg"]
        if source["texture_jpg"] is not None:
            members["tex.jpg"] = source["texture_jpg"]
    return members
