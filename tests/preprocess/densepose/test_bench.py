import json

import pytest
import torch

from preprocess.densepose import bench
from preprocess.densepose.config import load_config
from preprocess.densepose.model import DensePoseRCNN
from preprocess.densepose.weights import read_weights


@pytest.mark.parametrize("model", ["r50", "r101dl"])
def test_bench_architectures_are_the_official_ones(model, tmp_path, fixtures_root):
    """Same parameter names as the fixture weights (official configs at reduced width), official widths."""
    config = load_config(bench.official_config(tmp_path, model))
    with torch.device("meta"):
        network = DensePoseRCNN(config)
    state = network.state_dict()
    assert set(state) == set(read_weights(fixtures_root / model / "weights.pkl"))
    assert state["backbone.fpn_lateral5.weight"].shape == (256, 2048, 1, 1)
    assert state["roi_heads.box_head.fc1.weight"].shape == (1024, 256 * 7 * 7)
    assert state["roi_heads.densepose_head.body_conv_fcn8.weight"].shape == (512, 512, 3, 3)
    assert config.resnet.depth == (50 if model == "r50" else 101)


def test_bench_runs_and_prints_json(tiny, capsys):
    assert bench.main(["--config", str(tiny[0]), "--weights", str(tiny[1]), "--batches", "1,2", "--repeats", "1",
                       "--size", "220x150"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in report["results"]] == [1, 2]
    for r in report["results"]:  # the two figures are one measurement, inverted
        assert r["images_per_s"] * r["seconds_per_image"] == pytest.approx(1.0, rel=5e-2)
    assert all(r["images_per_s"] > 0 and r["dtype"] == "float32" and r["detections"] > 0 for r in report["results"])
    assert report["image"].startswith("220x150")
    # the allocator this process started with, and what it cost: page faults and CPU seconds per image
    assert report["allocator"] and all(r["minor_faults_per_image"] >= 0 and r["user_seconds_per_image"] > 0
                                       for r in report["results"])


@pytest.mark.slow
def test_official_size_weights_load_through_the_predictor(tmp_path):
    """The benchmark's R_50_FPN_s1x file (~250 MB of seeded weights) loads strictly into the predictor with
    every tensor exactly the seeded one, and the biased weights report a person (what the benchmark times)."""
    from preprocess.densepose.predictor import DensePosePredictor
    from preprocess.densepose.tiny import seeded_state

    config, weights = bench.write_official_size(tmp_path / "r50", "r50")
    try:
        predictor = DensePosePredictor(config_path=config, weights_path=weights)
        assert predictor.load_report.loaded == len(predictor.model.state_dict())
        expected = seeded_state(DensePoseRCNN(load_config(config)), 0)
        loaded = predictor.model.state_dict()
        for name, value in expected.items():
            assert torch.equal(loaded[name].cpu(), torch.as_tensor(value)), name
        result = predictor.predict([bench.photo(110, 75)], charts="person")[0]
        assert result.count > 0 and result.iuv.shape == (110, 75, 3)
    finally:
        weights.unlink()


def test_bench_config_needs_weights(tiny):
    with pytest.raises(SystemExit):
        bench.main(["--config", str(tiny[0])])
