"""Benchmark of the face stage on this machine: images per second of the SSD and faces per second of the
embedding step (crop, SCRFD landmarks, alignment, recogniser), and of the whole stage. Prints JSON.

The SSD is the real res10 model. The antelopev2 models are a folder you name (``--antelopev2 DIR``, real
weights) or the tiny ones; ``--recognizer iresnet100`` swaps in glintr100's architecture (IResNet-100, the
arcface_torch layout) at full size with seeded random weights, so the recogniser's cost is the real one even
without the weights. SCRFD-10G is not rebuilt at full size: without ``--antelopev2`` its figure is the tiny one.

    python -m preprocess.face.bench [--antelopev2 DIR] [--recognizer iresnet100] [--repeats 3] [--threads 0]
        [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from preprocess.common import object_column
from preprocess.face.arcface import antelopev2_files
from preprocess.face.crop import crop_square, expand_square, resize_square
from preprocess.face.stage import FaceConfig, FaceStage
from preprocess.face.tiny import GLINTR_FILE, GraphBuilder, serialize_model, write_tiny_antelopev2
from shards.bench import Faults, allocator_in_use, cpu_model

IRESNET100_LAYERS = (3, 13, 30, 3)
IRESNET_WIDTHS = (64, 128, 256, 512)


def _bn(g: GraphBuilder, x: str, channels: int, *, gamma: float = 1.0) -> str:
    """Inference BatchNorm with identity statistics (the cost is what is measured, not the values)."""
    return g.op("BatchNormalization", [x, g.const(np.full(channels, gamma)), g.const(np.zeros(channels)),
                                       g.const(np.zeros(channels)), g.const(np.ones(channels))], epsilon=1e-5)


def _prelu(g: GraphBuilder, x: str, channels: int) -> str:
    return g.op("PRelu", [x, g.const(np.full((channels, 1, 1), 0.25))])


def build_iresnet100(*, seed: int = 0) -> bytes:
    """glintr100's network: IResNet-100 (blocks 3/13/30/3 of BN-conv-BN-PReLU-conv-BN), 112x112 -> 512."""
    from onnx import TensorProto, helper

    g = GraphBuilder(seed)
    h = _prelu(g, _bn(g, g.conv("input.1", 3, 64, kernel=3, stride=1, bias=False), 64), 64)
    inplanes = 64
    for blocks, planes in zip(IRESNET100_LAYERS, IRESNET_WIDTHS):
        for b in range(blocks):
            stride = 2 if b == 0 else 1
            out = _bn(g, h, inplanes)
            out = _prelu(g, _bn(g, g.conv(out, inplanes, planes, kernel=3, stride=1, bias=False), planes), planes)
            # A small last-BN scale keeps 49 random residual blocks finite (denormals or infs would skew timing).
            out = _bn(g, g.conv(out, planes, planes, kernel=3, stride=stride, bias=False), planes, gamma=0.1)
            identity = h if b else _bn(g, g.conv(h, inplanes, planes, kernel=1, stride=stride, bias=False), planes)
            h = g.op("Add", [out, identity])
            inplanes = planes
    flat = g.op("Flatten", [_bn(g, h, 512)], axis=1)
    weight = g.rng.normal(0.0, np.sqrt(1.0 / (512 * 49)), (512, 512 * 49))
    fc = g.op("Gemm", [flat, g.const(weight, "fc_w"), g.const(np.zeros(512), "fc_b")], transB=1)
    g.nodes.append(helper.make_node("Identity", [_bn(g, fc, 512)], ["embedding"], name="embedding_node"))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", 512])]
    return serialize_model(g, inputs, outputs, "iresnet100")


def parameter_count(model_bytes: bytes) -> int:
    """Learned values (BatchNorm running statistics excluded), as a framework would count them."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    stats = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name not in stats)


def _timed(run: Callable[[], Any], *, repeats: int, items: int) -> dict[str, float]:
    run()  # warm-up: session allocation and kernel selection are not steady-state cost
    seconds = []
    with Faults() as faults:
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
    mean = sum(seconds) / len(seconds)
    return {"items": items, "repeats": repeats, "seconds_mean": float(f"{mean:.5g}"),
            "seconds_best": float(f"{min(seconds):.5g}"),
            "per_s": round(items / mean, 3), **faults.per_item(items * repeats)}


def _machine() -> dict[str, Any]:
    import onnxruntime

    cpu = cpu_model()
    return {"cpu": cpu, "allocator": allocator_in_use(), "cpu_count": os.cpu_count(), "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(), "onnxruntime": onnxruntime.__version__}


def _images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real photos and a full-body-like one (the astronaut small on a 1101x750 canvas), with person boxes."""
    import insightface
    from PIL import Image
    from skimage import data

    group = np.asarray(Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB"))
    canvas = cv2.resize(data.coffee(), (750, 1101), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(data.astronaut(), (179, 179), interpolation=cv2.INTER_AREA)
    canvas[110:289, 285:464] = small
    return {
        "astronaut_512x512": (data.astronaut(), np.zeros(4, np.float32)),
        "t1_886x1280": (group, np.zeros(4, np.float32)),
        "full_body_1101x750": (canvas, np.array([285, 110, 464, 1091], np.float32)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m preprocess.face.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--antelopev2", type=Path, default=None, help="a real antelopev2 folder (default: tiny)")
    parser.add_argument("--recognizer", choices=("as-is", "iresnet100"), default="as-is",
                        help="iresnet100: glintr100's architecture at full size, random weights")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--batch", type=int, default=4, help="faces per recogniser run in the batched figure")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be at least 1")

    report: dict[str, Any] = {"machine": _machine(), "device": args.device, "threads": args.threads}
    images = _images()
    with tempfile.TemporaryDirectory(prefix="mcld-face-bench-") as tmp:
        folder = Path(tmp) / "antelopev2"
        if args.antelopev2 is None:
            write_tiny_antelopev2(folder, seed=0)
            report["antelopev2"] = "tiny (toy SCRFD and recogniser; the detector figure is not SCRFD-10G's)"
        else:
            detector, recognizer = antelopev2_files(args.antelopev2, detector_file="scrfd_10g_bnkps.onnx",
                                                    recognizer_file=GLINTR_FILE)
            folder.mkdir()
            for file in (detector, recognizer):
                os.symlink(file.resolve(), folder / file.name)
            report["antelopev2"] = str(args.antelopev2)
        if args.recognizer == "iresnet100":
            (folder / GLINTR_FILE).unlink()
            model = build_iresnet100(seed=0)
            (folder / GLINTR_FILE).write_bytes(model)
            report["recognizer"] = {"architecture": "IResNet-100 (glintr100's), random weights",
                                    "parameters": parameter_count(model)}
        stage = FaceStage(config=FaceConfig(antelopev2_dir=folder, device=args.device, threads=args.threads,
                                            max_batch=args.batch))
        report["provider"] = stage.provider

        ssd = {}
        for name, (image, person) in images.items():
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            ssd[name] = _timed(lambda: stage.ssd.detect(bgr, threshold=0.5), repeats=args.repeats, items=1)
            ssd[name]["find_face"] = _timed(lambda: stage.find_face(image, person if person.any() else None),
                                            repeats=args.repeats, items=1)
        report["ssd_images"] = ssd

        # The embedding step on the astronaut's face: crop + SCRFD + align + recogniser, one face at a time.
        image = images["astronaut_512x512"][0]
        found = stage.find_face(image, None)
        x0, y0, side = expand_square(found.box, scale=1.5)
        embedder = stage.embedder

        def one_face() -> None:
            crop = crop_square(image, x0=x0, y0=y0, side=side)
            det = cv2.cvtColor(resize_square(crop, stage.config.det_size), cv2.COLOR_RGB2BGR)
            _, _, kps = embedder.detect(det)
            embedder.embed([embedder.align(det, kps[0])])

        det_crop = cv2.cvtColor(resize_square(crop_square(image, x0=x0, y0=y0, side=side), stage.config.det_size),
                                cv2.COLOR_RGB2BGR)
        kps = embedder.detect(det_crop)[2][0]
        aligned = embedder.align(det_crop, kps)
        report["embedding_step"] = {
            "det_size": stage.config.det_size,
            "per_face": _timed(one_face, repeats=args.repeats, items=1),
            "scrfd_only": _timed(lambda: embedder.detect(det_crop), repeats=args.repeats, items=1),
            "recognizer_batch_1": _timed(lambda: embedder.embed([aligned]), repeats=args.repeats, items=1),
            f"recognizer_batch_{args.batch}": _timed(lambda: embedder.embed([aligned] * args.batch),
                                                     repeats=args.repeats, items=args.batch),
        }

        batch = {
            "image_id": np.array(list(images), dtype=object),
            "status": np.array(["ok"] * len(images), dtype=object),
            "reject_stage": np.array([""] * len(images), dtype=object),
            "detail": np.array([""] * len(images), dtype=object),
            "image": object_column([image for image, _ in images.values()]),
            "person_box": np.stack([person for _, person in images.values()]),
        }
        report["stage"] = _timed(lambda: stage(batch), repeats=args.repeats, items=len(images))
        report["stage"]["images"] = list(images)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
