import os

import numpy as np
import pytest

from preprocess.job.features import FeatureIndex, FeatureRow
from preprocess.job.inputs import ImageInput, ImageTable, PairList
from preprocess.job.pairs import image_rows, join_pairs, plan_shards


def image(name, digest):
    return ImageInput(image_id=name, source_path=f"{name}.jpg", content_hash=digest, size=1)


def row(status="ok", size=1000):
    return FeatureRow(file="f", row=0, values={"status": status, "detail": "why", "reject_stage": "densepose",
                                               "source_bytes": size, "target_bytes": size})


def joined(images, features, pairs):
    """Images, their feature rows (by content hash) and pairs of ids -> (samples, rejects, rows)."""
    table = ImageTable.of(images)
    rows = image_rows(table, FeatureIndex.of_rows(features))
    samples, rejects = join_pairs(PairList.of(table, pairs), rows)
    return samples, rejects, rows


def keys(cut, samples):
    return [s.key for s in cut.plan(samples).samples]


def test_join_rejects_pairs_of_rejected_images():
    images = [image("a", "ha"), image("b", "hb"), image("c", "hc")]
    features = {"ha": row(), "hb": row(), "hc": row(status="no_person")}
    samples, rejects, _ = joined(images, features, [("a", "b"), ("c", "a"), ("a", "c")])
    assert [s.key for s in samples] == ["a__b"]
    assert [(r.id, r.reason) for r in rejects] == [("c__a", "source_rejected"), ("a__c", "target_rejected")]
    assert "no_person" in rejects[0].detail and "c.jpg" in rejects[0].detail and rejects[0].detail.startswith("line 3:")


def test_plan_is_seeded_independent_of_input_order_and_even():
    images = [image(f"i{k}", f"h{k}") for k in range(40)]
    features = {i.content_hash: row(size=50_000) for i in images}
    pairs = [(f"i{k}", f"i{(k + 1) % 40}") for k in range(40)]
    samples, _, rows = joined(images, features, pairs)
    reverse, _, rows_reverse = joined(list(reversed(images)), features, list(reversed(pairs)))
    plan = plan_shards(samples, rows, split="train", seed=3, shard_bytes=1_000_000, min_shards=1)
    again = plan_shards(reverse, rows_reverse, split="train", seed=3, shard_bytes=1_000_000, min_shards=1)
    assert [keys(p, samples) for p in plan] == [keys(p, reverse) for p in again]
    # the order before the shuffle is the keys' (code point) order: as Python's sorted
    ordered = sorted(s.key for s in samples)
    order = np.random.default_rng(3).permutation(40)
    assert [k for p in plan for k in keys(p, samples)] == [ordered[i] for i in order]
    other = plan_shards(samples, rows, split="train", seed=4, shard_bytes=1_000_000, min_shards=1)
    assert [k for p in other for k in keys(p, samples)] != [k for p in plan for k in keys(p, samples)]
    counts = [len(p.members) for p in plan]
    assert sum(counts) == 40 and max(counts) - min(counts) <= 1
    assert len(plan) == 5  # 40 x ~106 kB / 1 MB with a 5% margin
    assert [p.name for p in plan] == [f"train-{i:06d}.tar" for i in range(5)]
    wide = plan_shards(samples, rows, split="train", seed=3, shard_bytes=10**12, min_shards=8)
    assert len(wide) == 8
    assert len(plan_shards(samples.subset(np.arange(3)), rows, split="train", seed=3, shard_bytes=10**12, min_shards=8)) == 3


def _feature_table(tmp_path, images: int, *, previews: bool):
    """A small synthetic feature table at 512x512 (preprocess/scale.py's rows, 4 per file) and its plans."""
    import hashlib

    from preprocess.job import inputs as job_inputs
    from preprocess.job.features import features_dir, scan_features
    from preprocess.scale import ScaleConfig, config_templates, image_hash, image_path, write_feature_range, write_pairs_csv

    config = ScaleConfig(images=images, out=str(tmp_path), templates=6, previews=previews)
    pairs_csv = str(tmp_path / "pairs.csv")
    write_pairs_csv(pairs_csv, images, 2)
    rows = job_inputs.read_pairs(pairs_csv)
    hashes = {image_path(i): (image_hash(i), 1000) for i in range(images)}
    listed = job_inputs.list_inputs(rows=rows, hashes=hashes)
    by_path = {i.source_path: i for i in listed.images}
    directory = features_dir(str(tmp_path), hashlib.sha256(b"test").hexdigest())
    os.makedirs(directory)
    write_feature_range(directory, [by_path[image_path(i)].image_id for i in range(images)], 0, images,
                        config=config, templates=config_templates(config))
    features = scan_features(directory)
    rows = image_rows(listed.images, features)
    samples, rejects = join_pairs(listed.pairs, rows)
    assert not rejects
    cuts = plan_shards(samples, rows, split="train", seed=1, shard_bytes=10**12, min_shards=2)
    by_hash = dict(zip(features, features.rows_at(np.arange(len(features)))))  # what a shard task receives
    return by_hash, [cut.plan(samples) for cut in cuts]


def _reference_shard(plan, features, *, previews: bool) -> bytes:
    """The shard as the straightforward loop writes it: whole feature files read with pyarrow, members
    mapped by hand, webdataset's TarWriter; no FeatureReader, no windows, no schema check."""
    import io

    import pyarrow.parquet as pq
    import webdataset as wds

    from preprocess.job.pairs import sample_meta
    from shards.schema import encode_field
    from shards.writer import FIXED_MODE, FIXED_MTIME

    files: dict[str, list[dict]] = {}

    def values(row):
        if row.file not in files:
            files[row.file] = pq.read_table(row.file).to_pylist()
        return files[row.file][row.row]

    buffer = io.BytesIO()
    tar = wds.TarWriter(buffer, encoder=False, mtime=FIXED_MTIME, mode=FIXED_MODE, user="", group="")
    for sample in plan.samples:
        source_row, target_row = features[sample.source.content_hash], features[sample.target.content_hash]
        source, target = values(source_row), values(target_row)
        members = {"__key__": sample.key, "ref_latent.npy": source["tex_latent"], "src_clip.npy": source["img_clip"],
                   "tex_clip.npy": source["tex_clip"], "face_emb.npy": source["face_emb"],
                   "tgt_latent.npy": target["img_latent"], "tgt_pose.png": target["pose_png"],
                   "meta.json": encode_field("meta", sample_meta(sample, source_row.values, target_row.values))}
        if previews:
            members.update({"src.jpg": source["preview_jpg"], "tgt.jpg": target["preview_jpg"],
                            "tex.jpg": source["texture_jpg"]})
            if source["face_jpg"] is not None:
                members["face.jpg"] = source["face_jpg"]
        tar.write(members)
    tar.close()
    return buffer.getvalue()


@pytest.mark.parametrize("previews", [True, False])
def test_write_shard_equals_the_straightforward_loop_byte_for_byte(tmp_path, previews):
    """The windowed join (grouped row reads, cached npy headers) changes no byte: any window size, and a feature table written with the former all-zstd compression, give the
    reference loop's tar."""
    import pyarrow.parquet as pq

    from preprocess.job.pairs import write_shard
    from preprocess.scale import GEOMETRY

    features, plans = _feature_table(tmp_path, 14, previews=previews)
    assert len(plans) == 2 and any(p.samples for p in plans)
    old = {}  # the same rows in files written as before (zstd for every column)
    for location in {row.file for row in features.values()}:
        copy = location.replace(".parquet", "-zstd.parquet")
        pq.write_table(pq.read_table(location), copy, row_group_size=1, compression="zstd")
        old[location] = copy
    old_features = {h: FeatureRow(file=old[row.file], row=row.row, values=row.values) for h, row in features.items()}
    for plan in plans:
        expected = _reference_shard(plan, features, previews=previews)
        for name, table, window in (("w1", features, 1), ("w3", features, 3), ("w64", features, 64),
                                    ("zstd", old_features, 5)):
            out = tmp_path / name
            record = write_shard(out_dir=str(out), plan=plan, geometry=GEOMETRY, features=table,
                                 previews=previews, window=window)
            data = (out / plan.name).read_bytes()
            assert data == expected, (name, plan.name)
            assert record.bytes == len(data) and record.samples == len(plan.samples)
