"""CLIP image encoder on the resized image and texture: projected ``image_embeds`` as float16.

The processor is the PIL backend of transformers' CLIPImageProcessor (``CLIPImageProcessorPil``): it is the
code the MCLD reference ran (transformers 4.46 ``CLIPImageProcessor``), bit for bit; transformers 5's
default torchvision backend resizes differently (about one grey level), so we do not use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preprocess.common import ok_indices, store_float16
from preprocess.common.device import check_device_dtype
from preprocess.common.images import image_rows

STAGE = "clip"
COLUMN_PAIRS = (("image_resized", "img_clip"), ("texture_resized", "tex_clip"))  # (input column, output column)
PROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPE = "clip_vision_model"  # what CLIPVisionModelWithProjection folders (sd-image-variations) declare


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    path: Path  # CLIPVisionModelWithProjection folder, e.g. sd-image-variations-diffusers/image_encoder
    # Folder holding preprocessor_config.json; None: `path` itself, else the diffusers pipeline sibling
    # `path/../feature_extractor` (where sd-image-variations-diffusers keeps it).
    processor_path: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    expected_dim: int | None = None  # refuse a folder whose projection size differs (768 for ViT-L/14)
    max_batch: int = 32  # images per forward pass on the device

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.processor_path is not None:
            object.__setattr__(self, "processor_path", Path(self.processor_path))
        check_device_dtype(device=self.device, dtype=self.dtype, what="clip")
        if self.expected_dim is not None and self.expected_dim < 1:
            raise ValueError(f"clip: expected_dim must be positive or None, got {self.expected_dim}")
        if self.max_batch < 1:
            raise ValueError(f"clip: max_batch must be at least 1, got {self.max_batch}")


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: unreadable: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{file}: not a JSON object")
    return data


def processor_file(config: ClipConfig) -> Path:
    """The CLIPImageProcessor config the stage reads (its bytes change the output: the manifest checksums it)."""
    if config.processor_path is not None:
        candidates = [config.processor_path / PROCESSOR_FILE]
    else:
        candidates = [config.path / PROCESSOR_FILE, config.path.parent / "feature_extractor" / PROCESSOR_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"CLIP folder {config.path}: no CLIPImageProcessor config; looked for "
        f"{', '.join(str(c) for c in candidates)} (set processor_path to the folder that holds {PROCESSOR_FILE})"
    )


class ClipStage:
    """image_resized, texture_resized -> img_clip, tex_clip: float16 [D] projected CLIP image embeddings."""

    def __init__(self, *, config: ClipConfig) -> None:
        import torch
        from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

        self.config = config
        path = config.path
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP folder {path} does not exist or is not a directory")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"CLIP folder {path} has no config.json: expected a transformers CLIPVisionModelWithProjection "
                "folder such as sd-image-variations-diffusers/image_encoder"
            )
        model_type = _read_json(path / "config.json").get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(
                f"{path / 'config.json'}: model_type is {model_type!r}; the clip stage loads "
                f"CLIPVisionModelWithProjection folders ({MODEL_TYPE!r})"
            )
        model_config = CLIPVisionConfig.from_pretrained(path, local_files_only=True)
        self.embed_dim = int(model_config.projection_dim)
        if config.expected_dim is not None and self.embed_dim != config.expected_dim:
            raise ValueError(
                f"CLIP folder {path}: projection size {self.embed_dim} (config.json projection_dim), but "
                f"{config.expected_dim} is expected; the shards and the trainer need {config.expected_dim}-d "
                "image_embeds (sd-image-variations' ViT-L/14 gives 768)"
            )

        processor = processor_file(config)
        declared = _read_json(processor)
        kind = declared.get("image_processor_type") or declared.get("feature_extractor_type") or "CLIPImageProcessor"
        if not str(kind).startswith("CLIP"):
            raise ValueError(f"{processor}: declares {kind!r}; the clip stage needs a CLIPImageProcessor config")
        self.processor = CLIPImageProcessorPil.from_pretrained(processor.parent, local_files_only=True)
        crop = self.processor.crop_size
        side = int(model_config.image_size)
        if not (self.processor.do_center_crop and (crop["height"], crop["width"]) == (side, side)):
            raise ValueError(
                f"{processor}: must centre-crop to the model's image_size {side}x{side} "
                f"(do_center_crop {self.processor.do_center_crop}, crop_size {dict(crop)})"
            )
        self.input_side = side

        self.torch_dtype = getattr(torch, config.dtype)
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(
                path, config=model_config, local_files_only=True, dtype=self.torch_dtype
            )
        except (OSError, ValueError) as error:
            raise ValueError(f"CLIP folder {path}: cannot load CLIPVisionModelWithProjection: {error}") from error
        self.model = model.to(config.device).eval().requires_grad_(False)

        zeros = np.zeros((1, 3, side, side), np.float32)
        self._null = self._forward(zeros)[0]
        if not np.isfinite(self._null).all():
            raise ValueError(f"CLIP folder {path}: the embedding of an all-zeros input is not finite")

    def null_embedding(self) -> np.ndarray:
        """float32 [D]: image_embeds of an all-zeros pixel_values tensor, what CFG dropout feeds the encoder."""
        return self._null.copy()


    def pixel_values(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 images (any sizes) -> float32 [n, 3, S, S], the CLIP processor's output."""
        out = self.processor(images=list(images), return_tensors="np", input_data_format="channels_last")
        return np.asarray(out["pixel_values"], np.float32)

    def _forward(self, pixel_values: np.ndarray) -> np.ndarray:
        import torch

        out = np.empty((len(pixel_values), self.embed_dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(pixel_values), self.config.max_batch):
                x = torch.tensor(pixel_values[start : start + self.config.max_batch], device=self.config.device)
                embeds = self.model(pixel_values=x.to(self.torch_dtype)).image_embeds
                out[start : start + len(x)] = embeds.to(torch.float32).cpu().numpy()
        return out

    def embed(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 images -> float32 [n, D] image_embeds."""
        if len(images) == 0:
            return np.empty((0, self.embed_dim), np.float32)
        return self._forward(self.pixel_values(images))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        rows = ok_indices(batch)
        images = [row for column, _ in COLUMN_PAIRS for row in image_rows(batch, column, rows, stage=STAGE, size=None)]
        embeds = self.embed(images)
        outputs = store_float16(batch, rows, embeds, columns=COLUMN_PAIRS, shape=(self.embed_dim,), stage=STAGE,
                                reason="clip_nonfinite", what="embedding")
        batch.update(outputs)
        return batch
