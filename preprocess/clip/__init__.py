"""CLIP stage: transformers CLIPVisionModelWithProjection image_embeds, the CFG null embedding, run stats."""

from preprocess.clip.stage import ClipConfig, ClipStage
from preprocess.clip.stats import EmbeddingStats

__all__ = ["ClipConfig", "ClipStage", "EmbeddingStats"]
