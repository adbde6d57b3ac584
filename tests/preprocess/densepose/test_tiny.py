"""The tiny model: real on-disk formats, byte-identical per seed, and a person with parts on real photos."""

import hashlib

import numpy as np
import pytest

from preprocess.densepose.config import read_settings
from preprocess.densepose.tiny import BASE_NAME, write_tiny_densepose
from preprocess.densepose.weights import read_weights


def _digest(paths) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_same_seed_same_bytes_other_seed_other_weights(tiny, tmp_path):
    again = write_tiny_densepose(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(tiny)
    assert (tmp_path / "again" / BASE_NAME).read_bytes() == (tiny[0].parent / BASE_NAME).read_bytes()
    other = write_tiny_densepose(tmp_path / "other", seed=1)
    assert _digest(other)[0] == _digest(tiny)[0]  # the config does not depend on the seed
    assert _digest(other)[1] != _digest(tiny)[1]


def test_written_in_the_model_zoo_layout_with_a_base_chain(tiny):
    import pickle

    checkpoint = pickle.loads(tiny[1].read_bytes())
    assert set(checkpoint) == {"model", "__author__"}
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in checkpoint["model"].values())
    assert "roi_heads.densepose_head.ASPP.project.0.weight" in checkpoint["model"]
    assert set(read_weights(tiny[1])) == set(checkpoint["model"])
    settings = read_settings(tiny[0])
    assert settings["MODEL.ROI_HEADS.NAME"].source.endswith(BASE_NAME)
    assert settings["MODEL.ROI_DENSEPOSE_HEAD.NAME"].value == "DensePoseDeepLabHead"
    assert settings["MODEL.FPN.OUT_CHANNELS"].source == str(tiny[0])


@pytest.mark.parametrize("photo", ["astronaut", "group_photo"])
def test_tiny_reports_a_person_with_many_parts(tiny_predictor, photo, request):
    image = request.getfixturevalue(photo)
    result = tiny_predictor.predict([image])[0]
    assert result.count >= 1 and result.person == 0 and result.scores[0] > 0.5
    iuv = result.iuv
    assert iuv.shape == (*image.shape[:2], 3)
    body = iuv[..., 0] > 0
    assert body.sum() >= 2000
    assert len(np.unique(iuv[..., 0][body])) >= 10
    for channel in (1, 2):
        values = iuv[..., channel][body].astype(float)
        assert values.std() > 30 and values.min() < 64 and values.max() > 192
