import json
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

from preprocess.clip.stage import ClipConfig, ClipStage
from preprocess.clip.tiny import TINY_DIM
from preprocess.common.images import resize_to
from tests.preprocess.vae.batches import RESOLUTIONS, make_batch

FP16_MAX_FINITE_ROUNDING = 65520.0  # float16 rounds values below this to 65504, at or above it to inf

# sd-image-variations-diffusers/feature_extractor/preprocessor_config.json: the older, flat format.
SD_IMAGE_VARIATIONS_PROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def reference_embeds(clip_dir, photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """The MCLD reference's way: PIL resize, a default CLIPImageProcessor (transformers 4.x, the PIL code
    that transformers 5 names CLIPImageProcessorPil), then image_encoder(...).image_embeds."""
    encoder = CLIPVisionModelWithProjection.from_pretrained(clip_dir)
    pil = Image.fromarray(photo).resize((width, height))
    pixel_values = CLIPImageProcessorPil()(images=pil, return_tensors="pt").pixel_values
    with torch.no_grad():
        return encoder(pixel_values).image_embeds[0].numpy()


def assert_fp16_of(stored: np.ndarray, exact: np.ndarray) -> None:
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored.astype(np.float32), exact, rtol=2.0**-10, atol=1e-5)
    assert np.mean(stored == exact.astype(np.float16)) > 0.95


@pytest.mark.parametrize("height,width", RESOLUTIONS, ids=lambda v: str(v))
def test_embeddings_equal_transformers_run_the_reference_way(tiny_clip, photos, height, width):
    stage = ClipStage(config=ClipConfig(path=tiny_clip))
    image = resize_to(photos["image"], height, width)
    texture = resize_to(photos["texture"], height, width)
    out = stage(make_batch([image], [texture]))
    assert out["img_clip"].shape == (1, TINY_DIM) and out["tex_clip"].shape == (1, TINY_DIM)
    assert list(out["status"]) == ["ok"]
    assert_fp16_of(out["img_clip"][0], reference_embeds(tiny_clip, photos["image"], height, width))
    assert_fp16_of(out["tex_clip"][0], reference_embeds(tiny_clip, photos["texture"], height, width))


def test_processor_is_the_pil_code_the_reference_ran(tiny_clip, photos):
    """Bit-identical pixel_values to the default (reference) processor on the same H x W image."""
    stage = ClipStage(config=ClipConfig(path=tiny_clip))
    image = resize_to(photos["image"], 512, 352)
    expected = CLIPImageProcessorPil()(images=Image.fromarray(image), return_tensors="np").pixel_values
    np.testing.assert_array_equal(stage.pixel_values([image]), expected)


def test_null_embedding_is_the_encoders_output_for_all_zeros(tiny_clip):
    stage = ClipStage(config=ClipConfig(path=tiny_clip))
    null = stage.null_embedding()
    assert null.dtype == np.float32 and null.shape == (TINY_DIM,) == (stage.embed_dim,)
    encoder = CLIPVisionModelWithProjection.from_pretrained(tiny_clip)
    with torch.no_grad():
        expected = encoder(torch.zeros(1, 3, 224, 224)).image_embeds[0].numpy()
    np.testing.assert_allclose(null, expected, rtol=1e-6, atol=1e-7)
    null[:] = 0  # a copy: the stage's own value is unchanged
    assert stage.null_embedding().any()


def test_rows_already_failed_pass_through_untouched(tiny_clip, photos):
    stage = ClipStage(config=ClipConfig(path=tiny_clip))
    image = resize_to(photos["image"], 256, 176)
    blank = np.zeros((256, 176, 3), np.uint8)
    out = stage(make_batch([image, blank], [image, blank], status=["ok", "texture_empty"]))
    assert list(out["status"]) == ["ok", "texture_empty"]
    assert not out["img_clip"][1].any() and not out["tex_clip"][1].any()
    assert out["img_clip"][0].any()
    none_ok = stage(make_batch([blank], [blank], status=["no_person"]))
    assert none_ok["img_clip"].shape == (1, TINY_DIM) and none_ok["img_clip"].dtype == np.float16


def test_projection_size_other_than_expected(tiny_clip):
    expected = rf"CLIP folder {tiny_clip}: projection size {TINY_DIM} .* but 768 is expected"
    with pytest.raises(ValueError, match=expected):
        ClipStage(config=ClipConfig(path=tiny_clip, expected_dim=768))
    assert ClipStage(config=ClipConfig(path=tiny_clip, expected_dim=TINY_DIM)).embed_dim == TINY_DIM


def test_diffusers_pipeline_layout_with_the_older_processor_format(tiny_clip, photos, tmp_path):
    """sd-image-variations-diffusers keeps image_encoder/ and feature_extractor/ side by side."""
    encoder_dir = tmp_path / "sd-image-variations-diffusers" / "image_encoder"
    shutil.copytree(tiny_clip, encoder_dir)
    (encoder_dir / "preprocessor_config.json").unlink()
    (encoder_dir.parent / "feature_extractor").mkdir()
    (encoder_dir.parent / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps(SD_IMAGE_VARIATIONS_PROCESSOR)
    )
    image = resize_to(photos["image"], 512, 352)
    ours = ClipStage(config=ClipConfig(path=encoder_dir))
    theirs = ClipStage(config=ClipConfig(path=tiny_clip))
    np.testing.assert_array_equal(ours.embed([image]), theirs.embed([image]))

    (encoder_dir.parent / "feature_extractor" / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no CLIPImageProcessor config; looked for .*feature_extractor"):
        ClipStage(config=ClipConfig(path=encoder_dir))
    explicit = ClipStage(config=ClipConfig(path=encoder_dir, processor_path=tiny_clip))
    np.testing.assert_array_equal(explicit.embed([image]), theirs.embed([image]))


def _copy_with(src, dest, file, **changes):
    shutil.copytree(src, dest)
    data = json.loads((dest / file).read_text())
    data.update(changes)
    (dest / file).write_text(json.dumps(data))
    return dest


def test_folders_the_stage_cannot_use(tiny_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipStage(config=ClipConfig(path=tmp_path / "nowhere"))
    no_config = tmp_path / "no-config"
    shutil.copytree(tiny_clip, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"CLIP folder {no_config} has no config.json"):
        ClipStage(config=ClipConfig(path=no_config))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_clip, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="cannot load CLIPVisionModelWithProjection"):
        ClipStage(config=ClipConfig(path=no_weights))
    siglip = _copy_with(tiny_clip, tmp_path / "siglip", "config.json", model_type="siglip_vision_model")
    with pytest.raises(ValueError, match="model_type is 'siglip_vision_model'"):
        ClipStage(config=ClipConfig(path=siglip))
    other = _copy_with(
        tiny_clip, tmp_path / "other", "preprocessor_config.json", image_processor_type="ViTImageProcessor"
    )
    with pytest.raises(ValueError, match="declares 'ViTImageProcessor'"):
        ClipStage(config=ClipConfig(path=other))
    crop = _copy_with(tiny_clip, tmp_path / "crop", "preprocessor_config.json", crop_size={"height": 256, "width": 256})
    with pytest.raises(ValueError, match="must centre-crop to the model's image_size 224x224"):
        ClipStage(config=ClipConfig(path=crop))


def _scaled_projection(src, dest, *, factor: float):
    encoder = CLIPVisionModelWithProjection.from_pretrained(src)
    with torch.no_grad():
        encoder.visual_projection.weight *= factor
    encoder.save_pretrained(dest)
    shutil.copy(src / "preprocessor_config.json", dest / "preprocessor_config.json")
    return dest


def test_float16_overflow_rejects_only_that_row(tiny_clip, photos, tmp_path):
    """A real overflow: scale the projection so one photo's embedding leaves float16's range, the other's not."""
    plain = ClipStage(config=ClipConfig(path=tiny_clip))
    image = resize_to(photos["image"], 256, 176)
    flat = np.full((256, 176, 3), 128, np.uint8)
    peak_image, peak_flat = (np.abs(e).max() for e in plain.embed([image, flat]))
    assert peak_flat > 1.2 * peak_image, "the test needs the flat image's embedding to peak above the photo's"
    factor = FP16_MAX_FINITE_ROUNDING / float(np.sqrt(peak_image * peak_flat))
    stage = ClipStage(config=ClipConfig(path=_scaled_projection(tiny_clip, tmp_path / "big", factor=factor)))
    out = stage(make_batch([image, image], [image, flat]))
    assert list(out["status"]) == ["ok", "clip_nonfinite"]
    assert list(out["reject_stage"]) == ["", "clip"]
    assert out["detail"][1] == "img-1: texture_resized embedding has non-finite values after the float16 cast (overflow)"
    assert np.isfinite(out["tex_clip"]).all() and not out["tex_clip"][1].any() and not out["img_clip"][1].any()
    assert np.isfinite(stage.null_embedding()).all()


def test_non_finite_null_embedding_refuses_the_folder(tiny_clip, tmp_path):
    encoder = CLIPVisionModelWithProjection.from_pretrained(tiny_clip)
    with torch.no_grad():
        encoder.visual_projection.weight[0, 0] = float("nan")
    encoder.save_pretrained(tmp_path / "nan")
    shutil.copy(tiny_clip / "preprocessor_config.json", tmp_path / "nan" / "preprocessor_config.json")
    with pytest.raises(ValueError, match="all-zeros input is not finite"):
        ClipStage(config=ClipConfig(path=tmp_path / "nan"))


def test_embed_dim_and_config_checks(tiny_clip):
    assert ClipStage(config=ClipConfig(path=tiny_clip)).embed_dim == TINY_DIM
    with pytest.raises(ValueError, match="bfloat16' is allowed only on CUDA"):
        ClipConfig(path=tiny_clip, dtype="bfloat16")
    with pytest.raises(ValueError, match="expected_dim"):
        ClipConfig(path=tiny_clip, expected_dim=0)
    with pytest.raises(ValueError, match="max_batch"):
        ClipConfig(path=tiny_clip, max_batch=0)


def test_input_that_is_not_an_rgb_image_is_a_clear_error(tiny_clip, photos):
    stage = ClipStage(config=ClipConfig(path=tiny_clip))
    image = resize_to(photos["image"], 256, 176)
    batch = make_batch([image], [image])
    batch["texture_resized"] = batch["texture_resized"].astype(np.float32)
    with pytest.raises(ValueError, match=r"texture_resized of img-0 is float32 \(256, 176, 3\); expected uint8"):
        stage(batch)


def test_loading_never_touches_the_network(tiny_clip, monkeypatch):
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    ClipStage(config=ClipConfig(path=tiny_clip))
    assert attempts == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_close_to_cpu_float32(tiny_clip, photos):
    image = resize_to(photos["image"], 256, 176)
    cpu = ClipStage(config=ClipConfig(path=tiny_clip)).embed([image])
    gpu = ClipStage(config=ClipConfig(path=tiny_clip, device="cuda", dtype="bfloat16")).embed([image])
    np.testing.assert_allclose(gpu, cpu, atol=0.05)
