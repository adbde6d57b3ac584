"""How the per-image stages map onto Ray: which stages, in which layout, with which resources; Ray start-up.

- fused (CPU clusters, the default without GPUs): one actor pool; each actor runs every stage on its
  batch with one thread. On CPUs, pipelining stages across processes buys nothing but copies, and a
  fixed thread count per worker keeps results identical whatever the number of workers.
- staged (GPUs): DensePose, face, VAE and CLIP are actor pools that share each GPU; decode, texture,
  resize and the feature write are CPU tasks, as DESIGN.md lays out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from preprocess.job.chain import FAULT_ENV, StageChain, StageSpec, run_chain_task
from preprocess.job.config import JobConfig
from preprocess.job.decode import DecodeConfig, DecodeStage
from preprocess.job.features import FeatureWriterConfig, FeatureWriterStage
from preprocess.job.resize import ResizeConfig, ResizeStage
from preprocess.job.plan import (Capabilities, Plan, StageDevices, capabilities_here, cluster_capabilities,
                                 make_plan, parse_stage_devices, ray_nodes_alive, resolve_devices)
from preprocess.job.specs import model_fingerprint, part_masks_sha256, probe, stage_specs
from preprocess.models import ModelPaths, resolve_models

GPU_STAGES = ("densepose", "face", "vae", "clip")
logger = logging.getLogger(__name__)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def ray_runtime_env() -> dict[str, Any]:
    """What workers need beyond the installed package: never touch a model hub; the memory allocator
    (it only acts from process start: preprocess/job/allocator.py); the fault-test hook; where the object store
    is (its endpoint and region, never credentials: nodes bring their own)."""
    from preprocess.job.allocator import allocator_env

    env = {**OFFLINE_ENV, **allocator_env()}
    for name in (FAULT_ENV, "MCLD_DATA_CACHE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return {"env_vars": env}


@dataclass(kw_only=True)
class Pipeline:
    specs: list[StageSpec]  # the model and CPU stages, in order, without the feature writer
    layout: str  # "fused" or "staged" once bound; may be "auto" before
    devices: StageDevices  # the device each model stage computes on (preprocess/job/plan.py)
    batch_size: int
    previews: bool
    requested_workers: int | None = None
    workers: int = 0
    gpus: float = 0.0
    cpus: float = 0.0
    writer: StageSpec | None = None
    plan: Plan | None = None

    @property
    def device(self) -> str:
        """"cuda" when any model stage computes on CUDA, else "cpu"."""
        return "cuda" if self.devices.any_cuda() else "cpu"

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.specs] + ["features"]

    def bind(self, *, directory: str, ray_resources: dict[str, float], nodes: int = 1) -> None:
        """Fix the feature folder and the plan (layout, pools, shares) against the cluster actually joined."""
        self.writer = StageSpec(name="features", cls=FeatureWriterStage,
                                config=FeatureWriterConfig(directory=directory, previews=self.previews))
        self.cpus = float(ray_resources.get("CPU", 1))
        self.gpus = float(ray_resources.get("GPU", 0))
        self.plan = make_plan(layout=self.layout, devices=self.devices, resources=ray_resources, nodes=nodes,
                              batch_size=self.batch_size, workers=self.requested_workers)
        self.layout = self.plan.layout
        self.workers = int(self.plan.stage("densepose").actors[0])

    def apply(self, dataset, *, blocks: int):
        """Add the stages to a dataset of ``blocks`` input blocks (no more actors than blocks to start with)."""
        import ray

        plan = self.plan
        chain = self.specs + [self.writer]
        if plan.layout == "fused":
            pool = plan.stage("densepose")
            return dataset.map_batches(
                StageChain,
                fn_constructor_kwargs={"specs": chain, "threads": 1},
                batch_size=self.batch_size,
                compute=ray.data.ActorPoolStrategy(size=max(1, min(pool.actors[0], blocks))),
                num_cpus=pool.cpus,
                num_gpus=pool.gpus,
            )
        # Staged: model stages are autoscaling actor pools (GPU-placed ones one per GPU at least, each GPU
        # holding one of each through a placement group), the CPU stages tasks.
        slots = GpuSlots.reserve(plan) if plan.gpu_slots else None
        for spec in chain:
            stage = plan.stage(PLAN_NAMES.get(spec.name, spec.name))
            if stage.kind == "actors":
                extra: dict[str, Any] = {}
                low = max(1, min(int(stage.actors[0]), blocks))
                if stage.gpu_placed and slots is not None:
                    low = max(1, min(int(stage.actors[0]), slots.count))
                    extra["ray_remote_args_fn"] = slots.assigner()
                dataset = dataset.map_batches(
                    StageChain,
                    fn_constructor_kwargs={"specs": [spec], "threads": 1},
                    batch_size=self.batch_size,
                    compute=ray.data.ActorPoolStrategy(min_size=low, max_size=stage.actors[1]),
                    num_cpus=stage.cpus,
                    num_gpus=stage.gpus,
                    **extra,
                )
            else:
                dataset = dataset.map_batches(
                    run_chain_task,
                    fn_kwargs={"specs": [spec], "threads": 1},
                    batch_size=self.batch_size,
                    num_cpus=stage.cpus,
                )
        return dataset

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPUs" if self.gpus else ""
        devices = ", ".join(f"{k} {v}" for k, v in self.devices.devices.items())
        return (f"{self.layout} layout, {self.workers} workers, devices: {devices}, batch {self.batch_size} "
                f"({self.cpus:g} CPUs{gpus} in the cluster)")


PLAN_NAMES = {"features": "write"}  # the chain's name for the feature write -> the plan's


class GpuSlots:
    """A placement group of one bundle per GPU (its GPU and the CPUs of the GPU-placed actors on it): the
    first actors of each GPU-placed pool go one to a bundle, so every GPU hosts one actor of each stage
    (Ray packs fractional GPU shares onto the fullest GPU that fits: without it, four 0.1-GPU face actors
    would share GPU 0). Actors beyond that (pools growing as nodes join) are scheduled by Ray as usual.
    The group lives as long as the driver's job."""

    def __init__(self, group, count: int) -> None:
        self.group = group
        self.count = count

    @classmethod
    def reserve(cls, plan: Plan) -> GpuSlots:
        from ray.util.placement_group import placement_group

        bundles = [{"GPU": 1.0, **({"CPU": plan.slot_cpus} if plan.slot_cpus else {})}
                   for _ in range(plan.gpu_slots)]
        group = placement_group(bundles, strategy="PACK")
        import ray

        ray.get(group.ready(), timeout=SLOT_TIMEOUT_S)
        return cls(group, plan.gpu_slots)

    def assigner(self):
        return _SlotAssigner(self.group, self.count)


SLOT_TIMEOUT_S = 600


class _SlotAssigner:
    """Ray Data calls this before starting each actor of a pool: bundle 0, 1, ... then Ray's own choice."""

    def __init__(self, group, count: int) -> None:
        self.group = group
        self.count = count
        self.started = 0

    def __call__(self) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        index = self.started
        self.started += 1
        if index >= self.count:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=index)}


def build_pipeline(config: JobConfig) -> tuple[Pipeline, dict[str, Any]]:
    """The stage specs for this job and the description that fingerprints the features."""
    paths: ModelPaths = resolve_models(config.models)
    devices = decide_devices(config)
    torch_cuda = any(devices.devices[s] == "cuda" for s in ("densepose", "vae", "clip"))
    dtype = config.gpu_dtype if torch_cuda else "float32"
    decode = StageSpec(name="decode", cls=DecodeStage,
                       config=DecodeConfig(images_root=config.images, max_pixels=config.max_pixels))
    resize = StageSpec(name="resize", cls=ResizeStage,
                       config=ResizeConfig(height=config.height, width=config.width, pose_resize=config.pose_resize))
    model_specs, models = stage_specs(paths=paths, config=config, devices=devices.devices, dtype=dtype)
    by_name = {s.name: s for s in model_specs}
    specs = [decode, by_name["densepose"], by_name["face"], by_name["texture"], resize, by_name["vae"], by_name["clip"]]
    settings = {
        "resolution": [config.height, config.width],
        "pose_resize": config.pose_resize,
        "person_policy": config.person_policy,
        "max_pixels": config.max_pixels,
        "previews": config.previews,
        "device": "cuda" if devices.any_cuda() else "cpu",
        "stage_devices": dict(devices.devices),  # what each model stage computes on (features differ by it)
        "dtype": dtype,
        "face_mode": paths.face_mode,  # "paper" | "reference" (DESIGN.md, "Feature modes")
        "texture_part_masks_sha256": part_masks_sha256(paths),  # None: masks derived from DensePose's chart
    }
    description = {
        "fingerprint": {"models": [model_fingerprint(m) for m in models], "settings": settings},
        "models": models,
        "settings": {**settings, "stage_device_reasons": dict(devices.reasons)},
        "tiny": paths.tiny,
    }
    pipeline = Pipeline(specs=specs, layout=config.layout, devices=devices, batch_size=config.batch_size,
                        previews=config.previews, requested_workers=config.workers)
    return pipeline, description


def decide_devices(config: JobConfig) -> StageDevices:
    """The device per model stage, from what the workers' runtimes can do (preprocess/job/plan.py). With
    --device cpu and no --stage-device cuda nothing is asked. Otherwise one worker is asked: of the cluster
    already joined, of the one --address / RAY_ADDRESS names (joined for the question only), or this
    machine for a local run. A stage that falls back to the CPU is said once in the log."""
    overrides = parse_stage_devices(config.stage_device)
    if config.device == "cpu" and "cuda" not in overrides.values():
        return resolve_devices(requested="cpu", overrides=overrides, caps=None)
    caps = _capabilities(config, want_gpu=config.device == "cuda" or "cuda" in overrides.values())
    devices = resolve_devices(requested=config.device, overrides=overrides, caps=caps)
    for stage, device in devices.devices.items():
        if device == "cpu" and devices.reasons[stage] != "--stage-device":
            log = logger.warning if devices.any_cuda() else logger.info
            log("%s stage on the CPU: %s", stage, devices.reasons[stage])
    return devices


def _capabilities(config: JobConfig, *, want_gpu: bool) -> Capabilities:
    import ray

    if ray.is_initialized():
        return cluster_capabilities(want_gpu=want_gpu)
    if config.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=config.address, runtime_env=ray_runtime_env(), log_to_driver=False)
        try:
            return cluster_capabilities(want_gpu=want_gpu)
        finally:
            ray.shutdown()
    return capabilities_here(where="this machine")


def plan_job(config: JobConfig) -> dict[str, Any]:
    """--dry-run: the devices and the resource plan on the cluster joined (or the local Ray), as JSON; no
    model is loaded and no image read."""
    import ray

    owns_ray = not ray.is_initialized()
    if owns_ray:
        init_ray(config)
    try:
        devices = decide_devices(config)
        plan = make_plan(layout=config.layout, devices=devices, resources=ray.cluster_resources(),
                         nodes=ray_nodes_alive(), batch_size=config.batch_size, workers=config.workers)
    finally:
        if owns_ray:
            ray.shutdown()
    return plan.as_json(devices)


def probe_models(config: JobConfig, pipeline: Pipeline) -> dict[str, Any]:
    """Load every model once in a Ray worker before the run: bad model files fail here, with their
    message, not in the middle of the job; and the manifest's model facts come from the models."""
    import ray

    resources = {"num_gpus": 1} if pipeline.devices.any_cuda() else {"num_cpus": 1}
    remote = ray.remote(max_retries=0, **resources)(probe)
    return ray.get(remote.remote(pipeline.specs))


def init_ray(config: JobConfig) -> None:
    """Join the cluster named by --address or RAY_ADDRESS, or start a local Ray."""
    import ray

    ctx_kwargs: dict[str, Any] = {"runtime_env": ray_runtime_env(), "log_to_driver": True}
    if config.address:
        ray.init(address=config.address, **ctx_kwargs)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**ctx_kwargs)  # inside `ray job submit`: join the cluster the job runs on
    else:
        # address="local": a new instance, never a cluster that happens to run on this machine
        ray.init(address="local", num_cpus=config.local_cpus, include_dashboard=False, **ctx_kwargs)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = config.progress
    context.print_on_execution_start = config.progress
