"""Model-zoo weights, loaded without trusting the file.

detectron2's ``.pkl`` checkpoints are ``{"model": {name: ndarray}, "__author__": ...}`` pickles. A pickle
can name any importable callable, so ``pickle.load`` on a downloaded file runs whatever it says; here
the unpickler resolves only the handful of numpy constructors an array needs (and OrderedDict), and
refuses every other global before anything is called. ``.pth`` files go through
``torch.load(weights_only=True)``, torch's own restricted unpickler.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class WeightsError(ValueError):
    """A weights file that is unreadable, unsafe, or does not match the model."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 pickles of ``bytes`` at protocol <= 2 call ``_codecs.encode(text, "latin1")``."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise _Refused(f"_codecs.encode with encoding {encoding!r}: only latin-1 is admitted")
    return codecs.encode(text, "latin1", errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    admitted = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy < 2 pickles say numpy.core.*, numpy >= 2 say numpy._core.*: the same constructors.
    for package in ("numpy.core", "numpy._core"):
        admitted[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        admitted[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        admitted[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return admitted


class _Refused(pickle.UnpicklingError):
    """Our refusal of a global or persistent id (as opposed to a corrupt stream)."""


class _ArrayUnpickler(pickle.Unpickler):
    _admitted = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._admitted[(module, name)]
        except KeyError:
            raise _Refused(
                f"refused global {module}.{name}: weights may hold only numpy arrays and plain containers"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refused a persistent id: weights may hold only numpy arrays and plain containers")


def _check_plain(value: Any, where: str, path: Path) -> None:
    """After unpickling: only arrays of numbers, numbers, strings and containers of those."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise WeightsError(f"{path}: {where} is an array of dtype {value.dtype}; weights must be numeric")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise WeightsError(f"{path}: {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]", path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", path)
    elif not isinstance(value, (str, bytes, int, float, bool, type(None), np.generic)):
        raise WeightsError(f"{path}: {where} is a {type(value).__name__}; weights may hold only arrays and containers")


def load_pickle_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A detectron2 model-zoo ``.pkl``: its ``model`` dict of numpy arrays, read by the restricted unpickler."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WeightsError(f"{path}: cannot read weights: {error.strerror or error}") from error
    try:
        # latin1: model-zoo files written by Python 2 hold array bytes as str.
        checkpoint = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as error:
        raise WeightsError(f"{path}: {error}") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError, UnicodeDecodeError, LookupError) as error:
        raise WeightsError(f"{path}: not a readable weights pickle ({type(error).__name__}: {error})") from error
    _check_plain(checkpoint, "the pickle", path)
    if not (isinstance(checkpoint, dict) and "model" in checkpoint and "__author__" in checkpoint):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsError(
            f"{path}: not a detectron2 model-zoo checkpoint: expected a dict with 'model' and '__author__', "
            f"found {found} (Caffe2/Detectron1 blob files are not supported)"
        )
    return _name_map(checkpoint["model"], path)


def load_torch_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A ``.pth``: a state dict, or a detectron2 checkpoint holding one under ``model``."""
    import torch

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise WeightsError(f"{path}: weights file does not exist") from error
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise WeightsError(f"{path}: torch.load(weights_only=True) refused or failed: {error}") from error
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        checkpoint = checkpoint["model"]
    return _name_map(checkpoint, path)


def _name_map(model: Any, path: Path) -> dict[str, Any]:
    import torch

    if not isinstance(model, dict) or not model:
        raise WeightsError(f"{path}: the checkpoint's model is not a non-empty dict of tensors")
    for name, value in model.items():
        if not isinstance(name, str):
            raise WeightsError(f"{path}: parameter name {name!r} is not a string")
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise WeightsError(f"{path}: {name} is a {type(value).__name__}, not an array")
    # fvcore strips a DataParallel "module." prefix when every name has it; so do we.
    if all(name.startswith("module.") for name in model):
        model = {name[len("module."):]: value for name, value in model.items()}
    return dict(model)


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Weights by file type: ``.pkl`` (model zoo, restricted unpickler) or ``.pth``/``.pt`` (torch)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file does not exist")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        return load_pickle_weights(path)
    if suffix in (".pth", ".pt"):
        return load_torch_weights(path)
    raise WeightsError(f"{path}: unknown weights format {suffix!r}; expected a model-zoo .pkl or a .pth")


# Entries detectron2's checkpointer drops: old checkpoints saved the pixel normalisation and the anchor
# cells as buffers; detectron2 takes both from the config instead, and so do we.
_IGNORED = re.compile(r"^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\.cell_anchors\.\d+)$")


@dataclass(frozen=True)
class LoadReport:
    loaded: int
    ignored: tuple[str, ...]  # entries detectron2 ignores too (pixel_mean, pixel_std, anchor cells)


def load_state_strict(model: Any, weights: dict[str, Any], *, source: str | os.PathLike) -> LoadReport:
    """Copy ``weights`` into ``model``; every parameter must be present with its shape, nothing extra.

    The error names every missing and every unexpected entry, and the first shape mismatch with both shapes.
    """
    import torch

    expected = model.state_dict()
    ignored = tuple(sorted(name for name in weights if name not in expected and _IGNORED.match(name)))
    given = {name: value for name, value in weights.items() if name not in ignored}
    missing = [name for name in expected if name not in given]
    unexpected = sorted(name for name in given if name not in expected)
    mismatch = next(
        ((name, tuple(given[name].shape), tuple(tensor.shape)) for name, tensor in expected.items()
         if name in given and tuple(given[name].shape) != tuple(tensor.shape)),
        None,
    )
    problems = []
    if mismatch is not None:
        name, found, wanted = mismatch
        problems.append(f"shape mismatch at {name}: the weights have {found}, the config's model needs {wanted}")
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if problems:
        raise WeightsError(f"{source}: the weights do not match the config's model: " + "; ".join(problems))
    state = {}
    for name, tensor in expected.items():
        value = given[name]
        value = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        if not torch.is_floating_point(value) and torch.is_floating_point(tensor):
            raise WeightsError(f"{source}: {name} has dtype {value.dtype}; expected floating point")
        state[name] = value.to(tensor.dtype)
    model.load_state_dict(state, strict=True)
    return LoadReport(loaded=len(state), ignored=ignored)
