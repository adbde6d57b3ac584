"""How the per-image stages map onto Ray: which stages, in which layout, with which resources; Ray start-up.

- fused (CPU clusters, the default without GPUs): one actor pool; each actor runs every stage on its
  batch with one thread. On CPUs, pipelining stages across processes buys nothing but copies, and a
  fixed thread count per worker keeps results identical whatever the number of workers.
- staged (GPUs): DensePose, face, VAE and CLIP are actor pools that share each GPU; decode, texture,
  resize and the feature write are CPU tasks, as DESIGN.md lays out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from preprocess.job.chain import FAULT_ENV, StageChain, StageSpec, run_chain_task
from preprocess.job.config import JobConfig
from preprocess.job.decode import DecodeConfig, DecodeStage
from preprocess.job.features import FeatureWriterConfig, FeatureWriterStage
from preprocess.job.resize import ResizeConfig, ResizeStage
from preprocess.job.specs import model_fingerprint, part_masks_sha256, probe, stage_specs
from preprocess.models import ModelPaths, resolve_models

GPU_STAGES = ("densepose", "face", "vae", "clip")
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
    device: str
    batch_size: int
    previews: bool
    requested_workers: int | None = None
    workers: int = 0
    gpus: float = 0.0
    cpus: float = 0.0
    writer: StageSpec | None = None

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.specs] + ["features"]

    def bind(self, *, directory: str, ray_resources: dict[str, float]) -> None:
        """Fix the feature folder, the layout and the worker count against the cluster actually joined."""
        self.writer = StageSpec(name="features", cls=FeatureWriterStage,
                                config=FeatureWriterConfig(directory=directory, previews=self.previews))
        self.cpus = float(ray_resources.get("CPU", 1))
        self.gpus = float(ray_resources.get("GPU", 0))
        if self.layout == "auto":
            self.layout = "staged" if self.device == "cuda" else "fused"
        if self.layout == "fused":
            self.workers = self.requested_workers or max(1, int(self.cpus))
        else:
            self.workers = self.requested_workers or max(1, int(self.gpus) if self.device == "cuda" else 1)

    def apply(self, dataset, *, blocks: int):
        """Add the stages to a dataset of ``blocks`` input blocks (no more actors than blocks)."""
        import ray

        size = max(1, min(self.workers, blocks))

        chain = self.specs + [self.writer]
        if self.layout == "fused":
            return dataset.map_batches(
                StageChain,
                fn_constructor_kwargs={"specs": chain, "threads": 1},
                batch_size=self.batch_size,
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=1,
                num_gpus=(self.gpus / size) if self.device == "cuda" else 0,
            )
        # Staged: model stages are actor pools (sharing each GPU), the others are tasks.
        operators = len(chain) + 1
        share = min(1.0, self.cpus / operators)
        for spec in chain:
            if spec.name in GPU_STAGES:
                extra = {"num_gpus": 1.0 / len(GPU_STAGES)} if self.device == "cuda" else {}
                dataset = dataset.map_batches(
                    StageChain,
                    fn_constructor_kwargs={"specs": [spec], "threads": 1},
                    batch_size=self.batch_size,
                    compute=ray.data.ActorPoolStrategy(size=size),
                    num_cpus=share,
                    **extra,
                )
            else:
                dataset = dataset.map_batches(
                    run_chain_task,
                    fn_kwargs={"specs": [spec], "threads": 1},
                    batch_size=self.batch_size,
                    num_cpus=share,
                )
        return dataset

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPUs" if self.gpus else ""
        return (f"{self.layout} layout, {self.workers} workers, device {self.device}, batch {self.batch_size} "
                f"({self.cpus:g} CPUs{gpus} in the cluster)")


def build_pipeline(config: JobConfig) -> tuple[Pipeline, dict[str, Any]]:
    """The stage specs for this job and the description that fingerprints the features."""
    paths: ModelPaths = resolve_models(config.models)
    device = config.device
    if device == "auto":
        device = "cuda" if _cuda_in_cluster(config) else "cpu"
    dtype = config.gpu_dtype if device == "cuda" else "float32"
    decode = StageSpec(name="decode", cls=DecodeStage,
                       config=DecodeConfig(images_root=config.images, max_pixels=config.max_pixels))
    resize = StageSpec(name="resize", cls=ResizeStage,
                       config=ResizeConfig(height=config.height, width=config.width, pose_resize=config.pose_resize))
    model_specs, models = stage_specs(paths=paths, config=config, device=device, dtype=dtype)
    by_name = {s.name: s for s in model_specs}
    specs = [decode, by_name["densepose"], by_name["face"], by_name["texture"], resize, by_name["vae"], by_name["clip"]]
    settings = {
        "resolution": [config.height, config.width],
        "pose_resize": config.pose_resize,
        "person_policy": config.person_policy,
        "max_pixels": config.max_pixels,
        "previews": config.previews,
        "device": device,
        "dtype": dtype,
        "face_mode": paths.face_mode,  # "paper" | "reference" (DESIGN.md, "Feature modes")
        "texture_part_masks_sha256": part_masks_sha256(paths),  # None: masks derived from DensePose's chart
    }
    description = {
        "fingerprint": {"models": [model_fingerprint(m) for m in models], "settings": settings},
        "models": models,
        "settings": settings,
        "tiny": paths.tiny,
    }
    pipeline = Pipeline(specs=specs, layout=config.layout, device=device, batch_size=config.batch_size,
                        previews=config.previews, requested_workers=config.workers)
    return pipeline, description


def _cuda_in_cluster(config: JobConfig) -> bool:
    if config.address or os.environ.get("RAY_ADDRESS"):
        return False  # decided after joining: the caller passes --device cuda for GPU clusters
    import torch

    return torch.cuda.is_available()


def probe_models(config: JobConfig, pipeline: Pipeline) -> dict[str, Any]:
    """Load every model once in a Ray worker before the run: bad model files fail here, with their
    message, not in the middle of the job; and the manifest's model facts come from the models."""
    import ray

    resources = {"num_gpus": 1} if pipeline.device == "cuda" else {"num_cpus": 1}
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
        ray.init(address="local", num_cpus=config.local_cpus, include_dashboard=False, **ctx_kwargs)  # never a cluster found by chance
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = config.progress
    context.print_on_execution_start = config.progress
