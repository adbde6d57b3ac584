"""Train MCLD from shards alone (no VAE encoder, CLIP or face model runs here).

    accelerate launch train/run.py --shards OUT [--config train/configs/mcld.yaml|tiny] --output-dir RUN
        [--max-steps N] [--resume [latest|PATH]] [--init-from CKPT_DIR|WEIGHTS] [--val-shards DIR]
        [--report-to tensorboard|wandb|mlflow|all|none]

Also runs as ``python train/run.py ...`` (one process). Checkpoints go to RUN/checkpoint-STEP, per-step logs
to RUN/logs.jsonl, validation grids to RUN/validation/step-STEP.png, what the run said (resume, checkpoint
paths, warnings) to RUN/train.log; the console shows warnings only unless -v. The same per-step figures and
the validation images go to the experiment trackers (train/tracking.py; default TensorBoard, RUN/tb/).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# `python train/run.py` puts train/ first on sys.path; the project root must come first so that `train`,
# `shards` resolve as packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0]) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import torch  # noqa: E402
import yaml  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import (  # noqa: E402
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from diffusers.optimization import get_scheduler  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from shards.cli import RunLog, add_verbosity, setup_console_logging  # noqa: E402
from shards.manifest import ManifestError  # noqa: E402
from shards.reader import ShardError, resolve  # noqa: E402
from train.checkpoints import (  # noqa: E402
    PARTIAL_SUFFIX,
    CheckpointError,
    TrainState,
    checkpoint_dir,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume,
)
from train.config import (  # noqa: E402
    ConfigError,
    TrainConfig,
    check_manifest,
    effective_learning_rate,
    load_clip_std,
    load_config,
)
from train.convert import ConvertError, init_state  # noqa: E402
from train.data import DataError, TrainStream, batches_per_epoch, load_pairs, make_loader  # noqa: E402
from train.model import build_mcld  # noqa: E402
from train.model.pose_guider import PoseGuiderInitError  # noqa: E402
from train.objective import ClipStats, build_scheduler, training_step  # noqa: E402
from train.tracking import Tracking, TrackerError, check_installed, parse_report_to  # noqa: E402
from train.validation import ValidationError, load_vae_decoder, manifest_vae_folder, run_validation  # noqa: E402

LOG_NAME = "logs.jsonl"
RUN_LOG_NAME = "train.log"
LOGGERS = ("train", "shards")  # what the run log records
log = logging.getLogger("train.run")  # not __name__: that is "__main__" under `python train/run.py`
USER_ERRORS = (ConfigError, DataError, ShardError, ManifestError, CheckpointError, ValidationError, PoseGuiderInitError,
               ConvertError, TrackerError)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    shards: str
    config: str
    output_dir: Path
    max_steps: int | None = None
    resume: str | None = None
    init_from: str | None = None
    val_shards: str | None = None
    report_to: str | None = None  # None: the config's report_to
    verbose: int = 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, help="output folder of build_shards.py (with manifest.json)")
    parser.add_argument("--config", default="mcld", help="mcld, tiny, or a YAML path (default mcld)")
    parser.add_argument("--output-dir", required=True, type=Path, help="run folder: checkpoints, logs, images")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides solver.max_steps)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="latest (default when given bare) or a checkpoint-STEP folder")
    parser.add_argument("--init-from", default=None,
                        help="start from these weights (an MCLD checkpoint folder, a train.convert weights folder or a "
                             "checkpoint-STEP): step 0, fresh optimizer")
    parser.add_argument("--val-shards", default=None, help="shards for the fixed validation pairs (default: --shards)")
    parser.add_argument("--report-to", default=None,
                        help="experiment trackers: tensorboard (RUN/tb), wandb (offline), mlflow (RUN/mlruns), a "
                             "comma-separated list, all or none (default: the config's report_to, tensorboard)")
    add_verbosity(parser)
    return parser


def parse_options(argv: list[str] | None) -> RunOptions:
    args = build_parser().parse_args(argv)
    if args.max_steps is not None and args.max_steps <= 0:
        raise ConfigError(f"--max-steps must be positive, got {args.max_steps}")
    return RunOptions(shards=args.shards, config=args.config, output_dir=args.output_dir, max_steps=args.max_steps,
                      resume=args.resume, init_from=args.init_from, val_shards=args.val_shards, report_to=args.report_to,
                      verbose=args.verbose)


def single_process_launch_warning(env: Mapping[str, str]) -> str | None:
    """``accelerate launch --cpu --num_processes N`` starts ONE process unless mpirun is set up (accelerate's
    multi-CPU path is MPI); it leaves MASTER_PORT set but no WORLD_SIZE. Say so instead of running 1/N."""
    on_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    launched = "MASTER_PORT" in env
    distributed = any(name in env for name in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    if on_cpu and launched and not distributed:
        return (
            "accelerate launch --cpu started a single process: several CPU processes need mpirun, or "
            "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N` (torchrun + gloo)"
        )
    return None


def _append_log(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


class Trainer:
    """One training run; every process builds its own (no data or state passes through rank 0).

    What it opens for the run (the log file, the quiet console of the other ranks) is undone by ``cleanup``,
    the caller's stack, also when building the trainer fails half-way.
    """

    def __init__(self, options: RunOptions, *, cleanup: contextlib.ExitStack) -> None:
        config = load_config(options.config)
        if options.max_steps is not None:
            config = dataclasses.replace(config, solver=dataclasses.replace(config.solver, max_steps=options.max_steps))
        self.options = options
        self.config: TrainConfig = config
        self.run_dir = options.output_dir
        self.source = resolve(options.shards)
        if self.source.manifest is None:
            raise DataError(f"--shards {options.shards}: give an output folder with manifest.json, not bare shards")
        self.facts = check_manifest(config, self.source.manifest, where=options.shards)
        self.clip_std = load_clip_std(config, manifest_std=self.facts.clip_std)
        if options.init_from is not None and not Path(options.init_from).is_dir():
            raise ConvertError(f"--init-from {options.init_from}: no such folder")
        if options.report_to is not None:
            trackers = parse_report_to(options.report_to)
        else:
            trackers = parse_report_to(config.report_to, where=f"{config.source}: report_to")
        check_installed(trackers)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.solver.gradient_accumulation_steps,
            mixed_precision=config.solver.mixed_precision,
            # ReferenceNet is skipped on unconditional steps and face branches on face-less batches.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            # The loader is never prepared (each rank streams its own shards); this states the intent.
            dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
            log_with=list(trackers) or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir)),
        )
        acc = self.accelerator
        self.device = acc.device
        self._open_logs(cleanup)
        self.tracking = Tracking(acc, trackers=trackers, run_dir=self.run_dir)
        warning = single_process_launch_warning(os.environ)
        if warning and acc.num_processes == 1:
            log.warning(warning)
        # Same initial weights on every rank; per-rank randomness for the training draws afterwards.
        torch.manual_seed(config.seed)
        model = build_mcld(config.model, clip_dim=self.facts.clip_dim, face_dim=self.facts.face_dim,
                           latent_channels=self.facts.latent_channels, where=config.source)
        if options.init_from is not None:
            fingerprint = init_state(model, options.init_from)
            log.info("initial weights: %s (sha256 %s)", options.init_from, fingerprint[:12])
        set_seed(config.seed, device_specific=True)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        solver = config.solver
        self.learning_rate = effective_learning_rate(solver, batch_size=config.data.batch_size,
                                                     num_processes=acc.num_processes)
        optimizer = torch.optim.AdamW(self.trainable, lr=self.learning_rate, betas=(solver.adam_beta1, solver.adam_beta2),
                                      weight_decay=solver.adam_weight_decay, eps=solver.adam_epsilon)
        # Stepped once per optimizer step (not prepared, so accelerate does not step it per process).
        self.lr_scheduler = get_scheduler(solver.lr_scheduler, optimizer=optimizer,
                                          num_warmup_steps=solver.lr_warmup_steps, num_training_steps=solver.max_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.state = TrainState()
        acc.register_for_checkpointing(self.lr_scheduler, self.state)
        self.noise_scheduler = build_scheduler(config.noise)
        self.stats = ClipStats(null=torch.tensor(self.facts.clip_null_embedding),
                               std=torch.tensor(self.clip_std)).to(self.device)
        self.stream = TrainStream(
            source=self.source, rank=acc.process_index, world_size=acc.num_processes,
            num_workers=config.data.num_workers, batch_size=config.data.batch_size,
            batches_per_epoch=batches_per_epoch(samples=self.facts.samples, world_size=acc.num_processes,
                                                batch_size=config.data.batch_size),
            seed=config.seed, shuffle_buffer=config.data.shuffle_buffer, verify_checksums=config.data.verify_checksums,
        )
        self.loader = make_loader(self.stream, pin_memory=self.device.type == "cuda")
        self.vae = None
        self.val_pairs: list[dict] = []
        problem = None
        if acc.is_main_process:
            try:
                self._setup_validation()
            except USER_ERRORS as error:
                problem = str(error)
        # Only the main process validates; if its setup failed, every rank stops (none waits forever).
        problem = broadcast_object_list([problem])[0]
        if problem is not None:
            raise ValidationError(problem)

    def _open_logs(self, cleanup: contextlib.ExitStack) -> None:
        """The main process writes RUN/train.log and speaks on the console; the others only report errors
        (N ranks would print every line N times)."""
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cleanup.enter_context(RunLog(str(self.run_dir / RUN_LOG_NAME), names=LOGGERS))
            return
        logger = logging.getLogger("train")
        cleanup.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)

    def _setup_validation(self) -> None:
        validation = self.config.validation
        if validation.every == 0:
            return
        if validation.vae_path is None:
            log.warning("validation.vae_path is null: no validation images (they need a VAE decoder)")
            return
        if validation.vae_path == "manifest":
            vae_folder = manifest_vae_folder(self.source.manifest, where=self.options.shards)
        else:
            vae_folder = Path(validation.vae_path)
        self.vae = load_vae_decoder(vae_folder, scaling_factor=self.facts.vae_scaling_factor, device=self.device)
        self.val_pairs = load_pairs(self.options.val_shards or self.options.shards, count=validation.pairs,
                                    geometry=self.source.manifest.geometry)

    # -- the run ---------------------------------------------------------------------------------------

    def _resume(self) -> None:
        acc = self.accelerator
        if self.options.resume is None:
            existing = list_checkpoints(self.run_dir)
            if existing:
                raise CheckpointError(
                    f"{self.run_dir} already holds {existing[-1][1].name}: pass --resume to continue that run, "
                    "or choose another --output-dir"
                )
            return
        path = resolve_resume(self.options.resume, self.run_dir)
        if path is None:
            log.info("--resume latest: no checkpoint in %s; starting at step 0", self.run_dir)
            return
        acc.load_state(str(path))
        log.info("resumed from %s at step %d", path, self.state.step)

    def _batches(self):
        while True:
            self.stream.epoch = self.state.data_epoch
            self.stream.skip_batches = self.state.batches_in_epoch
            for batch in self.loader:
                self.state.batches_in_epoch += 1
                yield batch
            self.state.data_epoch += 1
            self.state.batches_in_epoch = 0

    def _save(self) -> Path:
        acc = self.accelerator
        final = checkpoint_dir(self.run_dir, self.state.step)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            prune_checkpoints(self.run_dir, keep_last=self.config.checkpoint.keep_last)
        acc.wait_for_everyone()
        return final

    def _validate(self) -> None:
        acc = self.accelerator
        if acc.is_main_process and self.vae is not None:
            validation = self.config.validation
            with acc.autocast():
                path = run_validation(
                    acc.unwrap_model(self.model), pairs=self.val_pairs, vae=self.vae, scheduler=self.noise_scheduler,
                    steps=validation.steps, guidance_scale=validation.guidance_scale,
                    scaling_factor=self.facts.vae_scaling_factor, seed=validation.seed, device=self.device,
                    out_path=self.run_dir / "validation" / f"step-{self.state.step:06d}.png",
                )
            log.info("validation images: %s", path)
            self.tracking.log_validation(path, keys=[pair["__key__"] for pair in self.val_pairs],
                                         step=self.state.step)
        acc.wait_for_everyone()

    def _write_run_config(self) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"shards": self.options.shards, "config_source": self.config.source,
                  "init_from": self.options.init_from,
                  "manifest": dataclasses.asdict(self.facts), "config": self.config.to_dict()}
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")

    def train(self) -> int:
        acc = self.accelerator
        config = self.config
        acc.wait_for_everyone()  # the main process has made the run folder
        self._resume()
        self._write_run_config()
        self.tracking.start(step=self.state.step, config=config.to_dict())
        solver = config.solver
        accumulation = solver.gradient_accumulation_steps
        global_batch = config.data.batch_size * acc.num_processes * accumulation
        log.info(
            "training %d steps from step %d: %d process(es), batch %d x %d x %d = %d, lr %g, %d samples, "
            "%d batches/epoch/rank; shards' face mode %s, model.face_missing %s, clip_std from %s",
            solver.max_steps, self.state.step, acc.num_processes, config.data.batch_size, acc.num_processes,
            accumulation, global_batch, self.learning_rate, self.facts.samples, self.stream.batches_per_epoch,
            self.facts.face_mode, config.model.face_missing, config.conditioning.clip_std,
        )
        log_path = self.run_dir / LOG_NAME
        progress = tqdm(total=solver.max_steps, initial=self.state.step, disable=not acc.is_local_main_process,
                        desc="steps")
        batches = self._batches()
        consumed = 0
        self.model.train()
        while self.state.step < solver.max_steps:
            started = time.perf_counter()
            waited = 0.0
            totals = torch.zeros(3, device=self.device)
            uncond_steps = 0
            grad_norm = torch.zeros((), device=self.device)
            for _ in range(accumulation):
                before = time.perf_counter()
                batch = next(batches).to(self.device, non_blocking=True)
                waited += time.perf_counter() - before
                consumed += 1
                with acc.accumulate(self.model):
                    result = training_step(self.model, batch, scheduler=self.noise_scheduler, noise=config.noise,
                                           conditioning=config.conditioning, stats=self.stats,
                                           scaling_factor=self.facts.vae_scaling_factor)
                    acc.backward(result.parts.loss)
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(self.trainable, solver.max_grad_norm).detach()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                parts = result.parts
                totals += torch.stack([parts.loss.detach(), parts.mse, parts.face]) / accumulation
                uncond_steps += int(result.uncond)
            if not acc.sync_gradients:
                raise RuntimeError("gradient accumulation fell out of step with the optimizer")
            self.lr_scheduler.step()
            self.state.step += 1
            elapsed = time.perf_counter() - started
            figures = torch.cat([totals, torch.tensor([waited / elapsed], device=self.device),
                                 grad_norm.reshape(1).float()])
            figures = acc.reduce(figures, reduction="mean")
            loss, mse, face, wait, norm = (float(v) for v in figures)
            if not math.isfinite(loss):
                raise RuntimeError(f"step {self.state.step}: the loss is {loss}; lower solver.learning_rate")
            if acc.is_main_process:
                record = {
                    "step": self.state.step, "loss": loss, "loss_mse": mse, "loss_face": face,
                    "lr": self.lr_scheduler.get_last_lr()[0], "samples_per_s": global_batch / elapsed,
                    "data_wait": wait, "step_time": elapsed, "uncond_micro_batches": uncond_steps,
                    "grad_norm": norm,  # before clipping to solver.max_grad_norm
                }
                if self.device.type == "cuda":
                    record["gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                _append_log(log_path, record)
                self.tracking.log_step(record, step=self.state.step)
                progress.set_postfix(loss=f"{loss:.4f}", face=f"{face:.4f}", lr=f"{record['lr']:.2e}",
                                     wait=f"{wait:.0%}")
            progress.update(1)
            if self.state.step % config.checkpoint.every == 0 or self.state.step == solver.max_steps:
                saved = self._save()
                log.info("checkpoint: %s", saved)
            if config.validation.every and self.state.step % config.validation.every == 0:
                self._validate()
        progress.close()
        per_rank = gather_object([consumed])  # every rank's count, in rank order: they must agree
        log.info("finished at step %d; micro-batches per rank: %s", self.state.step,
                 ", ".join(f"[rank {rank}] {count}" for rank, count in enumerate(per_rank)))
        if acc.is_main_process:
            print(f"train/run.py: finished at step {self.state.step} ({acc.num_processes} process(es)); "
                  f"checkpoints and {RUN_LOG_NAME} in {self.run_dir}", flush=True)
        acc.wait_for_everyone()
        acc.end_training()
        return 0


def main(argv: list[str] | None = None) -> int:
    try:
        with contextlib.ExitStack() as cleanup:
            options = parse_options(argv)
            setup_console_logging(options.verbose)
            return Trainer(options, cleanup=cleanup).train()
    except USER_ERRORS as error:
        print(f"train/run.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
