import json
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from diffusers import AutoencoderKL
from PIL import Image

from preprocess.common.images import resize_to
from preprocess.vae.stage import VaeConfig, VaeStage
from tests.preprocess.vae.batches import RESOLUTIONS, make_batch

FP16_MAX_FINITE_ROUNDING = 65520.0  # float16 rounds values below this to 65504, at or above it to inf


def reference_moments(vae_dir, photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """The MCLD reference's way: PIL resize (default filter), ToTensor, Normalize(0.5, 0.5), latent_dist."""
    vae = AutoencoderKL.from_pretrained(vae_dir)
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    pil = Image.fromarray(photo).resize((width, height))
    with torch.no_grad():
        dist = vae.encode(transform(pil)[None]).latent_dist
    return torch.cat([dist.mean, dist.logvar], dim=1)[0].numpy()


def assert_fp16_of(stored: np.ndarray, exact: np.ndarray) -> None:
    """stored is float16 and equals exact up to float16 rounding (plus float32 batching noise)."""
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored.astype(np.float32), exact, rtol=2.0**-10, atol=1e-5)
    assert np.mean(stored == exact.astype(np.float16)) > 0.99


def test_resize_to_is_the_reference_pil_resize(photos):
    photo = photos["image"]
    out = resize_to(photo, 512, 352)
    assert out.shape == (512, 352, 3) and out.dtype == np.uint8
    # The reference calls PIL's resize with its default filter, which is bicubic.
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(photo).resize((352, 512))))
    np.testing.assert_array_equal(
        out, np.asarray(Image.fromarray(photo).resize((352, 512), Image.Resampling.BICUBIC))
    )
    assert not np.array_equal(out, np.asarray(Image.fromarray(photo).resize((352, 512), Image.Resampling.BILINEAR)))


def test_resize_to_refuses_what_is_not_rgb_uint8(photos):
    with pytest.raises(ValueError, match="uint8"):
        resize_to(photos["image"].astype(np.float32), 64, 64)
    with pytest.raises(ValueError, match="H x W x 3"):
        resize_to(photos["image"][:, :, 0], 64, 64)


@pytest.mark.parametrize("height,width", RESOLUTIONS, ids=lambda v: str(v))
def test_latents_equal_diffusers_run_the_reference_way(tiny_vae, photos, height, width):
    stage = VaeStage(config=VaeConfig(path=tiny_vae, height=height, width=width))
    image = resize_to(photos["image"], height, width)
    texture = resize_to(photos["texture"], height, width)
    out = stage(make_batch([image, texture], [texture, image]))

    assert out["img_latent"].shape == (2, 8, height // 8, width // 8)
    assert out["tex_latent"].shape == (2, 8, height // 8, width // 8)
    assert list(out["status"]) == ["ok", "ok"]
    ref_image = reference_moments(tiny_vae, photos["image"], height, width)
    ref_texture = reference_moments(tiny_vae, photos["texture"], height, width)
    assert_fp16_of(out["img_latent"][0], ref_image)
    assert_fp16_of(out["tex_latent"][0], ref_texture)
    assert_fp16_of(out["img_latent"][1], ref_texture)
    assert_fp16_of(out["tex_latent"][1], ref_image)
    # mean first, then logvar (clamped as diffusers does before sampling): not swapped, not scaled.
    assert not np.allclose(out["img_latent"][0, :4], out["img_latent"][0, 4:], atol=0.1)


def test_rows_already_failed_pass_through_untouched(tiny_vae, photos):
    stage = VaeStage(config=VaeConfig(path=tiny_vae, height=256, width=176))
    image = resize_to(photos["image"], 256, 176)
    blank = np.zeros((256, 176, 3), np.uint8)
    batch = make_batch([blank, image], [blank, image], status=["no_person", "ok"])
    out = stage(batch)
    assert list(out["status"]) == ["no_person", "ok"]
    assert list(out["reject_stage"]) == ["densepose", ""]
    assert not out["img_latent"][0].any() and not out["tex_latent"][0].any()
    alone = stage(make_batch([image], [image]))
    np.testing.assert_allclose(
        out["img_latent"][1].astype(np.float32), alone["img_latent"][0].astype(np.float32), rtol=2.0**-10, atol=1e-5
    )
    # A batch with no live row still gets its columns, of the right shape.
    none_ok = stage(make_batch([blank], [blank], status=["decode_failed"]))
    assert none_ok["img_latent"].shape == (1, 8, 32, 22) and none_ok["img_latent"].dtype == np.float16


def test_object_columns_as_ray_may_hand_them(tiny_vae, photos):
    stage = VaeStage(config=VaeConfig(path=tiny_vae, height=256, width=176))
    image = resize_to(photos["image"], 256, 176)
    texture = resize_to(photos["texture"], 256, 176)
    stacked = make_batch([image], [texture])
    objects = dict(stacked)
    for column in ("image_resized", "texture_resized"):
        objects[column] = np.empty(1, dtype=object)
        objects[column][0] = stacked[column][0]
        objects[column].flags.writeable = False
    a, b = stage(stacked), stage(objects)
    np.testing.assert_array_equal(a["img_latent"], b["img_latent"])
    np.testing.assert_array_equal(a["tex_latent"], b["tex_latent"])


def test_input_of_another_size_is_a_clear_error(tiny_vae, photos):
    stage = VaeStage(config=VaeConfig(path=tiny_vae, height=256, width=176))
    wrong = resize_to(photos["image"], 256, 256)
    with pytest.raises(ValueError, match=r"image_resized of img-0 is uint8 \(256, 256, 3\); expected uint8 \(256, 176, 3\)"):
        stage(make_batch([wrong], [wrong]))
    batch = make_batch([resize_to(photos["image"], 256, 176)], [resize_to(photos["image"], 256, 176)])
    del batch["texture_resized"]
    with pytest.raises(ValueError, match="needs column 'texture_resized'"):
        stage(batch)


def _scaled_vae(src, dest, *, factor: float):
    """A copy of the VAE whose latent means are `factor` times larger (quant_conv's mean half scaled)."""
    vae = AutoencoderKL.from_pretrained(src)
    with torch.no_grad():
        vae.quant_conv.weight[:4] *= factor
        vae.quant_conv.bias[:4] *= factor
    vae.save_pretrained(dest)
    return dest


def test_float16_overflow_rejects_only_that_row(tiny_vae, photos, tmp_path):
    """A real overflow: scale the means so that one photo's latents leave float16's range, the other's not."""
    h, w = 256, 176
    image = resize_to(photos["image"], h, w)
    flat = np.full((h, w, 3), 128, np.uint8)
    plain = VaeStage(config=VaeConfig(path=tiny_vae, height=h, width=w))
    peak_image = np.abs(plain.encode(image[None])[0, :4]).max()
    peak_flat = np.abs(plain.encode(flat[None])[0, :4]).max()
    assert peak_image > 1.2 * peak_flat, "the test needs the photo's latents to peak above the flat image's"
    factor = FP16_MAX_FINITE_ROUNDING / float(np.sqrt(peak_image * peak_flat))
    stage = VaeStage(config=VaeConfig(path=_scaled_vae(tiny_vae, tmp_path / "big", factor=factor), height=h, width=w))

    out = stage(make_batch([flat, image], [flat, flat]))
    assert list(out["status"]) == ["ok", "vae_nonfinite"]
    assert list(out["reject_stage"]) == ["", "vae"]
    assert out["detail"][1].startswith("img-1: ")
    assert "image_resized latent has non-finite values after the float16 cast" in out["detail"][1]
    assert "texture_resized" not in out["detail"][1]
    assert np.isfinite(out["img_latent"]).all() and not out["img_latent"][1].any()
    assert np.abs(out["img_latent"][0, :4]).max() > 1000  # the surviving row really is scaled


def test_nan_weights_reject_every_row(tiny_vae, photos, tmp_path):
    vae = AutoencoderKL.from_pretrained(tiny_vae)
    with torch.no_grad():
        vae.encoder.conv_out.weight[0, 0, 0, 0] = float("nan")
    vae.save_pretrained(tmp_path / "nan")
    stage = VaeStage(config=VaeConfig(path=tmp_path / "nan", height=256, width=176))
    image = resize_to(photos["image"], 256, 176)
    out = stage(make_batch([image, image], [image, image]))
    assert list(out["status"]) == ["vae_nonfinite", "vae_nonfinite"]
    assert "image_resized latent has non-finite values in float32" in out["detail"][0]
    assert "texture_resized latent has non-finite values in float32" in out["detail"][0]


def test_scaling_factor_and_latent_shape(tiny_vae):
    stage = VaeStage(config=VaeConfig(path=tiny_vae, height=512, width=352))
    assert stage.scaling_factor == pytest.approx(0.18215)
    assert stage.latent_channels == 8 and stage.latent_shape == (8, 64, 44)


def test_folder_missing_its_config(tiny_vae, tmp_path):
    broken = tmp_path / "vae"
    shutil.copytree(tiny_vae, broken)
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"VAE folder {broken} has no config.json"):
        VaeStage(config=VaeConfig(path=broken))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VaeStage(config=VaeConfig(path=tmp_path / "nowhere"))


def test_folder_missing_its_weights(tiny_vae, tmp_path):
    broken = tmp_path / "vae"
    shutil.copytree(tiny_vae, broken)
    (broken / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match=rf"VAE folder {broken}: cannot load AutoencoderKL"):
        VaeStage(config=VaeConfig(path=broken))


def _edit_config(src, dest, **changes):
    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_folders_the_shard_format_cannot_describe(tiny_vae, tmp_path):
    with pytest.raises(ValueError, match="_class_name is 'UNet2DModel'"):
        VaeStage(config=VaeConfig(path=_edit_config(tiny_vae, tmp_path / "unet", _class_name="UNet2DModel")))
    with pytest.raises(ValueError, match="sets shift_factor"):
        VaeStage(config=VaeConfig(path=_edit_config(tiny_vae, tmp_path / "shift", shift_factor=0.1159)))
    three = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8), norm_num_groups=4, latent_channels=4,
    )
    three.save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match="downsampling factor 4"):
        VaeStage(config=VaeConfig(path=tmp_path / "three"))


def test_config_refuses_bad_settings(tiny_vae):
    with pytest.raises(ValueError, match="multiples of 8"):
        VaeConfig(path=tiny_vae, height=500)
    with pytest.raises(ValueError, match="bfloat16' is allowed only on CUDA"):
        VaeConfig(path=tiny_vae, dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype must be"):
        VaeConfig(path=tiny_vae, dtype="float16")
    with pytest.raises(ValueError, match="device must be"):
        VaeConfig(path=tiny_vae, device="mps")
    with pytest.raises(ValueError, match="max_batch"):
        VaeConfig(path=tiny_vae, max_batch=0)


def test_loading_never_touches_the_network(tiny_vae, no_network):
    VaeStage(config=VaeConfig(path=tiny_vae, height=256, width=176))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_close_to_cpu_float32(tiny_vae, photos):
    image = resize_to(photos["image"], 256, 176)
    cpu = VaeStage(config=VaeConfig(path=tiny_vae, height=256, width=176)).encode(image[None])
    gpu = VaeStage(config=VaeConfig(path=tiny_vae, height=256, width=176, device="cuda", dtype="bfloat16"))
    np.testing.assert_allclose(gpu.encode(image[None]), cpu, atol=0.1)
