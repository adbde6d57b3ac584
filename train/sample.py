"""Pose-transfer sampling: every pair of a shard folder -> generated images, as the reference's test.py.

    accelerate launch train/sample.py --shards TEST_OUT --weights WEIGHTS|CKPT_DIR|RUN/checkpoint-STEP --output-dir GEN
        [--steps 20] [--guidance 3.5] [--seed 42] [--scheduler reference|training] [--batch-size N]
        [--batch-invariant auto|on|off] [--face-from SPEC] [--appearance-from SPEC] [--overwrite]

Also runs as ``python train/sample.py ...`` (one process). A pair's image depends only on the weights, the
pair and the seed: its initial noise is drawn from a generator seeded with (seed, pair key), never from a
run-wide generator (the reference's test.py draws from one, so its images depend on batch position), and
with --batch-invariant (the CPU's default) the networks see one pair at a time, so not even float rounding
depends on the batch size.
Pairs are split across processes by pair (contiguous runs of the manifest's order, pending pairs apart from
finished ones), so process counts differ by at most one pair; a rerun skips the pairs whose images all
exist. --keys / --keys-from / --limit sample a subset.

GEN/{H}x{W}/{key}.png at the shards' resolution and at the reference's evaluation sizes (256x176 and
512x352: bicubic with antialias, truncated to uint8, as test.py), GEN/index.parquet (one row per pair),
GEN/settings.json (what changes the pixels; a rerun with other settings is refused unless --overwrite).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0]) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from shards import storage  # noqa: E402
from shards.manifest import MANIFEST_NAME, ManifestError  # noqa: E402
from shards.reader import ShardError, iter_shard_members, iter_shard_positions, pipeline, resolve, shard_keys  # noqa: E402
from shards.schema import split_key  # noqa: E402
from train.config import FACE_MISSING, ConfigError  # noqa: E402
from train.convert import ConvertError, LoadedWeights, load_weights  # noqa: E402
from train.data import collate, decode_members, split_count  # noqa: E402
from train.objective import latent_mean  # noqa: E402
from train.sampling import (  # noqa: E402
    EVAL_SIZES, decode_images, denoise, evaluation_resize, make_scheduler, pair_noise, to_uint8,
)
from train.validation import ValidationError, load_vae_decoder, manifest_vae_folder  # noqa: E402

LOG = logging.getLogger("train.sample")

SETTINGS_NAME = "settings.json"
INDEX_NAME = "index.parquet"
PARTS_DIR = ".index-parts"
EDITS_DIR = "edits"


class SampleError(ValueError):
    """Sampling cannot start or continue as asked; the message names the file or option and the reason."""


# -- inputs: shards, edits ----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Donor:
    """One sample whose face, or appearance (texture latent + CLIP tokens), replaces every pair's."""

    spec: str
    key: str
    sample: dict


def parse_spec(spec: str, *, default_shards: str) -> tuple[str, str]:
    """``KEY`` (a pair of --shards) or ``SHARDS:KEY`` (keys hold no colon, URLs may)."""
    shards, sep, key = spec.rpartition(":")
    if not sep:
        shards = default_shards
    try:
        split_key(key)
    except ValueError as error:
        raise SampleError(f"{spec}: {error}") from error
    return shards, key


def find_donor(spec: str, *, default_shards: str, geometry) -> Donor:
    shards, key = parse_spec(spec, default_shards=default_shards)
    source = resolve(shards)
    for sample in pipeline(source):
        if sample["__key__"] == key:
            if sample["tgt_pose"].shape[:2] != (geometry.height, geometry.width) or \
                    sample["src_clip"].shape[0] != geometry.clip_dim:
                raise SampleError(f"{spec}: {shards} holds samples of another resolution or CLIP width than --shards")
            return Donor(spec=spec, key=key, sample=sample)
    raise SampleError(f"{spec}: no pair {key!r} in {shards}")


def apply_edits(sample: dict, *, face: Donor | None, appearance: Donor | None) -> dict:
    if face is None and appearance is None:
        return sample
    edited = dict(sample)
    if face is not None:
        edited["face_emb"] = face.sample["face_emb"]
        edited["meta"] = dict(sample["meta"], face_ok=bool(face.sample["meta"]["face_ok"]))
    if appearance is not None:
        for name in ("ref_latent", "src_clip", "tex_clip"):
            edited[name] = appearance.sample[name]
    return edited


# -- the run --------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SampleOptions:
    shards: str
    weights: str
    output_dir: Path
    steps: int = 20
    guidance: float = 3.5
    seed: int = 42
    scheduler: str = "reference"
    batch_size: int = 8
    batch_invariant: str = "auto"  # on | off | auto (on for CPU, off for GPU)
    dtype: str = "auto"
    bank_precision: str = "fp16"
    face_missing: str | None = None
    face_from: str | None = None
    appearance_from: str | None = None
    vae: str | None = None
    base_model: Path | None = None
    projector: Path | None = None
    pose_guider: Path | None = None
    overwrite: bool = False
    keys: tuple[str, ...] | None = None  # --keys / --keys-from: only these pairs
    limit: int | None = None
    timeout: float = 1800.0  # seconds: the process group's collective timeout


@dataclass(frozen=True, kw_only=True)
class PairRef:
    """Where one pair lives: shard (index in the manifest's list), position in it, key."""

    shard: int
    position: int
    key: str


def contiguous_run(items: list, *, parts: int, index: int) -> list:
    """Part ``index`` of ``parts`` contiguous runs of ``items`` whose sizes differ by at most one."""
    first = sum(split_count(len(items), parts, p) for p in range(index))
    return items[first:first + split_count(len(items), parts, index)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train/sample.py", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, help="output folder of build_shards.py (with manifest.json)")
    parser.add_argument("--weights", required=True,
                        help="a weights folder (train.convert), an MCLD checkpoint folder or RUN/checkpoint-STEP")
    parser.add_argument("--output-dir", required=True, type=Path, help="GEN folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scheduler", choices=("reference", "training"), default="reference")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs read and written together")
    parser.add_argument("--batch-invariant", choices=("auto", "on", "off"), default="auto",
                        help="on: the networks see one pair at a time, so a pair's PNG is the same bytes for every "
                             "--batch-size; off: whole batches (faster on a GPU; another batch size can move a pixel "
                             "by one level); auto: on for CPU, off for GPU")
    parser.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                        help="model precision; auto: fp16 on GPU, fp32 on CPU")
    parser.add_argument("--bank-precision", choices=("fp16", "fp32"), default="fp16",
                        help="ReferenceNet features rounded to float16 as the reference does, or kept")
    parser.add_argument("--face-missing", choices=FACE_MISSING, default=None,
                        help="pairs without a face (default: the weights' model.face_missing)")
    parser.add_argument("--face-from", default=None, help="[SHARDS:]KEY: every pair gets this sample's face")
    parser.add_argument("--appearance-from", default=None,
                        help="[SHARDS:]KEY: every pair gets this sample's texture latent and CLIP tokens")
    parser.add_argument("--vae", default=None, help="VAE folder for decoding (default: the shards' manifest's)")
    parser.add_argument("--base-model", type=Path, default=None, help="SD folder, for an MCLD checkpoint folder")
    parser.add_argument("--projector", type=Path, default=None, help="Resampler kwargs JSON, for an MCLD checkpoint")
    parser.add_argument("--pose-guider", type=Path, default=None, help="PoseGuider kwargs JSON, for an MCLD checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace a GEN folder made with other settings")
    subset = parser.add_argument_group("subset (default: every pair of --shards)")
    subset.add_argument("--keys", default=None, help="comma-separated pair keys: sample only these")
    subset.add_argument("--keys-from", type=Path, default=None,
                        help="a file of pair keys, one per line (blank lines and # comments ignored)")
    subset.add_argument("--limit", type=int, default=None,
                        help="at most N pairs: the first of the selection in the manifest's order")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a process may wait in a collective (the process group's timeout; default 1800)")
    return parser


def read_keys(*, keys: str | None, keys_from: Path | None) -> tuple[str, ...] | None:
    """--keys and --keys-from together, in order, without repeats; None when neither is given."""
    if keys is None and keys_from is None:
        return None
    found: list[str] = [k.strip() for k in keys.split(",") if k.strip()] if keys else []
    if keys_from is not None:
        try:
            text = keys_from.read_text(encoding="utf-8")
        except OSError as error:
            raise SampleError(f"--keys-from {keys_from}: cannot read: {error}") from error
        found += [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not found:
        raise SampleError("--keys / --keys-from name no pair key")
    for key in found:
        try:
            split_key(key)
        except ValueError as error:
            raise SampleError(f"--keys: {key!r}: {error}") from error
    return tuple(dict.fromkeys(found))


def parse_options(argv: list[str] | None) -> SampleOptions:
    args = build_parser().parse_args(argv)
    if args.steps <= 0 or args.batch_size <= 0:
        raise SampleError("--steps and --batch-size must be positive")
    if args.limit is not None and args.limit <= 0:
        raise SampleError(f"--limit must be positive, got {args.limit}")
    if args.timeout <= 0:
        raise SampleError(f"--timeout must be positive, got {args.timeout}")
    keys = read_keys(keys=args.keys, keys_from=args.keys_from)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SampleOptions) if f.name != "keys"}
    return SampleOptions(**values, keys=keys)


def _atomic_png(image: np.ndarray, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image).save(temporary, format="PNG")
    temporary.replace(path)


def manifest_sha256(shards: str) -> str:
    with storage.open_read(storage.join(shards, MANIFEST_NAME)) as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "fp32"
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class Sampler:
    """One process's share of a sampling run (each process reads its own pairs; nothing via rank 0)."""

    def __init__(self, options: SampleOptions) -> None:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        self.options = options
        # As Accelerator does: `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu` means CPU processes (gloo).
        # The timeout bounds every collective (set explicitly: the backends' defaults differ, 10 to 30 min).
        self.state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"),
                                  timeout=datetime.timedelta(seconds=options.timeout))
        self.device = self.state.device
        self.source = resolve(options.shards)
        manifest = self.source.manifest
        if manifest is None:
            raise SampleError(f"--shards {options.shards}: give an output folder with manifest.json, not bare shards")
        self.manifest = manifest
        self.loaded: LoadedWeights = load_weights(options.weights, base_model=options.base_model,
                                                  projector_json=options.projector, pose_guider_json=options.pose_guider)
        spec = self.loaded.spec
        if spec.clip_dim != manifest.clip_dim or spec.face_dim != manifest.face_dim:
            raise SampleError(
                f"--weights {options.weights}: CLIP width {spec.clip_dim} / face width {spec.face_dim}, but "
                f"{options.shards}'s manifest says {manifest.clip_dim} / {manifest.face_dim}"
            )
        self.dtype = _torch_dtype(options.dtype, self.device)
        if self.device.type == "cuda" and self.dtype == torch.float32:
            torch.backends.cuda.matmul.fp32_precision = "ieee"  # no TF32: parity with the CPU reference
            torch.backends.cudnn.conv.fp32_precision = "ieee"
        model = self.loaded.model
        model.face_missing = options.face_missing or spec.model.face_missing
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.scheduler = make_scheduler(options.scheduler, noise=spec.noise)
        self.vae = self._vae()
        geometry = manifest.geometry
        self.face = find_donor(options.face_from, default_shards=options.shards, geometry=geometry) \
            if options.face_from else None
        self.appearance = find_donor(options.appearance_from, default_shards=options.shards, geometry=geometry) \
            if options.appearance_from else None
        self.sizes = [(manifest.height, manifest.width)] + [s for s in EVAL_SIZES if s != (manifest.height, manifest.width)]
        invariant = options.batch_invariant
        self.batch_invariant = invariant == "on" or (invariant == "auto" and self.device.type != "cuda")
        self.settings = self._settings()

    def _vae(self) -> AutoencoderKL:
        folder = Path(self.options.vae) if self.options.vae else manifest_vae_folder(self.manifest,
                                                                                       where=self.options.shards)
        return load_vae_decoder(folder, scaling_factor=float(self.manifest.vae_scaling_factor), device=self.device)

    def _settings(self) -> dict[str, Any]:
        options = self.options
        return {
            "weights": options.weights, "weights_sha256": self.loaded.fingerprint,
            "steps": options.steps, "guidance": options.guidance, "seed": options.seed,
            "scheduler": options.scheduler, "scheduler_config": {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")},
            "dtype": str(self.dtype).removeprefix("torch."), "bank_precision": options.bank_precision,
            "face_missing": self.model.face_missing,
            "edits": {"face_from": options.face_from, "appearance_from": options.appearance_from},
            "shards": options.shards, "manifest_sha256": manifest_sha256(options.shards),
            "face_mode": str(self.manifest.settings.get("face_mode", "paper")),
            "resolution": [self.manifest.height, self.manifest.width],
            "sizes": [list(s) for s in self.sizes],
            "noise": "per pair: torch.Generator('cpu') seeded with sha256(seed, key)",
            "batch_invariant": self.batch_invariant,
        }

    def _prepare_output(self) -> None:
        """Refuse a GEN made with other settings (unless --overwrite); every process checks, rank 0 writes."""
        out = self.options.output_dir
        path = out / SETTINGS_NAME
        settings = json.loads(json.dumps(self.settings))
        if path.is_file():
            existing = json.loads(path.read_text(encoding="utf-8"))
            if existing != settings:
                if not self.options.overwrite:
                    changed = sorted(k for k in set(existing) | set(settings) if existing.get(k) != settings.get(k))
                    raise SampleError(
                        f"{path}: {out} was made with other settings ({', '.join(changed)} differ); pass "
                        "--overwrite to replace it, or choose another --output-dir"
                    )
                self.state.wait_for_everyone()
                if self.state.is_main_process:
                    for size in {*(f"{h}x{w}" for h, w in existing.get("sizes", [])), EDITS_DIR, PARTS_DIR}:
                        shutil.rmtree(out / size, ignore_errors=True)
                    (out / INDEX_NAME).unlink(missing_ok=True)
                    path.unlink()
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            for height, width in self.sizes:
                (out / f"{height}x{width}").mkdir(parents=True, exist_ok=True)
            if self.face or self.appearance:
                (out / EDITS_DIR).mkdir(exist_ok=True)
            shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
            (out / PARTS_DIR).mkdir()
            temporary = path.with_name(SETTINGS_NAME + ".tmp")
            temporary.write_text(json.dumps(settings, indent=1, sort_keys=True), encoding="utf-8")
            temporary.replace(path)
        self.state.wait_for_everyone()

    def _paths(self, key: str) -> list[Path]:
        out = self.options.output_dir
        paths = [out / f"{h}x{w}" / f"{key}.png" for h, w in self.sizes]
        if self.face or self.appearance:
            paths.append(out / EDITS_DIR / f"{key}.png")
        return paths

    def catalogue(self) -> list[PairRef]:
        """Every pair of --shards in the manifest's order, from the shards' tar headers (no member data)."""
        pairs = []
        for index, url in enumerate(self.source.urls):
            pairs += [PairRef(shard=index, position=p, key=k) for p, k in enumerate(shard_keys(url))]
        return pairs

    def selection(self, pairs: list[PairRef]) -> list[PairRef]:
        """--keys (in the manifest's order, every key must exist), then --limit."""
        options = self.options
        if options.keys is not None:
            wanted = set(options.keys)
            missing = [k for k in options.keys if k not in {p.key for p in pairs}]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise SampleError(f"--keys: {len(missing)} pair(s) not in {options.shards}: {shown}")
            pairs = [p for p in pairs if p.key in wanted]
        if options.limit is not None:
            pairs = pairs[:options.limit]
        return pairs

    def assignment(self, pairs: list[PairRef]) -> tuple[list[PairRef], list[PairRef]]:
        """This process's (pending, finished) pairs: contiguous runs of each list, sizes differing by at most
        one across processes, whatever the shard layout. Finished pairs are only read for the index."""
        pending = [p for p in pairs if not all(path.is_file() for path in self._paths(p.key))]
        pending_keys = {p.key for p in pending}
        finished = [p for p in pairs if p.key not in pending_keys]
        rank, world = self.state.process_index, self.state.num_processes
        return contiguous_run(pending, parts=world, index=rank), contiguous_run(finished, parts=world, index=rank)

    def _samples(self, mine: list[PairRef], pending: set[str], rows: list[dict]) -> Iterator[dict]:
        geometry = self.manifest.geometry
        expected = self.source.expected()
        by_shard: dict[int, list[int]] = {}
        for pair in sorted(mine, key=lambda p: (p.shard, p.position)):
            by_shard.setdefault(pair.shard, []).append(pair.position)
        for shard, positions in by_shard.items():
            url = self.source.urls[shard]
            record = expected.get(url)
            if record is not None and len(positions) == record.samples:
                members_stream = iter_shard_members(url, expected=record)  # whole shard: checksummed
            else:
                members_stream = iter_shard_positions(url, positions)
            for members in members_stream:
                sample = decode_members(members, geometry=geometry)
                meta = sample["meta"]
                rows.append({"key": sample["__key__"], "source_id": meta["source_id"], "target_id": meta["target_id"],
                             "source_path": meta["source_path"], "target_path": meta["target_path"],
                             "seed": int(self.options.seed), "face_ok": bool(meta["face_ok"])})
                if sample["__key__"] in pending:
                    yield sample

    def _batches(self, mine: list[PairRef], pending: set[str], rows: list[dict]) -> Iterator[list[dict]]:
        batch: list[dict] = []
        for sample in self._samples(mine, pending, rows):
            batch.append(sample)
            if len(batch) == self.options.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _contact_sheet(self, *, sample: dict, donor: Donor, pose: np.ndarray, result: np.ndarray) -> np.ndarray:
        height, width = result.shape[:2]
        cells = [self._portrait(sample), self._portrait(donor.sample), pose, result]
        fitted = [c if c.shape[:2] == (height, width) else
                  np.asarray(Image.fromarray(c).resize((width, height), Image.BICUBIC)) for c in cells]
        return np.concatenate(fitted, axis=1)

    def _portrait(self, sample: dict) -> np.ndarray:
        """The sample's source preview, or its texture map decoded when the shards keep no previews."""
        if "src" in sample:
            return sample["src"]
        latent = torch.from_numpy(np.asarray(sample["ref_latent"]))[None].to(self.device)
        scale = float(self.manifest.vae_scaling_factor)
        return to_uint8(decode_images(self.vae, latent_mean(latent, scaling_factor=scale), scaling_factor=scale))[0]

    def _generate(self, samples: list[dict]) -> torch.Tensor:
        """Decoded images in [-1, 1] of one network batch, in the samples' order."""
        edited = [apply_edits(s, face=self.face, appearance=self.appearance) for s in samples]
        batch = collate(edited).to(self.device)
        scale = float(self.manifest.vae_scaling_factor)
        shape = (batch.tgt_latent.shape[1] // 2, *batch.tgt_latent.shape[2:])
        noise = pair_noise(self.options.seed, batch.keys, shape)
        latents = denoise(self.model, batch, noise=noise, scheduler=self.scheduler, steps=self.options.steps,
                          guidance_scale=self.options.guidance, scaling_factor=scale,
                          bank_fp16=self.options.bank_precision == "fp16")
        return decode_images(self.vae, latents.float(), scaling_factor=scale)

    def _sample_batch(self, samples: list[dict]) -> None:
        # CPU and GPU kernels pick their algorithm (and so their float rounding) by batch shape: one pair per
        # network call is what makes a pair's bytes independent of --batch-size and of its batch's fill.
        groups = [[s] for s in samples] if self.batch_invariant else [samples]
        images = torch.cat([self._generate(group) for group in groups])
        keys = [sample["__key__"] for sample in samples]
        own = to_uint8(images)
        out = self.options.output_dir
        for index, key in enumerate(keys):
            for height, width in self.sizes:
                pixels = own[index] if (height, width) == tuple(own.shape[1:3]) else \
                    evaluation_resize(images[index:index + 1], (height, width))[0]
                _atomic_png(pixels, out / f"{height}x{width}" / f"{key}.png")
            donor = self.face or self.appearance
            if donor is not None:
                pose = samples[index]["tgt_pose"][:, :, ::-1]
                sheets = [self._contact_sheet(sample=samples[index], donor=d, pose=pose, result=own[index])
                          for d in (self.face, self.appearance) if d is not None]
                _atomic_png(np.concatenate(sheets, axis=0), out / EDITS_DIR / f"{key}.png")

    def run(self) -> dict[str, Any]:
        self._prepare_output()
        todo, finished = self.assignment(self.selection(self.catalogue()))
        # Every process has looked at which images exist before any process writes one.
        self.state.wait_for_everyone()
        rows: list[dict] = []
        done = 0
        progress = tqdm(total=len(todo), desc=f"pairs [rank {self.state.process_index}]", unit="pair",
                        disable=not self.state.is_local_main_process)
        for samples in self._batches(todo + finished, {p.key for p in todo}, rows):
            self._sample_batch(samples)
            done += len(samples)
            progress.update(len(samples))
        progress.close()
        out = self.options.output_dir
        part = out / PARTS_DIR / f"part-{self.state.process_index:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), part)
        self.state.wait_for_everyone()
        summary = {"rank": self.state.process_index, "sampled": done, "skipped": len(rows) - done}
        if self.state.is_main_process:
            parts = sorted((out / PARTS_DIR).glob("part-*.parquet"))
            table = pa.concat_tables([pq.read_table(p) for p in parts])
            if (out / INDEX_NAME).is_file():  # a subset run keeps the rows of the pairs it did not select
                earlier = pq.read_table(out / INDEX_NAME)
                ours = set(table.column("key").to_pylist())
                kept = [row for row in earlier.to_pylist() if row["key"] not in ours]
                table = pa.concat_tables([table, pa.Table.from_pylist(kept, schema=INDEX_SCHEMA)])
            table = table.sort_by("key")
            temporary = out / (INDEX_NAME + ".tmp")
            pq.write_table(table, temporary)
            temporary.replace(out / INDEX_NAME)
            shutil.rmtree(out / PARTS_DIR)
            summary["pairs"] = table.num_rows
        self.state.wait_for_everyone()
        return summary


INDEX_SCHEMA = pa.schema([("key", pa.string()), ("source_id", pa.string()), ("target_id", pa.string()),
                          ("source_path", pa.string()), ("target_path", pa.string()), ("seed", pa.int64()),
                          ("face_ok", pa.bool_())])

USER_ERRORS = (SampleError, ConvertError, ConfigError, ShardError, ManifestError, ValidationError)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = Sampler(parse_options(argv)).run()
    except USER_ERRORS as error:
        print(f"train/sample.py: error: {error}", file=sys.stderr)
        return 2
    # One write per line: the processes share stdout, and print() writes the text and the newline apart,
    # so two ranks' lines could run together. A write under PIPE_BUF bytes is atomic.
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
