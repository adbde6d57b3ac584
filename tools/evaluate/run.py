"""`mcld-data evaluate`: score generated images against ground truth as the reference's evaluate.py does.

    mcld-data evaluate GEN --images IMAGES_ROOT [--train-images DIR] --models eval_models.yaml -o REPORT
    mcld-data evaluate PRED --gt GT [--train-images DIR] --models eval_models.yaml -o REPORT   (reference layout)

Images stream through a DataLoader in batches; only the 2048-d Inception features of each side are kept for
FID. The real side's statistics are cached under --cache-dir by a content hash of the training images, the
resolution and the Inception weights, so a second evaluation does not recompute them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shards.cli import RunLog, setup_console_logging
from shards.storage import sha256_of
from tools.evaluate.inputs import (RESOLUTIONS, EvaluationInputError, Pair, Resolution, gen_pairs, is_gen_folder,
                                   read_rgb, reference_pairs, training_images)
from tools.evaluate.metrics import (FaceScorer, FeatureStats, frechet_distance, inception_features,
                                    lpips_distance, pixel_scores)
from tools.evaluate.models import (EvalModelPaths, ModelFileError, load_face_analysis,
                                   load_inception_blocks, load_lpips, read_models_file)

log = logging.getLogger(__name__)

FID_CACHE_VERSION = "mcld-eval-fid-real-v1"
LOG_NAME = "evaluate.log"
#: Higher is worse for these; lower is worse for the others.
HIGHER_IS_WORSE = {"lpips", "face_euclidean"}
PER_IMAGE_METRICS = ("lpips", "psnr", "ssim", "ssim_256", "face_cosine", "face_euclidean")


@dataclass(frozen=True)
class EvaluateConfig:
    generated: Path
    output: Path
    models: Path
    images: Path | None = None
    gt: Path | None = None
    train_images: Path | None = None
    resolutions: tuple[str, ...] = ("256", "512")
    device: str = "cpu"
    batch_size: int = 16
    workers: int = 2
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    worst: int = 8
    progress: bool = True


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcld-data" / "fid"


@dataclass
class Models:
    paths: EvalModelPaths
    inception: torch.nn.Module
    lpips: torch.nn.Module
    face: FaceScorer | None
    inception_sha256: str

    @classmethod
    def load(cls, models_file: Path, *, device: str) -> "Models":
        paths = read_models_file(models_file)
        face = FaceScorer(load_face_analysis(paths.face, device=device)) if paths.face is not None else None
        return cls(paths=paths, inception=load_inception_blocks(paths.inception).to(device),
                   lpips=load_lpips(paths.alexnet, paths.lpips).to(device), face=face,
                   inception_sha256=sha256_of(paths.inception)[0])


# ---------------------------------------------------------------- data loading (streamed, errors as values)


class _PairImages(Dataset):
    def __init__(self, pairs: list[Pair], resolution: Resolution) -> None:
        self.pairs, self.resolution = pairs, resolution

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        try:
            return dict(index=index, **load_pair(pair, self.resolution))
        except EvaluationInputError as error:
            return dict(index=index, error=str(error))


def load_pair(pair: Pair, resolution: Resolution) -> dict:
    """Ground truth and generated image of one pair as uint8 RGB arrays of the same size."""
    generated, generated_mode = read_rgb(pair.generated)
    size = (resolution.height, resolution.width) if pair.gt_resize else None
    ground_truth, gt_mode = read_rgb(pair.ground_truth, size=size)
    if ground_truth.shape != generated.shape:
        raise EvaluationInputError(
            f"{pair.generated}: size {generated.shape[1]}x{generated.shape[0]} differs from its ground truth "
            f"{pair.ground_truth} ({ground_truth.shape[1]}x{ground_truth.shape[0]}); whole-image metrics need "
            f"equal sizes")
    converted = ",".join(f"{side}:{mode}" for side, mode in (("gt", gt_mode), ("generated", generated_mode))
                         if mode != "RGB")
    return dict(ground_truth=ground_truth, generated=generated, converted=converted)


class _TrainImages(Dataset):
    def __init__(self, files: list[Path], resolution: Resolution) -> None:
        self.files, self.resolution = files, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        try:
            image, _ = read_rgb(self.files[index], size=(self.resolution.height, self.resolution.width))
        except EvaluationInputError as error:
            return dict(index=index, error=str(error))
        return dict(index=index, image=image)


def _as_list(batch: list[dict]) -> list[dict]:
    return batch


def _batches(dataset: Dataset, config: EvaluateConfig, description: str):
    """Batches of items; an item that could not be read carries "error" (the file and the reason)."""
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers, collate_fn=_as_list)
    yield from tqdm(loader, desc=description, unit="batch", disable=not config.progress)


def _to_tensor(images: list[np.ndarray], device: str) -> torch.Tensor:
    """(N, 3, H, W) float32 in [0, 1]: the reference's pil_to_tensor(...).float() / 255."""
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return stacked.to(device=device, dtype=torch.float32) / 255.0


# ---------------------------------------------------------------- FID real side


def real_statistics(files: list[Path], resolution: Resolution, models: Models, config: EvaluateConfig
                    ) -> tuple[FeatureStats, str]:
    """FID statistics of the training images, from the cache when the same images, resolution and Inception
    weights were seen before. Returns the statistics and "hit" or "miss"."""
    digest = hashlib.sha256(f"{FID_CACHE_VERSION}|{resolution.height}x{resolution.width}|"
                            f"{models.inception_sha256}|".encode())
    for path in files:
        digest.update(f"{path.name}|{sha256_of(path)[0]}|".encode())
    cache_file = config.cache_dir / f"{digest.hexdigest()}.npz"
    if cache_file.is_file():
        with np.load(cache_file) as cached:
            log.info("FID real statistics for %s from cache %s", resolution.gen_folder, cache_file)
            return FeatureStats(mu=cached["mu"], sigma=cached["sigma"], count=int(cached["count"])), "hit"
    features = []
    for batch in _batches(_TrainImages(files, resolution), config, f"FID real side {resolution.gen_folder}"):
        for item in batch:
            if "error" in item:  # FID's real side is fixed by the reference: no image may go missing from it
                raise EvaluationInputError(item["error"])
        images = _to_tensor([item["image"] for item in batch], config.device)
        features.append(inception_features(models.inception, images).cpu().numpy())
    stats = FeatureStats.of(np.concatenate(features, axis=0))
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_suffix(".tmp.npz")
    np.savez(partial, mu=stats.mu, sigma=stats.sigma, count=stats.count)
    partial.replace(cache_file)
    return stats, "miss"


# ---------------------------------------------------------------- one resolution


@dataclass
class ResolutionResult:
    resolution: Resolution
    aggregates: dict
    rows: list[dict]
    pairs: dict[str, Pair]
    face: dict | None = None


def _nonfinite_mean(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {"finite_mean": finite.mean() if finite.size else np.float64(math.nan),
            "non_finite": int(values.size - finite.size)}


def evaluate_resolution(pairs: list[Pair], resolution: Resolution, models: Models, config: EvaluateConfig,
                        real: tuple[FeatureStats, str] | None) -> ResolutionResult:
    present = [pair for pair in pairs if pair.generated.is_file()]
    missing = [pair for pair in pairs if not pair.generated.is_file()]
    if missing:
        log.warning("%d of %d generated images at %s are missing, e.g. %s", len(missing), len(pairs),
                    resolution.gen_folder, missing[0].generated)
    score_faces = models.face is not None and resolution.name == "256"
    rows: list[dict] = []
    features = []
    unreadable: list[tuple[Pair, str]] = []
    for batch in _batches(_PairImages(present, resolution), config, f"pairs {resolution.gen_folder}"):
        unreadable += [(present[item["index"]], item["error"]) for item in batch if "error" in item]
        batch = [item for item in batch if "error" not in item]
        if not batch:
            continue
        generated = _to_tensor([item["generated"] for item in batch], config.device)
        ground_truth = _to_tensor([item["ground_truth"] for item in batch], config.device)
        features.append(inception_features(models.inception, generated.clone()).cpu().numpy())
        lpips_values = lpips_distance(models.lpips, generated, ground_truth).cpu().numpy()
        generated_np, ground_truth_np = generated.cpu().numpy(), ground_truth.cpu().numpy()
        for position, item in enumerate(batch):
            pair = present[item["index"]]
            scores = pixel_scores(ground_truth_np[position], generated_np[position])
            face = (models.face(item["ground_truth"][:, :, ::-1].copy(), item["generated"][:, :, ::-1].copy())
                    if score_faces else None)
            rows.append(dict(resolution=resolution.gen_folder, name=pair.name, status="ok", reason="",
                             generated_path=str(pair.generated), ground_truth_path=str(pair.ground_truth),
                             converted=item["converted"], lpips=lpips_values[position], psnr=scores.psnr,
                             ssim=scores.ssim, ssim_256=scores.ssim_256,
                             face_status=face.status if face else None,
                             face_cosine=face.cosine if face else math.nan,
                             face_euclidean=face.euclidean if face else math.nan))
    failures = [(pair, "missing_generated", "") for pair in missing]
    failures += [(pair, "unreadable", reason) for pair, reason in unreadable]
    for pair, status, reason in failures:
        rows.append(dict(resolution=resolution.gen_folder, name=pair.name, status=status, reason=reason,
                         generated_path=str(pair.generated), ground_truth_path=str(pair.ground_truth), converted="",
                         lpips=math.nan, psnr=math.nan, ssim=math.nan, ssim_256=math.nan, face_status=None,
                         face_cosine=math.nan, face_euclidean=math.nan))
    scored = [row for row in rows if row["status"] == "ok"]
    if unreadable:
        log.warning("%d pair(s) at %s could not be read and are not scored, e.g. %s", len(unreadable),
                    resolution.gen_folder, unreadable[0][1])
        if not scored:  # nothing to score: the inputs are wrong as a whole (e.g. another resolution's folder)
            raise EvaluationInputError(unreadable[0][1])
    aggregates: dict = {"pairs": len(pairs), "scored": len(scored),
                        "missing_generated": sorted(pair.name for pair in missing),
                        "unreadable": {pair.name: reason for pair, reason in sorted(unreadable, key=lambda u: u[0].name)},
                        "converted_to_rgb": sum(bool(row["converted"]) for row in scored)}
    if scored:
        lpips_all = np.array([row["lpips"] for row in scored], dtype=np.float32)
        psnr_all = np.array([row["psnr"] for row in scored], dtype=np.float64)
        ssim_all = np.array([row["ssim"] for row in scored], dtype=np.float32)
        ssim_256_all = np.array([row["ssim_256"] for row in scored], dtype=np.float32)
        generated_stats = FeatureStats.of(np.concatenate(features, axis=0))
        aggregates["FID"] = frechet_distance(real[0], generated_stats) if real else None
        aggregates["LPIPS"] = np.mean(lpips_all)
        aggregates["SSIM"] = np.mean(ssim_all)
        aggregates["SSIM_256"] = np.mean(ssim_256_all)
        aggregates["PSNR"] = np.mean(psnr_all)
        psnr_extra = _nonfinite_mean(psnr_all)
        aggregates["PSNR_finite_mean"] = psnr_extra["finite_mean"]
        aggregates["PSNR_infinite"] = psnr_extra["non_finite"]
        aggregates["SSIM_256_nan"] = int(np.isnan(ssim_256_all).sum())
    else:
        aggregates.update(FID=None, LPIPS=None, SSIM=None, SSIM_256=None, PSNR=None)
    if real:
        aggregates["FID_real_images"] = real[0].count
        aggregates["FID_real_cache"] = real[1]
    result = ResolutionResult(resolution=resolution, aggregates=aggregates, rows=rows,
                              pairs={pair.name: pair for pair in pairs})
    if score_faces:
        statuses = [row["face_status"] for row in scored]
        kept = [row for row in scored if row["face_status"] == "ok"]
        result.face = {
            "Face cosine similarity": np.mean(np.array([r["face_cosine"] for r in kept], dtype=np.float32))
            if kept else np.float32(math.nan),
            "Face euclidean distance": np.mean(np.array([r["face_euclidean"] for r in kept], dtype=np.float32))
            if kept else np.float32(math.nan),
            "pairs_scored": len(kept),
            **{status: statuses.count(status) for status in ("no_face_gt", "no_face_generated", "no_face_both")},
        }
    return result


# ---------------------------------------------------------------- the whole evaluation


@dataclass
class Evaluation:
    results: list[ResolutionResult]
    metrics: dict


@contextmanager
def _no_tf32(device: str):
    """TF32 would change features and LPIPS by ~1e-3 relative on GPU; CPU numbers are the reference."""
    # torch's current precision API (the allow_tf32 switches are deprecated): "ieee" is full float32.
    switches = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    saved = [switch.fp32_precision for switch in switches]
    for switch in switches:
        switch.fp32_precision = "ieee"
    try:
        yield
    finally:
        for switch, value in zip(switches, saved):
            switch.fp32_precision = value


def evaluate(config: EvaluateConfig) -> Evaluation:
    gen_mode = is_gen_folder(config.generated)
    if gen_mode and config.images is None:
        raise EvaluationInputError(f"{config.generated}: a sampler output folder needs --images (the root its "
                                   f"index.parquet's target_path values are relative to)")
    if not gen_mode and config.gt is None:
        raise EvaluationInputError(f"{config.generated}: no index.parquet, so this is the reference layout "
                                   f"(<res>/<name>.png); give its ground truth with --gt")
    unknown = [name for name in config.resolutions if name not in RESOLUTIONS]
    if unknown:
        raise EvaluationInputError(f"unknown resolution(s) {unknown}; choose from {sorted(RESOLUTIONS)}")
    train_files = training_images(config.train_images) if config.train_images is not None else None
    if train_files is None:
        log.warning("no --train-images: FID (whose real side is the training images) is not computed")
    # Every input problem that can be found without the models is reported before they load.
    pairs_by_resolution = {
        name: (gen_pairs(config.generated, config.images, RESOLUTIONS[name]) if gen_mode
               else reference_pairs(config.generated, config.gt, RESOLUTIONS[name]))
        for name in config.resolutions}
    with _no_tf32(config.device):
        models = Models.load(config.models, device=config.device)
        results = []
        for name, pairs in pairs_by_resolution.items():
            resolution = RESOLUTIONS[name]
            real = real_statistics(train_files, resolution, models, config) if train_files else None
            results.append(evaluate_resolution(pairs, resolution, models, config, real))
    metrics: dict = {
        "layout": "gen" if gen_mode else "reference",
        "generated": str(config.generated),
        "ground_truth": str(config.images if gen_mode else config.gt),
        "train_images": str(config.train_images) if config.train_images else None,
        "device": config.device,
        "models": {key: str(value) if value else None for key, value in vars(models.paths).items()},
        "resolutions": {result.resolution.gen_folder: result.aggregates for result in results},
    }
    faces = [result.face for result in results if result.face is not None]
    metrics["face"] = faces[0] if faces else None
    if gen_mode and (config.generated / "settings.json").is_file():
        metrics["sampling_settings"] = json.loads((config.generated / "settings.json").read_text())
    return Evaluation(results=results, metrics=metrics)


def _jsonable(value):
    """Non-finite floats as the strings "inf" / "-inf" / "nan" (JSON has no such numbers), numpy as Python."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def printed_lines(evaluation: Evaluation) -> list[str]:
    """The reference's printout (same labels and number formatting), then what it leaves out."""
    lines = []
    for result in evaluation.results:
        a = result.aggregates
        lines.append(f"Evaluation Results on {result.resolution.name} resolution:")
        for label in ("FID", "LPIPS", "SSIM", "SSIM_256", "PSNR"):
            lines.append(f"{label}: {a[label]}")
        if a.get("PSNR_infinite"):
            lines.append(f"  PSNR: {a['PSNR_infinite']} identical pair(s) (inf); mean over finite values "
                         f"{a['PSNR_finite_mean']}")
        if a.get("SSIM_256_nan"):
            lines.append(f"  SSIM_256: {a['SSIM_256_nan']} pair(s) nan (flat generated and gt)")
        if a["missing_generated"]:
            lines.append(f"  MISSING {len(a['missing_generated'])} generated image(s) (named in metrics.json)")
        if a["unreadable"]:
            lines.append(f"  UNREADABLE {len(a['unreadable'])} pair(s), not scored (named with the reason in "
                         f"metrics.json)")
        if a["converted_to_rgb"]:
            lines.append(f"  {a['converted_to_rgb']} pair(s) had a non-RGB image, converted to RGB")
        lines.append("------------------------------------------")
    face = evaluation.metrics["face"]
    if face is not None:
        lines.append("Evaluation Results on faces of target images:")
        lines.append(f"Face cosine similarity: {face['Face cosine similarity']}")
        lines.append(f"Face euclidean distance : {face['Face euclidean distance']}")
        dropped = face["no_face_gt"] + face["no_face_generated"] + face["no_face_both"]
        if dropped:
            lines.append(f"  {dropped} pair(s) without a face left out (gt {face['no_face_gt']}, generated "
                         f"{face['no_face_generated']}, both {face['no_face_both']})")
    return lines


def write_outputs(evaluation: Evaluation, config: EvaluateConfig) -> None:
    """metrics.json, per_image.parquet and report.html into the report folder, which run() has made."""
    from tools.evaluate.report import render_report

    (config.output / "metrics.json").write_text(json.dumps(_jsonable(evaluation.metrics), indent=2) + "\n")
    rows = [row for result in evaluation.results for row in result.rows]
    schema = pa.schema([("resolution", pa.string()), ("name", pa.string()), ("status", pa.string()),
                        ("reason", pa.string()),
                        ("generated_path", pa.string()), ("ground_truth_path", pa.string()),
                        ("converted", pa.string()), ("lpips", pa.float32()), ("psnr", pa.float64()),
                        ("ssim", pa.float32()), ("ssim_256", pa.float32()), ("face_status", pa.string()),
                        ("face_cosine", pa.float32()), ("face_euclidean", pa.float32())])
    columns = {name: [row[name] for row in rows] for name in schema.names}
    pq.write_table(pa.table(columns, schema=schema), config.output / "per_image.parquet")
    page = render_report(evaluation, worst=config.worst, loader=load_pair)
    (config.output / "report.html").write_text(page, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    from tools.evaluate.args import add_arguments

    return add_arguments(argparse.ArgumentParser(prog="mcld-data evaluate", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    return EvaluateConfig(
        generated=args.generated, output=args.output, models=args.models, images=args.images, gt=args.gt,
        train_images=args.train_images, resolutions=tuple(r.strip() for r in args.resolutions.split(",") if r),
        device=args.device, batch_size=args.batch_size, workers=args.workers,
        cache_dir=args.cache_dir or default_cache_dir(), worst=args.worst, progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_console_logging(args.verbose)
    try:
        config.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"mcld-data evaluate: {config.output}: cannot create the report folder ({error})", file=sys.stderr)
        return 1
    with RunLog(str(config.output / LOG_NAME), names=("tools", "shards")):
        log.info("mcld-data evaluate: %s", config)
        try:
            evaluation = evaluate(config)
        except (EvaluationInputError, ModelFileError) as error:
            log.info("stopped: %s", error)  # the log file keeps it; the console gets the one line below
            print(f"mcld-data evaluate: {error}", file=sys.stderr)
            return 1
        write_outputs(evaluation, config)
    print("\n".join(printed_lines(evaluation)))
    print(f"-> {config.output / 'metrics.json'}, per_image.parquet, report.html")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
