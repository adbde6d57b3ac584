"""The DensePose R-CNN network, module by module, with detectron2's parameter names."""

from preprocess.densepose.model.rcnn import DensePoseRCNN, Detections

__all__ = ["DensePoseRCNN", "Detections"]
