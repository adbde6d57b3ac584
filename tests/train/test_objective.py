from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from shards.schema import decode_sample, encode_field
from tests.train.conftest import CLIP_DIM, tiny_model
from train.config import ConditioningConfig, NoiseConfig
from train.data import TrainBatch, pose_channels_first
from train.objective import (
    ClipStats,
    augment_conditions,
    build_scheduler,
    face_mask,
    mcld_loss,
    pose_input,
    sample_latents,
    snr_weights,
    training_step,
)


def _batch(size: int = 2, *, hw: int = 64, seed: int = 0) -> TrainBatch:
    generator = torch.Generator().manual_seed(seed)
    latent = lambda: torch.cat([torch.randn(size, 4, hw // 8, hw // 8, generator=generator),  # noqa: E731
                                torch.full((size, 4, hw // 8, hw // 8), -8.0)], 1).half()
    pose = torch.zeros(size, 3, hw, hw, dtype=torch.uint8)
    pose[:, 2, :16, 24:40] = 23  # a head in I (channel 2 of V, U, I)
    return TrainBatch(
        keys=[f"a{i}__b{i}" for i in range(size)], tgt_latent=latent(), ref_latent=latent(),
        src_clip=torch.randn(size, CLIP_DIM, generator=generator).half(),
        tex_clip=torch.randn(size, CLIP_DIM, generator=generator).half(),
        face_emb=torch.randn(size, 512, generator=generator), face_ok=torch.ones(size, dtype=torch.bool), tgt_pose=pose,
    )


def test_latents_are_drawn_from_mean_and_logvar_then_scaled():
    mean = torch.randn(3, 4, 8, 8)
    logvar = torch.full((3, 4, 8, 8), np.log(0.25))
    distribution = torch.cat([mean, logvar], 1).half()
    drawn = sample_latents(distribution, scaling_factor=0.5, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    std = torch.exp(0.5 * distribution[:, 4:].float())  # ~0.5 (log 0.25 in float16)
    expected = (distribution[:, :4].float() + std * noise) * 0.5
    torch.testing.assert_close(drawn, expected)
    many = sample_latents(torch.cat([torch.zeros(1, 4, 64, 64), torch.zeros(1, 4, 64, 64)], 1), scaling_factor=2.0)
    assert abs(many.std().item() - 2.0) < 0.1  # logvar 0: unit std, times the scaling factor


def test_pose_reaches_the_guider_as_pil_sees_the_png():
    iuv = np.zeros((16, 16, 3), np.uint8)
    iuv[..., 0] = 23
    iuv[..., 1] = np.arange(16, dtype=np.uint8)[None] * 10
    iuv[..., 2] = 200
    png = encode_field("tgt_pose", iuv)
    pil = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # what the reference's loader saw
    decoded = decode_sample({"__key__": "a__b", "tgt_pose.png": png, **_other_members()})["tgt_pose"]
    ours = pose_channels_first(decoded)
    assert np.array_equal(ours.transpose(1, 2, 0), pil)
    assert np.array_equal(ours[2], iuv[..., 0])  # I is the last channel, as in the reference's pose[:, 2]
    expected = torch.from_numpy(pil.copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(pose_input(torch.from_numpy(ours)), expected)


def _other_members() -> dict:
    fields = {
        "tgt_latent": np.zeros((8, 2, 2), np.float16), "ref_latent": np.zeros((8, 2, 2), np.float16),
        "src_clip": np.zeros(4, np.float16), "tex_clip": np.zeros(4, np.float16),
        "face_emb": np.zeros(512, np.float32),
        "meta": {"source_id": "a", "target_id": "b", "source_path": "a.jpg", "target_path": "b.jpg", "face_ok": False},
    }
    encoded = {}
    for name, value in fields.items():
        suffix = "json" if name == "meta" else "npy"
        encoded[f"{name}.{suffix}"] = encode_field(name, value)
    return encoded


def test_face_mask_takes_head_parts_at_latent_size():
    pose = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    pose[0, 2, 0:16, 0:16] = 23
    pose[0, 2, 0:16, 48:64] = 24
    pose[0, 2, 48:64, 0:16] = 22  # a hand: not the face
    pose[0, 0, 48:64, 48:64] = 23  # V = 23 is not a part index
    mask = face_mask(pose, latent_size=(8, 8))
    assert mask.shape == (1, 1, 8, 8)
    expected = torch.zeros(8, 8)
    expected[0:2, 0:2] = 1
    expected[0:2, 6:8] = 1
    assert torch.equal(mask[0, 0], expected)


def test_min_snr_weights_follow_the_reference():
    """Worked out by hand from the schedules' SNR at t = 0, 100, 500, 999 (scaled_linear 0.00085..0.012):
    epsilon SNR 1175.44, 8.4539, 0.38185, 0.0046819 -> min(SNR, 5) / SNR; v-prediction (zero terminal SNR)
    SNR 1175.44, 7.8309, 0.31756, 0 -> the reference's min(SNR + 1, 5) / (SNR + 1). The textbook v form,
    min(SNR, 5) / (SNR + 1), would give 0 at t = 999 and 0.2410 at t = 500."""
    timesteps = torch.tensor([0, 100, 500, 999])
    expected = {
        "epsilon": [5 / 1175.4404, 5 / 8.453865, 1.0, 1.0],
        "v_prediction": [5 / 1176.4404, 5 / 8.830885, 1.0, 1.0],
    }
    for prediction, values in expected.items():
        scheduler = build_scheduler(NoiseConfig(prediction_type=prediction, zero_terminal_snr=prediction == "v_prediction"))
        weights = snr_weights(scheduler, timesteps, gamma=5.0)
        torch.testing.assert_close(weights, torch.tensor(values), rtol=1e-5, atol=0)
    zero_snr = build_scheduler(NoiseConfig())
    assert zero_snr.alphas_cumprod[-1] < 1e-6  # zero terminal SNR
    assert snr_weights(zero_snr, torch.tensor([999]), gamma=5.0).item() == pytest.approx(1.0)
    assert torch.equal(snr_weights(zero_snr, torch.tensor([3, 4]), gamma=None), torch.ones(2))


def test_loss_adds_the_face_region_mse():
    prediction = torch.zeros(2, 4, 4, 4)
    target = torch.ones(2, 4, 4, 4)
    target[1] = 3.0
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2, :2] = 1  # a quarter of the latent
    parts = mcld_loss(prediction, target, weights=torch.tensor([1.0, 0.5]), mask=mask, face_weight=1.0)
    mse = torch.tensor([1.0, 9.0])
    face = mse / 4
    assert parts.loss.item() == pytest.approx(((mse + face) * torch.tensor([1.0, 0.5])).mean().item())
    assert parts.face.item() == pytest.approx((face * torch.tensor([1.0, 0.5])).mean().item())
    assert parts.mse.item() == pytest.approx((mse * torch.tensor([1.0, 0.5])).mean().item())


def _stats() -> ClipStats:
    return ClipStats(null=torch.full((CLIP_DIM,), 0.25), std=torch.linspace(0.5, 2.0, CLIP_DIM))


def test_unconditional_steps_use_the_null_embedding_and_noise_the_source_token():
    batch = _batch(size=4000)
    torch.manual_seed(0)
    uncond = augment_conditions(batch, config=ConditioningConfig(cfg_drop_rate=1.0, clip_noise_scale=0.0), stats=_stats())
    assert uncond.uncond
    assert torch.equal(uncond.src_clip, torch.full((4000, CLIP_DIM), 0.25))
    assert torch.equal(uncond.tex_clip, torch.full((4000, CLIP_DIM), 0.25))
    noisy = augment_conditions(batch, config=ConditioningConfig(cfg_drop_rate=0.0, src_clip_drop_rate=0.0,
                                                                clip_noise_scale=0.05), stats=_stats())
    assert not noisy.uncond
    assert torch.equal(noisy.tex_clip, batch.tex_clip.float())
    spread = (noisy.src_clip - batch.src_clip.float()).std(dim=0)
    torch.testing.assert_close(spread, 0.05 * _stats().std, rtol=0.1, atol=0)
    dropped = augment_conditions(batch, config=ConditioningConfig(cfg_drop_rate=0.0, src_clip_drop_rate=0.5,
                                                                  clip_noise_scale=0.0), stats=_stats())
    nulled = (dropped.src_clip == 0.25).all(dim=1).float().mean().item()
    assert 0.45 < nulled < 0.55


def test_training_step_skips_the_referencenet_on_unconditional_steps():
    batch = _batch()
    scheduler = build_scheduler(NoiseConfig())
    for rate, reference_trains in ((1.0, False), (0.0, True)):
        model = tiny_model()
        result = training_step(model, batch, scheduler=scheduler, noise=NoiseConfig(),
                               conditioning=ConditioningConfig(cfg_drop_rate=rate), stats=_stats(), scaling_factor=0.18215)
        result.parts.loss.backward()
        assert result.uncond == (not reference_trains)
        gradients = [p.grad for p in model.reference_unet.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in gradients) == reference_trains
        assert result.parts.face > 0  # the head block in tgt_pose
        assert torch.isfinite(result.parts.loss)


class _Oracle(torch.nn.Module):
    """Knows the clean latent, so it can answer exactly what the objective asks for (a reference answer)."""

    def __init__(self, clean: torch.Tensor, scheduler, kind: str) -> None:
        super().__init__()
        self.clean, self.scheduler, self.kind = clean, scheduler, kind

    def forward(self, noisy, timesteps, **conditions):
        alphas = self.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        signal, sigma = alphas.sqrt(), (1 - alphas).sqrt()
        noise = (noisy - signal * self.clean) / sigma
        return noise if self.kind == "epsilon" else signal * noise - sigma * self.clean


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_target_is_the_noise_or_the_velocity_of_the_drawn_latent(prediction):
    batch = _batch(size=8)
    batch.tgt_latent[:, 4:] = -30.0  # (almost) no sampling spread: the clean latent is the mean
    clean = batch.tgt_latent[:, :4].float() * 0.18215
    noise = NoiseConfig(prediction_type=prediction, zero_terminal_snr=prediction == "v_prediction")
    scheduler = build_scheduler(noise)
    other = "epsilon" if prediction == "v_prediction" else "v_prediction"
    torch.manual_seed(0)
    settings = dict(scheduler=scheduler, noise=noise, conditioning=ConditioningConfig(), stats=_stats(),
                    scaling_factor=0.18215)
    right = training_step(_Oracle(clean, scheduler, prediction), batch, **settings)
    wrong = training_step(_Oracle(clean, scheduler, other), batch, **settings)
    assert right.parts.loss.item() < 1e-6
    assert wrong.parts.loss.item() > 1e-3
