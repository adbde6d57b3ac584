"""The workers' memory allocator: set at process start, present in Ray workers, never changes an output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocess.job import allocator
from preprocess.job.allocator import GLIBC_TUNED, AllocatorError, allocator_env

ROOT = Path(__file__).resolve().parents[3]


def probe(out: Path, env_vars: dict[str, str]) -> dict[str, np.ndarray]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", *GLIBC_TUNED)}
    done = subprocess.run([sys.executable, "-m", "tests.preprocess.job.allocator_probe", str(out)], cwd=ROOT,
                          env={**env, **env_vars}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(out, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


def test_stages_give_identical_arrays_with_and_without_the_allocator_setting(tmp_path, model_cache):
    chosen = allocator_env()
    assert chosen, "the default changes the allocator"
    plain = probe(tmp_path / "glibc.npz", {})
    tuned = probe(tmp_path / "chosen.npz", chosen)
    process_plain, process_tuned = plain.pop("process"), tuned.pop("process")
    # the setting took in the second process only
    assert list(process_plain) == ["MALLOC_MMAP_MAX_="]
    if "LD_PRELOAD" in chosen:
        assert any(Path(chosen["LD_PRELOAD"]).name in entry for entry in process_tuned), process_tuned
    else:
        assert list(process_tuned) == ["MALLOC_MMAP_MAX_=0"]
    assert plain.keys() == tuned.keys() and any(k.startswith("iuv/") for k in plain)
    for name in plain:
        assert plain[name].dtype == tuned[name].dtype and np.array_equal(plain[name], tuned[name]), name


def test_ray_workers_start_with_the_allocator(ray_local):
    import ray

    @ray.remote
    def worker_process() -> tuple[dict[str, str], list[str]]:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            loaded = sorted({line.split()[-1] for line in maps if "malloc.so" in line})
        return {k: os.environ.get(k, "") for k in ("LD_PRELOAD", *GLIBC_TUNED)}, loaded

    environ, loaded = ray.get(worker_process.remote())
    for name, value in allocator_env().items():
        assert environ[name] == value
    if "LD_PRELOAD" in allocator_env():
        assert any(Path(allocator_env()["LD_PRELOAD"]).name in entry for entry in loaded), loaded


def test_a_missing_library_falls_back_to_tuned_glibc_with_a_note(monkeypatch, caplog):
    monkeypatch.setitem(allocator.LIBRARIES, "jemalloc", ("mcld_absent", "libmcld_absent.so.9", "libjemalloc2"))
    with caplog.at_level(logging.WARNING, logger="preprocess.job.allocator"):
        assert allocator_env("jemalloc") == GLIBC_TUNED
    assert "apt-get install libjemalloc2" in caplog.text


def test_the_setting_is_read_from_the_environment_and_checked(monkeypatch):
    monkeypatch.setenv("MCLD_DATA_ALLOCATOR", "glibc")
    assert allocator_env() == {}
    monkeypatch.setenv("MCLD_DATA_ALLOCATOR", "mimalloc")
    with pytest.raises(AllocatorError, match="MCLD_DATA_ALLOCATOR='mimalloc'"):
        allocator_env()
