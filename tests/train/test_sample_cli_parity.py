"""The sampler's command line against the reference pipeline's own outputs (../shared/fixtures/mcld_infer).

train/sample.py itself runs, in-process, on every ``case_*`` found (MCLD_INFER_FIXTURES overrides the
folder) with both schedulers: the reference's four .pth files given as an MCLD folder plus --base-model,
shards built from the case's inputs by the project's writer, --bank-precision fp16 (the reference's bank
rounding). The one thing injected is the initial noise: the reference draws it for the whole batch from one
generator, the sampler per pair (train.sampling.pair_noise, seeded by the pair key, by design), so the
test gives each pair the reference's draw. Everything else (the weights' conversion and loading, reading
and collating the shards, the schedulers, CFG, decoding, the PNGs and their evaluation-size resize) is the
command line's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

import train.sample
from shards.reader import iter_samples
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from tests.train.conftest import INFER, rewrite_shards
from train.sampling import EVAL_SIZES, evaluation_resize

#: As the direct parity test (test_sample_parity.py): one level at most, on under 0.1% of the values.
MAX_DIFFERING = 1e-3


def case_shards(case: Path, out: Path) -> tuple[Path, dict[str, int], dict]:
    """A shard folder whose pairs carry the case's inputs; its keys and their pair index in the case."""
    inputs = np.load(case / "inputs.npz")
    meta = json.loads((case / "meta.json").read_text())
    pairs = int(meta["pairs"])
    geometry = Geometry(height=int(meta["height"]), width=int(meta["width"]), clip_dim=inputs["src_clip"].shape[1])
    write_synthetic_dataset(str(out / "synthetic"), geometry=geometry, samples=pairs, previews=False, seed=0)
    index = {sample["__key__"]: i for i, sample in enumerate(iter_samples(str(out / "synthetic")))}

    def with_case_inputs(sample: dict) -> dict:
        i = index[sample["__key__"]]
        face = inputs["face_emb"][i].astype(np.float32)
        return dict(sample, tgt_latent=inputs["ref_latent"][i], ref_latent=inputs["ref_latent"][i],
                    src_clip=inputs["src_clip"][i], tex_clip=inputs["tex_clip"][i], face_emb=face,
                    tgt_pose=inputs["tgt_pose_iuv"][i],
                    meta=dict(sample["meta"], face_ok=bool(inputs["face_ok"][i]),
                              face_emb_norm=float(np.linalg.norm(face))))

    return rewrite_shards(out / "synthetic", out / "shards", with_case_inputs), index, meta


def _within(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert ours.shape == reference.shape, what
    difference = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    assert difference.max() <= 1, f"{what}: max {difference.max()}"
    assert (difference > 0).mean() < MAX_DIFFERING, f"{what}: {(difference > 0).mean():.5f} of the values differ"


@pytest.mark.parametrize("scheduler", ["reference", "training"])
@pytest.mark.parametrize("case", INFER.params(ids=lambda case: case.name))
def test_the_sampler_cli_reproduces_the_reference_pipeline(case, scheduler, tmp_path, monkeypatch):
    weights = INFER.require() / "weights"
    shards, index, meta = case_shards(case, tmp_path)
    expected = np.load(case / f"expected_{scheduler}_sched.npz")
    init = torch.from_numpy(expected["init_latents"])

    def reference_noise(seed: int, keys: list[str], shape: tuple[int, ...]) -> torch.Tensor:
        assert tuple(shape) == tuple(init.shape[1:])
        return torch.stack([init[index[key]] for key in keys])

    monkeypatch.setattr(train.sample, "pair_noise", reference_noise)
    gen = tmp_path / "gen"
    try:
        status = train.sample.main([
            "--shards", str(shards), "--weights", str(weights), "--base-model", str(weights),
            "--projector", str(weights / "image_proj_model.json"), "--pose-guider", str(weights / "pose_guider.json"),
            "--vae", str(weights / "vae"), "--output-dir", str(gen), "--scheduler", scheduler,
            "--steps", str(meta["num_inference_steps"]), "--guidance", str(meta["guidance_scale"]),
            "--seed", str(meta["seed"]), "--bank-precision", "fp16", "--batch-size", str(len(index)),
        ])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert status == 0
    settings = json.loads((gen / "settings.json").read_text())
    assert settings["bank_precision"] == "fp16" and settings["face_missing"] == "project_zeros"
    assert settings["scheduler"] == scheduler and settings["dtype"] == "float32"
    height, width = int(meta["height"]), int(meta["width"])
    reference_images = torch.from_numpy(expected["image"]).permute(0, 3, 1, 2)
    for key, i in sorted(index.items()):
        own = np.asarray(Image.open(gen / f"{height}x{width}" / f"{key}.png"))
        _within(own, expected["image_uint8"][i], f"{case.name} {scheduler} pair {i} {height}x{width}")
        for size in EVAL_SIZES:
            # The reference's float image, resized as test.py's postprocess_image does.
            png = np.asarray(Image.open(gen / f"{size[0]}x{size[1]}" / f"{key}.png"))
            _within(png, evaluation_resize(reference_images[i:i + 1], size)[0],
                    f"{case.name} {scheduler} pair {i} {size[0]}x{size[1]}")
