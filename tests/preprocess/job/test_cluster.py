"""The unchanged job on a real Ray cluster on localhost: `ray start --head`, `ray job submit --working-dir .`."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from shards.manifest import read_manifest
from shards.verify import verify_output

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_dashboard(port: int, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise TimeoutError(f"the head's dashboard did not open port {port} within {timeout} s")


def stop_head(head: subprocess.Popen) -> None:
    """Stop this head through its own `ray start --block` process, then anything left of its session."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) == head.pid:
                process.kill()
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue


@pytest.mark.slow
def test_job_submitted_to_a_localhost_cluster(tmp_path, demo_inputs, model_cache):
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    assert ray, "the ray CLI is installed with the project"
    images, pairs = demo_inputs
    out = tmp_path / "out"
    # Ray's temp dir must sit outside the uploaded working dir, and its socket paths must stay short.
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    gcs_port, dashboard_port = free_port(), free_port()
    # Every port the head's agents open is a free one: a local Ray instance of this session (other tests)
    # holds the defaults (the dashboard agent's 52365), and an agent that cannot bind never registers, so the
    # job server answers "No available agent" for good.
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                   f"--ray-client-server-port={free_port()}"]
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # the job's `python` is the first on the head's PATH: this project's environment
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    head = subprocess.Popen(
        [ray, "start", "--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true",
         *agent_ports, "--block"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_dashboard(dashboard_port, head)
        command = [ray, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir",
                   str(ROOT), "--", "python", "preprocess/build_shards.py", "--images", str(images), "--pairs",
                   str(pairs), "--out", str(out), "--models", "tiny", "--no-progress", "--min-shards", "2"]
        # The dashboard answers before the head's job agent has registered; Ray then refuses the submission
        # ("No available agent to submit job") and nothing runs. Ask again a bounded number of times.
        for _ in range(12):
            submit = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
            if "No available agent" not in submit.stdout + submit.stderr:
                break
            time.sleep(5)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "succeeded" in submit.stdout + submit.stderr
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    report = verify_output(str(out), progress=False)
    assert report.ok, report.problems
    manifest = read_manifest(str(out))
    assert len(manifest.shards) == 2 and not manifest.counts.problems()
    assert "--min-shards" in manifest.command
