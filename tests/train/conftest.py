from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL

from shards.manifest import MANIFEST_NAME, ModelRecord, read_manifest, write_manifest
from shards.reader import iter_samples
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from shards.writer import ShardWriter
from train.config import CONFIG_DIR, config_from_dict
from tests.conftest import SharedFixtures
from train.model import build_mcld

CLIP_DIM = 24

#: $MCLD_INFER_FIXTURES, else ../shared/fixtures/mcld_infer: the reference sampler's weights and case_* folders.
INFER = SharedFixtures.find("MCLD_INFER_FIXTURES", "mcld_infer",
                            lambda folder: sorted(p for p in folder.glob("case_*") if p.is_dir()))
GEOMETRY = Geometry(height=64, width=64, clip_dim=CLIP_DIM)


def tiny_config_dict(**sections) -> dict:
    """The packaged tiny config with sections updated (one level deep), e.g. solver={"max_steps": 3}."""
    data = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name].update(values)
        else:
            data[name] = values
    return data


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(tiny_config_dict(**sections)))
    return path


def tiny_model(*, clip_dim: int = CLIP_DIM, seed: int = 0, **model_overrides):
    config = config_from_dict(tiny_config_dict(model=model_overrides) if model_overrides else tiny_config_dict(),
                              where="tiny-test")
    torch.manual_seed(seed)
    return build_mcld(config.model, clip_dim=clip_dim, face_dim=512, latent_channels=8, where="tiny-test")


def model_inputs(*, batch: int = 2, clip_dim: int = CLIP_DIM, size: int = 64, seed: int = 1, face_ok=None) -> dict:
    generator = torch.Generator().manual_seed(seed)
    latent = size // 8
    return dict(
        noisy_latents=torch.randn(batch, 4, latent, latent, generator=generator),
        timesteps=torch.randint(0, 1000, (batch,), generator=generator),
        src_clip=torch.randn(batch, clip_dim, generator=generator),
        tex_clip=torch.randn(batch, clip_dim, generator=generator),
        face_emb=torch.randn(batch, 512, generator=generator) * 20,
        face_ok=torch.ones(batch, dtype=torch.bool) if face_ok is None else torch.tensor(face_ok),
        pose=torch.rand(batch, 3, size, size, generator=generator),
        ref_latents=torch.randn(batch, 4, latent, latent, generator=generator),
    )


def call(model, inputs: dict, **changes) -> torch.Tensor:
    values = dict(inputs, **changes)
    return model(values.pop("noisy_latents"), values.pop("timesteps"), **values)


def write_tiny_vae(folder: Path, *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.18215,
    )
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def add_vae_record(out_dir: Path, vae_folder: Path) -> None:
    """Record a VAE in a synthetic output's manifest, as the job does (names prefixed by the folder name)."""
    manifest = read_manifest(str(out_dir))
    files = {f"{vae_folder.name}/{p.relative_to(vae_folder).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(vae_folder.rglob("*")) if p.is_file()}
    manifest.models.append(ModelRecord(name="vae", source=str(vae_folder), files=files, settings={}, tiny=True))
    write_manifest(str(out_dir), manifest)


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory) -> Path:
    """16 samples, 4 shards of 64x64 synthetic features, CLIP width 24."""
    out = tmp_path_factory.mktemp("train-shards") / "out"
    write_synthetic_dataset(str(out), geometry=GEOMETRY, samples=16, samples_per_shard=4, seed=3)
    return out


def reset_accelerate() -> None:
    """Each in-process run builds its own Accelerator; accelerate keeps process-wide state between them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train_in_process(argv: list[str]) -> int:
    """train/run.py's main() in this process, accelerate's state reset after it."""
    from train.run import main

    try:
        return main(argv)
    finally:
        reset_accelerate()


@pytest.fixture()
def fresh_accelerate():
    yield
    reset_accelerate()


def clone(module):
    return copy.deepcopy(module)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Synthetic shards (5 pairs in 3 shards, a VAE recorded) and a 2-step tiny run's checkpoint (the
    sampler's end-to-end tests and the checkpoint export share it: one training run)."""
    base = tmp_path_factory.mktemp("sample-e2e")
    shards = base / "out"
    write_synthetic_dataset(str(shards), geometry=GEOMETRY, samples=5, samples_per_shard=2, seed=11)
    add_vae_record(shards, write_tiny_vae(base / "vae"))
    config = write_config(base / "c.yaml", validation={"vae_path": None}, checkpoint={"every": 2, "keep_last": 1},
                          data={"num_workers": 0, "batch_size": 2})
    run = base / "run"
    assert train_in_process(["--shards", str(shards), "--config", str(config), "--output-dir", str(run),
                             "--max-steps", "2"]) == 0
    return shards, run / "checkpoint-2"


def rewrite_shards(source: Path, out: Path, change: Callable[[dict], dict], *, samples_per_shard: int = 2) -> Path:
    """A copy of a shard folder (manifest, rejects and all) whose samples went through ``change``: the same
    keys in the same order, written and checksummed again by the project's writer."""
    manifest = read_manifest(str(source))
    out.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(".tar") and path.name != MANIFEST_NAME:
            shutil.copy2(path, out / path.name)
    records = []
    for split in manifest.splits:
        with ShardWriter(str(out), split=split, geometry=manifest.geometry, max_samples=samples_per_shard) as writer:
            for sample in iter_samples(str(source), split=split):
                writer.write(change({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}))
        records += writer.records
    manifest.shards = records
    write_manifest(str(out), manifest)
    return out
