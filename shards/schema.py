"""Shard sample schema v1: the one typed definition both the writer and the reader obey (DESIGN.md)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

SCHEMA_VERSION = 1

Encoding = Literal["npy", "png", "jpg", "json"]
# A dimension of a shape rule: a fixed size, a symbol resolved against a Geometry, or None (any size).
Dim = int | str | None

KEY_PART = r"[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*"
ID_PATTERN = re.compile(rf"^{KEY_PART}$")
KEY_PATTERN = re.compile(rf"^({KEY_PART})__({KEY_PART})$")


class SchemaError(ValueError):
    """A sample that does not follow the schema; the message names the key and the field."""


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """The sizes that shape rules refer to: image H x W (pixels) and the CLIP embedding width D."""

    height: int
    width: int
    clip_dim: int
    latent_channels: int = 8
    face_dim: int = 512

    def __post_init__(self) -> None:
        for name in ("height", "width", "clip_dim", "latent_channels", "face_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise SchemaError(f"geometry {name} must be a positive integer, got {value!r}")
        if self.height % 8 or self.width % 8:
            raise SchemaError(f"resolution {self.height}x{self.width} is not divisible by 8 (the VAE's factor)")

    def resolve(self, dim: Dim) -> int | None:
        symbols = {
            "H": self.height,
            "W": self.width,
            "H/8": self.height // 8,
            "W/8": self.width // 8,
            "D": self.clip_dim,
            "C": self.latent_channels,
            "F": self.face_dim,
        }
        if isinstance(dim, str):
            return symbols[dim]
        return dim


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One member of a sample: ``{key}.{member}`` in the tar."""

    name: str
    encoding: Encoding
    dtype: str | None
    shape: tuple[Dim, ...] | None
    required: bool
    description: str

    @property
    def member(self) -> str:
        return f"{self.name}.{self.encoding}"

    def expected_shape(self, geometry: Geometry | None) -> tuple[int | None, ...] | None:
        if self.shape is None:
            return None
        if geometry is None:
            return tuple(d if isinstance(d, int) else None for d in self.shape)
        return tuple(geometry.resolve(d) for d in self.shape)


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(name="tgt_latent", encoding="npy", dtype="float16", shape=("C", "H/8", "W/8"), required=True,
              description="target image VAE latent distribution (mean ++ logvar), unscaled"),
    FieldSpec(name="ref_latent", encoding="npy", dtype="float16", shape=("C", "H/8", "W/8"), required=True,
              description="source texture map VAE latent distribution (ReferenceNet input)"),
    FieldSpec(name="src_clip", encoding="npy", dtype="float16", shape=("D",), required=True,
              description="CLIP image_embeds of the source image"),
    FieldSpec(name="tex_clip", encoding="npy", dtype="float16", shape=("D",), required=True,
              description="CLIP image_embeds of the source texture map"),
    FieldSpec(name="face_emb", encoding="npy", dtype="float32", shape=("F",), required=True,
              description="ArcFace embedding of the source face (zeros iff meta.face_ok is false)"),
    FieldSpec(name="tgt_pose", encoding="png", dtype="uint8", shape=("H", "W", 3), required=True,
              description="target IUV at H x W: the array (I, U, V) as written by OpenCV"),
    FieldSpec(name="meta", encoding="json", dtype=None, shape=None, required=True,
              description="ids, source paths, face_ok, face and person scores and boxes, coverage"),
    FieldSpec(name="src", encoding="jpg", dtype="uint8", shape=(None, None, 3), required=False,
              description="small source preview (RGB)"),
    FieldSpec(name="tgt", encoding="jpg", dtype="uint8", shape=(None, None, 3), required=False,
              description="small target preview (RGB)"),
    FieldSpec(name="face", encoding="jpg", dtype="uint8", shape=(None, None, 3), required=False,
              description="source face crop (RGB)"),
    FieldSpec(name="tex", encoding="jpg", dtype="uint8", shape=(None, None, 3), required=False,
              description="small preview of the source texture map (RGB), what ref_latent encodes"),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
FIELDS_BY_MEMBER = {f.member: f for f in FIELDS}

# meta.json: the keys every sample carries and their JSON types. Other keys are allowed (documented in
# docs/ARCHITECTURE.md) so that later versions can add figures without a schema bump.
META_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "source_id": str,
    "target_id": str,
    "source_path": str,
    "target_path": str,
    "face_ok": bool,
}

JPEG_QUALITY = 90


def validate_image_id(image_id: str, *, what: str = "image id") -> None:
    if not isinstance(image_id, str) or not ID_PATTERN.match(image_id):
        raise SchemaError(
            f"{what} {image_id!r} is not a valid id: use [A-Za-z0-9_-], no dots, no path separators, "
            "no leading/trailing '_' and never '__'"
        )


def pair_key(source_id: str, target_id: str) -> str:
    validate_image_id(source_id, what="source id")
    validate_image_id(target_id, what="target id")
    return f"{source_id}__{target_id}"


def split_key(key: str) -> tuple[str, str]:
    match = KEY_PATTERN.match(key) if isinstance(key, str) else None
    if match is None:
        raise SchemaError(
            f"sample key {key!r} is not '{{source_id}}__{{target_id}}' with dot-free ids of [A-Za-z0-9_-]"
        )
    return match.group(1), match.group(2)


def _check_array(key: str, spec: FieldSpec, value: Any, geometry: Geometry | None) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise SchemaError(f"{key}: field {spec.name} must be a numpy array, got {type(value).__name__}")
    if spec.dtype is not None and value.dtype != np.dtype(spec.dtype):
        raise SchemaError(f"{key}: field {spec.name} has dtype {value.dtype}, schema says {spec.dtype}")
    expected = spec.expected_shape(geometry)
    if expected is not None:
        ok = value.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, value.shape))
        if not ok:
            shown = tuple("*" if e is None else e for e in expected)
            raise SchemaError(f"{key}: field {spec.name} has shape {value.shape}, schema says {shown}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise SchemaError(f"{key}: field {spec.name} holds non-finite values")
    return value


def _check_meta(key: str, meta: Any) -> dict:
    if not isinstance(meta, dict):
        raise SchemaError(f"{key}: field meta must be a JSON object, got {type(meta).__name__}")
    for name, kind in META_REQUIRED.items():
        if name not in meta:
            raise SchemaError(f"{key}: meta is missing {name!r}")
        if not isinstance(meta[name], kind):
            raise SchemaError(f"{key}: meta {name!r} has type {type(meta[name]).__name__}")
    source_id, target_id = split_key(key)
    if (meta["source_id"], meta["target_id"]) != (source_id, target_id):
        raise SchemaError(
            f"{key}: meta ids ({meta['source_id']!r}, {meta['target_id']!r}) disagree with the key"
        )
    return meta


def validate_sample(sample: dict[str, Any], *, geometry: Geometry | None) -> str:
    """Check a decoded sample (``{"__key__": ..., field name: value}``) against the schema; return its key."""
    key = sample.get("__key__")
    split_key(key)
    unknown = sorted(set(sample) - set(FIELDS_BY_NAME) - {"__key__"})
    if unknown:
        raise SchemaError(f"{key}: unknown field(s) {unknown}; schema v{SCHEMA_VERSION} has {sorted(FIELDS_BY_NAME)}")
    missing = [f.name for f in FIELDS if f.required and f.name not in sample]
    if missing:
        raise SchemaError(f"{key}: missing required field(s) {missing}")
    for spec in FIELDS:
        if spec.name not in sample:
            continue
        if spec.encoding == "json":
            _check_meta(key, sample[spec.name])
        else:
            _check_array(key, spec, sample[spec.name], geometry)
    face_ok = sample["meta"]["face_ok"]
    has_face = bool(np.any(sample["face_emb"] != 0))
    if face_ok != has_face:
        raise SchemaError(
            f"{key}: face_emb is {'non-zero' if has_face else 'all zeros'} but meta.face_ok is {face_ok}"
        )
    return key


def _encode(spec: FieldSpec, value: Any) -> bytes:
    if spec.encoding == "npy":
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(value), allow_pickle=False)
        return buffer.getvalue()
    if spec.encoding == "png":
        ok, data = cv2.imencode(".png", value)
    elif spec.encoding == "jpg":
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(value, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    else:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not ok:
        raise SchemaError(f"OpenCV could not encode field {spec.name} as {spec.encoding}")
    return data.tobytes()


def encode_field(name: str, value: Any) -> bytes:
    """The exact member bytes the writer stores for one field (lets producers cache encoded fields)."""
    return _encode(FIELDS_BY_NAME[name], value)


def encode_sample(sample: dict[str, Any], *, geometry: Geometry) -> dict[str, bytes]:
    """Validate a sample and encode it to tar members ``{member: bytes}`` plus ``__key__``.

    ``tgt_pose`` is the array (I, U, V); it is written by OpenCV, so a PIL/RGB decode of the PNG yields
    (V, U, I) exactly as the MCLD reference's files do. Previews are RGB arrays.
    """
    key = validate_sample(sample, geometry=geometry)
    encoded: dict[str, bytes] = {"__key__": key}
    for spec in FIELDS:
        if spec.name in sample:
            encoded[spec.member] = _encode(spec, sample[spec.name])
    return encoded


def _decode(spec: FieldSpec, data: bytes) -> Any:
    if spec.encoding == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if spec.encoding == "json":
        return json.loads(data.decode("utf-8"))
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"not a decodable {spec.encoding}")
    if spec.encoding == "jpg":
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return array


def decode_sample(members: dict[str, Any], *, geometry: Geometry | None = None) -> dict[str, Any]:
    """Decode tar members (``{"__key__": key, member: bytes}``) into a validated sample of numpy arrays.

    Raises SchemaError naming the key and the field on anything the schema does not allow.
    """
    sample = _decode_members(members, pixels=True)
    validate_sample(sample, geometry=geometry)
    return sample


_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
_IMAGE_MODES = {"L": (np.uint8, ()), "RGB": (np.uint8, (3,)), "RGBA": (np.uint8, (4,)), "I;16": (np.uint16, ())}


def _header_array(spec: FieldSpec, data: bytes) -> np.ndarray:
    """An image member's shape and dtype from its header alone, as a zero-stride array (no pixels decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, mode, (width, height) = image.format, image.mode, image.size
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"not a readable {spec.encoding} header: {error}") from error
    if kind != _IMAGE_FORMATS[spec.encoding] or mode not in _IMAGE_MODES:
        raise ValueError(f"a {kind} image of mode {mode}, expected {spec.encoding}")
    dtype, channels = _IMAGE_MODES[mode]
    return np.broadcast_to(np.zeros((), dtype), (height, width, *channels))


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}  # header bytes -> dtype, shape, order


def _npy_view(data: bytes) -> np.ndarray:
    """np.load's array for an npy member, read-only and without a copy; each distinct header is parsed once
    (by np.load itself), since the join's members share a handful of headers."""
    view = memoryview(data)
    major = view[6] if len(view) > 10 and view[:6] == b"\x93NUMPY" else None
    length = {1: 2, 2: 4, 3: 4}.get(major)
    if length is None:
        return np.load(io.BytesIO(data), allow_pickle=False)  # raises np.load's own error
    offset = 8 + length + int.from_bytes(view[8:8 + length], "little")
    header = bytes(view[:offset])
    known = _NPY_HEADERS.get(header)
    if known is None:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if len(_NPY_HEADERS) < 256:
            _NPY_HEADERS[header] = (array.dtype, array.shape, array.ndim > 1 and not array.flags.c_contiguous)
        return array
    dtype, shape, fortran = known
    count = int(np.prod(shape))
    if len(view) - offset < count * dtype.itemsize:
        raise ValueError(f"EOF: reading array data, expected {count * dtype.itemsize} bytes got {len(view) - offset}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def _decode_members(members: dict[str, Any], *, pixels: bool) -> dict[str, Any]:
    """Every member decoded by its field's spec; image members by their header alone unless ``pixels``."""
    key = members.get("__key__")
    sample: dict[str, Any] = {"__key__": key}
    for member, data in members.items():
        if member.startswith("__"):
            continue
        spec = FIELDS_BY_MEMBER.get(member)
        if spec is None:
            raise SchemaError(f"{key}: unknown member {member!r}; schema v{SCHEMA_VERSION} has {sorted(FIELDS_BY_MEMBER)}")
        try:
            if pixels:
                sample[spec.name] = _decode(spec, data)
            elif spec.encoding in _IMAGE_FORMATS:
                sample[spec.name] = _header_array(spec, data)
            elif spec.encoding == "npy":
                sample[spec.name] = _npy_view(data)
            else:
                sample[spec.name] = _decode(spec, data)
        except (ValueError, UnicodeDecodeError, EOFError, OSError) as error:
            raise SchemaError(f"{key}: field {spec.name} cannot be decoded: {error}") from error
    return sample


def check_encoded(members: dict[str, Any], *, geometry: Geometry | None) -> str:
    """The checks of :func:`decode_sample` for members made by :func:`encode_field`, without decoding pixels:
    arrays and meta are decoded and checked in full, PNG/JPEG members by their headers (format, size,
    channels). For writers that copy members the job's own encoder produced (the pair join); return the key."""
    sample = _decode_members(members, pixels=False)
    return validate_sample(sample, geometry=geometry)
