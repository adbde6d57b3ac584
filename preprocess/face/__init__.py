"""Face stage: OpenCV res10 SSD face box -> 1.5x square crop -> insightface antelopev2 (SCRFD + glintr100) embedding."""

from preprocess.face.stage import FaceConfig, FaceStage

__all__ = ["FaceConfig", "FaceStage"]
