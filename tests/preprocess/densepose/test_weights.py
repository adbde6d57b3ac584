"""Weights: the restricted unpickler, .pth through torch's weights_only loader, and strict loading."""

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from preprocess.densepose.config import load_config
from preprocess.densepose.model import DensePoseRCNN
from preprocess.densepose.weights import WeightsError, load_state_strict, read_weights


class _RunsCode:
    """A pickle payload that calls os.system when loaded by a plain unpickler."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('/nonexistent/evaluated').touch()",))


def test_crafted_pickle_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": _RunsCode(f"touch {marker}")}, "__author__": "x"}))
    # The payload is real: a plain pickle.load would create the marker.
    with pytest.raises(WeightsError) as error:
        read_weights(evil)
    assert not marker.exists()
    message = str(error.value)
    assert str(evil) in message and "refused global posix.system" in message

    for payload, name in ((_Evaluates(), "builtins.eval"), (OrderedDict, "collections.OrderedDict")):
        path = tmp_path / "other.pkl"
        path.write_bytes(pickle.dumps({"model": {"w": payload}, "__author__": "x"}))
        if name == "collections.OrderedDict":  # admitted, but a class is not an array
            with pytest.raises(WeightsError, match="is a type; weights may hold only arrays"):
                read_weights(path)
        else:
            with pytest.raises(WeightsError, match=f"refused global {name}"):
                read_weights(path)


class _Encodes:
    def __reduce__(self):
        import _codecs

        return (_codecs.encode, ("abc", "utf-16"))


def test_codecs_encode_is_admitted_for_latin1_only(tmp_path):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _Encodes()}, "__author__": "x"}, protocol=2))
    with pytest.raises(WeightsError, match="encoding 'utf-16': only latin-1 is admitted"):
        read_weights(path)


def test_pickles_of_anything_but_numeric_arrays_are_refused(tmp_path):
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.array([1, "a"], dtype=object)}, "__author__": "x"}))
    with pytest.raises(WeightsError, match=r"\['model'\]\['w'\] is an array of dtype object"):
        read_weights(path)
    path.write_bytes(pickle.dumps({"res2.conv1.weight": np.zeros(3, np.float32)}))  # a Detectron1-style blob file
    with pytest.raises(WeightsError, match="not a detectron2 model-zoo checkpoint.*'res2.conv1.weight'"):
        read_weights(path)
    path.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}, "__author__": "x"}))
    with pytest.raises(WeightsError, match="w is a list, not an array"):
        read_weights(path)
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(WeightsError, match="not a readable weights pickle"):
        read_weights(path)
    with pytest.raises(WeightsError, match="does not exist"):
        read_weights(tmp_path / "absent.pkl")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"")
    with pytest.raises(WeightsError, match="unknown weights format '.bin'"):
        read_weights(other)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pickles_of_every_protocol_load(tmp_path, protocol):
    """Python 2-era files (protocol 2: numpy.core, _codecs.encode for bytes) and newer ones read alike."""
    arrays = OrderedDict(a=np.arange(12, dtype=np.float32).reshape(3, 4), b=np.array([1.5], np.float64))
    path = tmp_path / "w.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True},
                                  protocol=protocol))
    loaded = read_weights(path)
    assert list(loaded) == ["a", "b"]
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    assert loaded["b"].dtype == np.float64


def test_python2_pickle_with_numpy_core_names_loads(tmp_path):
    """A hand-written protocol-2 stream as Python 2 wrote it: numpy.core.multiarray and a latin-1 str."""
    data = np.array([1.0, -2.0], "<f4").tobytes().decode("latin1")
    stream = (
        b"\x80\x02}q\x00(U\x05modelq\x01}q\x02U\x01wcnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\n"
        b"K\x00\x85U\x01b\x87Rq\x04(K\x01K\x02\x85cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff"
        b"\xffJ\xff\xff\xff\xffK\x00tb\x89U\x08" + data.encode("latin1") + b"tbsU\n__author__U\x02pyu."
    )
    path = tmp_path / "py2.pkl"
    path.write_bytes(stream)
    np.testing.assert_array_equal(read_weights(path)["w"], np.array([1.0, -2.0], np.float32))


def test_pth_loads_with_weights_only(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"model": {"module.a": torch.ones(2), "module.b": torch.zeros(1)}, "iteration": 5}, path)
    loaded = read_weights(path)
    assert sorted(loaded) == ["a", "b"]  # the DataParallel prefix is stripped, as fvcore does
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"w": _RunsCode(f"touch {marker}")}, evil)
    with pytest.raises(WeightsError, match="weights_only=True"):
        read_weights(evil)
    assert not marker.exists()


@pytest.fixture(scope="module")
def fixture_model(fixtures_root):
    config = load_config(fixtures_root / "r50" / "config.yaml")
    return DensePoseRCNN(config), read_weights(fixtures_root / "r50" / "weights.pkl")


def test_strict_load_names_every_missing_and_unexpected_entry(fixture_model):
    model, weights = fixture_model
    broken = dict(weights)
    del broken["roi_heads.box_head.fc1.bias"]
    del broken["backbone.bottom_up.res3.1.conv2.norm.running_var"]
    broken["roi_heads.mask_head.mask_fcn1.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError) as error:
        load_state_strict(model, broken, source="w.pkl")
    message = str(error.value)
    assert message.startswith("w.pkl: the weights do not match the config's model")
    assert "2 missing: backbone.bottom_up.res3.1.conv2.norm.running_var, roi_heads.box_head.fc1.bias" in message
    assert "1 unexpected: roi_heads.mask_head.mask_fcn1.weight" in message


def test_strict_load_names_the_first_shape_mismatch_with_both_shapes(tiny, fixture_model):
    """The tiny model's weights against the r50 fixture's config: other widths, another head."""
    model, _ = fixture_model
    with pytest.raises(WeightsError) as error:
        load_state_strict(model, read_weights(tiny[1]), source="tiny.pkl")
    message = str(error.value)
    assert "shape mismatch at backbone.fpn_lateral2.weight: the weights have (32, 32, 1, 1), " \
           "the config's model needs (32, 64, 1, 1)" in message
    assert message.count("shape mismatch") == 1
    assert "unexpected: roi_heads.densepose_head.ASPP.convs.0.0.weight" in message  # DeepLab vs V1ConvX


def test_entries_detectron2_ignores_are_ignored_and_values_loaded(fixture_model):
    model, weights = fixture_model
    extra = dict(weights)
    extra["pixel_mean"] = np.zeros((3, 1, 1), np.float32)
    extra["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), np.float32)
    report = load_state_strict(model, extra, source="w.pkl")
    assert report.ignored == ("pixel_mean", "proposal_generator.anchor_generator.cell_anchors.0")
    assert report.loaded == len(weights)
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), weights[name])
    assert model.pixel_mean.flatten().tolist() == pytest.approx([103.53, 116.28, 123.675])  # the config's


def test_persistent_ids_and_odd_containers_are_refused(tmp_path):
    import io

    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage" if isinstance(obj, bytes) else None

    buffer = io.BytesIO()
    WithPersistentId(buffer).dump({"model": {"w": b"raw"}, "__author__": "x"})
    path = tmp_path / "w.pkl"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(WeightsError, match="refused a persistent id"):
        read_weights(path)
    path.write_bytes(pickle.dumps({"model": {("a", 1): np.zeros(2, np.float32)}, "__author__": "x"}))
    with pytest.raises(WeightsError, match=r"\['model'\] has a key of type tuple"):
        read_weights(path)
    path.write_bytes(pickle.dumps({"model": {3: np.zeros(2, np.float32)}, "__author__": "x"}))
    with pytest.raises(WeightsError, match="parameter name 3 is not a string"):
        read_weights(path)
    path.write_bytes(pickle.dumps({"model": {}, "__author__": "x"}))
    with pytest.raises(WeightsError, match="not a non-empty dict"):
        read_weights(path)


def test_unreadable_files(tmp_path):
    from preprocess.densepose.weights import load_pickle_weights, load_torch_weights

    folder = tmp_path / "folder.pkl"
    folder.mkdir()
    with pytest.raises(WeightsError, match="folder.pkl: cannot read weights"):
        load_pickle_weights(folder)
    with pytest.raises(WeightsError, match="folder.pkl: weights file does not exist"):
        read_weights(folder)
    with pytest.raises(WeightsError, match="absent.pth: weights file does not exist"):
        load_torch_weights(tmp_path / "absent.pth")
    listing = tmp_path / "list.pth"
    torch.save([torch.ones(1)], listing)
    with pytest.raises(WeightsError, match="not a non-empty dict of tensors"):
        read_weights(listing)


def test_integer_arrays_for_float_parameters_are_refused(fixture_model):
    model, weights = fixture_model
    wrong = dict(weights)
    wrong["roi_heads.box_head.fc1.bias"] = weights["roi_heads.box_head.fc1.bias"].astype(np.int64)
    with pytest.raises(WeightsError, match="roi_heads.box_head.fc1.bias has dtype torch.int64; expected floating"):
        load_state_strict(model, wrong, source="w.pkl")
