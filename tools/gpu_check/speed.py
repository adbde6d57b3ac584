"""Throughput parts: the project's own benchmarks' code, at the official architectures with random weights
(``--sizes real``, the default on CUDA) or at toy widths (``tiny``, the CPU default: the code path only).

A batch size that runs out of memory is a figure (``"out_of_memory": true``), not a failure: that is the
answer to "does it fit". A step that the time budget cannot afford is listed under ``not_run``.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tools.gpu_check.common import (Context, PartRecord, Skip, is_out_of_memory, missing_modules, peak_memory_gib,
                                    photo, release_memory, require_modules, reset_peak)


@dataclass(frozen=True, kw_only=True)
class Sizes:
    densepose_models: tuple[str, ...]
    densepose_batches: tuple[int, ...]
    densepose_size: tuple[int, int]
    vae_batches: tuple[int, ...]
    vae_size: int
    clip_batches: tuple[int, ...]
    train_batch: int
    train_size: int
    train_steps: int
    sample_batches: tuple[int, ...]
    sample_size: tuple[int, int]
    sample_steps: int
    eval_pairs: int
    repeats: int


def sizes_for(ctx: Context) -> Sizes:
    if ctx.sizes == "real":
        quick = ctx.quick
        return Sizes(
            densepose_models=("r50", "r101dl"), densepose_batches=(1, 8) if quick else (1, 4, 8, 16),
            densepose_size=(1101, 750), vae_batches=(1, 8) if quick else (1, 4, 8, 16), vae_size=512,
            clip_batches=(1, 64) if quick else (1, 8, 16, 32, 64), train_batch=12, train_size=512,
            train_steps=2 if quick else 5, sample_batches=(1, 8), sample_size=(512, 352), sample_steps=20,
            eval_pairs=16 if quick else 64, repeats=1 if quick else 2)
    return Sizes(densepose_models=("tiny",), densepose_batches=(1, 2), densepose_size=(256, 176), vae_batches=(1, 2),
                 vae_size=64, clip_batches=(1, 2), train_batch=2, train_size=64, train_steps=1, sample_batches=(1, 2),
                 sample_size=(64, 64), sample_steps=2, eval_pairs=2, repeats=1)


def device_of(ctx: Context) -> str:
    """Where the throughput parts run: CUDA when asked for and present; the CPU when asked for; else skipped."""
    if ctx.device == "cpu":
        return "cpu"
    ctx.require_cuda("throughput")
    return ctx.device


def _attempt(part: PartRecord, key: str, run, *, device: str):
    """One measurement; an out-of-memory error is recorded as the figure (and the memory released)."""
    try:
        return run()
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        message = str(error).splitlines()[0][:200]
    release_memory()  # outside the except block: its traceback no longer holds the failed run's tensors
    part.figures.setdefault("out_of_memory", []).append(key)
    return {"out_of_memory": True, "error": message}


def _skipped_step(part: PartRecord, key: str, why: Skip) -> None:
    part.figures.setdefault("not_run", {})[key] = str(why)


# --------------------------------------------------------------------------------------------- DensePose


def densepose_speed(ctx: Context, part: PartRecord) -> None:
    from preprocess.densepose.bench import time_predictor, write_official_size
    from preprocess.densepose.predictor import DensePosePredictor
    from preprocess.densepose.tiny import write_tiny_densepose

    device, sizes = device_of(ctx), sizes_for(ctx)
    image = photo(ctx, *sizes.densepose_size)
    part.figures["image"] = "x".join(map(str, sizes.densepose_size))
    part.figures["mode"] = "predict(charts='person'), the pipeline stage's path; seeded random weights"
    rows = part.figures.setdefault("results", [])
    dtypes = ("float32", "bfloat16") if device.startswith("cuda") else ("float32",)
    for model in sizes.densepose_models:
        folder = ctx.work / f"densepose-{model}"
        if model == "tiny":
            config, weights = write_tiny_densepose(folder)
        else:
            config, weights = write_official_size(folder, model)
        for dtype in dtypes:
            try:
                ctx.budget.require(15, f"DensePose {model} {dtype}")
            except Skip as why:
                _skipped_step(part, f"{model} {dtype}", why)
                continue
            predictor = DensePosePredictor(config_path=config, weights_path=weights, device=device, dtype=dtype,
                                           max_batch=max(sizes.densepose_batches))
            rows += _batch_rates(ctx, part, model, dtype, sizes.densepose_batches, lambda batch: time_predictor(
                predictor, image, batch=batch, repeats=sizes.repeats, device=device), timed=True, model=model)
            del predictor
            release_memory()


# ------------------------------------------------------------------------------------------- VAE and CLIP


def model_folders(ctx: Context) -> tuple[Path, Path]:
    """The VAE and CLIP folders the stages load: official architectures with random weights, or tiny ones."""
    from preprocess.clip.tiny import write_tiny_clip
    from preprocess.vae.bench import write_real_size_clip, write_real_size_vae
    from preprocess.vae.tiny import write_tiny_vae

    vae, clip = ctx.work / f"vae-{ctx.sizes}", ctx.work / f"clip-{ctx.sizes}"
    if not (vae / "config.json").is_file():
        (write_real_size_vae if ctx.sizes == "real" else write_tiny_vae)(vae)
    if not (clip / "config.json").is_file():
        (write_real_size_clip if ctx.sizes == "real" else write_tiny_clip)(clip)
    return vae, clip


def _rate(run, items: int, *, repeats: int, device: str) -> dict:
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()  # warm-up
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    seconds = (time.perf_counter() - started) / repeats
    return {"batch": items, "seconds_per_batch": float(f"{seconds:.5g}"), "images_per_s": round(items / seconds, 3)}


def _batch_rates(ctx, part: PartRecord, name: str, dtype: str, batches, run_batch, *, timed: bool = False,
                 **fields) -> list[dict]:
    """One row per batch size: the figures of ``run_batch(batch)`` and peak memory, plus ``fields`` (a step the
    budget cannot afford is skipped and recorded). ``timed``: run_batch returns its own figures; else it is
    timed here (items/s)."""
    device, repeats = device_of(ctx), sizes_for(ctx).repeats
    rows = []
    for batch in batches:
        key = f"{name} {dtype} batch {batch}"
        try:
            ctx.budget.require(5, key)
        except Skip as why:
            _skipped_step(part, key, why)
            continue
        reset_peak(device)
        measure = (lambda: run_batch(batch)) if timed else (lambda: _rate(
            lambda: run_batch(batch), batch, repeats=repeats, device=device))
        row = {**fields, "dtype": dtype, **_attempt(part, key, measure, device=device)}
        rows.append({**row, "peak_memory_gib": peak_memory_gib(device)})
    return rows


def vae_clip_speed(ctx: Context, part: PartRecord) -> None:
    import numpy as np

    from preprocess.clip.stage import ClipConfig, ClipStage
    from preprocess.vae.stage import VaeConfig, VaeStage

    device, sizes = device_of(ctx), sizes_for(ctx)
    vae_path, clip_path = model_folders(ctx)
    dtypes = ("float32", "bfloat16") if device.startswith("cuda") else ("float32",)
    side = sizes.vae_size
    images = np.stack([photo(ctx, side, side)] * max(max(sizes.vae_batches), max(sizes.clip_batches)))
    part.figures.update(models=ctx.sizes, vae_resolution=f"{side}x{side}", vae=[], clip=[],
                        note="through the stages' encode/embed (CLIP: its processor on the CPU, then the model)")
    for dtype in dtypes:
        vae = VaeStage(config=VaeConfig(path=vae_path, height=side, width=side, device=device, dtype=dtype,
                                        max_batch=max(sizes.vae_batches)))
        part.figures["vae"] += _batch_rates(ctx, part, "vae", dtype, sizes.vae_batches,
                                            lambda batch: vae.encode(images[:batch]))
        del vae
        release_memory()
        clip = ClipStage(config=ClipConfig(path=clip_path, device=device, dtype=dtype,
                                           max_batch=max(sizes.clip_batches)))
        part.figures["clip"] += _batch_rates(ctx, part, "clip", dtype, sizes.clip_batches,
                                             lambda batch: clip.embed(list(images[:batch])))
        del clip
        release_memory()


# -------------------------------------------------------------------------------------------------- face


def face_speed(ctx: Context, part: PartRecord) -> None:
    """SCRFD + ArcFace through onnxruntime, only where it has a CUDA provider (the CPU build has none)."""
    if ctx.device == "cpu":
        raise Skip("the face stage runs on onnxruntime; this check times it only through a CUDA provider "
                   "(--device cuda); its CPU figures: python -m preprocess.face.bench")
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise Skip(f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (providers: "
                   f"{', '.join(providers)}): the CPU build; install onnxruntime-gpu to time the face stage")
    missing = missing_modules("insightface", "onnx", "skimage")
    if missing:
        raise Skip(f"the face stage's benchmark needs {', '.join(missing)} (not installed here: insightface is "
                   f"not pure Python)")
    from preprocess.face.bench import main as face_bench

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        face_bench(["--device", ctx.device, "--recognizer", "iresnet100", "--repeats", str(sizes_for(ctx).repeats)])
    part.figures.update(json.loads(out.getvalue()))


# ---------------------------------------------------------------------------------------------- trainer


def trainer_speed(ctx: Context, part: PartRecord) -> None:
    """The paper's setting: SD1.5-size denoising UNet + ReferenceNet, batch 12 per GPU at 512x512, bfloat16
    autocast, AdamW; with and without gradient checkpointing: step time and peak memory."""
    import torch

    from train.bench import ARCHS, measure_steps

    device, sizes = device_of(ctx), sizes_for(ctx)
    arch = ARCHS["real" if ctx.sizes == "real" else "tiny"]
    part.figures.update(arch=arch.name, batch_size=sizes.train_batch, resolution=f"{sizes.train_size}x{sizes.train_size}",
                        autocast="bfloat16", optimizer="AdamW", runs=[])
    if device.startswith("cuda"):
        part.figures["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 2)
    for checkpointing in (True, False):
        key = f"gradient_checkpointing={checkpointing}"
        try:
            ctx.budget.require(40 if ctx.sizes == "real" else 5, f"trainer {key}")
        except Skip as why:
            _skipped_step(part, key, why)
            continue
        reset_peak(device)
        run = _attempt(part, key, lambda: measure_steps(
            arch=arch, device=torch.device(device), batch_size=sizes.train_batch, height=sizes.train_size,
            width=sizes.train_size, steps=sizes.train_steps, online=False, mixed_precision=True,
            dtype=torch.bfloat16, gradient_checkpointing=checkpointing), device=device)
        run.setdefault("gradient_checkpointing", checkpointing)
        if device.startswith("cuda"):
            run["peak_memory_gib"] = run.get("peak_memory_gib", peak_memory_gib(device))
        part.figures["runs"].append(run)
        release_memory()


# ---------------------------------------------------------------------------------------------- sampler


def sampler_speed(ctx: Context, part: PartRecord) -> None:
    import torch

    from train.bench import ARCHS, measure_sampling

    device, sizes = device_of(ctx), sizes_for(ctx)
    arch = ARCHS["real" if ctx.sizes == "real" else "tiny"]
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    part.figures["runs"] = []
    for batch in sizes.sample_batches:
        key = f"batch {batch}"
        try:
            ctx.budget.require(30 if ctx.sizes == "real" else 5, f"sampler {key}")
        except Skip as why:
            _skipped_step(part, key, why)
            continue
        height, width = sizes.sample_size
        part.figures["runs"].append(_attempt(part, key, lambda: measure_sampling(
            arch=arch, device=torch.device(device), batch_size=batch, height=height, width=width,
            steps=sizes.sample_steps, dtype=dtype, repeats=sizes.repeats), device=device))
        release_memory()


# -------------------------------------------------------------------------------------------- evaluator


def evaluator_speed(ctx: Context, part: PartRecord) -> None:
    require_modules("skimage", "scipy", "lpips", what="the evaluator (SSIM/PSNR: scikit-image; FID: scipy)")
    from tools.bench_evaluate import main as bench_evaluate

    device, sizes = device_of(ctx), sizes_for(ctx)
    argv = ["--pairs", str(sizes.eval_pairs), "--batch-size", str(min(sizes.eval_pairs, 16)), "--device", device]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_evaluate(argv)
    report = json.loads(out.getvalue())
    part.figures.update(pairs=sizes.eval_pairs, images_per_s=report["images_per_s"],
                        note="random-weight Inception v3 / AlexNet (tools.bench_evaluate); no face metric")
