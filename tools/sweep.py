"""`mcld-data sweep`: sample and evaluate each checkpoint of a training run, to pick checkpoints by their metrics.

    mcld-data sweep RUN --shards TEST_OUT --images ROOT --models eval_models.yaml
        [--every N | --checkpoints a,b,c] [--train-images DIR] -o SWEEP

For each chosen RUN/checkpoint-STEP: the sampler (``python -m train.sample``, a separate process: tools/ does
not import train/) writes SWEEP/checkpoint-STEP/gen, the evaluator (tools.evaluate, in this process) writes
SWEEP/checkpoint-STEP/report. A checkpoint whose report/metrics.json exists is not redone, so an interrupted
sweep resumes. SWEEP/metrics.parquet holds one row per (checkpoint, resolution) with every metric, and the
metrics go to the run's experiment tracker (RUN/config.yaml's report_to) as ``eval/<resolution>/<metric>`` at
the checkpoint's step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from shards.cli import RunLog, add_verbosity, setup_console_logging

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
METRICS_NAME = "metrics.parquet"
LOG_NAME = "sweep.log"
#: metrics.json's per-resolution aggregates kept as columns, then the face metrics (256x176 only).
RESOLUTION_METRICS = ("FID", "LPIPS", "SSIM", "SSIM_256", "PSNR", "PSNR_finite_mean")
FACE_METRICS = {"face_cosine": "Face cosine similarity", "face_euclidean": "Face euclidean distance"}
METRIC_COLUMNS = (*RESOLUTION_METRICS, *FACE_METRICS)


class SweepError(ValueError):
    """A run folder, checkpoint choice or sampler failure the sweep cannot go on with; names what and why."""


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    run: Path
    shards: str
    images: Path
    models: Path
    output: Path
    every: int | None = None
    checkpoints: tuple[str, ...] = ()
    train_images: Path | None = None
    resolutions: str = "256,512"
    steps: int = 20
    seed: int = 42
    device: str = "cpu"
    batch_size: int = 16
    workers: int = 2
    cache_dir: Path | None = None
    report_to: str | None = None  # None: the run's config.yaml
    progress: bool = True


def run_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """The run's complete checkpoint folders, oldest first."""
    if not run.is_dir():
        raise SweepError(f"{run}: no such run folder")
    found = sorted((int(match.group(1)), path) for path in run.iterdir()
                   if path.is_dir() and (match := CHECKPOINT.match(path.name)))
    if not found:
        raise SweepError(f"{run}: no checkpoint-STEP folders")
    return found


def choose(found: list[tuple[int, Path]], *, every: int | None, names: tuple[str, ...], run: Path
           ) -> list[tuple[int, Path]]:
    """--every N: the steps that are multiples of N; --checkpoints: these (a step or checkpoint-STEP); else all."""
    if every is not None:
        chosen = [(step, path) for step, path in found if step % every == 0]
        if not chosen:
            raise SweepError(f"--every {every}: no checkpoint of {run} is at a multiple of {every} "
                             f"(found {', '.join(path.name for _, path in found)})")
        return chosen
    if names:
        by_step = dict(found)
        chosen = []
        for name in names:
            match = CHECKPOINT.match(name) or re.match(r"^(\d+)$", name)
            if not match or int(match.group(1)) not in by_step:
                raise SweepError(f"--checkpoints {name}: not a checkpoint of {run} "
                                 f"(found {', '.join(path.name for _, path in found)})")
            chosen.append((int(match.group(1)), by_step[int(match.group(1))]))
        return sorted(set(chosen))
    return found


def sample(checkpoint: Path, gen: Path, config: SweepConfig) -> None:
    """The sampler in its own process; its console output goes to GEN.log next to the folder."""
    command = [sys.executable, "-m", "train.sample", "--shards", config.shards, "--weights", str(checkpoint),
               "--output-dir", str(gen), "--steps", str(config.steps), "--seed", str(config.seed)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    output = gen.with_suffix(".log")
    gen.parent.mkdir(parents=True, exist_ok=True)
    log.info("sampling %s -> %s", checkpoint, gen)
    with output.open("w", encoding="utf-8") as stream:
        done = subprocess.run(command, env=env, stdout=stream, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = output.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise SweepError(f"{checkpoint}: the sampler failed (exit {done.returncode}; {output}): {' | '.join(tail)}")


def evaluate(gen: Path, report: Path, config: SweepConfig) -> dict:
    from tools.evaluate.run import EvaluateConfig, default_cache_dir, evaluate as run_evaluation, write_outputs

    settings = EvaluateConfig(
        generated=gen, output=report, models=config.models, images=config.images, train_images=config.train_images,
        resolutions=tuple(r.strip() for r in config.resolutions.split(",") if r.strip()), device=config.device,
        batch_size=config.batch_size, workers=config.workers, cache_dir=config.cache_dir or default_cache_dir(),
        progress=config.progress)
    report.mkdir(parents=True, exist_ok=True)
    evaluation = run_evaluation(settings)
    write_outputs(evaluation, settings)
    return json.loads((report / "metrics.json").read_text(encoding="utf-8"))


def _number(value) -> float | None:
    """metrics.json writes non-finite numbers as strings ("inf", "nan"); float() reads them back."""
    return None if value is None else float(value)


def metric_rows(name: str, step: int, metrics: dict) -> list[dict]:
    """One row per resolution of one checkpoint's metrics.json."""
    rows = []
    face = metrics.get("face") or {}
    for resolution, aggregates in metrics["resolutions"].items():
        row = {"checkpoint": name, "step": step, "resolution": resolution}
        row.update({metric: _number(aggregates.get(metric)) for metric in RESOLUTION_METRICS})
        on_faces = resolution == "256x176" and face
        row.update({column: _number(face.get(key)) if on_faces else None for column, key in FACE_METRICS.items()})
        rows.append(row)
    return rows


def write_table(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("checkpoint", pa.string()), ("step", pa.int64()), ("resolution", pa.string()),
                        *[(metric, pa.float64()) for metric in METRIC_COLUMNS]])
    table = pa.table({name: [row[name] for row in rows] for name in schema.names}, schema=schema)
    partial = path.with_suffix(".tmp.parquet")
    pq.write_table(table, partial)
    partial.replace(path)


def run_report_to(run: Path) -> str:
    """The trackers the run logged to, as its config.yaml records them (tensorboard when it does not say)."""
    path = run / "config.yaml"
    if not path.is_file():
        return "tensorboard"
    record = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return str((record.get("config") or {}).get("report_to", "tensorboard"))


def log_to_trackers(run: Path, rows: list[dict], spec: str) -> list[str]:
    """The metrics at each checkpoint's step into the run's own tracker runs (TensorBoard: RUN/tb; W&B and
    MLflow: the run ids RUN/trackers.json keeps). Returns the trackers written to."""
    names = {name.strip() for name in spec.split(",")}
    if "all" in names:
        names = {"tensorboard", "wandb", "mlflow"}
    names.discard("none")
    ids_path = run / "trackers.json"
    ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.is_file() else {}
    values = [(row["step"], {f"eval/{row['resolution']}/{metric}": row[metric] for metric in METRIC_COLUMNS
                             if row[metric] is not None and math.isfinite(row[metric])}) for row in rows]
    written = []
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"), filename_suffix=".sweep")
        for step, scalars in values:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)
        writer.close()
        written.append("tensorboard")
    if "mlflow" in names and "mlflow" in ids:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 keeps its file store in maintenance mode behind this opt-in; a local folder needs no
            # server nor database (set MLFLOW_TRACKING_URI for either).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run / "mlruns").resolve().as_uri())
        client = mlflow.MlflowClient()
        for step, scalars in values:
            for tag, value in scalars.items():
                client.log_metric(ids["mlflow"], tag, value, step=step)
        written.append("mlflow")
    if "wandb" in names and "wandb" in ids:
        import wandb

        session = wandb.init(id=ids["wandb"], resume="allow", dir=str(run),
                             mode=os.environ.get("WANDB_MODE", "offline"))
        for step, scalars in values:
            session.log(scalars, step=step)
        session.finish()
        written.append("wandb")
    for name in sorted(names - set(written)):
        log.warning("%s: no %s run id in %s; the sweep's metrics were not logged there", run, name, ids_path)
    return written


def sweep(config: SweepConfig) -> tuple[list[dict], list[dict]]:
    """Every chosen checkpoint's rows, and those of the checkpoints evaluated by this call (not yet logged)."""
    chosen = choose(run_checkpoints(config.run), every=config.every, names=config.checkpoints, run=config.run)
    rows: list[dict] = []
    new: list[dict] = []
    for step, checkpoint in chosen:
        folder = config.output / checkpoint.name
        metrics_file = folder / "report" / "metrics.json"
        if metrics_file.is_file():
            log.info("%s: already evaluated (%s), not redone", checkpoint.name, metrics_file)
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        else:
            sample(checkpoint, folder / "gen", config)
            metrics = evaluate(folder / "gen", folder / "report", config)
            new += metric_rows(checkpoint.name, step, metrics)
        rows += metric_rows(checkpoint.name, step, metrics)
        write_table(rows, config.output / METRICS_NAME)  # after each checkpoint: what is done is kept
    return rows, new


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="mcld-data sweep", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN", type=Path, help="training run folder (RUN/checkpoint-STEP ...)")
    parser.add_argument("--shards", required=True, help="the test shards to sample (build_shards.py output)")
    parser.add_argument("--images", type=Path, required=True, help="root of the shards' original photos")
    parser.add_argument("--models", type=Path, required=True, help="eval_models.yaml (see tools/evaluate/models.py)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="SWEEP folder")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--every", type=int, default=None, help="the checkpoints whose step is a multiple of N")
    choice.add_argument("--checkpoints", default=None, help="comma-separated steps or checkpoint-STEP names")
    parser.add_argument("--train-images", type=Path, default=None, help="FID real side (*.jpg); no FID without")
    parser.add_argument("--resolutions", default="256,512")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", help="evaluation device")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--report-to", default=None, help="trackers to log to (default: the run's report_to)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbosity(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from tools.evaluate.inputs import EvaluationInputError
    from tools.evaluate.models import ModelFileError

    if args.every is not None and args.every <= 0:
        print(f"mcld-data sweep: --every must be positive, got {args.every}", file=sys.stderr)
        return 2
    config = SweepConfig(
        run=args.run_dir, shards=args.shards, images=args.images, models=args.models, output=args.output,
        every=args.every, checkpoints=tuple(n.strip() for n in (args.checkpoints or "").split(",") if n.strip()),
        train_images=args.train_images, resolutions=args.resolutions, steps=args.steps, seed=args.seed,
        device=args.device, batch_size=args.batch_size, workers=args.workers, cache_dir=args.cache_dir,
        report_to=args.report_to, progress=not args.quiet)
    setup_console_logging(args.verbose)
    config.output.mkdir(parents=True, exist_ok=True)
    with RunLog(str(config.output / LOG_NAME), names=("tools", "shards")):
        try:
            rows, new = sweep(config)
        except (SweepError, EvaluationInputError, ModelFileError) as error:
            log.info("stopped: %s", error)
            print(f"mcld-data sweep: {error}", file=sys.stderr)
            return 1
        # Checkpoints evaluated by an earlier call were logged then: a resumed sweep does not log them twice.
        written = log_to_trackers(config.run, new, config.report_to or run_report_to(config.run)) if new else []
    header = ["checkpoint", "step", "resolution", *METRIC_COLUMNS]
    print("  ".join(header))
    for row in rows:
        print("  ".join("-" if row[name] is None else f"{row[name]:.6g}" if isinstance(row[name], float)
                        else str(row[name]) for name in header))
    print(f"-> {config.output / METRICS_NAME}; logged to {', '.join(written) or 'no tracker'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
