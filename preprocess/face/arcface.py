"""insightface antelopev2 from a local folder: the SCRFD detector (5 landmarks) and the glintr100 recogniser.

Loaded with insightface's own classes (``model_zoo.get_model`` routes each ONNX file to ``SCRFD`` or
``ArcFaceONNX``) and aligned with its ``face_align.norm_crop``, i.e. what ``FaceAnalysis`` runs per face,
without ``FaceAnalysis`` itself: it downloads a model pack when files are missing, and it loads every file
of the folder. onnxruntime providers are chosen explicitly, and the stage fails when a CUDA request ended on
the CPU (onnxruntime only warns when it falls back, a known insightface trap).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

PACK = "antelopev2"
EMBED_DIM = 512
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def onnx_providers(device: str) -> tuple[list[str], list[dict]]:
    """Providers and provider options for ``device``: "cpu", "cuda" or "cuda:N"."""
    if device == "cpu":
        return [CPU], [{}]
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise ValueError(f"face: device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return [CUDA, CPU], [{"device_id": int(match.group(1) or 0)}, {}]


def antelopev2_files(folder: Path, *, detector_file: str, recognizer_file: str) -> tuple[Path, Path]:
    """The detector and recogniser files in ``folder``, or in ``folder/antelopev2`` (the layout the
    antelopev2 zip leaves when unpacked into a folder of its own name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"antelopev2 folder {folder} does not exist or is not a directory")
    candidates = [folder, folder / PACK]
    for candidate in candidates:
        files = (candidate / detector_file, candidate / recognizer_file)
        if all(file.is_file() for file in files):
            return files
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.onnx"))
    raise FileNotFoundError(
        f"antelopev2 folder {folder}: expected {detector_file} and {recognizer_file} in it or in "
        f"{folder / PACK}; found {found or 'no .onnx files'}"
    )


class FaceEmbedder:
    """SCRFD landmarks on a face crop, ArcFace alignment, glintr100 embedding."""

    def __init__(
        self,
        *,
        folder: Path,
        device: str = "cpu",
        threads: int = 0,
        det_size: int = 640,
        det_threshold: float = 0.5,
        detector_file: str = "scrfd_10g_bnkps.onnx",
        recognizer_file: str = "glintr100.onnx",
        max_batch: int = 32,
    ) -> None:
        import onnxruntime
        from insightface.model_zoo import ArcFaceONNX, SCRFD, get_model

        self.detector_path, self.recognizer_path = antelopev2_files(
            folder, detector_file=detector_file, recognizer_file=recognizer_file
        )
        providers, options = onnx_providers(device)
        if providers[0] == CUDA and hasattr(onnxruntime, "preload_dlls"):
            # onnxruntime-gpu finds the CUDA and cuDNN libraries torch's wheels installed (nvidia-* packages)
            onnxruntime.preload_dlls()
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = threads
        kwargs = {"providers": providers, "provider_options": options, "sess_options": session_options}
        self.detector = get_model(str(self.detector_path), **kwargs)
        if not isinstance(self.detector, SCRFD) or not self.detector.use_kps:
            raise ValueError(
                f"{self.detector_path}: insightface does not take it for an SCRFD detector with landmarks "
                f"(got {type(self.detector).__name__}, {len(self._outputs(self.detector_path))} outputs; "
                "expected 9 or 15)"
            )
        self.recognizer = get_model(str(self.recognizer_path), **kwargs)
        if not isinstance(self.recognizer, ArcFaceONNX):
            raise ValueError(
                f"{self.recognizer_path}: insightface does not take it for an ArcFace recogniser "
                f"(got {type(self.recognizer).__name__}); expected a square >= 112 input and one output"
            )
        dim = self.recognizer.output_shape[-1]
        if dim != EMBED_DIM:
            raise ValueError(
                f"{self.recognizer_path}: embeds into {dim} dimensions; the shard format stores {EMBED_DIM}"
            )
        active = {path.name: self._active(model.session) for path, model in
                  ((self.detector_path, self.detector), (self.recognizer_path, self.recognizer))}
        if providers[0] == CUDA and any(p != CUDA for p in active.values()):
            raise RuntimeError(
                f"face: device {device!r} asked onnxruntime {onnxruntime.__version__} for {CUDA}, but the sessions "
                f"run on {active} (available: {onnxruntime.get_available_providers()}); install the onnxruntime-gpu "
                "build that matches this CUDA (`pip install -e .[gpu]`, docs/CLUSTER.md 'GPU nodes'), or "
                "run the face stage on the CPU (build_shards.py --stage-device face=cpu)"
            )
        self.provider = next(iter(active.values()))
        self.det_size = det_size
        self.detector.prepare(0, input_size=(det_size, det_size), det_thresh=det_threshold)
        batch = self.recognizer.input_shape[0]
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else max_batch

    @staticmethod
    def _active(session) -> str:
        return session.get_providers()[0]

    @staticmethod
    def _outputs(path: Path) -> list:
        import onnx

        return list(onnx.load(str(path), load_external_data=False).graph.output)

    def detect(self, crop_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SCRFD on a det_size x det_size BGR crop: boxes [k, 4], scores [k], landmarks [k, 5, 2], in its pixels
        (float32, as insightface returns them: FaceAnalysis aligns with exactly these values)."""
        det, kps = self.detector.detect(crop_bgr, input_size=(self.det_size, self.det_size))
        det = np.asarray(det, np.float32).reshape(-1, 5)
        kps = np.asarray(kps, np.float32).reshape(-1, 5, 2)
        return det[:, :4], det[:, 4], kps

    def align(self, crop_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The ArcFace-aligned face (insightface's norm_crop at the recogniser's input size)."""
        from insightface.utils import face_align

        with warnings.catch_warnings():
            # insightface 2.x calls skimage's SimilarityTransform.estimate, deprecated since skimage 0.26.
            warnings.filterwarnings("ignore", message=r".*estimate.*deprecated", category=FutureWarning)
            return face_align.norm_crop(crop_bgr, landmark=landmarks, image_size=self.recognizer.input_size[0])

    def embed(self, aligned_bgr: list[np.ndarray]) -> np.ndarray:
        """Raw (not normalised) embeddings [n, 512] float32 of aligned BGR faces, in batches of max_batch."""
        out = np.empty((len(aligned_bgr), EMBED_DIM), np.float32)
        for start in range(0, len(aligned_bgr), self.max_batch):
            chunk = aligned_bgr[start : start + self.max_batch]
            out[start : start + len(chunk)] = np.asarray(self.recognizer.get_feat(chunk), np.float32).reshape(
                len(chunk), EMBED_DIM
            )
        return out
