"""Straightforward, loop-based formulations of detectron2's steps, written from their definitions, to test
the vectorised model against (nothing here is imported by the product)."""

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two xyxy boxes (continuous coordinates, no +1)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Keep the best box, drop those overlapping it by more than threshold, repeat."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


def class_nms(boxes, scores, classes, threshold) -> list[int]:
    """NMS within each class, then all kept boxes by decreasing score."""
    kept = []
    for c in np.unique(classes):
        index = np.flatnonzero(classes == c)
        kept += [int(index[k]) for k in greedy_nms(boxes[index], scores[index], threshold)]
    return sorted(kept, key=lambda i: -scores[i])


def clip(box, height, width):
    return np.array([min(max(box[0], 0), width), min(max(box[1], 0), height),
                     min(max(box[2], 0), width), min(max(box[3], 0), height)], np.float64)


def encode(source: np.ndarray, target: np.ndarray, weights) -> np.ndarray:
    """The deltas that take a source box to a target box (Faster R-CNN's parametrisation)."""
    sw, sh = source[2] - source[0], source[3] - source[1]
    tw, th = target[2] - target[0], target[3] - target[1]
    sx, sy = source[0] + sw / 2, source[1] + sh / 2
    tx, ty = target[0] + tw / 2, target[1] + th / 2
    wx, wy, ww, wh = weights
    return np.array([wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * np.log(tw / sw), wh * np.log(th / sh)])
