"""Issue 18, evaluator on a GPU: the face model's onnxruntime session is really on CUDA, or the run says so."""

from __future__ import annotations

import logging

import onnxruntime
import torch

from tools.evaluate.models import face_session_providers, load_face_analysis
from tools.evaluate.run import _no_tf32


def test_face_model_on_cuda_or_one_warning(eval_fixture_dir, caplog):
    folder = eval_fixture_dir / "weights" / "insightface" / "models" / "buffalo_s"
    with caplog.at_level(logging.WARNING, logger="tools.evaluate.models"):
        app = load_face_analysis(folder, device="cuda")
    warnings = [r.getMessage() for r in caplog.records if "run on the CPU, not the GPU" in r.getMessage()]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert warnings == [] and all("CUDAExecutionProvider" in face_session_providers(m) for m in app.models.values())
    else:
        assert len(warnings) == 1 and "detection" in warnings[0] and "recognition" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tools.evaluate.models"):
        load_face_analysis(folder, device="cpu")
    assert not caplog.records


def test_tf32_is_off_inside_and_restored_after():
    switches = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    before = [s.fp32_precision for s in switches]
    with _no_tf32("cuda"):
        assert [s.fp32_precision for s in switches] == ["ieee", "ieee"]
    assert [s.fp32_precision for s in switches] == before
