"""The job's inputs: the pairs CSV and the images it names, each with an id and a content hash."""

from __future__ import annotations

import csv
from collections import Counter
import hashlib
import io
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shards import storage
from shards.ids import assign_image_ids, base_image_id
from shards.schema import validate_image_id
from shards.rejects import Reject
from shards.schema import pair_key


class InputError(ValueError):
    """The job's inputs as a whole are unusable (not one bad row: those become rejects)."""


@dataclass(frozen=True, kw_only=True, slots=True)  # slots: millions of rows on the driver
class PairRow:
    line: int  # 1-based line in the CSV, for messages
    source: str  # path relative to --images, as written
    target: str


def read_pairs(location: str) -> list[PairRow]:
    """Read a `from,to` CSV (DeepFashion's published layout). Extra columns are ignored."""
    try:
        text = storage.read_bytes(location).decode("utf-8-sig")
    except FileNotFoundError as error:
        raise InputError(f"--pairs {location}: no such file") from error
    except OSError as error:
        raise InputError(f"--pairs {location}: cannot read: {error}") from error
    except UnicodeDecodeError as error:
        raise InputError(f"--pairs {location}: not UTF-8 text: {error}") from error
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"from", "to"} <= {f.strip() for f in reader.fieldnames}:
        raise InputError(f"--pairs {location}: expected a CSV with a header row naming columns 'from' and 'to', got {reader.fieldnames}")
    rows = []
    # A path named by several rows is one string object (interned): at millions of rows that halves the rows' memory.
    for number, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        rows.append(PairRow(line=number, source=sys.intern(row.get("from", "")), target=sys.intern(row.get("to", ""))))
    return rows


def normalize_relative(path: str) -> str | None:
    """A clean relative path below the images root, or None for one that is empty or escapes it."""
    if not path or path.startswith(("/", "\\")) or "://" in path:
        return None
    clean = posixpath.normpath(path.replace("\\", "/"))
    if clean == "." or clean.startswith("../") or clean == "..":
        return None
    return sys.intern(clean)  # one object per path, however many rows name it


@dataclass(frozen=True, kw_only=True, slots=True)
class ImageInput:
    image_id: str
    source_path: str  # relative to --images
    content_hash: str  # sha256 hex of the file's bytes
    size: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PairInput:
    key: str
    source_id: str
    target_id: str
    line: int


@dataclass(kw_only=True)
class Inputs:
    images: list[ImageInput]  # readable files, sorted by id
    pairs: list[PairInput]  # rows whose two files were readable, in CSV order, unique
    image_rejects: list[Reject]  # paths named by a row that are not readable files
    pair_rejects: list[Reject]
    images_in: int  # distinct paths the pairs name
    pairs_in: int  # rows of the CSV


def hash_file(location: str) -> tuple[str, int]:
    """sha256 and size; an unreadable path raises OSError."""
    return storage.sha256_of(location)


def list_inputs(*, images_root: str, rows: list[PairRow], hashes: dict[str, tuple[str, int] | OSError],
                ids: dict[str, str] | None = None) -> Inputs:
    """Give every path an id and every row a fate. ``hashes`` maps each normalized path to its
    (sha256, size), or to the OSError that reading it raised. ``ids``: the ids ``plan_ids`` gave before the
    reads (the same ones, without building them again: at millions of images that is memory)."""
    image_rejects: list[Reject] = []
    readable: dict[str, tuple[str, int]] = {}
    for path, result in sorted(hashes.items()):
        if isinstance(result, OSError):
            reason = "missing_file" if isinstance(result, FileNotFoundError) else "unreadable"
            image_rejects.append(Reject(
                kind="image", id=path, stage="read", reason=reason,
                detail=f"{path}: {result.strerror or result}", path=path,
            ))
        else:
            readable[path] = result
    if ids is None:
        ids = assign_image_ids([(path, digest) for path, (digest, _) in readable.items()])
    # An unreadable path gets a reject under its would-be id, so the table is keyed uniformly.
    unreadable_ids = assign_image_ids([(r.path, hashlib.sha256(r.path.encode()).hexdigest()) for r in image_rejects])
    image_rejects = [Reject(kind="image", id=unreadable_ids[r.path], stage=r.stage, reason=r.reason,
                            detail=r.detail, path=r.path) for r in image_rejects]
    failed_reason = {r.path: r.reason for r in image_rejects}
    images = sorted(
        (ImageInput(image_id=ids[p], source_path=p, content_hash=d, size=s) for p, (d, s) in readable.items()),
        key=lambda i: i.image_id,
    )
    pairs: list[PairInput] = []
    pair_rejects: list[Reject] = []
    seen: set[str] = set()
    for row in rows:
        source, target = normalize_relative(row.source), normalize_relative(row.target)
        where = f"line {row.line}"
        if source is None or target is None:
            bad = row.source if source is None else row.target
            pair_rejects.append(Reject(
                kind="pair", id=f"line-{row.line}", stage="pairs", reason="bad_path",
                detail=f"{where}: {bad!r} is not a path inside --images", path=f"{row.source},{row.target}",
            ))
            continue
        problem = None
        for role, path in (("source", source), ("target", target)):
            if path in failed_reason:
                reason = "missing" if failed_reason[path] == "missing_file" else "unreadable"
                problem = (f"{reason}_{role}", f"{where}: {role} {path}: {failed_reason[path]}")
                break
        if problem is None:
            key = pair_key(ids[source], ids[target])
            if key in seen:
                problem = ("duplicate_pair", f"{where}: the pair {source} -> {target} appears earlier in the CSV")
        label = f"{ids[source] if source in readable else source}__{ids[target] if target in readable else target}"
        if problem is not None:
            pair_rejects.append(Reject(kind="pair", id=f"{label}@{row.line}", stage="pairs", reason=problem[0],
                                       detail=problem[1], path=f"{source},{target}"))
            continue
        seen.add(key)
        pairs.append(PairInput(key=key, source_id=ids[source], target_id=ids[target], line=row.line))
    return Inputs(
        images=images,
        pairs=pairs,
        image_rejects=image_rejects,
        pair_rejects=pair_rejects,
        images_in=len(hashes),
        pairs_in=len(rows),
    )


def referenced_paths(rows: list[PairRow]) -> list[str]:
    """Every distinct clean path the rows name, sorted."""
    paths = {p for row in rows for p in (normalize_relative(row.source), normalize_relative(row.target)) if p}
    return sorted(paths)


def list_images(images_root: str, paths: list[str], *, threads: int = 8) -> tuple[dict[str, int], dict[str, OSError]]:
    """Which named paths are files, from listings of their folders (one paginated listing per folder, in
    ``threads`` threads; no request per image): (path -> listed size, -1 where the listing does not say),
    and (path -> the OSError reading it would raise: missing, a folder, below a file or an unreadable folder).
    """
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(posixpath.dirname(path), []).append(path)

    def one(folder: str) -> tuple[str, dict[str, tuple[bool, int]] | OSError]:
        try:
            return folder, storage.list_entries(storage.join(images_root, folder) if folder else images_root)
        except OSError as error:
            return folder, error

    sizes: dict[str, int] = {}
    failures: dict[str, OSError] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for folder, entries in pool.map(one, sorted(by_folder)):
            for path in by_folder[folder]:
                location = storage.join(images_root, path)
                if isinstance(entries, OSError):
                    failures[path] = _same_error(entries, location)
                    continue
                entry = entries.get(posixpath.basename(path))
                if entry is None:
                    failures[path] = FileNotFoundError(2, "No such file or directory", location)
                elif entry[0]:
                    failures[path] = IsADirectoryError(21, "is a directory", location)
                else:
                    sizes[path] = entry[1]
    return sizes, failures


def _same_error(error: OSError, location: str) -> OSError:
    """The folder's listing error, as reading a file inside it would raise it."""
    if isinstance(error, NotADirectoryError):
        return NotADirectoryError(20, "Not a directory", location)
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(2, "No such file or directory", location)
    return type(error)(error.errno, error.strerror or str(error), location)


def plan_ids(images_root: str, sizes: dict[str, int], *, threads: int = 8
             ) -> tuple[dict[str, str], dict[str, tuple[str, int]], dict[str, OSError]]:
    """Ids for the listed files, from their paths alone; only paths whose ids collide (DESIGN: a short
    content hash is appended to each) are hashed here, by the driver, before the workers read them again.

    Returns (path -> id, path -> (sha256, size) of the hashed ones, path -> OSError of those that failed).
    The ids equal what ``list_inputs`` gives once every file's hash is known: a path that is read
    successfully later keeps its id, since an id depends on other paths' hashes only within a collision."""
    # Counted, not grouped: one id string per image (the one the result keeps), no list or tuple per image.
    counts = Counter(base_image_id(path) for path in sizes)
    colliding = sorted(p for p in sizes if counts[base_image_id(p)] > 1)

    def one(path: str) -> tuple[str, tuple[str, int] | OSError]:
        try:
            return path, hash_file(storage.join(images_root, path))
        except OSError as error:
            return path, error

    digests: dict[str, tuple[str, int]] = {}
    failures: dict[str, OSError] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, result in pool.map(one, colliding):
            if isinstance(result, OSError):
                failures[path] = result
            else:
                digests[path] = result
    ids: dict[str, str] = {}
    for path in sizes:
        base = base_image_id(path)
        if counts[base] == 1:
            ids[path] = sys.intern(base)
            validate_image_id(ids[path], what=f"id of {path!r}")
    # the colliding paths: assign_image_ids' rule (the ids of paths that failed to hash are not taken)
    suffixed = assign_image_ids([(p, digests[p][0]) for p in colliding if p in digests])
    for path, image_id in suffixed.items():
        if counts.get(image_id, 0) == 1:
            raise ValueError(f"image id {image_id!r} for {path!r} collides with another input's id")
        ids[path] = image_id
    return ids, digests, failures
