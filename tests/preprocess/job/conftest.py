"""Shared fixtures for the job's end-to-end tests: a real local Ray instance, the demo inputs, and the one
uninterrupted demo run (and hostile-folder run) that the byte-identity tests compare with."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One tiny-model cache for the session (subprocesses inherit it through the environment)."""
    cache = tmp_path_factory.mktemp("mcld-cache")
    previous = os.environ.get("MCLD_DATA_CACHE")
    os.environ["MCLD_DATA_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("MCLD_DATA_CACHE", None)
    else:
        os.environ["MCLD_DATA_CACHE"] = previous


@pytest.fixture(scope="session")
def ray_local(model_cache):
    """A real local Ray instance, shared by the in-process job runs of this session."""
    import ray

    from preprocess.job.layout import ray_runtime_env

    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=ray_runtime_env(),
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> tuple[Path, Path]:
    from preprocess.demo import write_demo_inputs

    return write_demo_inputs(tmp_path_factory.mktemp("demo"))


#: The reference demo run's settings (the 1.2 MB budget splits the demo's pairs into 4 shards; for 10 pairs the
#: default --min-shards is 1, what the pinned reference_shards.json was written with).
REFERENCE_ARGS = ("--models", "tiny", "--no-progress", "--shard-size", "1.2MB", "--seed", "7", "--device", "cpu")


@pytest.fixture(scope="session")
def reference_run(ray_local, demo_inputs, tmp_path_factory) -> Path:
    """The uninterrupted demo run the byte-identity tests compare with (2 workers, batch 4, shard budget 1.2 MB,
    seed 7, on the CPU even on a GPU machine): one run for the session, shared by test_job, test_s3,
    test_reference_shards, test_declared_gpus and test_launcher. Never written to: a test that reruns in it
    copies it first."""
    from preprocess.build_shards import main

    images, pairs = demo_inputs
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["--images", str(images), "--pairs", str(pairs), "--out", str(out), *REFERENCE_ARGS]) == 0
    return out


#: The shard settings reference_shards.json was written with (test_reference_shards.COMMON; the hostile run's).
PINNED_SHARD_ARGS = ("--shard-size", "1.2MB", "--seed", "7", "--min-shards", "1")


@dataclass(frozen=True)
class HostileRun:
    """The hostile folder through the job (test_hostile.hostile_inputs): what it holds and the run's output."""

    images: Path
    pairs: Path
    expected: dict[str, str]  # file name -> the reject reason it must get ("" for none)
    rows: list[tuple[str, str]]  # the pairs CSV's rows
    out: Path


@pytest.fixture(scope="session")
def hostile_run(ray_local, tmp_path_factory) -> HostileRun:
    """One run of the hostile folder (--max-errors 1.0, on the CPU, the pinned shard settings), shared by
    test_hostile (every input accounted for) and test_reference_shards (its bytes pinned). Never written to."""
    from tests.preprocess.job.test_hostile import hostile_inputs, run_hostile

    root = tmp_path_factory.mktemp("hostile")
    expected, rows, pairs = hostile_inputs(root)
    out = root / "out"
    assert run_hostile(root / "images", pairs, out, *PINNED_SHARD_ARGS) == 0
    return HostileRun(images=root / "images", pairs=pairs, expected=expected, rows=rows, out=out)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def models_file_for(folder, dest) -> str:
    """A models YAML naming the tiny models copied to ``folder`` (what a user with real weights writes)."""
    import yaml

    paths = json.loads((folder / "paths.json").read_text())
    data = {"densepose": {"config": str(folder / paths["densepose_config"]),
                          "weights": str(folder / paths["densepose_weights"])},
            "face": {"antelopev2": str(folder / paths["antelopev2"])},
            "vae": str(folder / paths["vae"]), "clip": str(folder / paths["clip"])}
    dest.write_text(yaml.safe_dump(data))
    return str(dest)
