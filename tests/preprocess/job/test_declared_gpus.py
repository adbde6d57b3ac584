"""The real job on a local Ray cluster that declares GPUs (`ray start --head --num-gpus 4`) without CUDA: every
stage computes on the CPU by the capability check while Ray places the torch stages as GPU actors."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shards.verify import verify_output
from tests.preprocess.job.conftest import shard_bytes
from tests.preprocess.job.test_cluster import free_port, stop_head

ROOT = Path(__file__).resolve().parents[3]
JOIN_NODE = """
import sys, time
from ray._private.node import Node
from ray._private.parameter import RayParams
params = RayParams(gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=2, num_gpus=2,
                   temp_dir=sys.argv[2], object_store_memory=150 * 1024 * 1024, min_worker_port=0,
                   max_worker_port=0, include_log_monitor=False, node_manager_port=0)
for attempt in range(5):  # a loaded machine can miss Ray's fixed 30 s for the raylet to register
    try:
        node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=False)
        break
    except Exception as error:
        print("joining again:", error, flush=True)
print("joined", node.unique_id, flush=True)
while True:
    time.sleep(1)
"""
READ_PLACEMENTS = """
import json, sys
import ray
from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list
from preprocess.job.chain import PLACED_NAMESPACE
ray.init(address=sys.argv[1], log_to_driver=False)
hosted = {}
for key in _internal_kv_list("", namespace=PLACED_NAMESPACE):
    stage = key.decode().split("/")[1]
    hosted.setdefault(stage, []).append(_internal_kv_get(key, namespace=PLACED_NAMESPACE).decode())
print(json.dumps(hosted))
"""


def start_node(ray: str, *args: str, env: dict, temp_dir: str, log: Path) -> subprocess.Popen:
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
    return subprocess.Popen([ray, "start", *args, "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", *ports,
                             "--block"], env={**env, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_job_on_declared_gpus_uses_every_gpu_and_a_joining_node(demo_inputs, model_cache, reference_run, tmp_path):
    """Every declared GPU id hosts an actor of each GPU-placed stage (stats.json records where each stage ran);
    a node that joins while the job runs (`ray start --address ... --num-gpus 2`) gets work; the shards verify
    and are byte-identical to the session's plain CPU run (conftest.reference_run: the same inputs, budget and
    seed; batch 4 there, batch 1 here: on the CPU every model runs one image per forward pass, so the batch
    size changes no byte, as test_job's workers/batch test checks too)."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    images, pairs = demo_inputs
    temp_dir = tempfile.mkdtemp(prefix="rg-", dir="/tmp")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    common = ["--images", str(images), "--pairs", str(pairs), "--models", "tiny", "--no-progress",
              "--shard-size", "1.2MB", "--seed", "7", "--batch-size", "1"]
    script = str(ROOT / "preprocess" / "build_shards.py")
    joined = head = None
    out = tmp_path / "gpus"
    try:
        # A loaded machine can miss Ray's fixed 30 s for the head's raylet to register: start it again then.
        for _ in range(3):
            head = start_node(ray, "--head", f"--port={port}", "--num-cpus=4", "--num-gpus=4",
                              "--include-dashboard=false", f"--ray-client-server-port={free_port()}", env=env,
                              temp_dir=temp_dir, log=tmp_path / "head.log")
            while head.poll() is None and "Ray runtime started" not in (tmp_path / "head.log").read_text():
                time.sleep(0.5)
            if head.poll() is None:
                break
            stop_head(head)
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        job = subprocess.Popen([sys.executable, script, *common, "--out", str(out), "--address", f"127.0.0.1:{port}"],
                               env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The second node joins once the plan is made (the log says the layout), while the features run.
        log = out / "build_shards.log"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and job.poll() is None:
            if log.exists() and "staged layout" in log.read_text():
                break
            time.sleep(0.5)
        # A second node joins: what `ray start --address=127.0.0.1:PORT --num-gpus 2` does, through Ray's own
        # node API (as ray.cluster_utils adds nodes): the CLI refuses to join under this suite's
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (tests/conftest.py), and without it resolves 127.0.0.1 to the machine's address.
        joined = subprocess.Popen([sys.executable, "-c", JOIN_NODE, f"127.0.0.1:{port}", temp_dir], env=env,
                                  start_new_session=True, stdout=(tmp_path / "joined.log").open("w"),
                                  stderr=subprocess.STDOUT)
        output, _ = job.communicate(timeout=900)
        assert job.returncode == 0, output[-6000:]
        assert joined.poll() is None, (tmp_path / "joined.log").read_text()[-3000:]
        # Where every stage's workers were built, as they registered it (preprocess/job/chain.py).
        read = subprocess.run([sys.executable, "-c", READ_PLACEMENTS, f"127.0.0.1:{port}"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert read.returncode == 0, read.stderr[-3000:]
        hosted = json.loads(read.stdout.strip().splitlines()[-1])
    finally:
        if joined is not None:
            stop_head(joined)
        if head is not None:
            stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)

    assert verify_output(str(out), progress=False).ok
    stats = json.loads((out / "stats.json").read_text())["stages"]
    for stage in ("densepose", "vae", "clip"):
        by_node: dict[str, set[str]] = {}
        for where in hosted[stage]:
            node, _, gpus = where.partition("/gpu:")
            by_node.setdefault(node, set()).update(gpus.split(","))
        # every GPU the head declared hosted an actor of the stage (the joining node has two)
        assert any({"0", "1", "2", "3"} <= ids for ids in by_node.values()), (stage, hosted[stage])
    assert "/gpu:" not in " ".join(hosted["face"])  # no CUDA provider here: the face stage is off the GPUs
    rows_on = {key.split("/")[0] for s in stats.values() for key in s["placed"]}
    built_on = {where.split("/")[0] for places in hosted.values() for where in places}
    assert len(built_on) >= 2 and len(rows_on) >= 2, (hosted, stats)  # the joining node received work
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["settings"]["stage_devices"].values()) == {"cpu"}
    assert "CUDAExecutionProvider" in manifest["settings"]["stage_device_reasons"]["face"]

    # The same inputs, budget and seed on the plain local CPU Ray: the same bytes.
    assert shard_bytes(out) == shard_bytes(reference_run) and shard_bytes(out)
