"""The CI skip guard (tests/ci_skips.py) on a tiny suite run in a subprocess: under CI=true an unexplained
skip fails the run, a CUDA-only one does not; outside CI both are plain skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = '''
import pytest

@pytest.mark.skip(reason="CUDA-only: needs a GPU")
def test_cuda_only():
    pass

def test_passes():
    pass
'''


def _run(folder: Path, *, ci: str | None, extra: str = "") -> subprocess.CompletedProcess:
    (folder / "test_tiny.py").write_text(SUITE + extra)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.ci_skips", "-q", "-rfs", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), str(folder / "test_tiny.py")],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_under_ci_only_cuda_skips_pass(tmp_path):
    allowed = _run(tmp_path, ci="true")
    assert allowed.returncode == 0, allowed.stdout[-2000:]
    assert "1 passed, 1 skipped" in allowed.stdout
    other = '''
def test_needs_a_package():
    pytest.importorskip("no_such_package_here", reason="the extra is not installed")
'''
    failed = _run(tmp_path, ci="true", extra=other)
    assert failed.returncode == 1, failed.stdout[-2000:]
    assert "skipped under CI=true" in failed.stdout and "the extra is not installed" in failed.stdout
    assert "1 failed, 1 passed, 1 skipped" in failed.stdout
    module = 'pytest.skip("the whole module needs ../shared", allow_module_level=True)\n'
    collected = _run(tmp_path, ci="true", extra=module)
    assert collected.returncode != 0 and "the whole module needs ../shared" in collected.stdout


def test_outside_ci_a_skip_is_a_skip(tmp_path):
    other = '''
def test_needs_a_package():
    pytest.skip("the extra is not installed")
'''
    for ci in (None, "false"):
        done = _run(tmp_path, ci=ci, extra=other)
        assert done.returncode == 0 and "1 passed, 2 skipped" in done.stdout, done.stdout[-2000:]
