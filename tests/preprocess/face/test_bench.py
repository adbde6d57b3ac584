import json

import numpy as np
import onnxruntime
from insightface.model_zoo import ArcFaceONNX, get_model

from preprocess.face import bench


def iresnet100_parameters() -> int:
    """IResNet-100 (arcface_torch's iresnet100, 512-d) counted from its definition: conv weights (no biases),
    BatchNorm scale and shift, PReLU slopes, the 7x7x512 -> 512 FC with bias and the BatchNorm1d after it."""
    total = 3 * 64 * 9 + 2 * 64 + 64  # stem conv, BN, PReLU
    inplanes = 64
    for blocks, planes in zip((3, 13, 30, 3), (64, 128, 256, 512)):
        for b in range(blocks):
            total += 2 * inplanes + inplanes * planes * 9 + 2 * planes + planes + planes * planes * 9 + 2 * planes
            if b == 0:
                total += inplanes * planes + 2 * planes  # 1x1 stride-2 downsample + BN
            inplanes = planes
    return total + 2 * 512 + 512 * 7 * 7 * 512 + 512 + 2 * 512


def test_iresnet100_is_glintr100s_architecture(tmp_path):
    model = bench.build_iresnet100(seed=0)
    assert bench.parameter_count(model) == iresnet100_parameters()
    path = tmp_path / "glintr100.onnx"
    path.write_bytes(model)
    recognizer = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(recognizer, ArcFaceONNX) and recognizer.input_size == (112, 112)
    faces = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    embeddings = recognizer.get_feat(list(faces))
    assert embeddings.shape == (2, 512) and np.isfinite(embeddings).all()


def test_bench_runs_and_prints_json(capsys):
    bench.main(["--repeats", "1", "--batch", "2"])
    report = json.loads(capsys.readouterr().out)
    assert report["antelopev2"].startswith("tiny") and report["provider"] == "CPUExecutionProvider"
    assert report["machine"]["onnxruntime"] == onnxruntime.__version__
    assert set(report["ssd_images"]) == {"astronaut_512x512", "t1_886x1280", "full_body_1101x750"}
    for figures in report["ssd_images"].values():
        assert figures["per_s"] > 0 and figures["find_face"]["per_s"] > 0
    step = report["embedding_step"]
    assert step["recognizer_batch_2"]["items"] == 2 and step["per_face"]["per_s"] > 0
    assert report["stage"]["items"] == 3 and report["stage"]["per_s"] > 0
