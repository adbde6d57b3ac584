"""Image + DensePose IUV -> 24-part atlas -> SMPL UV texture, as the MCLD reference computes it, vectorised.

The reference (MCLD preprocess_data/texture_interface.py + UVTextureConverter's Atlas2Normal) loops over
parts in Python and over the 512 x 512 mapping in Python. Here sampling is one scatter and the
atlas -> normal conversion one gather (uvdata.gather_index); OpenCV's TELEA inpainting, which parity
needs, runs per tile exactly as the reference runs it. Every float -> integer step of the reference is
reproduced exactly (lookup tables evaluated with the reference's own float64 expressions), so given the
same part masks the output is the reference's, bit for bit.

The algorithm treats the three colour channels alike, so it maps an RGB image to an RGB texture as well
as BGR to BGR; map_texture speaks BGR because that is how the reference reads its files.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import cv2
import numpy as np

from preprocess.common import SampleError
from preprocess.texture import uvdata

INPAINT_RADIUS = 3  # the reference's cv2.inpaint(..., 3, cv2.INPAINT_TELEA)
DILATE_SIZE = 10  # the reference keeps the samples dilated by a 10 x 10 box (anchor at its centre)
MAX_PART = uvdata.PARTS


class StepTimer:
    """Seconds per named step (perf_counter), for the benchmark's breakdown."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, step: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - start
        return now


class PartMasksError(ValueError):
    """A part-mask image that cannot be used (missing, unreadable, wrong size, a part without texels)."""


def read_part_masks(path: str | Path, *, atlas_size: int) -> np.ndarray:
    """bool [24, S, S] from a 6 x 4 tiled mask image such as MCLD's preprocess_data/texture_bg_200.png.

    Read as the reference reads it (cv2.imread(path, 0)); a texel is valid where the value is non-zero.
    """
    path = Path(path)
    if not path.is_file():
        raise PartMasksError(f"part masks {path}: no such file")
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise PartMasksError(f"part masks {path}: OpenCV cannot decode it as an image")
    expected = (uvdata.ATLAS_ROWS * atlas_size, uvdata.ATLAS_COLS * atlas_size)
    if gray.shape != expected:
        raise PartMasksError(
            f"part masks {path}: {gray.shape[0]}x{gray.shape[1]} (HxW); atlas_size={atlas_size} needs "
            f"{expected[0]}x{expected[1]} (6 rows x 4 columns of {atlas_size}-texel tiles)"
        )
    tiles = []
    for part in range(1, MAX_PART + 1):
        row0, col0 = uvdata.tile_origin(part, atlas_size)
        tiles.append(gray[row0 : row0 + atlas_size, col0 : col0 + atlas_size] > 0)
    masks = np.stack(tiles)
    empty = [part for part in range(1, MAX_PART + 1) if not masks[part - 1].any()]
    if empty:
        raise PartMasksError(
            f"part masks {path}: {MAX_PART - len(empty)} of {MAX_PART} parts have valid texels; tile(s) of "
            f"part(s) {empty} are empty (a mask image has all 24 DensePose parts, 6 rows x 4 columns)"
        )
    masks.setflags(write=False)
    return masks


def rescale_tables(low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's tile-wise stretch to 0..255 before inpainting and back after, as lookup tables.

    Forward ``uint8((x - min) / (max - min) * 255)``, back ``uint8(y / 255.0 * (max - min) + min)``, in
    float64 as the reference computes them (the round trip can lose a level; parity keeps the loss).
    """
    values = np.maximum(np.arange(256, dtype=np.float64), float(low))  # values below min never occur
    forward = np.array((values - low) / (float(high) - low) * 255, dtype=np.uint8)
    back = ((np.arange(256, dtype=np.uint8) / 255.0) * (float(high) - low) + low).astype(np.uint8)
    return forward, back


class TextureMapper:
    """The one-time setup (part masks, sampling tables, gather index) and the per-image mapping."""

    def __init__(self, *, atlas_size: int = 200, normal_size: int = 512, part_masks: np.ndarray | None = None) -> None:
        uvdata.check_sizes(atlas_size, normal_size)
        self.atlas_size = atlas_size
        self.normal_size = normal_size
        if part_masks is None:
            part_masks = uvdata.part_masks(atlas_size)
        elif part_masks.shape != (MAX_PART, atlas_size, atlas_size) or part_masks.dtype != bool:
            expected = f"bool [24, {atlas_size}, {atlas_size}]"
            raise ValueError(f"part_masks must be {expected}, got {part_masks.dtype} {part_masks.shape}")
        self.part_masks = part_masks
        self.index = uvdata.gather_index(atlas_size, normal_size)
        self.atlas_shape = (uvdata.ATLAS_ROWS * atlas_size, uvdata.ATLAS_COLS * atlas_size, 3)
        width = self.atlas_shape[1]
        # The reference computes ((255 - v) * (S - 1.0) / 255.).astype(int) and (u * (S - 1.0) / 255.)
        # .astype(int) on uint8 arrays; evaluating exactly that on all 256 values gives the same integers.
        q = np.arange(256, dtype=np.uint8)
        solution_float = float(atlas_size) - 1
        self.row_offset = ((255 - q) * solution_float / 255.0).astype(int).astype(np.intp) * width
        self.col_offset = (q * solution_float / 255.0).astype(int).astype(np.intp)
        self.part_offset = np.zeros(MAX_PART + 1, dtype=np.intp)
        self.tile_slices = {}
        for part in range(1, MAX_PART + 1):
            row0, col0 = uvdata.tile_origin(part, atlas_size)
            self.part_offset[part] = row0 * width + col0
            self.tile_slices[part] = (slice(row0, row0 + atlas_size), slice(col0, col0 + atlas_size))
        self.dilate_kernel = np.ones((DILATE_SIZE, DILATE_SIZE), np.uint8)


    def sample(self, image: np.ndarray, iuv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raw atlas and its sampled texels: each body pixel's colour at its (part, U, V) texel, the
        last in raster order winning; a texel counts as sampled when any channel is non-zero.

        Raster order and last-wins are the reference's: per part it assigns np.where's (raster-ordered)
        pixels by numpy fancy assignment, which stores the last of duplicate indices. Colours move as one
        uint32 each (three bytes and a zero), which is also what makes the any-channel test one compare.
        """
        parts = iuv[:, :, 0].reshape(-1)
        body = np.flatnonzero(parts)
        if body.size == 0:
            raise SampleError("texture_empty", "the IUV has no body pixels (every part index is 0)")
        flat = (
            self.part_offset[parts[body]]
            + self.row_offset[iuv[:, :, 2].reshape(-1)[body]]
            + self.col_offset[iuv[:, :, 1].reshape(-1)[body]]
        )
        colours = np.zeros(image.shape[0] * image.shape[1], np.uint32)
        colours.view(np.uint8).reshape(-1, 4)[:, :3] = image.reshape(-1, 3)
        packed = np.zeros(self.atlas_shape[0] * self.atlas_shape[1], np.uint32)
        packed[flat] = colours[body]
        rows, cols, _ = self.atlas_shape
        atlas = np.ascontiguousarray(packed.view(np.uint8).reshape(rows, cols, 4)[:, :, :3])
        return atlas, (packed != 0).reshape(rows, cols)

    def fill_tile(self, tile: np.ndarray, valid: np.ndarray, region: np.ndarray, timer: StepTimer) -> None:
        """One part's tile, in place, as the reference leaves it: stretched, inpainted inside the part's
        valid region where there is no sample, stretched back, and kept only where the 10 x 10 dilated
        samples reach. `valid` marks the sampled texels (any channel non-zero, the reference's test)."""
        start = time.perf_counter()
        pixels = np.ascontiguousarray(tile)
        low, high = int(pixels.min()), int(pixels.max())
        if high == 0 or low == high:
            # No sample (or only black ones, which the reference cannot tell from none): the tile stays
            # zero. One value everywhere: nothing to inpaint and the round trip returns it unchanged.
            timer.add("tile_prepare", start)
            return
        valid_u8 = valid.view(np.uint8)
        kept = cv2.dilate(valid_u8, self.dilate_kernel)
        to_fill = (region & ~valid).view(np.uint8)
        forward, back = rescale_tables(low, high)
        stretched = cv2.LUT(pixels, forward)
        start = timer.add("tile_prepare", start)
        if to_fill.any():
            stretched = cv2.inpaint(stretched, to_fill, INPAINT_RADIUS, cv2.INPAINT_TELEA)
        start = timer.add("inpaint", start)
        restored = cv2.LUT(stretched, back)
        tile[...] = cv2.bitwise_and(restored, restored, mask=kept)
        timer.add("tile_prepare", start)

    def atlas(self, image: np.ndarray, iuv: np.ndarray, *, timer: StepTimer | None = None) -> np.ndarray:
        """uint8 [6 S, 4 S, 3]: the reference's inpainted 24-part atlas (get_texture's TextureIm)."""
        timer = timer or StepTimer()
        start = time.perf_counter()
        check_inputs(image, iuv)
        atlas, valid = self.sample(image, iuv)
        if not valid.any():
            raise SampleError(
                "texture_empty", "every body pixel is pure black (0, 0, 0), which the reference treats as no sample"
            )
        timer.add("sample", start)
        for part in range(1, MAX_PART + 1):
            rows, cols = self.tile_slices[part]
            self.fill_tile(atlas[rows, cols], np.ascontiguousarray(valid[rows, cols]), self.part_masks[part - 1], timer)
        return atlas

    def normal(self, atlas: np.ndarray, *, timer: StepTimer | None = None) -> np.ndarray:
        """UVTextureConverter's Atlas2Normal.convert as one gather; uint8 [normal_size, normal_size, 3].

        The reference returns atlas / 255 as float and MCLD saves uint8(tex * 255); that round trip is
        exact for every uint8 value, so copying the atlas's bytes gives the same file.
        """
        timer = timer or StepTimer()
        start = time.perf_counter()
        texture = np.zeros((self.normal_size * self.normal_size, 3), np.uint8)
        texture[self.index.dst] = atlas.reshape(-1, 3)[self.index.src]
        timer.add("gather", start)
        return texture.reshape(self.normal_size, self.normal_size, 3)

    def __call__(
        self, image: np.ndarray, iuv: np.ndarray, *, timer: StepTimer | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        atlas = self.atlas(image, iuv, timer=timer)
        return self.normal(atlas, timer=timer), atlas


def check_inputs(image: np.ndarray, iuv: np.ndarray) -> None:
    """Raise SampleError 'bad_iuv' for an IUV the mapping cannot use; ValueError for a malformed image."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be an H x W x 3 uint8 array, got {described}")
    if not (isinstance(iuv, np.ndarray) and iuv.dtype == np.uint8 and iuv.ndim == 3 and iuv.shape[2] == 3):
        described = f"{iuv.dtype} {iuv.shape}" if isinstance(iuv, np.ndarray) else type(iuv).__name__
        raise SampleError("bad_iuv", f"IUV must be an H x W x 3 uint8 array (I, U, V), got {described}")
    if iuv.shape[:2] != image.shape[:2]:
        raise SampleError(
            "bad_iuv",
            f"IUV is {iuv.shape[0]}x{iuv.shape[1]} (HxW) but the image is {image.shape[0]}x{image.shape[1]}; "
            "they must be the same size",
        )
    if iuv.size == 0:
        raise SampleError("texture_empty", f"the image has no pixels ({image.shape})")
    top = int(iuv[:, :, 0].max())
    if top > MAX_PART:
        count = int(np.count_nonzero(iuv[:, :, 0] > MAX_PART))
        raise SampleError(
            "bad_iuv",
            f"IUV part index (channel 0) must be 0..{MAX_PART}; {count} pixel(s) exceed it (max {top}). "
            "Is it laid out as the array (I, U, V), as OpenCV writes it?",
        )


@functools.lru_cache(maxsize=4)
def default_mapper(atlas_size: int = 200, normal_size: int = 512) -> TextureMapper:
    """One mapper per process and size: the setup is paid once."""
    return TextureMapper(atlas_size=atlas_size, normal_size=normal_size)


def map_texture(image_bgr: np.ndarray, iuv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(texture_bgr [512, 512, 3], atlas_bgr [1200, 800, 3]) uint8 from an image and its IUV (I, U, V).

    Raises SampleError: 'bad_iuv' (another size than the image, part index above 24, not H x W x 3
    uint8), 'texture_empty' (no body pixel, or only pure black ones).
    """
    return default_mapper()(image_bgr, iuv)
