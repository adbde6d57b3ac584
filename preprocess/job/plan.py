"""Where each stage runs and how many of it: the device per model stage (from what the workers' runtimes can
do) and the resource plan on the cluster joined (GPU shares in proportion to cost, autoscaling pools).

Devices. A torch stage (DensePose, VAE, CLIP) computes on CUDA where torch has it on the worker; the face
stage where onnxruntime has the CUDA execution provider (the ``gpu`` extra: onnxruntime-gpu), else on the
CPU, said once in the log. ``--stage-device STAGE=DEVICE`` overrides one stage. ``--device cuda`` is
refused before any work when torch has no CUDA on the workers (the three torch stages cannot honour it).

Placement is separate from the device: where Ray declares GPUs (``ray start --num-gpus N``), the stages
that would use CUDA are placed as GPU actors (one per GPU at least, held by a placement group so every GPU
hosts one of each), and compute on whatever the capability check found (the CPU where there is no CUDA).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from preprocess.job.config import JobError

logger = logging.getLogger(__name__)

MODEL_STAGES = ("densepose", "face", "vae", "clip")
TORCH_STAGES = ("densepose", "vae", "clip")
STAGES = ("decode", "densepose", "face", "texture", "resize", "vae", "clip", "write")
CUDA_PROVIDER = "CUDAExecutionProvider"

# Seconds per image of each stage, the weights of the plan (only their ratios matter). What they are:
# - GPU (CUDA, batch 1): densepose 0.083 is the DensePose model zoo's published figure for R_101_FPN_DL_s1x
#   (V100); face, vae and clip are ESTIMATES (no GPU was lent to measure them: see docs/CLUSTER.md,
#   "GPU nodes"). `python -m preprocess.densepose.bench --device cuda` and the face/VAE benches measure them.
# - CPU: texture 0.2 s per image per core is measured on this project's 2-core machine (docs/CLUSTER.md,
#   "GPUs"); decode, resize and write are estimates, small next to it.
GPU_SECONDS = {"densepose": 0.083, "face": 0.012, "vae": 0.030, "clip": 0.008}
CPU_SECONDS = {"decode": 0.03, "texture": 0.2, "resize": 0.02, "write": 0.02}
FACE_GPU_ACTOR_CPUS = 2  # a face actor on a GPU still runs the res10 SSD and the crops on the CPU
GPU_SHARE_STEP = 0.01  # GPU shares are rounded down to this so that one of each stage fits on one GPU


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a worker's runtimes can do (asked of one worker on a GPU node where the cluster has GPUs)."""

    where: str
    torch_version: str
    torch_cuda_version: str | None  # the CUDA torch was built with (None: a CPU build)
    cuda_devices: int  # torch.cuda.device_count() where torch.cuda.is_available(), else 0
    onnxruntime_version: str
    onnx_providers: tuple[str, ...]

    @property
    def torch_cuda(self) -> bool:
        return self.cuda_devices > 0

    @property
    def onnx_cuda(self) -> bool:
        return CUDA_PROVIDER in self.onnx_providers


def capabilities_here(where: str = "this process") -> Capabilities:
    import onnxruntime
    import torch

    return Capabilities(
        where=where,
        torch_version=torch.__version__,
        torch_cuda_version=torch.version.cuda,
        cuda_devices=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        onnxruntime_version=onnxruntime.__version__,
        onnx_providers=tuple(onnxruntime.get_available_providers()),
    )


def _capabilities_on_worker() -> Capabilities:
    import socket

    return capabilities_here(where=f"a Ray worker on {socket.gethostname()}")


def cluster_capabilities(*, want_gpu: bool = False) -> Capabilities:
    """Ask one worker of the joined cluster: on a GPU node (a GPU share) where the cluster declares GPUs, or
    where CUDA was asked for (``want_gpu``: on an autoscaling cluster without GPU nodes yet, the question
    waits for the autoscaler to start one)."""
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    resources = {"num_gpus": GPU_SHARE_STEP, "num_cpus": 0} if gpus or want_gpu else {"num_cpus": 0}
    return ray.get(ray.remote(max_retries=1, **resources)(_capabilities_on_worker).remote())


@dataclass(frozen=True, kw_only=True)
class StageDevices:
    """The device each model stage computes on, and why (for the log, the manifest and --dry-run)."""

    devices: dict[str, str]
    reasons: dict[str, str]
    capabilities: dict[str, Any] | None = None

    def any_cuda(self) -> bool:
        return any(d == "cuda" for d in self.devices.values())


def parse_stage_devices(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--stage-device face=cpu`` (repeatable) -> {"face": "cpu"}."""
    overrides: dict[str, str] = {}
    for item in items:
        stage, _, device = item.partition("=")
        if stage not in MODEL_STAGES or device not in ("cpu", "cuda"):
            raise JobError(f"--stage-device {item!r}: use STAGE=DEVICE with STAGE one of {list(MODEL_STAGES)} "
                           "and DEVICE cpu or cuda (e.g. --stage-device face=cpu)")
        overrides[stage] = device
    return overrides


def resolve_devices(*, requested: str, overrides: dict[str, str], caps: Capabilities | None) -> StageDevices:
    """The device per model stage. ``caps`` None: nothing was asked (everything on the CPU, by request)."""
    devices: dict[str, str] = {}
    reasons: dict[str, str] = {}
    missing_torch = missing_onnx = ""
    if caps is not None:
        missing_torch = (f"torch {caps.torch_version} on {caps.where} has no CUDA device"
                         + ("" if caps.torch_cuda_version else " (a CPU build of torch)"))
        missing_onnx = (f"onnxruntime {caps.onnxruntime_version} on {caps.where} has no {CUDA_PROVIDER} "
                        f"(providers: {list(caps.onnx_providers)}; install the gpu extra: onnxruntime-gpu)")
    if requested == "cuda" and caps is not None and not caps.torch_cuda:
        raise JobError(f"--device cuda: {missing_torch}, so DensePose, VAE and CLIP cannot run on CUDA. Use "
                       "--device auto (CUDA where the runtimes have it, else the CPU) or --device cpu")
    for stage in MODEL_STAGES:
        able = caps is not None and (caps.onnx_cuda if stage == "face" else caps.torch_cuda)
        missing = missing_onnx if stage == "face" else missing_torch
        wanted = overrides.get(stage)
        if wanted == "cuda":
            if not able:
                raise JobError(f"--stage-device {stage}=cuda: {missing or 'no CUDA was asked for'}")
            devices[stage], reasons[stage] = "cuda", "--stage-device"
        elif wanted == "cpu":
            devices[stage], reasons[stage] = "cpu", "--stage-device"
        elif requested == "cpu":
            devices[stage], reasons[stage] = "cpu", "--device cpu"
        elif able:
            devices[stage] = "cuda"
            reasons[stage] = ("onnxruntime has the CUDA provider" if stage == "face" else "torch has CUDA")
        else:
            devices[stage], reasons[stage] = "cpu", missing
    return StageDevices(devices=devices, reasons=reasons, capabilities=None if caps is None else asdict(caps))


@dataclass(kw_only=True)
class StagePlan:
    """One stage on Ray: an actor pool (``actors`` = [min, max], max None: grows while nodes join) or tasks."""

    name: str
    device: str
    kind: str  # "actors" or "tasks"
    actors: list[int | None]
    cpus: float
    gpus: float
    batch_size: int
    why: str
    gpu_placed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "kind": self.kind, "actors": self.actors,
                "cpus": self.cpus, "gpus": self.gpus, "batch_size": self.batch_size, "why": self.why}


@dataclass(kw_only=True)
class Plan:
    layout: str
    cluster: dict[str, Any]
    stages: list[StagePlan]
    gpu_slots: int = 0  # GPUs held by the placement group (one bundle per GPU), 0: none
    slot_cpus: float = 0.0  # CPUs of each bundle (the GPU-placed actors' CPUs on that GPU)
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)

    def as_json(self, devices: StageDevices | None = None) -> dict[str, Any]:
        data = {"cluster": self.cluster, "layout": self.layout, "stages": [s.as_json() for s in self.stages],
                "placement_group": {"bundles": self.gpu_slots, "gpus_per_bundle": 1 if self.gpu_slots else 0,
                                    "cpus_per_bundle": self.slot_cpus},
                "costs": {"gpu_seconds_per_image": GPU_SECONDS, "cpu_seconds_per_image": CPU_SECONDS,
                          "source": "densepose GPU: model zoo (published); texture CPU: measured here; the "
                                    "others: estimates (docs/CLUSTER.md, 'GPU nodes')"},
                "notes": self.notes}
        if devices is not None:
            data["devices"] = {"stages": devices.devices, "reasons": devices.reasons,
                               "capabilities": devices.capabilities}
        return data


def gpu_placed_stages(devices: StageDevices, gpus: float) -> list[str]:
    """The model stages Ray places on GPUs: none without GPUs; else the torch stages (on CUDA, or on the CPU
    of a GPU actor where Ray declares GPUs without CUDA) and the face stage only where it runs on CUDA. A
    stage pinned to the CPU by --stage-device or --device cpu is never GPU-placed."""
    if gpus < 1:
        return []
    placed = []
    for stage in MODEL_STAGES:
        if devices.reasons[stage] in ("--stage-device", "--device cpu") and devices.devices[stage] == "cpu":
            continue
        if stage == "face" and devices.devices[stage] != "cuda":
            continue
        placed.append(stage)
    return placed


def make_plan(*, layout: str, devices: StageDevices, resources: dict[str, float], nodes: int, batch_size: int,
              workers: int | None) -> Plan:
    """The resource plan for the cluster's current resources (pools grow past it as nodes join)."""
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
    cluster = {"cpus": cpus, "gpus": gpus, "nodes": nodes}
    placed = gpu_placed_stages(devices, gpus)
    if layout == "auto":
        layout = "staged" if placed else "fused"
    stage_device = {name: devices.devices.get(name, "cpu") for name in STAGES}
    if layout == "fused":
        return _fused_plan(cluster=cluster, placed=placed, stage_device=stage_device, batch_size=batch_size,
                           workers=workers)
    gpu_count = int(gpus) if placed else 0
    stages: list[StagePlan] = []
    notes: list[str] = []
    # GPU shares: per GPU, one actor of each GPU-placed stage, each with a share in proportion to its cost,
    # so that they all keep pace (share / cost is the same images per second for each).
    total = sum(GPU_SECONDS[s] for s in placed)
    shares = {s: _floor(GPU_SECONDS[s] / total) for s in placed}
    per_gpu_rate = 1.0 / total if total else 0.0  # images per second one GPU gets through
    # CPUs: a GPU actor wants 1 (face 2); where that is more than half of each GPU's CPUs, they get shares of
    # that half (the rest stays for the CPU stages). Other pools and tasks: 1 CPU, or a ninth of the CPUs on
    # a small machine (every operator must be able to run at once).
    desired = {s: float(FACE_GPU_ACTOR_CPUS if s == "face" else 1) for s in placed}
    scale = min(1.0, cpus / gpu_count / 2 / sum(desired.values())) if gpu_count else 1.0
    share = min(1.0, _floor(cpus / (len(STAGES) + 1)))
    slot_cpus = 0.0
    for name in STAGES:
        if name in placed:
            actor_cpus = _floor(desired[name] * scale)
            slot_cpus += actor_cpus
            low = workers or gpu_count
            stages.append(StagePlan(
                name=name, device=stage_device[name], kind="actors", actors=[low, None], cpus=actor_cpus,
                gpus=round(shares[name], 4), batch_size=batch_size, gpu_placed=True,
                why=(f"{GPU_SECONDS[name]} s/img of {total:.3f} s/img on a GPU: {shares[name]:.2f} of each GPU, one "
                     f"actor per GPU at least ({gpu_count} GPUs), more as GPU nodes join"
                     + ("" if stage_device[name] == "cuda" else f"; computes on the CPU: {devices.reasons[name]}")
                     + ("; 2 CPUs: the SSD and the crops run on the CPU" if name == "face" else "")),
            ))
        elif name in MODEL_STAGES:
            why = (f"on the CPU ({devices.reasons[name]})" if stage_device[name] == "cpu"
                   else "on CUDA, no GPUs declared to Ray")
            stages.append(StagePlan(name=name, device=stage_device[name], kind="actors",
                                    actors=[workers or 1, None], cpus=share, gpus=0.0, batch_size=batch_size,
                                    why=f"{why}: an autoscaling CPU actor pool, one thread per actor"))
        else:
            need = CPU_SECONDS[name] * per_gpu_rate * gpu_count if gpu_count else None
            why = ("CPU tasks, as many as free CPUs allow"
                   + (f"; ~{need:.1f} CPUs keep the GPU stages fed ({CPU_SECONDS[name]} s/img at "
                      f"{per_gpu_rate * gpu_count:.0f} img/s)" if need else ""))
            stages.append(StagePlan(name=name, device="cpu", kind="tasks", actors=[1, None], cpus=share, gpus=0.0,
                                    batch_size=batch_size, why=why))
    if gpu_count:
        needed = slot_cpus * gpu_count + sum(CPU_SECONDS[n] for n in CPU_SECONDS) * per_gpu_rate * gpu_count
        if needed > cpus:
            notes.append(f"the GPU stages could use ~{needed:.0f} CPUs and the cluster has {cpus:g}: the CPU "
                         "stages (texture above all) will set the pace; give GPU nodes more CPUs")
    return Plan(layout="staged", cluster=cluster, stages=stages, gpu_slots=gpu_count, slot_cpus=round(slot_cpus, 4),
                notes=notes)


def _floor(value: float) -> float:
    """Down to GPU_SHARE_STEP (at least one step): sums of shares never exceed what they were cut from."""
    return round(max(GPU_SHARE_STEP, math.floor(round(value / GPU_SHARE_STEP, 6)) * GPU_SHARE_STEP), 4)


def _fused_plan(*, cluster, placed, stage_device, batch_size, workers) -> Plan:
    """Every stage in each actor: one actor per CPU without GPUs, one per GPU (all its models on it) with."""
    gpu_count = int(cluster["gpus"]) if placed else 0
    if gpu_count:
        per_actor_cpus = max(1.0, math.floor(cluster["cpus"] / gpu_count))
        low, gpus, cpus = workers or gpu_count, 1.0, per_actor_cpus
        why = "fused: every model in one actor per GPU (one actor per CPU would load every model per CPU)"
    else:
        low, gpus, cpus = workers or max(1, int(cluster["cpus"])), 0.0, 1.0
        why = "fused: every stage in one actor per CPU, one thread each"
    stages = [StagePlan(name=name, device=stage_device[name], kind="actors", actors=[low, low], cpus=cpus, gpus=gpus,
                        batch_size=batch_size, why=why, gpu_placed=bool(gpu_count)) for name in STAGES]
    return Plan(layout="fused", cluster=cluster, stages=stages)


def ray_nodes_alive() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def env_address() -> str | None:
    return os.environ.get("RAY_ADDRESS")
