"""``--models tiny`` CLIP: ViT-L/14's layout (patch 14 at 224, quick_gelu, projection) at toy width."""

from __future__ import annotations

from pathlib import Path

TINY_DIM = 32  # the projection size (ViT-L/14's is 768)


def write_tiny_clip(dest_dir: Path, *, seed: int = 0) -> Path:
    """A seeded toy CLIPVisionModelWithProjection folder, with the CLIPImageProcessor config beside it.

    One folder holding config.json, model.safetensors and preprocessor_config.json, byte-identical per seed.
    """
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    dest_dir = Path(dest_dir)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=14,
        image_size=224,
        projection_dim=TINY_DIM,
        hidden_act="quick_gelu",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
    model.save_pretrained(dest_dir)
    # The default CLIPImageProcessor settings: shortest side 224, centre crop 224, OpenAI CLIP mean/std.
    processor = CLIPImageProcessorPil()
    processor.image_processor_type = "CLIPImageProcessor"
    processor.save_pretrained(dest_dir)
    return dest_dir
