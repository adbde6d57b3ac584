"""Devices per stage from the workers' runtimes, and the resource plan (--dry-run) on GPU clusters."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from preprocess.job.config import JobError
from preprocess.job.plan import (CUDA_PROVIDER, STAGES, Capabilities, make_plan, parse_stage_devices,
                                 resolve_devices)
from tests.preprocess.job.test_cluster import free_port, stop_head, wait_for_dashboard

ROOT = Path(__file__).resolve().parents[3]


def caps(*, cuda: int, onnx_cuda: bool) -> Capabilities:
    providers = (CUDA_PROVIDER, "CPUExecutionProvider") if onnx_cuda else ("CPUExecutionProvider",)
    return Capabilities(where="a test worker", torch_version="2.14.1", torch_cuda_version="13.0", cuda_devices=cuda,
                        onnxruntime_version="1.32.0", onnx_providers=providers)


def test_auto_puts_face_on_the_cpu_where_onnxruntime_lacks_cuda_and_says_why():
    devices = resolve_devices(requested="auto", overrides={}, caps=caps(cuda=8, onnx_cuda=False))
    assert devices.devices == {"densepose": "cuda", "face": "cpu", "vae": "cuda", "clip": "cuda"}
    assert CUDA_PROVIDER in devices.reasons["face"] and "onnxruntime-gpu" in devices.reasons["face"]
    both = resolve_devices(requested="auto", overrides={}, caps=caps(cuda=1, onnx_cuda=True))
    assert set(both.devices.values()) == {"cuda"}


def test_device_cuda_without_torch_cuda_is_refused_naming_what_is_missing():
    with pytest.raises(JobError, match="torch 2.14.1 on a test worker has no CUDA device"):
        resolve_devices(requested="cuda", overrides={}, caps=caps(cuda=0, onnx_cuda=False))
    with pytest.raises(JobError, match=f"face=cuda: .*{CUDA_PROVIDER}"):
        resolve_devices(requested="auto", overrides={"face": "cuda"}, caps=caps(cuda=2, onnx_cuda=False))
    # declared GPUs without CUDA: auto computes everything on the CPU
    declared = resolve_devices(requested="auto", overrides={}, caps=caps(cuda=0, onnx_cuda=False))
    assert set(declared.devices.values()) == {"cpu"}


def test_stage_device_override():
    assert parse_stage_devices(["face=cpu", "vae=cuda"]) == {"face": "cpu", "vae": "cuda"}
    with pytest.raises(JobError, match="--stage-device 'texture=cuda'"):
        parse_stage_devices(["texture=cuda"])
    devices = resolve_devices(requested="auto", overrides={"vae": "cpu"}, caps=caps(cuda=1, onnx_cuda=True))
    assert devices.devices["vae"] == "cpu" and devices.devices["densepose"] == "cuda"


@pytest.mark.parametrize("nodes", [1, 4])
def test_plan_fills_every_gpu_in_proportion_to_cost(nodes):
    gpus = 8 * nodes
    devices = resolve_devices(requested="auto", overrides={}, caps=caps(cuda=8, onnx_cuda=True))
    plan = make_plan(layout="auto", devices=devices, resources={"CPU": 96.0 * nodes, "GPU": float(gpus)},
                     nodes=nodes, batch_size=8, workers=None)
    assert plan.layout == "staged" and [s.name for s in plan.stages] == list(STAGES)
    placed = [s for s in plan.stages if s.gpus]
    assert {s.name for s in placed} == {"densepose", "face", "vae", "clip"}
    assert all(s.actors == [gpus, None] for s in placed)  # one per GPU at least, growing as nodes join
    per_gpu = sum(s.gpus for s in placed)
    assert 0.96 <= per_gpu <= 1.0  # one of each fits on one GPU, and together they fill it
    dp, clip = plan.stage("densepose"), plan.stage("clip")
    assert dp.gpus > plan.stage("vae").gpus > clip.gpus  # the costlier stage gets the larger share
    assert plan.stage("face").cpus >= 2  # the SSD and the crops of a GPU face actor have CPUs
    assert plan.gpu_slots == gpus and plan.slot_cpus == sum(s.cpus for s in placed)
    assert all(s.kind == "tasks" and s.gpus == 0 for s in plan.stages if s.name in ("decode", "texture", "write"))


def test_plan_without_the_cuda_provider_keeps_face_off_the_gpus():
    devices = resolve_devices(requested="auto", overrides={}, caps=caps(cuda=8, onnx_cuda=False))
    plan = make_plan(layout="auto", devices=devices, resources={"CPU": 64.0, "GPU": 8.0}, nodes=1, batch_size=4,
                     workers=None)
    face = plan.stage("face")
    assert face.device == "cpu" and face.gpus == 0 and face.actors[1] is None and CUDA_PROVIDER in face.why
    assert 0.96 <= sum(plan.stage(s).gpus for s in ("densepose", "vae", "clip")) <= 1.0


def test_fused_on_gpus_is_one_actor_per_gpu_not_per_cpu():
    devices = resolve_devices(requested="cuda", overrides={}, caps=caps(cuda=1, onnx_cuda=True))
    plan = make_plan(layout="fused", devices=devices, resources={"CPU": 16.0, "GPU": 1.0}, nodes=1, batch_size=4,
                     workers=None)
    assert {tuple(s.actors) for s in plan.stages} == {(1, 1)} and plan.stage("vae").gpus == 1.0


@pytest.mark.slow
def test_dry_run_against_a_head_declaring_8_gpus(tmp_path):
    """`ray start --head --num-gpus 8` on a machine without CUDA: the plan uses the 8 GPUs for the torch stages
    (computing on the CPU), keeps the face stage off them (no CUDA provider here), and computes nothing."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    temp_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")
    port = free_port()
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
             f"--object-manager-port={free_port()}"]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = subprocess.Popen(
        [ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=16", "--num-gpus=8",
         "--include-dashboard=false", f"--temp-dir={temp_dir}", *ports, "--block"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        out = tmp_path / "out"
        command = [sys.executable, str(ROOT / "preprocess" / "build_shards.py"), "--out", str(out), "--models",
                   "tiny", "--address", f"127.0.0.1:{port}", "--dry-run"]
        wait_for_dashboard(port, head)  # the head's GCS port opens
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stderr[-4000:]
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    plan = json.loads(done.stdout)
    assert plan["cluster"] == {"cpus": 16.0, "gpus": 8.0, "nodes": 1}
    stages = {s["name"]: s for s in plan["stages"]}
    assert list(stages) == list(STAGES)
    for name in ("densepose", "vae", "clip"):
        assert stages[name]["device"] == "cpu" and stages[name]["actors"] == [8, None] and stages[name]["gpus"] > 0
    assert 0.96 <= sum(stages[n]["gpus"] for n in ("densepose", "vae", "clip")) <= 1.0
    assert stages["face"]["device"] == "cpu" and stages["face"]["gpus"] == 0
    assert CUDA_PROVIDER in stages["face"]["why"]
    assert plan["placement_group"]["bundles"] == 8
    assert not out.exists()  # nothing computed, nothing written


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _torch_cuda(), reason="CUDA-only: the capability check where torch has CUDA")
def test_capabilities_here_put_the_torch_stages_on_cuda():
    from preprocess.job.plan import capabilities_here

    found = capabilities_here()
    devices = resolve_devices(requested="cuda", overrides={}, caps=found)
    assert devices.devices["densepose"] == devices.devices["vae"] == devices.devices["clip"] == "cuda"
    assert devices.devices["face"] == ("cuda" if found.onnx_cuda else "cpu")


@pytest.mark.skipif(_torch_cuda(), reason="needs a machine without CUDA: --device cuda refused there")
def test_device_cuda_is_refused_on_this_machine_without_cuda():
    from preprocess.job.plan import capabilities_here

    with pytest.raises(JobError, match="has no CUDA device"):
        resolve_devices(requested="cuda", overrides={}, caps=capabilities_here())
