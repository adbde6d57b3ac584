"""The shards of the demo and hostile inputs, pinned: a change to how inputs are listed, hashed or planned
must not change a byte of them (issue 21 moved hashing from the driver to the decode workers).

reference_shards.json was written by the code before that change (`python -m
tests.preprocess.job.test_reference_shards OUT.json` regenerates it; only do so for a deliberate change
of the shards). It holds, per input set, every tar's sha256 and size (--min-shards 1 and a fixed budget,
so another default shard count elsewhere does not move it), every sample's members' sha256, and the
rejects as (kind, id, reason)."""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from preprocess.build_shards import main
from tests.preprocess.job.conftest import PINNED_SHARD_ARGS

REFERENCE = Path(__file__).with_name("reference_shards.json")
COMMON = ["--models", "tiny", "--no-progress", *PINNED_SHARD_ARGS]  # "--shard-size 1.2MB --seed 7 --min-shards 1"


def digest_output(out: Path) -> dict:
    """What must not change: tar bytes, each sample's members, and which inputs were rejected why."""
    tars = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
            for p in sorted(out.glob("*.tar"))}
    members: dict[str, str] = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for info in tar.getmembers():
                members[info.name] = hashlib.sha256(tar.extractfile(info).read()).hexdigest()
    rejects = sorted((r["kind"], r["id"], r["reason"]) for r in pq.read_table(out / "rejects.parquet").to_pylist())
    return {"tars": tars, "members": members, "rejects": [list(r) for r in rejects]}


def demo_output(demo_inputs, out: Path) -> dict:
    images, pairs = demo_inputs
    assert main(["--images", str(images), "--pairs", str(pairs), "--out", str(out), *COMMON]) == 0
    return digest_output(out)


def hostile_output(root: Path) -> dict:
    from tests.preprocess.job.test_hostile import hostile_inputs

    _, _, pairs = hostile_inputs(root)
    out = root / "out"
    assert main(["--images", str(root / "images"), "--pairs", str(pairs), "--out", str(out), "--max-errors", "1.0",
                 *COMMON]) == 0
    return digest_output(out)


def _compare(got: dict, want: dict) -> None:
    assert got["rejects"] == want["rejects"]
    assert got["members"] == want["members"]
    assert got["tars"] == want["tars"]


def test_demo_shards_are_byte_identical_to_the_reference(reference_run):
    """The session's demo run (conftest.reference_run) has this file's settings: the same budget and seed, and
    --min-shards 1 is the default for the demo's pairs (checked below from the pairs written)."""
    from preprocess.job.pairs import default_min_shards
    from shards.manifest import read_manifest

    manifest = read_manifest(str(reference_run))
    assert default_min_shards(manifest.counts.pairs_written) == 1
    for flag in ("--shard-size", "--seed"):
        assert manifest.command[manifest.command.index(flag) + 1] == COMMON[COMMON.index(flag) + 1]
    _compare(digest_output(reference_run), json.loads(REFERENCE.read_text())["demo"])


def test_hostile_shards_are_byte_identical_to_the_reference(hostile_run):
    """The session's hostile run (conftest.hostile_run): this file's settings (PINNED_SHARD_ARGS), on the CPU."""
    _compare(digest_output(hostile_run.out), json.loads(REFERENCE.read_text())["hostile"])


def _regenerate(destination: str) -> None:
    import tempfile

    import ray

    from preprocess.demo import write_demo_inputs
    from preprocess.job.layout import ray_runtime_env

    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=ray_runtime_env(),
             log_to_driver=False)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "demo").mkdir()
        (root / "hostile").mkdir()
        result = {"demo": demo_output(write_demo_inputs(root / "demo"), root / "demo" / "out"),
                  "hostile": hostile_output(root / "hostile")}
    ray.shutdown()
    Path(destination).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    _regenerate(sys.argv[1])
