"""``--models tiny`` antelopev2: toy ONNX models with the signatures of scrfd_10g_bnkps and glintr100.

Both are built node by node with onnx's helper API from seeded weights, so the same seed gives the same bytes.
insightface's model router recognises them as the real ones (an SCRFD with 5 landmarks: 9 outputs, strides
8/16/32, two anchors per cell; an ArcFace recogniser: 112x112 -> 512) and the stage loads them with the same code.

A random detector finds no faces, which would leave a tiny run without a single ``face_ok``. So the tiny SCRFD
adds to its (seeded, image-dependent) head outputs a prior computed in-graph from the input's size: on the
stride-32 level, the anchors near the centre of the input score high and regress to the central square of
side 2/3 of the input (the face in the stage's 1.5x crop) with the five ArcFace template landmarks placed
in it; the other levels score near zero. NMS then keeps one face near the centre, slightly moved by the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCRFD_FILE = "scrfd_10g_bnkps.onnx"
GLINTR_FILE = "glintr100.onnx"
STRIDES = (8, 16, 32)
ANCHORS = 2
EMBED_DIM = 512
OPSET = 13
IR_VERSION = 7
WIDTH = 16  # channels of the toy trunk
FACE_FRACTION = 2.0 / 3.0  # the face's side in the 1.5x crop
SCORE_PEAK = 2.5  # logit at the centre cell: sigmoid ~ 0.92
SCORE_FALLOFF = 200.0  # logit drop per squared (offset / input size): ~0.12 at 0.15 of the input off-centre
SCORE_OFF_LEVEL = -10.0  # logit of strides 8 and 16
CONTENT_SCORE = 0.3  # weight of the image-dependent head output in the score logit
CONTENT_REGRESSION = 0.05  # ... and in the box and landmark regressions (in stride units)


class GraphBuilder:
    """Nodes and initialisers of one ONNX graph, with seeded weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value, prefix: str = "const") -> str:
        from onnx import numpy_helper

        array = np.asarray(value)
        array = array.astype(np.int64 if array.dtype.kind in "iu" else np.float32)
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str | None = None, **attrs) -> str:
        from onnx import helper

        out = self.name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, *, kernel: int, stride: int, gain: float = 2.0,
             bias: bool = True) -> str:
        """A conv with He-normal weights (variance gain / fan_in) and, unless told not to, small random biases."""
        fan_in = cin * kernel * kernel
        inputs = [x, self.const(self.rng.normal(0.0, np.sqrt(gain / fan_in), (cout, cin, kernel, kernel)), "w")]
        if bias:
            inputs.append(self.const(self.rng.normal(0.0, 0.01, cout), "b"))
        pad = kernel // 2
        return self.op("Conv", inputs, "conv", kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[pad] * 4)


def serialize_model(graph: GraphBuilder, inputs: list, outputs: list, name: str) -> bytes:
    """The model's bytes, checked by onnx first (a malformed graph fails here, not in onnxruntime)."""
    from onnx import checker, helper

    model = helper.make_model(
        helper.make_graph(graph.nodes, name, inputs, outputs, graph.initializers),
        producer_name="mcld-data tiny",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    checker.check_model(model)
    return model.SerializeToString()


def _level_prior(g: GraphBuilder, feature: str, *, stride: int, landmarks: np.ndarray) -> tuple[str, str, str]:
    """Score logit [1,1,h,w], box distances [1,4,h,w] and landmark offsets [1,10,h,w] (stride units) of the
    central face, computed from the feature map's own size so any input size works."""
    first = g.op("Slice", [feature, g.const([0]), g.const([1]), g.const([1])])  # [1,1,h,w]
    ones = g.op("Add", [g.op("Mul", [first, g.const(0.0)]), g.const(1.0)])
    xi = g.op("Sub", [g.op("CumSum", [ones, g.const(3)]), g.const(1.0)])  # column index of the anchor
    yi = g.op("Sub", [g.op("CumSum", [ones, g.const(2)]), g.const(1.0)])
    cols = g.op("ReduceSum", [ones, g.const([3])], keepdims=1)  # [1,1,h,1]: the input width / stride
    rows = g.op("ReduceSum", [ones, g.const([2])], keepdims=1)  # [1,1,1,w]

    def scaled(size: str, factor: float) -> str:
        return g.op("Mul", [size, g.const(factor)])

    half_margin = (1.0 - FACE_FRACTION) / 2.0
    left = g.op("Sub", [xi, scaled(cols, half_margin)])
    top = g.op("Sub", [yi, scaled(rows, half_margin)])
    right = g.op("Sub", [scaled(cols, 1.0 - half_margin), xi])
    bottom = g.op("Sub", [scaled(rows, 1.0 - half_margin), yi])
    boxes = g.op("Concat", [left, top, right, bottom], axis=1)

    points = []
    for fx, fy in landmarks:  # landmark position as a fraction of the input size
        points.append(g.op("Sub", [scaled(cols, float(fx)), xi]))
        points.append(g.op("Sub", [scaled(rows, float(fy)), yi]))
    kps = g.op("Concat", points, axis=1)

    if stride != STRIDES[-1]:
        logit = g.op("Add", [g.op("Mul", [first, g.const(0.0)]), g.const(SCORE_OFF_LEVEL)])
    else:
        dx = g.op("Div", [g.op("Sub", [xi, scaled(cols, 0.5)]), cols])
        dy = g.op("Div", [g.op("Sub", [yi, scaled(rows, 0.5)]), rows])
        radius = g.op("Add", [g.op("Mul", [dx, dx]), g.op("Mul", [dy, dy])])
        logit = g.op("Sub", [g.const(SCORE_PEAK), g.op("Mul", [radius, g.const(SCORE_FALLOFF)])])
    return logit, boxes, kps


def _flatten_anchors(g: GraphBuilder, x: str, per_anchor: int) -> str:
    """[1, anchors*C, h, w] -> [h*w*anchors, C], the (row, column, anchor) order insightface's decoder uses."""
    nhwc = g.op("Transpose", [x], perm=[0, 2, 3, 1])
    return g.op("Reshape", [nhwc, g.const([-1, per_anchor])])


def build_tiny_scrfd(*, seed: int = 0) -> bytes:
    from insightface.utils.face_align import arcface_dst
    from onnx import TensorProto, helper

    # The ArcFace template's landmarks (in its 112x112 frame) placed in the central face square.
    landmarks = (1.0 - FACE_FRACTION) / 2.0 + FACE_FRACTION * (np.asarray(arcface_dst, np.float64) / 112.0)
    g = GraphBuilder(seed)
    x = "input.1"
    trunk = g.op("Relu", [g.conv(x, 3, 8, kernel=3, stride=2)])
    trunk = g.op("Relu", [g.conv(trunk, 8, WIDTH, kernel=3, stride=2)])
    features = []
    for _ in STRIDES:  # strides 8, 16, 32
        trunk = g.op("Relu", [g.conv(trunk, WIDTH, WIDTH, kernel=3, stride=2)])
        features.append(trunk)
    scores, boxes, points = [], [], []
    for stride, feature in zip(STRIDES, features):
        logit, box_prior, kps_prior = _level_prior(g, feature, stride=stride, landmarks=landmarks)

        def head(channels: int, prior: str, weight: float) -> str:
            content = g.conv(feature, WIDTH, ANCHORS * channels, kernel=1, stride=1, gain=1.0)
            tiled = g.op("Concat", [prior] * ANCHORS, axis=1)
            return g.op("Add", [tiled, g.op("Mul", [content, g.const(weight)])])

        scores.append(_flatten_anchors(g, g.op("Sigmoid", [head(1, logit, CONTENT_SCORE)]), 1))
        boxes.append(_flatten_anchors(g, head(4, box_prior, CONTENT_REGRESSION), 4))
        points.append(_flatten_anchors(g, head(10, kps_prior, CONTENT_REGRESSION), 10))

    # The real model's outputs: scores, boxes, landmarks, each for strides 8, 16, 32 (9 in all).
    outputs = []
    for kind, names, width in (("score", scores, 1), ("bbox", boxes, 4), ("kps", points, 10)):
        for stride, name in zip(STRIDES, names):
            out = f"{kind}_{stride}"
            g.nodes.append(helper.make_node("Identity", [name], [out], name=f"{out}_node"))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"{kind}_{stride}_n", width]))
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "?", "?"])]
    return serialize_model(g, inputs, outputs, "tiny_scrfd_10g_bnkps")


def build_tiny_glintr100(*, seed: int = 0, batch: int | str = "None") -> bytes:
    """ArcFace's signature ([batch, 3, 112, 112] -> [batch, 512]); ``batch`` 1 makes a fixed-batch model."""
    from onnx import TensorProto, helper

    g = GraphBuilder(seed + 1)  # not the detector's stream
    x = "input.1"
    h = g.conv(x, 3, 8, kernel=3, stride=2)
    h = g.op("PRelu", [h, g.const(np.full((8, 1, 1), 0.25))])
    h = g.conv(h, 8, WIDTH, kernel=3, stride=2)
    h = g.op("PRelu", [h, g.const(np.full((WIDTH, 1, 1), 0.25))])
    h = g.op("PRelu", [g.conv(h, WIDTH, WIDTH, kernel=3, stride=2), g.const(np.full((WIDTH, 1, 1), 0.25))])
    h = g.conv(h, WIDTH, WIDTH, kernel=3, stride=2)  # [n, 16, 7, 7], as IResNet's 7x7 before its FC
    flat = g.op("Flatten", [h], axis=1)
    fan_in = WIDTH * 7 * 7
    weight = g.rng.normal(0.0, np.sqrt(1.0 / fan_in), (EMBED_DIM, fan_in))
    fc = g.op("Gemm", [flat, g.const(weight, "fc_w"), g.const(g.rng.normal(0.0, 0.01, EMBED_DIM), "fc_b")],
              transB=1)
    g.nodes.append(helper.make_node("Identity", [fc], ["embedding"], name="embedding_node"))
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, EMBED_DIM])]
    return serialize_model(g, inputs, outputs, "tiny_glintr100")


def write_tiny_antelopev2(dest_dir: Path, *, seed: int = 0) -> Path:
    """An antelopev2-style folder holding the tiny detector and recogniser under the real file names."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    (dest_dir / SCRFD_FILE).write_bytes(build_tiny_scrfd(seed=seed))
    (dest_dir / GLINTR_FILE).write_bytes(build_tiny_glintr100(seed=seed))
    return dest_dir
