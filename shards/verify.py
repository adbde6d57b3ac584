"""Check an output folder against its manifest: every shard's bytes, count and every sample's schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from shards import storage
from shards.manifest import MANIFEST_NAME, ManifestError, read_manifest
from shards.reader import ShardError, iter_shard_members
from shards.schema import SchemaError, decode_sample


@dataclass(frozen=True, kw_only=True)
class Problem:
    shard: str  # shard name, or "" for the folder as a whole
    key: str  # sample key, or "" for the shard as a whole
    message: str

    def __str__(self) -> str:
        where = "/".join(p for p in (self.shard, self.key) if p) or "(output)"
        return f"{where}: {self.message}"


@dataclass(kw_only=True)
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_output(out_dir: str, *, progress: bool = True) -> VerifyReport:
    report = VerifyReport()
    try:
        manifest = read_manifest(out_dir)
    except ManifestError as error:
        report.problems.append(Problem(shard="", key="", message=str(error)))
        return report
    for problem in manifest.counts.problems():
        report.problems.append(Problem(shard=MANIFEST_NAME, key="", message=f"counts do not add up: {problem}"))
    listed = {s.name for s in manifest.shards}
    for name in storage.list_names(out_dir):
        if name.endswith(".tar") and name not in listed:
            report.problems.append(Problem(shard=name, key="", message="shard is not listed in the manifest"))
    written = sum(s.samples for s in manifest.shards)
    if written != manifest.counts.pairs_written:
        report.problems.append(Problem(
            shard=MANIFEST_NAME, key="",
            message=f"shards hold {written} samples but counts.pairs_written is {manifest.counts.pairs_written}",
        ))
    geometry = manifest.geometry
    seen: dict[str, str] = {}
    bar = tqdm(manifest.shards, desc="verify", unit="shard", disable=not progress)
    for record in bar:
        report.shards += 1
        url = storage.join(out_dir, record.name)
        if not storage.exists(url):
            report.problems.append(Problem(shard=record.name, key="", message="missing from the folder"))
            continue
        try:
            for members in iter_shard_members(url, expected=record):
                key = members["__key__"]
                report.samples += 1
                if key in seen:
                    report.problems.append(Problem(shard=record.name, key=key, message=f"key also in {seen[key]}"))
                seen[key] = record.name
                try:
                    decode_sample(members, geometry=geometry)
                except SchemaError as error:
                    report.problems.append(Problem(shard=record.name, key=key, message=str(error)))
        except ShardError as error:
            report.problems.append(Problem(shard=record.name, key="", message=str(error)))
    return report
