"""Fixtures shared across test folders: a real S3-compatible server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    pytest.importorskip("s3fs", reason="s3fs is the optional extra mcld-data[s3]: pip install -e '.[test,s3]'")
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra: pip install -e '.[test,s3]'")
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
        yield S3Server(endpoint=endpoint, env=env)
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
