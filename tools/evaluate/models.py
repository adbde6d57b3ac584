"""The metric backbones, read from local files named in a models YAML; nothing is downloaded.

The YAML (paths relative to the file's folder)::

    inception: inception_v3_google-0cc3c7bd.pth   # torchvision Inception v3 state dict (FID)
    alexnet: alexnet-owt-7be5be79.pth             # torchvision AlexNet state dict (LPIPS backbone)
    lpips: lpips/v0.1/alex.pth                    # LPIPS v0.1 linear layers; optional: the lpips package's own
    face: insightface/models/buffalo_s            # insightface model folder (detector + recogniser)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shards.yamlfile import check_keys, load_mapping

log = logging.getLogger(__name__)

#: The reference's det_size=(512, 352): insightface reads it as (width, height).
FACE_DET_SIZE = (512, 352)


class ModelFileError(ValueError):
    """A models file, or a file it names, is missing or unreadable; the message is one line naming it."""


@dataclass(frozen=True)
class EvalModelPaths:
    inception: Path
    alexnet: Path
    lpips: Path
    face: Path | None


def packaged_lpips_weights() -> Path:
    """The v0.1 AlexNet linear layers the `lpips` wheel ships (the file the reference loads)."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"


def read_models_file(path: str | Path) -> EvalModelPaths:
    path = Path(path)
    data = load_mapping(path, what="models file", allow_empty=False, error=ModelFileError)
    check_keys(data, ("inception", "alexnet", "lpips", "face"), where=str(path), error=ModelFileError)

    def resolve(key: str, *, required: bool, folder: bool = False) -> Path | None:
        value = data.get(key)
        if value is None:
            if required:
                raise ModelFileError(f"{path}: '{key}' is missing")
            return None
        target = Path(value).expanduser()
        target = target if target.is_absolute() else path.parent / target
        exists = target.is_dir() if folder else target.is_file()
        if not exists:
            raise ModelFileError(f"{path}: {key} {'folder' if folder else 'file'} {target} not found")
        return target

    lpips_path = resolve("lpips", required=False)
    if lpips_path is None:
        lpips_path = packaged_lpips_weights()
        if not lpips_path.is_file():
            raise ModelFileError(f"{path}: no 'lpips' given and the lpips package has no {lpips_path}")
    return EvalModelPaths(inception=resolve("inception", required=True), alexnet=resolve("alexnet", required=True),
                          lpips=lpips_path, face=resolve("face", required=False, folder=True))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; report them all as one line
        raise ModelFileError(f"{path}: not a readable torch state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_inception_blocks(path: Path) -> nn.Sequential:
    """Inception v3 up to the 2048-d average pool, exactly the blocks the reference's build_metric chains
    (no dropout, no fc; torchvision's own forward would also apply transform_input and the aux head)."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        net.load_state_dict(_state_dict(path))
    except RuntimeError as error:
        raise ModelFileError(f"{path}: not a torchvision Inception v3 state dict ({str(error).splitlines()[0]})") \
            from error
    blocks = nn.Sequential(
        net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
        net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
        net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)),
    )
    return blocks.eval().requires_grad_(False)


def load_lpips(alexnet_path: Path, lpips_path: Path) -> nn.Module:
    """`lpips.LPIPS(net='alex', version='0.1')` with its AlexNet taken from a local torchvision state dict
    instead of torchvision's download (lpips asks for `alexnet(pretrained=True)`)."""
    import warnings

    import lpips

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)
        try:
            model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, model_path=str(lpips_path), verbose=False)
        except Exception as error:  # a bad pickle surfaces as several types; one line naming the file
            raise ModelFileError(f"{lpips_path}: not LPIPS v0.1 linear weights ({type(error).__name__}: {error})") \
                from error
    state = _state_dict(alexnet_path)
    loaded = 0
    for slice_module in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
        for index, layer in slice_module.named_children():
            if not isinstance(layer, nn.Conv2d):
                continue
            keys = (f"features.{index}.weight", f"features.{index}.bias")
            if any(key not in state for key in keys):
                raise ModelFileError(f"{alexnet_path}: not a torchvision AlexNet state dict (no {keys[0]})")
            if state[keys[0]].shape != layer.weight.shape:
                raise ModelFileError(f"{alexnet_path}: {keys[0]} has shape {tuple(state[keys[0]].shape)}, "
                                     f"AlexNet needs {tuple(layer.weight.shape)}")
            layer.weight.data.copy_(state[keys[0]])
            layer.bias.data.copy_(state[keys[1]])
            loaded += 1
    assert loaded == 5, "lpips' AlexNet has 5 convolutions"
    return model.eval().requires_grad_(False)


def load_face_analysis(folder: Path, *, device: str):
    """insightface's FaceAnalysis on a local folder (detector + recogniser), prepared as the reference does."""
    from insightface.app import FaceAnalysis

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
        else ["CPUExecutionProvider"]
    try:
        app = FaceAnalysis(name=str(folder.resolve()), allowed_modules=["detection", "recognition"],
                           providers=providers)
    except Exception as error:  # insightface raises AssertionError/RuntimeError/... for an incomplete folder
        raise ModelFileError(f"{folder}: not an insightface model folder with a detector and a recogniser "
                             f"({type(error).__name__}: {error})") from error
    if "recognition" not in app.models or app.det_model is None:
        raise ModelFileError(f"{folder}: needs a detection and a recognition .onnx model, found "
                             f"{sorted(app.models)}")
    app.prepare(ctx_id=0 if device.startswith("cuda") else -1, det_size=FACE_DET_SIZE)
    if device.startswith("cuda"):
        on_cpu = sorted(name for name, model in app.models.items()
                        if "CUDAExecutionProvider" not in face_session_providers(model))
        if on_cpu:
            import onnxruntime

            # Once per load, i.e. once per run: onnxruntime falls back to the CPU without a word.
            log.warning("--device %s: the face model(s) %s run on the CPU, not the GPU: this onnxruntime offers %s "
                        "(install onnxruntime-gpu matching the CUDA version for the GPU)", device, ", ".join(on_cpu),
                        ", ".join(onnxruntime.get_available_providers()))
    return app


def face_session_providers(model) -> list[str]:
    """The execution providers onnxruntime really gave one insightface model's session."""
    session = getattr(model, "session", None)
    return list(session.get_providers()) if session is not None else []
