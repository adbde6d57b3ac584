"""The per-image feature table: Parquet files under OUT/features/{fingerprint}/, the job's cache.

A row holds one image's features already encoded as the shard members they become (so the pair join
copies bytes), plus the small figures that go into meta.json. Rows are keyed by the content hash of
the image file: an image whose bytes and models are unchanged is never computed again, whatever its
name; rejected images are rows too (status != "ok"), so a resumed job does not retry them either.
Each file is written whole by the worker that computed it (temporary name, then rename), with one row
per row group so the join can read one image's columns without reading its neighbours.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from preprocess.common import STATUS_OK, batch_len, sorted_positions
from preprocess.job.chain import PLACED_PREFIX
from preprocess.job.decode import READ_STAGE, STATUS_CACHED
from shards import storage
from shards.schema import encode_field

CHANGED = "changed_during_run"  # a row of this status is never a cache hit (the next run reads the file again)
FEATURE_VERSION = 3  # bump when what a stage computes changes without a model or setting changing
FEATURES_DIR = "features"
PREVIEW_HEIGHT = 256

# Columns the pair join copies into samples: (feature column, role that supplies it, shard field)
SOURCE_MEMBERS = (("tex_latent", "ref_latent"), ("img_clip", "src_clip"), ("tex_clip", "tex_clip"),
                  ("face_emb", "face_emb"))
TARGET_MEMBERS = (("img_latent", "tgt_latent"), ("pose_png", "tgt_pose"))

SMALL_COLUMNS = [
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reject_stage", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    pa.field("orig_h", pa.int32()),
    pa.field("orig_w", pa.int32()),
    pa.field("person_box", pa.list_(pa.float32(), 4)),
    pa.field("person_score", pa.float32()),
    pa.field("person_count", pa.int32()),
    pa.field("face_ok", pa.bool_()),
    pa.field("face_status", pa.string()),  # ok, no_face, no_landmarks, embedding_nonfinite (preprocess/face)
    pa.field("face_found_by", pa.string()),  # image, person_box, or "" (no face)
    pa.field("face_box", pa.list_(pa.float32(), 4)),
    pa.field("face_score", pa.float32()),
    pa.field("face_det_score", pa.float32()),
    pa.field("face_emb_norm", pa.float32()),
    pa.field("pose_coverage", pa.float32()),
    pa.field("texture_coverage", pa.float32()),
    pa.field("source_bytes", pa.int64()),  # encoded size of what this image gives as a pair's source
    pa.field("target_bytes", pa.int64()),  # ... and as a pair's target
]
BIG_COLUMNS = [
    pa.field(name, pa.binary())
    # preview_jpg: the image's preview; for a rejected image that decoded, its thumbnail (the stats gallery's).
    # texture_jpg: the texture map's preview, kept whatever --no-previews (it is how people check the texture).
    for name in ("img_latent", "tex_latent", "img_clip", "tex_clip", "face_emb", "pose_png", "preview_jpg", "face_jpg",
                 "texture_jpg")
]
FEATURE_SCHEMA = pa.schema(SMALL_COLUMNS + BIG_COLUMNS)
SMALL_NAMES = [f.name for f in SMALL_COLUMNS]


def fingerprint(description: dict) -> str:
    """sha256 of everything that changes a feature: models (file checksums), settings, code version."""
    text = json.dumps({"feature_version": FEATURE_VERSION, **description}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def features_dir(out_dir: str, fingerprint_hex: str) -> str:
    return storage.join(out_dir, FEATURES_DIR, fingerprint_hex[:16])


def preview(image_resized: np.ndarray) -> np.ndarray:
    height, width = image_resized.shape[:2]
    if height <= PREVIEW_HEIGHT:
        return image_resized
    new_width = max(8, round(width * PREVIEW_HEIGHT / height))
    return np.asarray(Image.fromarray(image_resized).resize((new_width, PREVIEW_HEIGHT), Image.BICUBIC))


def reject_thumbnail(batch: dict[str, np.ndarray], i: int) -> bytes | None:
    """A rejected row's decoded image as a preview JPEG, or None where it did not decode."""
    image = batch["image"][i] if "image" in batch else None
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return None
    if min(image.shape[:2]) == 0:
        return None
    return encode_field("src", preview(np.ascontiguousarray(image)))


def _box(values) -> list[float]:
    return [float(v) for v in np.asarray(values, np.float32).reshape(4)]


def batch_to_table(batch: dict[str, np.ndarray], *, previews: bool) -> pa.Table:
    """The stages' output columns -> feature rows (encoded members for ok rows, nulls for rejects)."""
    n = batch_len(batch)
    rows: dict[str, list] = {f.name: [] for f in FEATURE_SCHEMA}
    for i in range(n):
        ok = batch["status"][i] == STATUS_OK
        rows["content_hash"].append(str(batch["content_hash"][i]))
        rows["image_id"].append(str(batch["image_id"][i]))
        rows["status"].append(str(batch["status"][i]))
        rows["reject_stage"].append(str(batch["reject_stage"][i]))
        rows["detail"].append(str(batch["detail"][i]))
        if not ok:
            for name in SMALL_NAMES[5:] + [f.name for f in BIG_COLUMNS]:
                rows[name].append(None)
            rows["preview_jpg"][-1] = reject_thumbnail(batch, i)
            continue
        face_ok = bool(batch["face_ok"][i])
        pose = np.ascontiguousarray(batch["pose_resized"][i])
        texture = batch["texture_resized"][i]
        encoded = {
            "img_latent": encode_field("tgt_latent", np.asarray(batch["img_latent"][i], np.float16)),
            "tex_latent": encode_field("ref_latent", np.asarray(batch["tex_latent"][i], np.float16)),
            "img_clip": encode_field("src_clip", np.asarray(batch["img_clip"][i], np.float16)),
            "tex_clip": encode_field("tex_clip", np.asarray(batch["tex_clip"][i], np.float16)),
            "face_emb": encode_field("face_emb", np.asarray(batch["face_emb"][i], np.float32)),
            "pose_png": encode_field("tgt_pose", pose),
            "preview_jpg": encode_field("src", preview(batch["image_resized"][i])) if previews else None,
            "face_jpg": encode_field("face", np.asarray(batch["face_crop"][i], np.uint8)) if previews and face_ok else None,
            "texture_jpg": encode_field("tex", preview(np.asarray(batch["texture"][i], np.uint8))),
        }
        for name, value in encoded.items():
            rows[name].append(value)
        rows["orig_h"].append(int(batch["orig_h"][i]))
        rows["orig_w"].append(int(batch["orig_w"][i]))
        rows["person_box"].append(_box(batch["person_box"][i]))
        rows["person_score"].append(float(batch["person_score"][i]))
        rows["person_count"].append(int(batch["person_count"][i]))
        rows["face_ok"].append(face_ok)
        rows["face_status"].append(str(batch["face_status"][i]))
        rows["face_found_by"].append(str(batch["face_found_by"][i]))
        rows["face_box"].append(_box(batch["face_box"][i]))
        rows["face_score"].append(float(batch["face_score"][i]))
        rows["face_det_score"].append(float(batch["face_det_score"][i]))
        rows["face_emb_norm"].append(float(batch["face_emb_norm"][i]))
        rows["pose_coverage"].append(float((pose[..., 0] > 0).mean()))
        rows["texture_coverage"].append(float(texture.any(axis=-1).mean()))
        source_bytes = sum(len(encoded[c]) for c, _ in SOURCE_MEMBERS)
        source_bytes += len(encoded["preview_jpg"] or b"") + len(encoded["face_jpg"] or b"")
        source_bytes += len(encoded["texture_jpg"]) if previews else 0
        target_bytes = sum(len(encoded[c]) for c, _ in TARGET_MEMBERS) + len(encoded["preview_jpg"] or b"")
        rows["source_bytes"].append(source_bytes)
        rows["target_bytes"].append(target_bytes)
    return pa.table(rows, schema=FEATURE_SCHEMA)


# Columns stored uncompressed: latents, embeddings and JPEGs, which zstd shrinks by under 10% while
# decompressing them was about 60% of the pair join's read time (the IUV PNG shrinks 5x: it stays zstd).
UNCOMPRESSED = ("img_latent", "tex_latent", "img_clip", "tex_clip", "face_emb", "preview_jpg", "face_jpg", "texture_jpg")
_COMPRESSION: dict[str, str] = {}


def _compression() -> dict[str, str]:
    """Codec per Parquet leaf column (nested ones are named by their path, e.g. ``person_box.list.element``)."""
    if not _COMPRESSION:
        buffer = io.BytesIO()
        pq.write_table(FEATURE_SCHEMA.empty_table(), buffer)
        schema = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
        for i in range(len(schema)):
            path = schema.column(i).path
            _COMPRESSION[path] = "none" if path.split(".")[0] in UNCOMPRESSED else "zstd"
    return _COMPRESSION


def write_feature_file(directory: str, table: pa.Table) -> str:
    """Write one batch's rows; the name derives from its content hashes, so a retried batch replaces itself."""
    hashes = sorted(table.column("content_hash").to_pylist())
    name = "part-" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:20] + ".parquet"
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=1, compression=_compression())
    storage.write_bytes_atomic(storage.join(directory, name), buffer.getvalue())
    return name


@dataclass(frozen=True, kw_only=True, slots=True)
class FeatureRow:
    """Where one image's features are, and the small figures the job needs without the big columns."""

    file: str
    row: int
    values: dict  # the SMALL_COLUMNS values

    @property
    def ok(self) -> bool:
        return self.values["status"] == STATUS_OK


def _hash_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Content hashes as a numpy S64 array (64 bytes each; searchable), converted a chunk at a time."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    step = 65536
    return np.concatenate([np.array(column.slice(start, step).to_pylist(), dtype="S64")
                           for start in range(0, len(column), step)] or [np.zeros(0, "S64")])


def _first_of_runs(column: pa.Array) -> np.ndarray:
    """Mask of the entries that differ from the one before (the first of each run in a sorted column)."""
    n = len(column)
    if n == 0:
        return np.zeros(0, bool)
    change = pc.not_equal(column.slice(1), column.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[True], change])


class FeatureIndex:
    """The feature table's small columns, one entry per content hash, held as one Arrow table (about 200
    bytes per image where a dict of values per image took kilobytes); a FeatureRow is made when asked.

    ``cache_ids`` maps image id -> content hash for the rows that can be a cache hit (what the decode stage
    compares the hash it reads with); where an id has rows of several contents, the last file by name wins."""

    def __init__(self, table: pa.Table, files: list[str], *, cache_ids: pa.Table | None = None) -> None:
        self.table = table  # SMALL_NAMES + seq (the row's file: files[seq]) + row, sorted by content_hash, unique
        self.files = files
        self._hashes = _hash_array(table.column("content_hash"))
        self.cache_ids = cache_ids if cache_ids is not None else pa.table(
            {"image_id": pa.array([], pa.string()), "content_hash": pa.array([], pa.string())})

    @classmethod
    def build(cls, tables: list[pa.Table], files: list[str], *, with_ids: bool = False) -> FeatureIndex:
        """From per-file tables (SMALL_NAMES + seq: the file's place in ``files``, sorted by name + row), in
        any order: per content hash the first row by (a row saying the file changed under the run last, seq, row)."""
        if not tables:
            return cls(_empty_index_table(), files)
        table = pa.concat_tables(tables).combine_chunks()
        cache_ids = None
        if with_ids:
            stable = table.filter(pc.not_equal(table.column("status"), CHANGED))
            stable = stable.select(["image_id", "content_hash", "seq", "row"]).sort_by(
                [("image_id", "ascending"), ("seq", "descending"), ("row", "descending")])
            cache_ids = stable.filter(pa.array(_first_of_runs(stable.column("image_id").combine_chunks())))
            cache_ids = cache_ids.select(["image_id", "content_hash"]).combine_chunks()
        changed = pc.equal(table.column("status"), CHANGED)
        table = table.append_column("changed", changed).sort_by(
            [("content_hash", "ascending"), ("changed", "ascending"), ("seq", "ascending"), ("row", "ascending")])
        table = table.filter(pa.array(_first_of_runs(table.column("content_hash").combine_chunks())))
        return cls(table.drop_columns(["changed"]).combine_chunks(), files, cache_ids=cache_ids)

    @classmethod
    def of_rows(cls, rows: dict[str, FeatureRow]) -> FeatureIndex:
        """An index of given rows (tests, synthetic plans); their values need the columns asked of them."""
        names = sorted({name for row in rows.values() for name in row.values} - {"content_hash"})
        ordered = sorted(rows)
        files = sorted({row.file for row in rows.values()})
        data = {"content_hash": ordered, **{n: [rows[h].values.get(n) for h in ordered] for n in names},
                "seq": pa.array([files.index(rows[h].file) for h in ordered], pa.int32()),
                "row": pa.array([rows[h].row for h in ordered], pa.int32())}
        return cls(pa.table(data), files)

    def __len__(self) -> int:
        return len(self._hashes)

    def __iter__(self):
        """The content hashes, sorted."""
        return (h.decode() for h in self._hashes)

    def positions(self, hashes) -> np.ndarray:
        """Each hash's position in the index, -1 where it has none."""
        return sorted_positions(self._hashes, np.asarray(hashes, dtype="S64"))

    def __contains__(self, content_hash: str) -> bool:
        return self.positions([content_hash])[0] >= 0

    def get(self, content_hash: str) -> FeatureRow | None:
        position = self.positions([content_hash])[0]
        return self.rows_at([position])[0] if position >= 0 else None

    def __getitem__(self, content_hash: str) -> FeatureRow:
        row = self.get(content_hash)
        if row is None:
            raise KeyError(content_hash)
        return row

    def rows_at(self, positions) -> list[FeatureRow]:
        """The rows at these positions, made in one pass over the columns."""
        picked = self.table.take(pa.array(np.asarray(positions, np.int64)))
        return [FeatureRow(file=self.files[values.pop("seq")], row=values.pop("row"), values=values)
                for values in picked.to_pylist()]

    def column(self, name: str, positions=None, *, fill=None) -> np.ndarray:
        """One small column as numpy (at ``positions``, or whole; nulls replaced by ``fill`` if given)."""
        column = self.table.column(name)
        if positions is not None:
            column = column.take(pa.array(np.asarray(positions, np.int64)))
        if fill is not None:
            column = column.fill_null(fill)
        return column.to_numpy()

    def merged(self, newer: FeatureIndex) -> FeatureIndex:
        """This index with ``newer``'s rows where this one has none for their hash or only one saying the
        file changed under the run (what a run just wrote, over the cache it started from)."""
        if not len(newer):
            return self
        here = self.positions(newer._hashes)
        keep_new = here < 0
        if (~keep_new).any():
            changed = self.column("status", here[~keep_new]) == CHANGED
            keep_new[np.flatnonzero(~keep_new)[changed]] = True
        drop = here[keep_new & (here >= 0)]
        mask = np.ones(len(self), bool)
        mask[drop] = False
        columns = self.table.column_names
        added = newer.table.select(columns).filter(pa.array(keep_new))
        added = added.set_column(columns.index("seq"), "seq",
                                 pc.add(added.column("seq"), pa.scalar(len(self.files), pa.int32())))
        table = pa.concat_tables([self.table.filter(pa.array(mask)), added]).sort_by("content_hash")
        return FeatureIndex(table.combine_chunks(), self.files + newer.files, cache_ids=self.cache_ids)


def _empty_index_table() -> pa.Table:
    return pa.schema(SMALL_COLUMNS + [pa.field("seq", pa.int32()), pa.field("row", pa.int32())]).empty_table()


def scan_features(directory: str, *, names: set[str] | None = None, with_ids: bool = False) -> FeatureIndex:
    """Index the rows under a fingerprint's folder by content hash (small columns only); with ``names``,
    only those files' rows (what a run just wrote); ``with_ids``: also the index's ``cache_ids``.

    Leftover temporary files of a killed run are removed; where two files hold the same image (a batch
    retried with other neighbours), the first file by name wins: both hold the same features. Files are
    combined a thousand at a time, so a million small files do not leave a million Arrow chunks behind.
    """
    files: list[str] = []
    if not storage.exists(directory):
        return FeatureIndex.build([], files)
    combined: list[pa.Table] = []
    pending: list[pa.Table] = []
    for name in sorted(names) if names is not None else storage.list_names(directory):
        location = storage.join(directory, name)
        if storage.is_temporary(name):
            storage.remove(location)
            continue
        if not name.endswith(".parquet"):
            continue
        with storage.open_read(location) as stream:
            table = pq.read_table(stream, columns=SMALL_NAMES)
        n = table.num_rows
        pending.append(table.append_column("seq", pa.array(np.full(n, len(files), np.int32)))
                       .append_column("row", pa.array(np.arange(n, dtype=np.int32))))
        files.append(location)
        if len(pending) >= 1000:
            combined.append(pa.concat_tables(pending).combine_chunks())
            pending = []
    if pending:
        combined.append(pa.concat_tables(pending).combine_chunks())
    return FeatureIndex.build(combined, files, with_ids=with_ids)


class FeatureReader:
    """Reads the big columns of rows, a window of rows at a time, keeping up to ``open_files`` files open
    (least recently used closed first): one per shard-writing task, whose files number the dataset's
    images / batch size."""

    def __init__(self, *, open_files: int = 256) -> None:
        self._files: OrderedDict[str, pq.ParquetFile] = OrderedDict()
        self._open_files = open_files

    def _file(self, location: str) -> pq.ParquetFile:
        parquet = self._files.get(location)
        if parquet is None:
            if len(self._files) >= self._open_files:
                _, oldest = self._files.popitem(last=False)
                oldest.close(force=True)  # also the stream it was given
            parquet = self._files[location] = pq.ParquetFile(storage.open_read(location))
        else:
            self._files.move_to_end(location)
        return parquet

    def read_window(self, wanted: list[tuple[FeatureRow, list[str]]]) -> dict[tuple[str, int], dict[str, bytes | None]]:
        """The asked columns of the asked rows, keyed by (file, row): each file read once, in one call for
        all its rows in the window (with the union of their columns), so a row asked twice (an image that
        is a source and a target in the same window) is read once. Memory: the window's rows."""
        by_file: dict[str, dict[int, set[str]]] = {}
        for row, columns in wanted:
            by_file.setdefault(row.file, {}).setdefault(row.row, set()).update(columns)
        out: dict[tuple[str, int], dict[str, bytes | None]] = {}
        for location, rows in by_file.items():
            numbers = sorted(rows)
            columns = sorted(set().union(*rows.values()))
            table = self._file(location).read_row_groups(numbers, columns=columns, use_threads=False)
            values = {name: table.column(name).to_pylist() for name in columns}
            for i, number in enumerate(numbers):
                out[(location, number)] = {name: values[name][i] for name in rows[number]}
        return out

    def close(self) -> None:
        for parquet in self._files.values():
            parquet.close(force=True)
        self._files.clear()


@dataclass(frozen=True, kw_only=True)
class FeatureWriterConfig:
    directory: str
    previews: bool = True


class FeatureWriterStage:
    """The last stage: writes the batch's rows to the feature table and returns only the bookkeeping,
    so images, latents and embeddings never travel back to the driver."""

    # + timings and placements
    KEEP = ("image_id", "source_path", "content_hash", "status", "reject_stage", "detail", "read_error")

    def __init__(self, *, config: FeatureWriterConfig) -> None:
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Rows already in the cache and files that could not be read have no features to write.
        status, stage = np.asarray(batch["status"]), np.asarray(batch["reject_stage"])
        keep = np.flatnonzero((status != STATUS_CACHED) & (stage != READ_STAGE))
        name = ""
        if len(keep):
            rows = batch if len(keep) == batch_len(batch) else {k: np.asarray(v)[keep] for k, v in batch.items()}
            table = batch_to_table(rows, previews=self.config.previews)
            name = storage.retry_transient(lambda: write_feature_file(self.config.directory, table),
                                           what=f"a feature file in {self.config.directory}")
        out = {k: np.asarray(batch[k], dtype=object) for k in self.KEEP}
        out["read_size"] = np.asarray(batch["read_size"], np.int64)
        out.update({k: v for k, v in batch.items() if k.startswith(("seconds_", PLACED_PREFIX))})
        files = np.full(batch_len(batch), "", dtype=object)
        files[keep] = name
        out["feature_file"] = files
        return out
