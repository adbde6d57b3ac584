"""Our converted weights + sampler against the reference pipeline's own outputs (../shared/fixtures/mcld_infer).

Every ``case_*`` folder found is a case (MCLD_INFER_FIXTURES overrides the folder), with both schedulers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from tests.train.conftest import INFER
from train.convert import load_weights, main as convert_main
from train.data import TrainBatch, pose_channels_first
from train.sampling import decode_images, denoise, evaluation_resize, make_scheduler, to_uint8

SCALING = 0.18215
#: At most this fraction of a uint8 output's values may differ (by one level) from the reference's: float
#: rounding between thread counts moves 2 of case_b's 24,576 (thread_tolerance.json); a wrong resize or
#: truncation moves far more.
MAX_DIFFERING = 1e-3


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    weights = INFER.require() / "weights"
    out = tmp_path_factory.mktemp("mcld-converted") / "weights"
    assert convert_main(["from-mcld", str(weights), "--base-model", str(weights), "-o", str(out),
                         "--projector", str(weights / "image_proj_model.json"),
                         "--pose-guider", str(weights / "pose_guider.json")]) == 0
    loaded = load_weights(out)
    vae = AutoencoderKL.from_pretrained(str(weights / "vae"), local_files_only=True).eval()
    return loaded, vae


def case_batch(case: Path) -> tuple[TrainBatch, dict]:
    inputs = np.load(case / "inputs.npz")
    meta = json.loads((case / "meta.json").read_text())
    pairs = int(meta["pairs"])
    poses = []
    for index in range(pairs):
        # The reference's dataset reads the PNG with PIL: channels (V, U, I), what our shards' reader gives.
        pil = np.asarray(Image.open(case / f"pair_{index}" / "tgt_pose.png").convert("RGB"))
        from_array = pose_channels_first(inputs["tgt_pose_iuv"][index])
        assert np.array_equal(pil.transpose(2, 0, 1), from_array)
        poses.append(from_array)
    ref = torch.from_numpy(inputs["ref_latent"])
    batch = TrainBatch(
        keys=[f"{case.name}_{i}__pair" for i in range(pairs)], tgt_latent=ref.clone(), ref_latent=ref,
        src_clip=torch.from_numpy(inputs["src_clip"]), tex_clip=torch.from_numpy(inputs["tex_clip"]),
        face_emb=torch.from_numpy(inputs["face_emb"]), face_ok=torch.from_numpy(inputs["face_ok"]),
        tgt_pose=torch.from_numpy(np.stack(poses)),
    )
    return batch, meta


@pytest.mark.parametrize("scheduler", ["reference", "training"])
@pytest.mark.parametrize("case", INFER.params(ids=lambda case: case.name))
def test_sampler_matches_the_reference_pipeline(converted, case, scheduler):
    loaded, vae = converted
    assert loaded.model.face_missing == "project_zeros"  # what released weights expect
    expected = np.load(case / f"expected_{scheduler}_sched.npz")
    batch, meta = case_batch(case)
    shape = (len(batch), 4, meta["latent_height"], meta["latent_width"])
    # The reference draws its initial noise from one generator for the batch; inject the same noise.
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(meta["seed"])))
    np.testing.assert_array_equal(noise.numpy(), expected["init_latents"])
    sampler = make_scheduler(scheduler, noise=loaded.spec.noise)
    sampler.set_timesteps(int(meta["num_inference_steps"]))
    np.testing.assert_array_equal(sampler.timesteps.numpy(), expected["timesteps"])
    latents = denoise(loaded.model, batch, noise=noise, scheduler=sampler, steps=int(meta["num_inference_steps"]),
                      guidance_scale=float(meta["guidance_scale"]), scaling_factor=SCALING)
    np.testing.assert_allclose(latents.numpy(), expected["final_latents"], rtol=0, atol=5e-5)
    images = decode_images(vae, latents, scaling_factor=SCALING)
    np.testing.assert_allclose(images.permute(0, 2, 3, 1).numpy(), expected["image"], rtol=0, atol=2e-5)
    own = to_uint8(images).astype(np.int16)
    assert own.shape == expected["image_uint8"].shape
    assert np.abs(own - expected["image_uint8"]).max() <= 1
    assert (own != expected["image_uint8"]).mean() < MAX_DIFFERING
    for name in ("small", "large"):
        resized = evaluation_resize(images, tuple(meta["testpy_sizes"][name])).astype(np.int16)
        reference = expected[f"testpy_{name}_uint8"].astype(np.int16)
        assert resized.shape == reference.shape
        assert np.abs(resized - reference).max() <= 1
        assert (resized != reference).mean() < MAX_DIFFERING


def test_face_projection_matters_to_the_result(converted):
    """The zero-vector projection of a face-less pair is not a no-op: masking it instead moves the result."""
    loaded, _ = converted
    batch, meta = case_batch(INFER.cases[0])
    batch.face_ok = torch.zeros_like(batch.face_ok)
    batch.face_emb = torch.zeros_like(batch.face_emb)
    shape = (len(batch), 4, meta["latent_height"], meta["latent_width"])
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(1))
    settings = dict(noise=noise, scheduler=make_scheduler("reference", noise=loaded.spec.noise), steps=2,
                    guidance_scale=3.5, scaling_factor=SCALING)
    projected = denoise(loaded.model, batch, **settings)
    loaded.model.face_missing = "mask"
    try:
        masked = denoise(loaded.model, batch, **settings)
    finally:
        loaded.model.face_missing = "project_zeros"
    assert (projected - masked).abs().max() > 1e-3
