"""detectron2/DensePose yaml configs, read without detectron2.

A config file is merged over detectron2's and DensePose's defaults after following its ``_BASE_`` chain,
as ``get_cfg(); add_densepose_config(cfg); cfg.merge_from_file(path)`` does. Only the inference path of
a chart-based DensePose R-CNN (ResNet + FPN, RPN, FastRCNN box head, DensePose decoder and heads) is
supported; any key or value that would change what that path computes, and that we do not implement,
is refused with the key, the value and the file that set it, rather than silently ignored.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preprocess.densepose.config_yaml import ConfigError, Setting, read_settings

__all__ = ["ConfigError", "RCNNConfig", "load_config", "read_settings"]


# ----------------------------------------------------------------------------------------------------
# The typed config the model is built from


@dataclass(frozen=True)
class ResNetSpec:
    depth: int
    num_groups: int
    width_per_group: int
    stem_out_channels: int
    res2_out_channels: int
    stride_in_1x1: bool
    out_features: tuple[str, ...]


@dataclass(frozen=True)
class RPNSpec:
    in_features: tuple[str, ...]
    anchor_sizes: tuple[tuple[float, ...], ...]  # one tuple per in_feature (broadcast as detectron2 does)
    anchor_aspect_ratios: tuple[tuple[float, ...], ...]
    anchor_offset: float
    conv_dim: int  # -1: as many as the input channels
    bbox_reg_weights: tuple[float, float, float, float]
    pre_nms_topk: int
    post_nms_topk: int
    nms_thresh: float
    min_size: float


@dataclass(frozen=True)
class BoxHeadSpec:
    in_features: tuple[str, ...]
    num_classes: int
    pooler_type: str
    pooler_resolution: int
    pooler_sampling_ratio: int
    num_conv: int
    conv_dim: int
    num_fc: int
    fc_dim: int
    bbox_reg_weights: tuple[float, float, float, float]
    cls_agnostic_bbox_reg: bool
    score_thresh: float
    nms_thresh: float
    detections_per_image: int


@dataclass(frozen=True)
class DensePoseHeadSpec:
    name: str  # DensePoseV1ConvXHead | DensePoseDeepLabHead
    num_stacked_convs: int
    conv_head_dim: int
    conv_head_kernel: int
    deeplab_norm: str  # "GN" | ""
    deeplab_nonlocal: bool
    decoder_on: bool
    decoder_num_classes: int
    decoder_conv_dims: int
    decoder_common_stride: int
    pooler_type: str
    pooler_resolution: int
    pooler_sampling_ratio: int
    num_patches: int
    num_coarse_segm_channels: int
    deconv_kernel: int
    up_scale: int
    uv_confidence: str | None  # None | "iid_iso" | "indep_aniso"
    segm_confidence: bool
    segm_confidence_epsilon: float


@dataclass(frozen=True)
class RCNNConfig:
    """What a DensePose R-CNN computes at inference, from a detectron2 config (see ``load_config``)."""

    path: str
    input_format: str  # "BGR" | "RGB": the channel order the network sees
    min_size_test: int  # 0: no resize
    max_size_test: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    resnet: ResNetSpec
    fpn_in_features: tuple[str, ...]
    fpn_out_channels: int
    rpn: RPNSpec
    box_head: BoxHeadSpec
    densepose: DensePoseHeadSpec

    @property
    def size_divisibility(self) -> int:
        """The FPN pads inputs to a multiple of its coarsest input stride (res5: 32)."""
        return 2 ** _RES_LEVEL[self.fpn_in_features[-1]]


_RES_LEVEL = {"res2": 2, "res3": 3, "res4": 4, "res5": 5}


def _broadcast(key: str, params: tuple, count: int, source: str) -> tuple[tuple[float, ...], ...]:
    """detectron2's anchor-parameter broadcast: one list for all levels, or one list per level."""
    if not params:
        raise ConfigError(f"{source}: {key} is empty")
    if not isinstance(params[0], tuple):
        params = (params,)
    if len(params) == 1:
        params = params * count
    if len(params) != count:
        raise ConfigError(f"{source}: {key} has {len(params)} lists for {count} RPN input features")
    out = []
    for level in params:
        if not level or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in level):
            raise ConfigError(f"{source}: {key} = {params!r}: expected lists of numbers")
        out.append(tuple(float(v) for v in level))
    return tuple(out)


class _Checks:
    """The settings of one file with the checks ``load_config`` applies; a refusal names the file that set
    the key (or says it is the default)."""

    def __init__(self, settings: dict[str, Setting], *, path: Path) -> None:
        self.settings = settings
        self.path = path

    def get(self, key: str) -> Any:
        return self.settings[key].value

    def refuse(self, key: str, why: str) -> ConfigError:
        source = self.settings[key].source
        if source == "default":
            return ConfigError(f"{self.path}: {key} = {self.get(key)!r} (the default; no file in the _BASE_ chain "
                               f"sets it): {why}")
        return ConfigError(f"{source}: {key} = {self.get(key)!r}: {why}")

    def require(self, key: str, allowed: tuple, what: str = "supported") -> Any:
        if self.get(key) not in allowed:
            raise self.refuse(key, f"not supported; {what}: {', '.join(repr(a) for a in allowed)}")
        return self.get(key)

    def positive(self, key: str) -> int:
        if self.get(key) <= 0:
            raise self.refuse(key, "must be positive")
        return self.get(key)

    def features(self, key: str, fpn_out: list[str]) -> tuple[str, ...]:
        names = self.get(key)
        if not names:
            raise self.refuse(key, "must name at least one FPN output")
        for name in names:
            if name not in fpn_out:
                raise self.refuse(key, f"{name!r} is not an FPN output ({', '.join(fpn_out)})")
        return tuple(names)

    def weights4(self, key: str) -> tuple[float, float, float, float]:
        value = self.get(key)
        if len(value) != 4 or not all(isinstance(v, (int, float)) and v > 0 for v in value):
            raise self.refuse(key, "expected four positive numbers")
        return tuple(float(v) for v in value)  # type: ignore[return-value]

    def triple(self, key: str) -> tuple[float, float, float]:
        value = self.get(key)
        if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise self.refuse(key, "expected three numbers (one per channel)")
        if key == "MODEL.PIXEL_STD" and not all(v > 0 for v in value):
            raise self.refuse(key, "must be positive")
        return tuple(float(v) for v in value)  # type: ignore[return-value]


def load_config(path: str | os.PathLike) -> RCNNConfig:
    """Read a DensePose R-CNN config and check that this port computes exactly what it describes."""
    checks = _Checks(read_settings(path), path=Path(path))
    settings = checks.settings
    get, refuse, require, positive = checks.get, checks.refuse, checks.require, checks.positive
    weights4, triple = checks.weights4, checks.triple

    if get("VERSION") != 2:
        raise refuse("VERSION", "only version-2 configs (detectron2's current format) are supported")
    require("MODEL.META_ARCHITECTURE", ("GeneralizedRCNN",))
    for key in ("MODEL.LOAD_PROPOSALS", "MODEL.MASK_ON", "MODEL.KEYPOINT_ON"):
        require(key, (False,), "this port runs the DensePose R-CNN only")
    require("MODEL.DENSEPOSE_ON", (True,), "a DensePose model needs")
    require("MODEL.BACKBONE.NAME", ("build_resnet_fpn_backbone",), "backbones implemented")
    require("MODEL.RESNETS.DEPTH", (50, 101), "depths implemented")
    require("MODEL.RESNETS.NORM", ("FrozenBN",), "norms implemented")
    require("MODEL.RESNETS.RES5_DILATION", (1,), "with an FPN, detectron2 allows")
    if any(get("MODEL.RESNETS.DEFORM_ON_PER_STAGE")):
        raise refuse("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "deformable convolutions are not supported")
    require("MODEL.FPN.NORM", ("",), "FPN norms implemented")
    require("MODEL.FPN.FUSE_TYPE", ("sum",), "FPN fuse types implemented")
    require("MODEL.PROPOSAL_GENERATOR.NAME", ("RPN",), "proposal generators implemented")
    require("MODEL.ANCHOR_GENERATOR.NAME", ("DefaultAnchorGenerator",), "anchor generators implemented")
    require("MODEL.RPN.HEAD_NAME", ("StandardRPNHead",), "RPN heads implemented")
    require("MODEL.ROI_HEADS.NAME", ("DensePoseROIHeads",), "ROI heads implemented")
    require("MODEL.ROI_HEADS.NUM_CLASSES", (1,), "chart-based DensePose detects one class (person)")
    require("MODEL.ROI_BOX_HEAD.NAME", ("FastRCNNConvFCHead",), "box heads implemented")
    require("MODEL.ROI_BOX_HEAD.NORM", ("",), "box head norms implemented")
    require("MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", (False,), "box classifiers implemented (softmax)")
    pooler_types = ("ROIAlign", "ROIAlignV2")
    require("MODEL.ROI_BOX_HEAD.POOLER_TYPE", pooler_types, "poolers implemented")
    require("MODEL.ROI_DENSEPOSE_HEAD.POOLER_TYPE", pooler_types, "poolers implemented")
    head_name = require(
        "MODEL.ROI_DENSEPOSE_HEAD.NAME", ("DensePoseV1ConvXHead", "DensePoseDeepLabHead"), "DensePose heads implemented"
    )
    require(
        "MODEL.ROI_DENSEPOSE_HEAD.PREDICTOR_NAME",
        ("DensePoseChartPredictor", "DensePoseChartWithConfidencePredictor"),
        "chart predictors implemented (CSE embedding heads are not)",
    )
    require("MODEL.ROI_DENSEPOSE_HEAD.DECODER_NORM", ("",), "decoder norms implemented")
    require("MODEL.ROI_DENSEPOSE_HEAD.DEEPLAB.NORM", ("GN", ""), "DeepLab head norms implemented")
    require("INPUT.FORMAT", ("BGR", "RGB"), "input formats")

    # ResNet and FPN feature names
    out_features = get("MODEL.RESNETS.OUT_FEATURES")
    for name in out_features:
        if name not in _RES_LEVEL:
            raise refuse("MODEL.RESNETS.OUT_FEATURES", f"{name!r} is not one of res2..res5")
    fpn_in = get("MODEL.FPN.IN_FEATURES")
    if not fpn_in:
        raise refuse("MODEL.FPN.IN_FEATURES", "an FPN needs input features")
    for name in fpn_in:
        if name not in out_features:
            raise refuse("MODEL.FPN.IN_FEATURES", f"{name!r} is not in MODEL.RESNETS.OUT_FEATURES {out_features}")
    levels = [_RES_LEVEL[n] for n in fpn_in]
    if levels != list(range(levels[0], levels[0] + len(levels))) or levels[-1] != 5:
        raise refuse("MODEL.FPN.IN_FEATURES", "must be consecutive ResNet stages from fine to coarse, ending at "
                     "res5 (detectron2's max-pooled top level is made from p5)")
    fpn_out = [f"p{level}" for level in levels] + [f"p{levels[-1] + 1}"]  # + the max-pooled top level

    rpn_in = checks.features("MODEL.RPN.IN_FEATURES", fpn_out)
    roi_in = checks.features("MODEL.ROI_HEADS.IN_FEATURES", fpn_out)
    roi_levels = [int(n[1:]) for n in roi_in]
    if roi_levels != list(range(roi_levels[0], roi_levels[0] + len(roi_levels))):
        raise refuse("MODEL.ROI_HEADS.IN_FEATURES", "must be consecutive FPN levels (a pyramid)")

    conv_dims = get("MODEL.RPN.CONV_DIMS")
    if len(conv_dims) != 1 or not (conv_dims[0] == -1 or conv_dims[0] > 0):
        raise refuse("MODEL.RPN.CONV_DIMS", "only one RPN conv is supported ([-1] or [channels])")
    sizes = _broadcast("MODEL.ANCHOR_GENERATOR.SIZES", get("MODEL.ANCHOR_GENERATOR.SIZES"), len(rpn_in),
                       settings["MODEL.ANCHOR_GENERATOR.SIZES"].source)
    ratios = _broadcast("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", get("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"),
                        len(rpn_in), settings["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"].source)
    if len({len(s) * len(r) for s, r in zip(sizes, ratios)}) != 1:
        raise refuse("MODEL.ANCHOR_GENERATOR.SIZES", "every RPN level needs the same number of anchors")
    offset = get("MODEL.ANCHOR_GENERATOR.OFFSET")
    if not 0.0 <= offset < 1.0:
        raise refuse("MODEL.ANCHOR_GENERATOR.OFFSET", "must be in [0, 1)")

    for key in ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "MODEL.PROPOSAL_GENERATOR.MIN_SIZE"):
        if get(key) < 0:
            raise refuse(key, "must not be negative")
    for key in ("MODEL.RPN.NMS_THRESH", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"):
        if not 0.0 <= get(key) <= 1.0:
            raise refuse(key, "must be in [0, 1]")
    for key in ("MODEL.ROI_BOX_HEAD.NUM_CONV", "MODEL.ROI_BOX_HEAD.NUM_FC",
                "MODEL.ROI_DENSEPOSE_HEAD.NUM_STACKED_CONVS", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO",
                "MODEL.ROI_DENSEPOSE_HEAD.POOLER_SAMPLING_RATIO"):
        if get(key) < 0:
            raise refuse(key, "must not be negative")
    if get("MODEL.ROI_BOX_HEAD.NUM_CONV") + get("MODEL.ROI_BOX_HEAD.NUM_FC") == 0:
        raise refuse("MODEL.ROI_BOX_HEAD.NUM_FC", "the box head needs at least one conv or fc layer")
    kernel = positive("MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_KERNEL")
    if kernel % 2 == 0:
        raise refuse("MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_KERNEL", "must be odd (the head keeps its size)")
    deconv = positive("MODEL.ROI_DENSEPOSE_HEAD.DECONV_KERNEL")
    if deconv % 2 or deconv < 2:
        raise refuse("MODEL.ROI_DENSEPOSE_HEAD.DECONV_KERNEL", "must be even (a stride-2 transposed conv)")
    stride = positive("MODEL.ROI_DENSEPOSE_HEAD.DECODER_COMMON_STRIDE")
    if 2 ** int(round(math.log2(stride))) != stride:
        raise refuse("MODEL.ROI_DENSEPOSE_HEAD.DECODER_COMMON_STRIDE", "must be a power of 2")

    decoder_on = get("MODEL.ROI_DENSEPOSE_HEAD.DECODER_ON")
    if decoder_on and stride > 2 ** roi_levels[0]:
        raise refuse("MODEL.ROI_DENSEPOSE_HEAD.DECODER_COMMON_STRIDE",
                     f"the decoder cannot bring p{roi_levels[0]} (stride {2 ** roi_levels[0]}) to a coarser stride")
    head_in = get("MODEL.ROI_DENSEPOSE_HEAD.DECODER_NUM_CLASSES") if decoder_on else get("MODEL.FPN.OUT_CHANNELS")
    if head_name == "DensePoseDeepLabHead":
        # GroupNorm(32, C) in ASPP (C = the head's input channels) and, with GN, in the stacked convs.
        where = "MODEL.ROI_DENSEPOSE_HEAD.DECODER_NUM_CLASSES" if decoder_on else "MODEL.FPN.OUT_CHANNELS"
        if head_in % 32:
            raise refuse(where, "the DeepLab head's GroupNorm(32, C) needs the head's input channels divisible by 32")
        if get("MODEL.ROI_DENSEPOSE_HEAD.DEEPLAB.NORM") == "GN" and get("MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_DIM") % 32:
            raise refuse("MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_DIM", "GroupNorm(32, C) needs a multiple of 32")
    elif get("MODEL.ROI_DENSEPOSE_HEAD.DEEPLAB.NONLOCAL_ON"):
        raise refuse("MODEL.ROI_DENSEPOSE_HEAD.DEEPLAB.NONLOCAL_ON",
                     "the non-local block exists only in the DeepLab head")

    # DensePose parses the UV confidence type even when confidences are off; so do we.
    uv_type = require("MODEL.ROI_DENSEPOSE_HEAD.UV_CONFIDENCE.TYPE", ("iid_iso", "indep_aniso"), "UV confidence types")
    with_confidence = get("MODEL.ROI_DENSEPOSE_HEAD.PREDICTOR_NAME") == "DensePoseChartWithConfidencePredictor"
    uv_confidence = uv_type if with_confidence and get("MODEL.ROI_DENSEPOSE_HEAD.UV_CONFIDENCE.ENABLED") else None
    segm_confidence = with_confidence and get("MODEL.ROI_DENSEPOSE_HEAD.SEGM_CONFIDENCE.ENABLED")

    for key in ("MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.RESNETS.STEM_OUT_CHANNELS",
                "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.FPN.OUT_CHANNELS", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
                "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_BOX_HEAD.CONV_DIM", "MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_DIM",
                "MODEL.ROI_DENSEPOSE_HEAD.POOLER_RESOLUTION", "MODEL.ROI_DENSEPOSE_HEAD.NUM_PATCHES",
                "MODEL.ROI_DENSEPOSE_HEAD.NUM_COARSE_SEGM_CHANNELS", "MODEL.ROI_DENSEPOSE_HEAD.UP_SCALE",
                "MODEL.ROI_DENSEPOSE_HEAD.DECODER_NUM_CLASSES", "MODEL.ROI_DENSEPOSE_HEAD.DECODER_CONV_DIMS",
                "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TEST", "TEST.DETECTIONS_PER_IMAGE"):
        positive(key)

    return RCNNConfig(
        path=str(Path(path).resolve()),
        input_format=get("INPUT.FORMAT"),
        min_size_test=get("INPUT.MIN_SIZE_TEST"),
        max_size_test=get("INPUT.MAX_SIZE_TEST"),
        pixel_mean=triple("MODEL.PIXEL_MEAN"),
        pixel_std=triple("MODEL.PIXEL_STD"),
        resnet=ResNetSpec(
            depth=get("MODEL.RESNETS.DEPTH"),
            num_groups=get("MODEL.RESNETS.NUM_GROUPS"),
            width_per_group=get("MODEL.RESNETS.WIDTH_PER_GROUP"),
            stem_out_channels=get("MODEL.RESNETS.STEM_OUT_CHANNELS"),
            res2_out_channels=get("MODEL.RESNETS.RES2_OUT_CHANNELS"),
            stride_in_1x1=get("MODEL.RESNETS.STRIDE_IN_1X1"),
            out_features=tuple(out_features),
        ),
        fpn_in_features=tuple(fpn_in),
        fpn_out_channels=get("MODEL.FPN.OUT_CHANNELS"),
        rpn=RPNSpec(
            in_features=rpn_in,
            anchor_sizes=sizes,
            anchor_aspect_ratios=ratios,
            anchor_offset=float(offset),
            conv_dim=conv_dims[0],
            bbox_reg_weights=weights4("MODEL.RPN.BBOX_REG_WEIGHTS"),
            pre_nms_topk=get("MODEL.RPN.PRE_NMS_TOPK_TEST"),
            post_nms_topk=get("MODEL.RPN.POST_NMS_TOPK_TEST"),
            nms_thresh=get("MODEL.RPN.NMS_THRESH"),
            min_size=float(get("MODEL.PROPOSAL_GENERATOR.MIN_SIZE")),
        ),
        box_head=BoxHeadSpec(
            in_features=roi_in,
            num_classes=get("MODEL.ROI_HEADS.NUM_CLASSES"),
            pooler_type=get("MODEL.ROI_BOX_HEAD.POOLER_TYPE"),
            pooler_resolution=get("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"),
            pooler_sampling_ratio=get("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"),
            num_conv=get("MODEL.ROI_BOX_HEAD.NUM_CONV"),
            conv_dim=get("MODEL.ROI_BOX_HEAD.CONV_DIM"),
            num_fc=get("MODEL.ROI_BOX_HEAD.NUM_FC"),
            fc_dim=get("MODEL.ROI_BOX_HEAD.FC_DIM"),
            bbox_reg_weights=weights4("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"),
            cls_agnostic_bbox_reg=get("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"),
            score_thresh=get("MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
            nms_thresh=get("MODEL.ROI_HEADS.NMS_THRESH_TEST"),
            detections_per_image=get("TEST.DETECTIONS_PER_IMAGE"),
        ),
        densepose=DensePoseHeadSpec(
            name=head_name,
            num_stacked_convs=get("MODEL.ROI_DENSEPOSE_HEAD.NUM_STACKED_CONVS"),
            conv_head_dim=get("MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_DIM"),
            conv_head_kernel=kernel,
            deeplab_norm=get("MODEL.ROI_DENSEPOSE_HEAD.DEEPLAB.NORM"),
            deeplab_nonlocal=bool(get("MODEL.ROI_DENSEPOSE_HEAD.DEEPLAB.NONLOCAL_ON")),
            decoder_on=decoder_on,
            decoder_num_classes=get("MODEL.ROI_DENSEPOSE_HEAD.DECODER_NUM_CLASSES"),
            decoder_conv_dims=get("MODEL.ROI_DENSEPOSE_HEAD.DECODER_CONV_DIMS"),
            decoder_common_stride=stride,
            pooler_type=get("MODEL.ROI_DENSEPOSE_HEAD.POOLER_TYPE"),
            pooler_resolution=get("MODEL.ROI_DENSEPOSE_HEAD.POOLER_RESOLUTION"),
            pooler_sampling_ratio=get("MODEL.ROI_DENSEPOSE_HEAD.POOLER_SAMPLING_RATIO"),
            num_patches=get("MODEL.ROI_DENSEPOSE_HEAD.NUM_PATCHES"),
            num_coarse_segm_channels=get("MODEL.ROI_DENSEPOSE_HEAD.NUM_COARSE_SEGM_CHANNELS"),
            deconv_kernel=deconv,
            up_scale=get("MODEL.ROI_DENSEPOSE_HEAD.UP_SCALE"),
            uv_confidence=uv_confidence,
            segm_confidence=segm_confidence,
            segm_confidence_epsilon=get("MODEL.ROI_DENSEPOSE_HEAD.SEGM_CONFIDENCE.EPSILON"),
        ),
    )
