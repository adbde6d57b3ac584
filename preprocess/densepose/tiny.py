"""``--models tiny`` DensePose: MCLD's architecture (R-50-FPN here, DeepLab head, decoder, chart predictor)
at toy width with seeded weights, written as a detectron2 config (a child yaml with ``_BASE_``) and a
model-zoo ``.pkl``, then loaded by the same code as the official files.

Random weights detect nothing, so a few output layers are set on purpose: the box classifier's bias
makes every proposal a confident person; anchors are large and tall (person-shaped), so the chosen box
covers a good part of the photo; the chart predictor's biases make most of the box foreground, spread
over many parts, with U and V around 0.5 so that the texture stage downstream has pixels to map.
"""

from __future__ import annotations

import pickle
from pathlib import Path

BASE_NAME = "Base-DensePose-RCNN-FPN-tiny.yaml"
CONFIG_NAME = "densepose_rcnn_R_50_FPN_DL_tiny.yaml"
WEIGHTS_NAME = "densepose_rcnn_R_50_FPN_DL_tiny.pkl"

# The official Base-DensePose-RCNN-FPN settings that matter at inference (the benchmark builds the official
# architectures over it too).
BASE_YAML = """\
# The official Base-DensePose-RCNN-FPN inference settings (detectron2 DensePose project)
VERSION: 2
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TEST: 1000
  DENSEPOSE_ON: True
  ROI_HEADS:
    NAME: "DensePoseROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
    NUM_CLASSES: 1
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
    POOLER_SAMPLING_RATIO: 2
    POOLER_TYPE: "ROIAlign"
  ROI_DENSEPOSE_HEAD:
    NAME: "DensePoseV1ConvXHead"
    POOLER_TYPE: "ROIAlign"
    NUM_COARSE_SEGM_CHANNELS: 2
"""

CHILD_YAML = f"""\
# mcld-data tiny DensePose R-CNN: toy widths, small test size, person-shaped anchors (seeded random weights)
_BASE_: "{BASE_NAME}"
MODEL:
  RESNETS:
    DEPTH: 50
    STEM_OUT_CHANNELS: 8
    RES2_OUT_CHANNELS: 32
    WIDTH_PER_GROUP: 8
  FPN:
    OUT_CHANNELS: 32
  ANCHOR_GENERATOR:
    SIZES: [[96], [128], [160], [192], [224]]
    ASPECT_RATIOS: [[2.0]]
  RPN:
    PRE_NMS_TOPK_TEST: 200
    POST_NMS_TOPK_TEST: 100
  ROI_BOX_HEAD:
    FC_DIM: 32
  ROI_DENSEPOSE_HEAD:
    NAME: "DensePoseDeepLabHead"
    CONV_HEAD_DIM: 32
    NUM_STACKED_CONVS: 4
    DECODER_CONV_DIMS: 32
    DECODER_NUM_CLASSES: 32
INPUT:
  MIN_SIZE_TEST: 256
  MAX_SIZE_TEST: 448
TEST:
  DETECTIONS_PER_IMAGE: 10
"""


def seeded_state(model, seed: int) -> dict:
    """Seeded weights: He-normal convs, normal fc, identity-ish frozen BN, then the biases described above."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith("norm.running_mean"):
            value = torch.zeros(shape)
        elif name.endswith("norm.running_var"):
            value = torch.ones(shape)
        elif name.endswith("norm.weight") and len(shape) == 1 and "bottom_up" in name:
            # A small gain on each block's last BN keeps the un-normalised residual sum from growing.
            value = torch.full(shape, 0.25 if ".conv3." in name else 1.0)
        elif name.endswith(".bias") or (name.endswith(".weight") and len(shape) == 1):
            value = torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3] if "lowres" not in name else shape[0] * shape[2] * shape[3] / 4
            value = torch.randn(shape, generator=generator) * float(np.sqrt(2.0 / fan_in))
        else:
            value = torch.randn(shape, generator=generator) * float(np.sqrt(1.0 / shape[1]))
        state[name] = value
    # Pixels arrive as 0..255 minus the mean (std ~60): scale the stem so the features start near unit size.
    state["backbone.bottom_up.stem.conv1.weight"] /= 64.0
    rpn = "proposal_generator.rpn_head."
    state[rpn + "anchor_deltas.weight"] *= 0.01  # proposals close to the (person-shaped) anchors
    head = "roi_heads.box_predictor."
    state[head + "cls_score.weight"] *= 0.05
    state[head + "cls_score.bias"] = torch.tensor([4.0, 0.0])  # person logit well above background
    state[head + "bbox_pred.weight"] *= 0.01
    dp = "roi_heads.densepose_predictor."
    coarse = torch.full_like(state[dp + "ann_index_lowres.bias"], 1.5)
    coarse[0] = -1.5  # background (coarse channel 0) loses: mostly foreground
    state[dp + "ann_index_lowres.bias"] = coarse
    state[dp + "index_uv_lowres.weight"] *= 3.0  # parts change across the box
    state[dp + "index_uv_lowres.bias"][0] = -3.0  # background loses to the parts inside the person
    for channel in ("u", "v"):
        state[dp + f"{channel}_lowres.weight"] *= 0.5
        state[dp + f"{channel}_lowres.bias"] = torch.full_like(state[dp + f"{channel}_lowres.bias"], 0.5)
    return {name: value.numpy().astype(np.float32) for name, value in state.items()}


def write_tiny_densepose(dest_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the tiny config (child + base yaml) and model-zoo ``.pkl`` weights; byte-identical per seed."""
    import torch

    from preprocess.densepose.config import load_config
    from preprocess.densepose.model import DensePoseRCNN

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / BASE_NAME).write_text(BASE_YAML, encoding="utf-8")
    config_path = dest_dir / CONFIG_NAME
    config_path.write_text(CHILD_YAML, encoding="utf-8")
    with torch.device("cpu"):
        model = DensePoseRCNN(load_config(config_path))
    checkpoint = {"model": seeded_state(model, seed), "__author__": f"mcld-data tiny DensePose R-CNN, seed {seed}"}
    weights_path = dest_dir / WEIGHTS_NAME
    weights_path.write_bytes(pickle.dumps(checkpoint, protocol=4))
    return config_path, weights_path
