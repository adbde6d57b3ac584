"""The yaml reader: _BASE_ chains over detectron2's and DensePose's defaults, and clear refusals."""

import pytest

from preprocess.densepose.config import ConfigError, load_config, read_settings
from preprocess.densepose.config_defaults import DEFAULTS

from .conftest import child_config


def test_fixture_configs_read_the_whole_base_chain(fixtures_root):
    r50 = load_config(fixtures_root / "r50" / "config.yaml")
    # config.yaml: widths; densepose_rcnn_R_50_FPN_s1x.yaml: DEPTH; Base: the rest; defaults underneath.
    assert r50.resnet.depth == 50 and r50.resnet.width_per_group == 16 and r50.resnet.stem_out_channels == 16
    assert r50.fpn_out_channels == 32 and r50.densepose.conv_head_dim == 32
    assert r50.densepose.name == "DensePoseV1ConvXHead"
    assert r50.box_head.pooler_type == "ROIAlign" and r50.box_head.pooler_resolution == 7
    assert r50.rpn.pre_nms_topk == 1000 and r50.rpn.in_features == ("p2", "p3", "p4", "p5", "p6")
    assert r50.rpn.anchor_sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    assert r50.rpn.anchor_aspect_ratios == ((0.5, 1.0, 2.0),) * 5  # one list broadcast to every level
    assert r50.rpn.anchor_offset == 0.0  # the config default, not the anchor generator's 0.5
    assert r50.densepose.pooler_resolution == 28 and r50.densepose.decoder_on  # DensePose defaults
    assert r50.densepose.uv_confidence is None and not r50.densepose.segm_confidence
    assert r50.input_format == "BGR" and (r50.min_size_test, r50.max_size_test) == (800, 1333)
    assert r50.pixel_mean == (103.53, 116.28, 123.675) and r50.size_divisibility == 32
    r101 = load_config(fixtures_root / "r101dl" / "config.yaml")
    assert r101.resnet.depth == 101 and r101.densepose.name == "DensePoseDeepLabHead"
    assert r101.densepose.deeplab_norm == "GN" and not r101.densepose.deeplab_nonlocal


def test_settings_name_the_file_that_set_each_key(fixtures_root):
    settings = read_settings(fixtures_root / "r101dl" / "config.yaml")
    assert settings["MODEL.RESNETS.DEPTH"].source.endswith("densepose_rcnn_R_101_FPN_DL_s1x.yaml")
    assert settings["MODEL.FPN.OUT_CHANNELS"].source.endswith("config.yaml")
    assert settings["MODEL.ROI_HEADS.NAME"].source.endswith("Base-DensePose-RCNN-FPN.yaml")
    assert settings["MODEL.RESNETS.STRIDE_IN_1X1"].source == "default"


def test_strings_are_literal_evaluated_and_inert_sections_ignored(tiny, tmp_path):
    path = child_config(tmp_path, tiny[0], """\
SOLVER:
  STEPS: (100000, 120000)
  CLIP_GRADIENTS:
    ENABLED: True
DATASETS:
  CATEGORY_MAPS:
    "base_coco_2017_train":
      "16": 1
MODEL:
  WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
  DEVICE: cuda
  ANCHOR_GENERATOR:
    ASPECT_RATIOS: "[[0.5, 1.0]]"
  ROI_DENSEPOSE_HEAD:
    POINT_REGRESSION_WEIGHTS: 0.0005
    UV_CONFIDENCE:
      ENABLED: True
      TYPE: "indep_aniso"
    SEGM_CONFIDENCE:
      ENABLED: True
INPUT:
  MIN_SIZE_TEST: 320
""")
    config = load_config(path)
    assert config.rpn.anchor_aspect_ratios == ((0.5, 1.0),) * 5
    assert config.min_size_test == 320 and config.max_size_test == 448  # child, then the tiny child's value
    assert config.densepose.uv_confidence == "indep_aniso" and config.densepose.segm_confidence


def test_a_flat_anchor_list_applies_to_every_level(tiny, tmp_path):
    text = "MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [32, 64]\n    ASPECT_RATIOS: [1.0]\n"
    path = child_config(tmp_path, tiny[0], text)
    config = load_config(path)
    assert config.rpn.anchor_sizes == ((32.0, 64.0),) * 5 and config.rpn.anchor_aspect_ratios == ((1.0,),) * 5


def test_confidences_need_the_confidence_predictor(tiny, tmp_path):
    path = child_config(tmp_path, tiny[0], """\
MODEL:
  ROI_DENSEPOSE_HEAD:
    PREDICTOR_NAME: "DensePoseChartPredictor"
    UV_CONFIDENCE:
      ENABLED: True
""")
    assert load_config(path).densepose.uv_confidence is None


REFUSALS = [
    ("MODEL:\n  BACKBONE:\n    NAME: build_hrfpn_backbone\n", "MODEL.BACKBONE.NAME"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    PREDICTOR_NAME: DensePoseEmbeddingPredictor\n", "CSE embedding heads"),
    ("MODEL:\n  RESNETS:\n    DEPTH: 152\n", "MODEL.RESNETS.DEPTH"),
    ("MODEL:\n  RESNETS:\n    DEFORM_ON_PER_STAGE: [False, True, True, True]\n", "deformable"),
    ("MODEL:\n  RESNETS:\n    NORM: GN\n", "MODEL.RESNETS.NORM"),
    ("MODEL:\n  RESNETS:\n    RES5_DILATION: 2\n", "MODEL.RESNETS.RES5_DILATION"),
    ("MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 2\n", "one class"),
    ("MODEL:\n  MASK_ON: True\n", "MODEL.MASK_ON"),
    ("MODEL:\n  DENSEPOSE_ON: False\n", "MODEL.DENSEPOSE_ON"),
    ("INPUT:\n  FORMAT: YUV\n", "INPUT.FORMAT"),
    ("MODEL:\n  ROI_BOX_HEAD:\n    POOLER_TYPE: ROIPool\n", "MODEL.ROI_BOX_HEAD.POOLER_TYPE"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    UV_CONFIDENCE:\n      TYPE: gaussian\n", "UV_CONFIDENCE.TYPE"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    CONV_HEAD_DIM: 48\n", "GroupNorm(32, C)"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DECODER_NUM_CLASSES: 40\n", "divisible by 32"),
    ("MODEL:\n  FPN:\n    IN_FEATURES: [res2, res4, res5]\n", "consecutive"),
    ("MODEL:\n  RPN:\n    IN_FEATURES: [p2, p7]\n", "'p7' is not an FPN output"),
    ("MODEL:\n  RPN:\n    CONV_DIMS: [32, 32]\n", "only one RPN conv"),
    ("MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [[32], [64]]\n", "2 lists for 5 RPN input features"),
    ("MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [[32, 64], [64], [128], [256], [512]]\n", "same number of anchors"),
    ("VERSION: 1\n", "VERSION"),
    ("MODEL:\n  RESNETS:\n    DEPTH: fifty\n", "expected an integer"),
    ("MODEL:\n  RPN:\n    NMS_THRESH: [0.7]\n", "expected a number"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DECODER_ON: 1\n", "expected True or False"),
    ("MODEL:\n  RESNETS:\n    OUT_FEATURES: res5\n", "expected a list"),
    ("MODEL:\n  RESNET:\n    DEPTH: 50\n", "unknown config key MODEL.RESNET.DEPTH"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DEEPLAB:\n      NORM: BN\n", "DEEPLAB.NORM"),
    ("MODEL:\n  PIXEL_STD: [1.0, 0.0, 1.0]\n", "MODEL.PIXEL_STD"),
    ("MODEL:\n  PIXEL_MEAN: [1.0, 2.0]\n", "three numbers"),
    ("MODEL:\n  RPN:\n    BBOX_REG_WEIGHTS: [1.0, 1.0, 1.0]\n", "four positive numbers"),
    ("MODEL:\n  RPN:\n    POST_NMS_TOPK_TEST: 0\n", "must be positive"),
    ("INPUT:\n  MAX_SIZE_TEST: -1\n", "must not be negative"),
    ("MODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 1.5\n", "must be in [0, 1]"),
    ("MODEL:\n  ROI_BOX_HEAD:\n    NUM_CONV: -1\n", "must not be negative"),
    ("MODEL:\n  ROI_BOX_HEAD:\n    NUM_FC: 0\n", "at least one conv or fc"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    CONV_HEAD_KERNEL: 4\n", "must be odd"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DECONV_KERNEL: 3\n", "must be even"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DECODER_COMMON_STRIDE: 6\n", "power of 2"),
    ("MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DECODER_COMMON_STRIDE: 8\n", "cannot bring p2"),
    ("MODEL:\n  ANCHOR_GENERATOR:\n    OFFSET: 1.0\n", "must be in [0, 1)"),
    ("MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: []\n", "SIZES is empty"),
    ("MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: [[32, big]]\n", "expected lists of numbers"),
    ("MODEL:\n  RESNETS:\n    OUT_FEATURES: [res2, res6]\n", "'res6' is not one of res2..res5"),
    ("MODEL:\n  FPN:\n    IN_FEATURES: []\n", "an FPN needs input features"),
    ("MODEL:\n  RESNETS:\n    OUT_FEATURES: [res3, res4, res5]\n  FPN:\n    IN_FEATURES: [res2, res3, res4, res5]\n",
     "'res2' is not in MODEL.RESNETS.OUT_FEATURES"),
    ("MODEL:\n  ROI_HEADS:\n    IN_FEATURES: []\n", "at least one FPN output"),
    ("MODEL:\n  ROI_HEADS:\n    IN_FEATURES: [p2, p4]\n", "consecutive FPN levels"),
    ("INPUT:\n  FORMAT: 3\n", "expected a string"),
    ("_BASE_: 7\n", "_BASE_ must name a file"),
    ("MODEL:\n  _BASE_: x.yaml\n", "allowed only at the top level"),
    ("MODEL:\n  1: 2\n", "keys must be strings"),
]


@pytest.mark.parametrize("text, needle", REFUSALS, ids=[n for _, n in REFUSALS])
def test_unsupported_keys_and_values_are_refused_naming_file_and_key(text, needle, tiny, tmp_path):
    path = child_config(tmp_path, tiny[0], "") if text.startswith("_BASE_") else child_config(tmp_path, tiny[0], text)
    if text.startswith("_BASE_"):  # replaces the child's own _BASE_ line
        path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert needle in message
    assert str(path) in message  # the file that set the offending value


def test_nonlocal_needs_the_deeplab_head(fixtures_root, tmp_path):
    path = child_config(tmp_path, fixtures_root / "r50" / "config.yaml",
                        "MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DEEPLAB:\n      NONLOCAL_ON: 1\n")
    with pytest.raises(ConfigError, match="only in the DeepLab head"):
        load_config(path)


def test_bad_files(tmp_path):
    missing_base = tmp_path / "a.yaml"
    missing_base.write_text('_BASE_: "nowhere.yaml"\n')
    with pytest.raises(ConfigError, match=r"nowhere.yaml: config file does not exist \(the _BASE_ of .*a.yaml\)"):
        load_config(missing_base)
    loop_a, loop_b = tmp_path / "loop_a.yaml", tmp_path / "loop_b.yaml"
    loop_a.write_text('_BASE_: "loop_b.yaml"\n')
    loop_b.write_text('_BASE_: "loop_a.yaml"\n')
    with pytest.raises(ConfigError, match="_BASE_ chain loops"):
        load_config(loop_a)
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(scalar)
    url = tmp_path / "url.yaml"
    url.write_text('_BASE_: "https://example.com/base.yaml"\n')
    with pytest.raises(ConfigError, match="local files only"):
        load_config(url)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    undecodable = tmp_path / "latin1.yaml"
    undecodable.write_bytes(b"MODEL: {DEVICE: \"caf\xe9\"}\n")
    with pytest.raises(ConfigError, match="latin1.yaml: cannot read config"):
        load_config(undecodable)


def test_nonlocal_on_accepts_true_as_one(tiny, tmp_path):
    path = child_config(tmp_path, tiny[0], "MODEL:\n  ROI_DENSEPOSE_HEAD:\n    DEEPLAB:\n      NONLOCAL_ON: True\n")
    assert load_config(path).densepose.deeplab_nonlocal


def test_defaults_alone_are_not_a_densepose_model(tmp_path):
    """detectron2's bare defaults describe a C4 Faster R-CNN; the reader says what is wrong, not crash."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as error:
        load_config(empty)
    assert str(error.value).startswith(f"{empty}: MODEL.BACKBONE.NAME = 'build_resnet_backbone' (the default")
    assert DEFAULTS["MODEL.ANCHOR_GENERATOR.OFFSET"] == 0.0
