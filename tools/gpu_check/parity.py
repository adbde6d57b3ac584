"""Parity parts: each reference fixture run on the CPU and on CUDA (float32, and bfloat16/float16 where the
component offers it), side by side, against the tolerances of the CPU tests that guard the same code:

- DensePose: tests/preprocess/densepose/test_parity.py (every case of fixtures/densepose);
- sampler: tests/train/test_sample_parity.py (every mcld_infer case, both schedulers);
- evaluator: tests/tools/test_evaluate_parity.py (every mcld_eval set);
- VAE and CLIP stages: CUDA against the CPU on the same photos (no reference fixture exists for them).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from tools.gpu_check.common import Context, PartRecord, Skip, photo, release_memory, require_modules

log = logging.getLogger(__name__)

# tests/preprocess/densepose/test_parity.py
BOX_ABS = 1e-3
LABEL_DISAGREE = 0.005
UV_ABS = 1e-2
IUV_DISAGREE = 0.005
# tests/train/test_sample_parity.py
LATENT_ABS = 5e-5
IMAGE_ABS = 2e-5
UINT8_ABS = 1
SCALING = 0.18215
# tests/tools/test_evaluate_parity.py
EVAL_ABS = {"LPIPS": 1e-6, "SSIM": 2e-6, "SSIM_256": 2e-6, "PSNR": 1e-9}
EVAL_PER_IMAGE_ABS = {"lpips": 1e-6, "ssim": 2e-6, "ssim_256": 2e-6, "psnr": 1e-9}
FACE_ABS = {"Face cosine similarity": 1e-5, "Face euclidean distance": 1e-4}
FID_REL = 1e-4
EVAL_FOLDERS = {"256": "256x176", "512": "512x352"}
# VAE / CLIP stages store float16: the CPU tests compare with rtol 2**-10, atol 1e-5; their CUDA bfloat16 tests
# allow 0.1 (VAE latent) and 0.05 (CLIP embedding) against the CPU.
STORE_RTOL, STORE_ABS = 2.0**-10, 1e-5
BF16_ABS = {"vae": 0.1, "clip": 0.05}


def strict_float32() -> None:
    """Parity runs without TF32 (cuDNN convolutions default to it): float32 means float32."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# --------------------------------------------------------------------------------------------- DensePose


def densepose_cases(root: Path) -> list[tuple[Path, dict, dict]]:
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "cases.json").is_file()):
        spec = json.loads((folder / "cases.json").read_text())
        out.extend((folder, spec, case) for case in spec["cases"])
    return out


def densepose_parity(ctx: Context, part: PartRecord) -> None:
    from preprocess.densepose.__main__ import read_rgb
    from preprocess.densepose.predictor import DensePosePredictor

    strict_float32()
    cases = ctx.cases(densepose_cases(ctx.fixture("densepose")))
    if not cases:
        raise Skip(f"no cases.json under {ctx.fixtures / 'densepose'}")
    part.figures["cases"] = len(cases)
    for device, dtype in ctx.runs():
        for folder in sorted({c[0] for c in cases}):
            ctx.budget.require(10, f"DensePose parity {folder.name} on {device} {dtype}")
            spec = json.loads((folder / "cases.json").read_text())
            predictor = DensePosePredictor(config_path=folder / spec["config"], weights_path=folder / spec["weights"],
                                           device=device, dtype=dtype)
            for _, _, item in (c for c in cases if c[0] == folder):
                result = predictor.predict([read_rgb(folder / item["image"])])[0]
                compare_densepose(part, f"{folder.name}/{item['image']}", result, np.load(folder / item["expected"]),
                                  device=device, dtype=dtype)
            del predictor
            release_memory()


def compare_densepose(part: PartRecord, case: str, result, want, *, device: str, dtype: str) -> None:
    """The figures test_parity.py asserts: boxes and scores, per-detection labels and U/V, the whole-image IUV."""
    from preprocess.densepose.__main__ import result_arrays

    got = result_arrays(result)
    n = len(want["scores"])
    where = dict(device=device, dtype=dtype)
    part.add(f"{case} detections", abs(result.count - n), 0, **where, expected=n, got=result.count)
    if result.count == n:
        for key in ("boxes_xyxy", "scores"):
            part.compare(f"{case} {key}", got[key], want[key], tolerance=BOX_ABS, **where)
    pairs = min(result.count, n)
    worst_fraction, worst_uv, labels_ok = 0.0, 0.0, True
    for i in range(pairs):
        labels, expected = got[f"labels_{i}"], want[f"labels_{i}"]
        if labels.shape != expected.shape:
            labels_ok, worst_fraction = False, 1.0
            continue
        agree = labels == expected
        wrong = int((~agree).sum())
        worst_fraction = max(worst_fraction, wrong / agree.size)
        labels_ok &= wrong <= max(1, int(LABEL_DISAGREE * agree.size))  # one flipped pixel is always allowed
        uv = np.abs(got[f"uv_{i}"][:, agree] - want[f"uv_{i}"][:, agree]).max(initial=0)
        worst_uv = max(worst_uv, float(uv))
    part.add(f"{case} labels (fraction of pixels that differ, worst detection)", worst_fraction, LABEL_DISAGREE,
             within=labels_ok and result.count == n, **where)
    part.add(f"{case} U,V where labels agree", worst_uv, UV_ABS, **where)
    iuv, iuv_want = got["iuv_top1"], want["iuv_top1"]
    disagree = 1.0 - float((iuv == iuv_want).all(axis=-1).mean()) if iuv.shape == iuv_want.shape else 1.0
    part.add(f"{case} iuv_top1 (fraction of pixels that differ)", disagree, IUV_DISAGREE, **where)


# ------------------------------------------------------------------------------------------------ sampler


def converted_weights(fixtures: Path, dest: Path):
    """The fixture's reference checkpoint through our converter (as the CPU test does), and its VAE."""
    from diffusers import AutoencoderKL

    from train.convert import load_weights, main as convert_main

    weights = fixtures / "weights"
    out = dest / "mcld-converted"
    with contextlib.redirect_stdout(io.StringIO()):
        status = convert_main(["from-mcld", str(weights), "--base-model", str(weights), "-o", str(out),
                               "--projector", str(weights / "image_proj_model.json"),
                               "--pose-guider", str(weights / "pose_guider.json")])
    if status != 0:
        raise RuntimeError(f"train.convert from-mcld {weights} exited with {status}")
    vae = AutoencoderKL.from_pretrained(str(weights / "vae"), local_files_only=True).eval()
    return load_weights(out), vae


def sampler_case(case: Path):
    """(TrainBatch, meta) of one mcld_infer case, as tests/train/test_sample_parity.py builds it."""
    import torch

    from train.data import TrainBatch, pose_channels_first

    inputs = np.load(case / "inputs.npz")
    meta = json.loads((case / "meta.json").read_text())
    pairs = int(meta["pairs"])
    poses = np.stack([pose_channels_first(inputs["tgt_pose_iuv"][i]) for i in range(pairs)])
    ref = torch.from_numpy(inputs["ref_latent"])
    batch = TrainBatch(
        keys=[f"{case.name}_{i}__pair" for i in range(pairs)], tgt_latent=ref.clone(), ref_latent=ref,
        src_clip=torch.from_numpy(inputs["src_clip"]), tex_clip=torch.from_numpy(inputs["tex_clip"]),
        face_emb=torch.from_numpy(inputs["face_emb"]), face_ok=torch.from_numpy(inputs["face_ok"]),
        tgt_pose=torch.from_numpy(poses),
    )
    return batch, meta


def sampler_parity(ctx: Context, part: PartRecord) -> None:
    import torch

    from train.sampling import decode_images, denoise, make_scheduler, to_uint8

    strict_float32()
    root = ctx.fixture("mcld_infer")
    folders = sorted(p for p in root.glob("case_*") if p.is_dir())
    if not folders:
        raise Skip(f"no case_* folder in {root}")
    runs = ctx.cases([(case, scheduler) for case in folders for scheduler in ("reference", "training")])
    loaded, vae = converted_weights(root, ctx.work)
    part.figures["cases"] = [f"{case.name} {scheduler}" for case, scheduler in runs]
    # float16 is what the sampler runs on CUDA (train.bench's sample mode); bfloat16 is offered too
    columns = [("cpu", torch.float32)]
    if ctx.cuda:
        columns += [(ctx.device, torch.float32), (ctx.device, torch.float16), (ctx.device, torch.bfloat16)]
    for device, dtype in columns:
        ctx.budget.require(8, f"sampler parity on {device} {dtype}")
        model = copy.deepcopy(loaded.model).to(device, dtype=dtype).eval()
        decoder = copy.deepcopy(vae).to(device)
        name = str(dtype).removeprefix("torch.")
        where = dict(device=device, dtype=name)
        for case in sorted({case for case, _ in runs}):
            batch, meta = sampler_case(case)
            batch = batch.to(device)
            shape = (len(batch), 4, meta["latent_height"], meta["latent_width"])
            noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(meta["seed"])))
            for scheduler_name in (name for folder, name in runs if folder == case):
                expected = np.load(case / f"expected_{scheduler_name}_sched.npz")
                scheduler = make_scheduler(scheduler_name, noise=loaded.spec.noise)
                with torch.inference_mode():
                    latents = denoise(model, batch, noise=noise, scheduler=scheduler,
                                      steps=int(meta["num_inference_steps"]),
                                      guidance_scale=float(meta["guidance_scale"]), scaling_factor=SCALING)
                    images = decode_images(decoder, latents.float(), scaling_factor=SCALING)
                label = f"{case.name} {scheduler_name}"
                part.compare(f"{label} final latents", latents.float().cpu(), expected["final_latents"],
                             tolerance=LATENT_ABS, **where)
                pixels = images.float().cpu()
                part.compare(f"{label} image", pixels.permute(0, 2, 3, 1), expected["image"], tolerance=IMAGE_ABS,
                             **where)
                part.compare(f"{label} image uint8", to_uint8(pixels), expected["image_uint8"],
                             tolerance=UINT8_ABS, **where)
        del model, decoder
        release_memory()


# ---------------------------------------------------------------------------------------------- evaluator


def eval_models_file(ctx: Context, root: Path) -> Path:
    """The models YAML over the fixture's weights; the Inception/AlexNet stand-ins come from --eval-weights or
    from the fixture's make_weights.py (about 10 s, 353 MB)."""
    folder = ctx.eval_weights
    if folder is None:
        folder = ctx.work / "eval-weights"
        subprocess.run([sys.executable, str(root / "make_weights.py"), str(folder)], check=True, capture_output=True)
    weights = root / "weights"
    lines = [f"inception: {folder / 'inception_v3_google-0cc3c7bd.pth'}",
             f"alexnet: {folder / 'alexnet-owt-7be5be79.pth'}",
             f"lpips: {weights / 'lpips' / 'v0.1' / 'alex.pth'}"]
    face = weights / "insightface" / "models" / "buffalo_s"
    if face.is_dir() and not _missing_face_modules():
        lines.append(f"face: {face}")
    models = ctx.work / "eval_models.yaml"
    models.write_text("\n".join(lines) + "\n")
    return models


def _missing_face_modules() -> list[str]:
    from tools.gpu_check.common import missing_modules

    return missing_modules("insightface")


def _value(recorded) -> float:
    return float(recorded)  # "inf" / "nan" strings included


def _difference(ours, expected) -> float:
    ours, expected = float(ours), float(expected)
    if not math.isfinite(expected) or not math.isfinite(ours):
        same = (math.isnan(expected) and math.isnan(ours)) or ours == expected
        return 0.0 if same else math.inf
    return abs(ours - expected)


def eval_parity(ctx: Context, part: PartRecord) -> None:
    require_modules("skimage", "scipy", "lpips", what="the evaluator (SSIM/PSNR: scikit-image; FID: scipy)")
    from tools.evaluate.run import main as evaluate_main

    strict_float32()
    root = ctx.fixture("mcld_eval")
    sets = sorted(p for p in root.glob("set_*") if p.is_dir())
    if not sets:
        raise Skip(f"no set_* folder in {root}")
    models = eval_models_file(ctx, root)
    part.figures["sets"] = [s.name for s in sets]
    part.figures["face_metric"] = "face:" in models.read_text() or "skipped: insightface is not installed"
    devices = ["cpu"] + ([ctx.device] if ctx.cuda else [])
    for device in devices:
        for folder in ctx.cases(sets):
            ctx.budget.require(15, f"evaluator parity {folder.name} on {device}")
            compare_evaluation(ctx, part, folder, models, device, evaluate_main)
            release_memory()


def compare_evaluation(ctx: Context, part: PartRecord, folder: Path, models: Path, device: str, evaluate_main) -> None:
    import pyarrow.parquet as pq

    expected = json.loads((folder / "expected.json").read_text())
    resolutions = [res for res in ("256", "512") if res in expected["aggregates"]]
    out = ctx.work / f"eval-{folder.name}-{device.replace(':', '_')}"
    argv = [str(folder / "mcld"), "--gt", str(folder / "gt"), "--train-images", str(folder / "fashion" / "train"),
            "--models", str(models), "-o", str(out), "--resolutions", ",".join(resolutions),
            "--cache-dir", str(out / "cache"), "--batch-size", "3", "--workers", "0", "--quiet", "--device", device]
    with contextlib.redirect_stdout(io.StringIO()):
        status = evaluate_main(argv)
    if status != 0:
        raise RuntimeError(f"mcld-data evaluate on {folder} ({device}) exited with {status}: see {out}/evaluate.log")
    metrics = json.loads((out / "metrics.json").read_text())
    rows = pq.read_table(out / "per_image.parquet").to_pylist()
    where = dict(device=device, dtype="float32")
    for res in resolutions:
        ours, recorded = metrics["resolutions"][EVAL_FOLDERS[res]], expected["aggregates"][res]
        fid, fid_expected = float(ours["FID"]), float(recorded["FID"]["value"])
        rel = _difference(fid, fid_expected) / abs(fid_expected) if fid_expected else _difference(fid, fid_expected)
        part.add(f"{folder.name} {res} FID (relative)", rel, FID_REL, **where)
        for label, tolerance in EVAL_ABS.items():
            if label in recorded:
                part.add(f"{folder.name} {res} {label}",
                         _difference(_value(ours[label]), _value(recorded[label]["value"])), tolerance, **where)
        per_image = expected["resolutions"][res]["per_image"]
        ours_by_name = {row["name"]: row for row in rows if row["resolution"] == EVAL_FOLDERS[res]}
        if sorted(ours_by_name) != sorted(per_image):
            part.add(f"{folder.name} {res} per-image names", 1, 0, **where, note="the pair sets differ")
            continue
        for metric, tolerance in EVAL_PER_IMAGE_ABS.items():
            worst = max(_difference(ours_by_name[name][metric], _value(values[metric]))
                        for name, values in per_image.items())
            part.add(f"{folder.name} {res} per-image {metric} (worst)", worst, tolerance, **where)
    face_recorded = expected["aggregates"].get("face")
    if face_recorded and "face" in metrics and metrics["face"]:
        for label, tolerance in FACE_ABS.items():
            part.add(f"{folder.name} {label}", _difference(_value(metrics["face"][label]),
                                                           _value(face_recorded[label]["value"])), tolerance, **where)


# ------------------------------------------------------------------------------------------- VAE and CLIP


def vae_clip_parity(ctx: Context, part: PartRecord) -> None:
    """The stages' encode path on CUDA (float32, bfloat16) against the same stage on the CPU, same photos."""
    ctx.require_cuda("VAE/CLIP parity")
    from preprocess.clip.stage import ClipConfig, ClipStage
    from preprocess.vae.stage import VaeConfig, VaeStage
    from tools.gpu_check.speed import model_folders

    strict_float32()
    vae_path, clip_path = model_folders(ctx)
    size = 512 if ctx.sizes == "real" else 64
    images = np.stack([photo(ctx, size, size), photo(ctx, size, size)[:, ::-1]])
    part.figures.update(models=ctx.sizes, images=f"{len(images)} x {size}x{size} (fixture portrait, and mirrored)")
    cpu_latent = VaeStage(config=VaeConfig(path=vae_path, height=size, width=size)).encode(images)
    cpu_embed = ClipStage(config=ClipConfig(path=clip_path)).embed(list(images))
    release_memory()
    for dtype in ("float32", "bfloat16"):
        ctx.budget.require(10, f"VAE/CLIP parity {dtype}")
        latent = VaeStage(config=VaeConfig(path=vae_path, height=size, width=size, device=ctx.device,
                                           dtype=dtype)).encode(images)
        embed = ClipStage(config=ClipConfig(path=clip_path, device=ctx.device, dtype=dtype)).embed(list(images))
        if dtype == "float32":
            part.compare("vae latent (mean, logvar) vs CPU", latent, cpu_latent, tolerance=STORE_ABS, rtol=STORE_RTOL,
                         device=ctx.device, dtype=dtype)
            part.compare("clip image_embeds vs CPU", embed, cpu_embed, tolerance=STORE_ABS, rtol=STORE_RTOL,
                         device=ctx.device, dtype=dtype)
        else:
            part.compare("vae latent (mean, logvar) vs CPU", latent, cpu_latent, tolerance=BF16_ABS["vae"],
                         device=ctx.device, dtype=dtype)
            part.compare("clip image_embeds vs CPU", embed, cpu_embed, tolerance=BF16_ABS["clip"],
                         device=ctx.device, dtype=dtype)
        release_memory()
