"""Under CI (CI=true) a skipped test is a failure, unless its skip reason names an allowed cause.

CI runs on a fresh machine that `.ci/run` provisions (the SSH server, rsync and Chromium from Debian's
packages, the s3 and test extras): a test that skips there did not run and proves nothing, so it fails,
with the reason. The one cause CI cannot provide is a GPU: a reason containing "CUDA" (write
"CUDA-only: ..." or "needs a CUDA device") is allowed. Registered by tests/conftest.py; usable alone as a
plugin (`pytest -p tests.ci_skips`).
"""

from __future__ import annotations

import os

import pytest

#: The explicit allow-list: a skip reason containing one of these passes under CI=true.
CI_ALLOWED_SKIP_REASONS = ("CUDA",)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _forbid(report) -> None:
    """Turn a skip whose reason is not allow-listed into a failure that quotes it."""
    if not (_in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if any(allowed in reason for allowed in CI_ALLOWED_SKIP_REASONS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, where only skips whose reason contains one of "
                       f"{CI_ALLOWED_SKIP_REASONS} are allowed: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _forbid(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module skipped as a whole (pytest.importorskip, allow_module_level) is held to the same rule."""
    outcome = yield
    _forbid(outcome.get_result())
