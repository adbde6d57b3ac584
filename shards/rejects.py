"""rejects.parquet: every input image or pair that did not become a sample, with the reason."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from shards import storage

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "image" or "pair"
        pa.field("id", pa.string(), nullable=False),  # image id, or pair key "{source}__{target}"
        pa.field("stage", pa.string(), nullable=False),  # decode, densepose, texture, ..., pairs
        pa.field("reason", pa.string(), nullable=False),  # decode_failed, no_person, missing_source, ...
        pa.field("detail", pa.string(), nullable=False),  # human-readable, names the file
        pa.field("path", pa.string(), nullable=False),  # input path(s) relative to --images
    ]
)


@dataclass(frozen=True, kw_only=True)
class Reject:
    kind: str
    id: str
    stage: str
    reason: str
    detail: str
    path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("image", "pair"):
            raise ValueError(f"reject kind must be 'image' or 'pair', got {self.kind!r}")
        if not self.reason:
            raise ValueError(f"reject of {self.id!r} has no reason")


def rejects_table(rejects: list[Reject]) -> pa.Table:
    ordered = sorted(rejects, key=lambda r: (r.kind, r.id, r.stage, r.reason))
    columns = {name: [getattr(r, name) for r in ordered] for name in REJECTS_SCHEMA.names}
    return pa.table(columns, schema=REJECTS_SCHEMA)


def write_rejects(location: str, rejects: list[Reject]) -> None:
    buffer = io.BytesIO()
    pq.write_table(rejects_table(rejects), buffer)
    storage.write_bytes_atomic(location, buffer.getvalue())


def read_rejects(location: str) -> list[Reject]:
    with storage.open_read(location) as stream:
        table = pq.read_table(stream)
    missing = [name for name in REJECTS_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"{location}: rejects table lacks column(s) {missing}")
    return [Reject(**{k: row[k] for k in REJECTS_SCHEMA.names}) for row in table.to_pylist()]


def count_by_reason(rejects: list[Reject], kind: str) -> dict[str, int]:
    return dict(sorted(Counter(r.reason for r in rejects if r.kind == kind).items()))

