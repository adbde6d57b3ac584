"""Each metric computed the way the reference's evaluate.py + validation/metrics.py compute it.

Inputs are float32 [0, 1] RGB tensors (N, 3, H, W) as `pil_to_tensor(...).float() / 255` gives them.
The exact definitions (and the reference's oddities kept on purpose) are in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

log = logging.getLogger(__name__)

#: ImageNet statistics; the reference applies them to [0, 1] data as x * (std / .5) + (mean - .5) / .5.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def inception_features(blocks: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """2048-d features: bilinear 299x299 stretch (no antialias, aspect not kept), the reference's
    normalisation on [0, 1] input, Inception blocks, average pool."""
    x = F.interpolate(images, size=(299, 299), mode="bilinear")
    for channel in range(3):
        x[:, channel] = x[:, channel] * (_STD[channel] / 0.5) + (_MEAN[channel] - 0.5) / 0.5
    return blocks(x).reshape(images.shape[0], -1)


@torch.no_grad()
def lpips_distance(model: nn.Module, generated: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    """LPIPS (AlexNet, v0.1) at native resolution, [0, 1] inputs (normalize=True); one value per pair."""
    return model(generated, ground_truth, normalize=True).reshape(generated.shape[0])


@dataclass(frozen=True)
class PixelScores:
    psnr: np.float64
    ssim: np.float32
    ssim_256: np.float32


def pixel_scores(ground_truth: np.ndarray, generated: np.ndarray) -> PixelScores:
    """PSNR, SSIM (51-px uniform window) and SSIM_256 (Gaussian, 0..255 scale, data range from the generated
    image) on one (3, H, W) float32 pair, with the reference's exact scikit-image calls."""
    with warnings.catch_warnings():
        # Identical images: PSNR divides by a zero MSE (inf, which we report); grey-vs-grey SSIM_256 has 0/0.
        warnings.simplefilter("ignore", RuntimeWarning)
        psnr = peak_signal_noise_ratio(ground_truth, generated, data_range=1)
        ssim = structural_similarity(ground_truth, generated, data_range=1, win_size=51, channel_axis=0)
        gt_256 = ground_truth * 255.0
        generated_256 = generated * 255.0
        ssim_256 = structural_similarity(gt_256, generated_256, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, channel_axis=0,
                                         data_range=generated_256.max() - generated_256.min())
    return PixelScores(psnr=np.float64(psnr), ssim=np.float32(ssim), ssim_256=np.float32(ssim_256))


@dataclass(frozen=True)
class FeatureStats:
    """FID statistics as the reference keeps them: mean in the features' float32, covariance in float64."""
    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureStats":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # one sample: covariance has 0 degrees of freedom
            return cls(mu=np.atleast_1d(np.mean(features, axis=0)),
                       sigma=np.atleast_2d(np.cov(features, rowvar=False)), count=int(features.shape[0]))


def frechet_distance(real: FeatureStats, generated: FeatureStats) -> float:
    """The reference's compute_fid_deepfashion on precomputed statistics (real = training side = sigma1).

    Fewer than 2 images on a side leave the covariance undefined: nan (the reference would hand nan to sqrtm).
    """
    if real.count < 2 or generated.count < 2:
        return math.nan
    diff = real.mu - generated.mu
    with warnings.catch_warnings():
        # With fewer samples than feature dimensions the product is singular; the Schur result is still used.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(real.sigma.dot(generated.sigma))
        if not np.isfinite(covmean).all():
            log.warning("FID: singular covariance product; adding 1e-6 to the diagonals (as the reference does)")
            offset = np.eye(real.sigma.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((real.sigma + offset).dot(generated.sigma + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: matrix square root has an imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(real.sigma) + np.trace(generated.sigma) - 2 * np.trace(covmean))


@dataclass(frozen=True)
class FaceScore:
    """`status`: ok | no_face_gt | no_face_generated | no_face_both (the reference drops all but ok silently)."""
    status: str
    cosine: float = math.nan
    euclidean: float = math.nan


class FaceScorer:
    """The reference's face_computing: gt resized to the generated image's size, the largest detected face's
    raw embedding on each, cosine and euclidean distance (float32, as numpy computes them there)."""

    def __init__(self, app) -> None:
        self.app = app

    def embedding(self, bgr: np.ndarray) -> np.ndarray | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # insightface's alignment uses a deprecated skimage call
            faces = self.app.get(bgr)
        if not faces:
            return None
        largest = sorted(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))[-1]
        return largest["embedding"]

    def __call__(self, ground_truth_bgr: np.ndarray, generated_bgr: np.ndarray) -> FaceScore:
        import cv2

        height, width = generated_bgr.shape[:2]
        gt = cv2.resize(ground_truth_bgr, (width, height))
        gt_embedding = self.embedding(gt)  # the reference calls gt first, then the generated image
        generated_embedding = self.embedding(generated_bgr)
        if gt_embedding is None or generated_embedding is None:
            missing = [name for name, e in (("gt", gt_embedding), ("generated", generated_embedding)) if e is None]
            return FaceScore(status="no_face_both" if len(missing) == 2 else f"no_face_{missing[0]}")
        a, b = generated_embedding, gt_embedding
        cosine = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
        euclidean = np.linalg.norm(a - b)
        return FaceScore(status="ok", cosine=cosine, euclidean=euclidean)
