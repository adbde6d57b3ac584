"""Helpers every test folder shares: a stage batch with its bookkeeping columns, a network guard, one
feature-modes job run, and a real S3-compatible server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from preprocess.common import object_column
from tests.ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (CI=true: skips fail)

# Every Ray the tests start (in process, `ray start`, ray.cluster_utils.Cluster, the job's subprocesses, which
# inherit it) stays on 127.0.0.1: without this Ray swaps 127.0.0.1 for the machine's interface address
# (measured here: NodeManagerAddress 192.0.2.2 without it, 127.0.0.1 with it). Set at import, before any test
# can start Ray; tests/test_ray_loopback.py checks it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def stage_batch(n: int, *, status: list[str] | None = None, ids: list[str] | None = None,
                failed_stage: str = "decode", failed_detail: str = "earlier", **columns) -> dict[str, np.ndarray]:
    """A batch as a stage receives it: the bookkeeping columns of preprocess.common for ``n`` rows (rows whose
    status is not "ok" failed in ``failed_stage`` with ``failed_detail``), plus the given columns. A list of
    per-row arrays becomes an object column, as Ray hands variable-size images."""
    status = list(status or ["ok"] * n)
    batch = {
        "image_id": np.array(ids or [f"img{i}" for i in range(n)], dtype=object),
        "status": np.array(status, dtype=object),
        "reject_stage": np.array(["" if s == "ok" else failed_stage for s in status], dtype=object),
        "detail": np.array(["" if s == "ok" else failed_detail for s in status], dtype=object),
    }
    for name, values in columns.items():
        batch[name] = object_column(values) if isinstance(values, list) else values
    return batch


@dataclass(frozen=True)
class SharedFixtures:
    """One reference fixture set: the folder its environment variable names, else ../shared/fixtures/NAME.

    ``cases`` is what the set's finder found there. A variable that is set must name a folder holding a case
    (set but empty, missing or without a case fails, naming it); unset, a missing shared folder (a user's
    clone) skips with a clear message, and a shared folder with no case fails."""

    env: str
    folder: Path
    cases: tuple
    override: str | None  # the variable's value when set

    @classmethod
    def find(cls, env: str, name: str, finder: Callable[[Path], Sequence]) -> SharedFixtures:
        override = os.environ.get(env)
        folder = Path(override) if override else SHARED_FIXTURES / name
        cases = tuple(finder(folder)) if override != "" and folder.is_dir() else ()
        return cls(env=env, folder=folder, cases=cases, override=override)

    def problem(self) -> tuple[str, str] | None:
        """None when there is a case; else ("skip" | "fail", the reason)."""
        if self.cases:
            return None
        if self.override == "":
            return "fail", f"{self.env} is set but empty: name the fixture folder, or unset it"
        if self.override is not None:
            what = "is not a folder" if not self.folder.is_dir() else "holds no case"
            return "fail", f"{self.env}={self.override}: {self.folder} {what}"
        if not self.folder.is_dir():
            return "skip", (f"reference fixtures not found at {self.folder} (a clone without ../shared; "
                            f"set {self.env} to their folder)")
        return "fail", f"{self.folder} holds no case (the shared fixtures are incomplete; or set {self.env})"

    def require(self) -> Path:
        """The folder, when it holds a case; else skip or fail the calling test with the reason."""
        problem = self.problem()
        if problem is None:
            return self.folder
        kind, reason = problem
        if kind == "skip":
            pytest.skip(reason)
        pytest.fail(reason, pytrace=False)

    def params(self, ids: Callable[[object], str] = str) -> list:
        """The cases as pytest params; with none, one param "no-case" whose test must call require()."""
        return [pytest.param(case, id=ids(case)) for case in self.cases] or [pytest.param(None, id="no-case")]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test, even one the code under test catches: the
    attempt raises OSError (what a missing network gives) and is recorded, and the test fails if any was."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    yield attempts
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.fixture(scope="session")
def feature_modes_run(tmp_path_factory):
    """One job run with the reference's feature modes (tiny models, face.mode reference, texture.part_masks),
    on a few demo photos plus a file that does not decode and an all-black photo: (out, images, masks).

    Shared by the job's feature-mode tests and the stats gallery's browser test (one run, not two)."""
    from tests.preprocess.feature_modes import run_feature_modes_job

    return run_feature_modes_job(tmp_path_factory.mktemp("feature-modes"))


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """moto's standalone server: ``env`` is what a process needs to reach it (AWS_ENDPOINT_URL + keys)."""

    endpoint: str
    env: dict
    log: Path | None = None  # the server's output: one line per request (what request-count tests read)

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its name."""
        import boto3

        name = f"mcld-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_boto_keys()).create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under a prefix (recursively)."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_keys())
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def open_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_keys())
        return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _boto_keys() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API (moto's standalone server, `moto[server]`) on 127.0.0.1 and a free port, for the session.

    The endpoint is given the standard way, AWS_ENDPOINT_URL, which botocore and so s3fs read; the process
    environment carries it (and dummy keys) while the server runs, so Ray workers and DataLoader workers
    started afterwards inherit it. Stopped, and the environment restored, at the end."""
    import moto.server  # noqa: F401 (moto[server] is in the test extra: pip install -e '.[test,s3]')
    import s3fs  # noqa: F401 (the optional extra mcld-data[s3]; `make setup` installs it)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = Path(tmp_path_factory.mktemp("moto")) / "server.log"
    with log.open("wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=stream, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto server did not start on {endpoint}: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint=endpoint, env=env, log=log)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
