"""The job's inputs: the pairs CSV and the images it names, each with an id and a content hash.

Held in columns, not objects (a million images and two million pairs on the driver: docs/CLUSTER.md,
"Planning at a million images"): the CSV as two index columns into its distinct path texts, the images as
parallel columns indexed by path, the planned pairs as index columns into the images."""

from __future__ import annotations

import csv
from bisect import bisect_left
import hashlib
import io
import posixpath
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from preprocess.common import sorted_positions
from shards import storage
from shards.ids import assign_image_ids, base_image_id
from shards.rejects import Reject
from shards.schema import pair_key, validate_image_id

FIRST_LINE = 2  # the CSV's first data row (after the header), as messages number rows


class InputError(ValueError):
    """The job's inputs as a whole are unusable (not one bad row: those become rejects)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PairRow:
    """One CSV row as written (for messages and tests; the job keeps rows as a PairTable)."""

    line: int  # the row's number, the header being 1
    source: str  # path relative to --images, as written
    target: str


@dataclass(kw_only=True)
class PairTable:
    """The CSV's rows: row i (line i + 2) names texts[source[i]] -> texts[target[i]]. Each distinct text is
    one string, however many rows name it; a row costs 8 bytes."""

    texts: list[str]
    source: np.ndarray  # int32
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    def row(self, i: int) -> PairRow:
        return PairRow(line=i + FIRST_LINE, source=self.texts[self.source[i]], target=self.texts[self.target[i]])

    def rows(self) -> list[PairRow]:
        return [self.row(i) for i in range(len(self))]

    @classmethod
    def of_rows(cls, rows: list[PairRow]) -> PairTable:
        """A table from rows numbered 2, 3, ... (tests and synthetic plans)."""
        if [r.line for r in rows] != list(range(FIRST_LINE, FIRST_LINE + len(rows))):
            raise ValueError("rows must be numbered consecutively from line 2")
        index: dict[str, int] = {}
        source = [index.setdefault(r.source, len(index)) for r in rows]
        target = [index.setdefault(r.target, len(index)) for r in rows]
        return cls(texts=list(index), source=np.array(source, np.int32), target=np.array(target, np.int32))


def read_pairs(location: str) -> PairTable:
    """Read a `from,to` CSV (DeepFashion's published layout). Extra columns are ignored."""
    try:
        data = storage.read_bytes(location)  # one request; decoded as the rows are read
    except FileNotFoundError as error:
        raise InputError(f"--pairs {location}: no such file") from error
    except OSError as error:
        raise InputError(f"--pairs {location}: cannot read: {error}") from error
    index: dict[str, int] = {}
    source, target = array("i"), array("i")
    try:
        reader = csv.DictReader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline=""))
        del data
        if reader.fieldnames is None or not {"from", "to"} <= {f.strip() for f in reader.fieldnames}:
            raise InputError(f"--pairs {location}: expected a CSV with a header row naming columns 'from' and 'to', "
                             f"got {reader.fieldnames}")
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            for column, out in (("from", source), ("to", target)):
                value = row.get(column, "")
                number = index.get(value)
                if number is None:
                    number = index[value] = len(index)
                out.append(number)
    except UnicodeDecodeError as error:
        raise InputError(f"--pairs {location}: not UTF-8 text: {error}") from error
    return PairTable(texts=list(index), source=np.frombuffer(source, np.int32).copy(),
                     target=np.frombuffer(target, np.int32).copy())


def normalize_relative(path: str) -> str | None:
    """A clean relative path below the images root, or None for one that is empty or escapes it."""
    if not path or path.startswith(("/", "\\")) or "://" in path:
        return None
    clean = posixpath.normpath(path.replace("\\", "/"))
    if clean == "." or clean.startswith("../") or clean == "..":
        return None
    return path if clean == path else clean  # the text's own object where it is clean: one string per path


def referenced_paths(table: PairTable) -> list[str]:
    """Every distinct clean path the rows name, sorted."""
    return sorted({p for p in map(normalize_relative, table.texts) if p})


@dataclass(kw_only=True)
class Catalog:
    """What the job knows of each distinct clean path the pairs name (index = position in ``paths``,
    sorted): listed size, id, content hash once read, or the OSError that makes it unreadable."""

    paths: list[str]
    sizes: np.ndarray  # int64: the listed size (-1: the listing does not say); after the reads, the bytes read
    ids: list[str | None] = field(default_factory=list)  # None until plan_ids (and for unreadable paths)
    digests: np.ndarray | None = None  # S64: sha256 hex, b"" until read
    errors: dict[int, OSError] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.digests is None:
            self.digests = np.zeros(len(self.paths), "S64")
        if not self.ids:
            self.ids = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def readable(self) -> np.ndarray:
        """Indexes of the paths without an error, in path order."""
        mask = np.ones(len(self.paths), bool)
        mask[list(self.errors)] = False
        return np.flatnonzero(mask)

    def id_order(self) -> np.ndarray:
        """The readable paths' indexes, sorted by id (the order of the work table and of the images)."""
        readable = self.readable()
        return readable[np.argsort(np.array([self.ids[i] for i in readable], dtype=object), kind="stable")]

    def record_read(self, path: str, *, digest: str, size: int, error: str | None, missing: bool) -> int:
        """What a worker's one read of ``path`` found: its hash and size, or (``error``) why it failed.
        Returns the path's index."""
        i = self.index_of(path)
        if error is not None:
            self.errors[i] = (FileNotFoundError if missing else OSError)(error)
        else:
            self.digests[i] = digest.encode()
            self.sizes[i] = size
        return i

    def index_of(self, path: str) -> int:
        """The index of a path (binary search in the sorted paths)."""
        i = bisect_left(self.paths, path)
        if i == len(self.paths) or self.paths[i] != path:
            raise KeyError(path)
        return i

    @classmethod
    def of_hashes(cls, hashes: dict[str, tuple[str, int] | OSError]) -> Catalog:
        """A catalog from path -> (sha256, size) or OSError (tests, synthetic plans); ids from the hashes."""
        paths = sorted(hashes)
        catalog = cls(paths=paths, sizes=np.full(len(paths), -1, np.int64))
        for i, path in enumerate(paths):
            result = hashes[path]
            if isinstance(result, OSError):
                catalog.errors[i] = result
            else:
                catalog.digests[i] = result[0].encode()
                catalog.sizes[i] = result[1]
        readable = catalog.readable()
        ids = assign_image_ids([(paths[i], hashes[paths[i]][0]) for i in readable])
        for i in readable:
            catalog.ids[i] = ids[paths[i]]
        return catalog


def list_images(images_root: str, paths: list[str], *, threads: int = 8) -> Catalog:
    """Which named paths are files, from listings of their folders (one paginated listing per folder, in
    ``threads`` threads; no request per image): the catalog with each file's listed size (-1 where the
    listing does not say) and, for the others, the OSError reading them would raise (missing, a folder,
    below a file or an unreadable folder)."""
    catalog = Catalog(paths=paths, sizes=np.full(len(paths), -1, np.int64))
    by_folder: dict[str, array] = {}
    for i, path in enumerate(paths):
        folder = posixpath.dirname(path)
        members = by_folder.get(folder)
        if members is None:
            members = by_folder[folder] = array("i")
        members.append(i)

    def one(folder: str) -> tuple[str, dict[str, tuple[bool, int]] | OSError]:
        try:
            return folder, storage.list_entries(storage.join(images_root, folder) if folder else images_root)
        except OSError as error:
            return folder, error

    def record(folder: str, entries: dict[str, tuple[bool, int]] | OSError) -> None:
        for i in by_folder.pop(folder):
            path = paths[i]
            location = storage.join(images_root, path)
            if isinstance(entries, OSError):
                catalog.errors[i] = _same_error(entries, location)
                continue
            entry = entries.get(posixpath.basename(path))
            if entry is None:
                catalog.errors[i] = FileNotFoundError(2, "No such file or directory", location)
            elif entry[0]:
                catalog.errors[i] = IsADirectoryError(21, "is a directory", location)
            else:
                catalog.sizes[i] = entry[1]

    folders = sorted(by_folder)
    step = 4 * threads  # listings in flight: a finished one waits in memory until its paths are looked up
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(folders), step):
            for folder, entries in pool.map(one, folders[start:start + step]):
                record(folder, entries)
    return catalog


def _same_error(error: OSError, location: str) -> OSError:
    """The folder's listing error, as reading a file inside it would raise it."""
    if isinstance(error, NotADirectoryError):
        return NotADirectoryError(20, "Not a directory", location)
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(2, "No such file or directory", location)
    return type(error)(error.errno, error.strerror or str(error), location)


def hash_file(location: str) -> tuple[str, int]:
    """sha256 and size; an unreadable path raises OSError."""
    return storage.sha256_of(location)


def plan_ids(images_root: str, catalog: Catalog, *, threads: int = 8) -> list[int]:
    """Ids for the listed files, from their paths alone (into ``catalog.ids``); only paths whose ids collide
    (DESIGN: a short content hash is appended to each) are hashed here, by the driver, before the workers
    read them again: their hashes go into the catalog, a failure into its errors. Returns the indexes hashed.

    The ids equal what ``Catalog.of_hashes`` gives once every file's hash is known: a path that is read
    successfully later keeps its id, since an id depends on other paths' hashes only within a collision."""
    readable = catalog.readable()
    for i in readable:  # the base id of every path, the one string the catalog keeps for it
        catalog.ids[i] = base_image_id(catalog.paths[i])
    bases = np.array([catalog.ids[i] for i in readable], dtype=object)
    values, counts = np.unique(bases, return_counts=True)  # sorted, no dict per image
    shared = set(values[counts > 1].tolist())
    del bases, values, counts
    colliding = [int(i) for i in readable if catalog.ids[i] in shared]

    def one(i: int) -> tuple[int, tuple[str, int] | OSError]:
        try:
            return i, hash_file(storage.join(images_root, catalog.paths[i]))
        except OSError as error:
            return i, error

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, result in pool.map(one, colliding):
            if isinstance(result, OSError):
                catalog.errors[i] = result
            else:
                catalog.digests[i] = result[0].encode()
    for i in readable:
        if catalog.ids[i] not in shared:
            validate_image_id(catalog.ids[i], what=f"id of {catalog.paths[i]!r}")
    # the colliding paths: assign_image_ids' rule (the ids of paths that failed to hash are not taken)
    hashed = [i for i in colliding if i not in catalog.errors]
    suffixed = assign_image_ids([(catalog.paths[i], catalog.digests[i].decode()) for i in hashed])
    for i in colliding:
        catalog.ids[i] = None
    if suffixed:
        path_of = {image_id: path for path, image_id in suffixed.items()}
        for i in readable:  # a suffixed id must not be another path's own id
            if catalog.ids[i] in path_of:
                raise ValueError(f"image id {catalog.ids[i]!r} for {path_of[catalog.ids[i]]!r} collides with another "
                                 "input's id")
    for i in hashed:
        catalog.ids[i] = suffixed[catalog.paths[i]]
    return colliding


@dataclass(frozen=True, kw_only=True, slots=True)
class ImageInput:
    image_id: str
    source_path: str  # relative to --images
    content_hash: str  # sha256 hex of the file's bytes
    size: int


@dataclass(kw_only=True)
class ImageTable:
    """The readable images, sorted by id: image i is the catalog's path ``order[i]``."""

    catalog: Catalog
    order: np.ndarray  # int32 path indexes

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> ImageInput:
        p = int(self.order[i])
        c = self.catalog
        return ImageInput(image_id=c.ids[p], source_path=c.paths[p], content_hash=c.digests[p].decode(),
                          size=int(c.sizes[p]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def image_id(self, i: int) -> str:
        return self.catalog.ids[self.order[i]]

    def content_hash(self, i: int) -> str:
        return self.catalog.digests[self.order[i]].decode()

    def source_path(self, i: int) -> str:
        return self.catalog.paths[self.order[i]]

    def content_hashes(self) -> list[str]:
        return [d.decode() for d in self.catalog.digests[self.order]]

    @classmethod
    def of(cls, images: list[ImageInput]) -> ImageTable:
        """A table of given images (tests, synthetic plans)."""
        catalog = Catalog.of_hashes({i.source_path: (i.content_hash, i.size) for i in images})
        for i in images:
            catalog.ids[catalog.index_of(i.source_path)] = i.image_id
        return cls(catalog=catalog, order=catalog.id_order().astype(np.int32))


@dataclass(frozen=True, kw_only=True, slots=True)
class PairInput:
    key: str
    source_id: str
    target_id: str
    line: int


@dataclass(kw_only=True)
class PairList:
    """Planned pairs as index columns into an ImageTable, in CSV order (keys are built when asked)."""

    images: ImageTable
    source: np.ndarray  # int32 image indexes
    target: np.ndarray
    line: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.source)

    def key(self, i: int) -> str:
        return pair_key(self.images.image_id(self.source[i]), self.images.image_id(self.target[i]))

    def __getitem__(self, i: int) -> PairInput:
        return PairInput(key=self.key(i), source_id=self.images.image_id(self.source[i]),
                         target_id=self.images.image_id(self.target[i]), line=int(self.line[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def subset(self, indexes: np.ndarray) -> PairList:
        return PairList(images=self.images, source=self.source[indexes], target=self.target[indexes],
                        line=self.line[indexes])

    @classmethod
    def of(cls, images: ImageTable, pairs: list[tuple[str, str]], *, first_line: int = FIRST_LINE) -> PairList:
        """Pairs of image ids (tests, synthetic plans)."""
        row = {images.image_id(i): i for i in range(len(images))}
        return cls(images=images, source=np.array([row[s] for s, _ in pairs], np.int32),
                   target=np.array([row[t] for _, t in pairs], np.int32),
                   line=np.arange(first_line, first_line + len(pairs), dtype=np.int32))


@dataclass(kw_only=True)
class Inputs:
    images: ImageTable  # readable files, sorted by id
    pairs: PairList  # rows whose two files were readable, in CSV order, unique
    image_rejects: list[Reject]  # paths named by a row that are not readable files
    pair_rejects: list[Reject]
    images_in: int  # distinct paths the pairs name
    pairs_in: int  # rows of the CSV


def plan_pairs(table: PairTable, catalog: Catalog) -> Inputs:
    """Give every path and every row a fate, from the catalog once every file was read (or failed)."""
    failed = sorted(catalog.errors)
    image_rejects: list[Reject] = []
    # An unreadable path gets a reject under its would-be id (from its path's hash), so the table is keyed uniformly.
    unreadable_ids = assign_image_ids([(catalog.paths[i], hashlib.sha256(catalog.paths[i].encode()).hexdigest())
                                       for i in failed])
    failed_reason: dict[int, str] = {}
    for i in failed:
        path, error = catalog.paths[i], catalog.errors[i]
        reason = "missing_file" if isinstance(error, FileNotFoundError) else "unreadable"
        failed_reason[i] = reason
        image_rejects.append(Reject(kind="image", id=unreadable_ids[path], stage="read", reason=reason,
                                    detail=f"{path}: {error.strerror or error}", path=path))
    order = catalog.id_order()
    images = ImageTable(catalog=catalog, order=order.astype(np.int32))
    image_of_path = np.full(len(catalog) + 1, -1, np.int32)  # -1: unreadable; the last entry stands for "outside"
    image_of_path[order] = np.arange(len(order), dtype=np.int32)

    # each distinct text of the CSV -> its catalog index, -1 for a path outside --images
    clean = np.array([normalize_relative(text) or "" for text in table.texts], dtype=object)
    path_of_text = sorted_positions(np.array(catalog.paths, dtype=object), clean).astype(np.int32)
    outside = clean == ""  # a path outside --images ("" is never a clean path)
    lacking = ~outside & (path_of_text < 0)
    if lacking.any():
        raise ValueError(f"the catalog lacks a path the pairs name: {clean[np.argmax(lacking)]!r}")
    path_of_text[outside] = -1
    del clean, outside, lacking
    source_path, target_path = path_of_text[table.source], path_of_text[table.target]
    bad = (source_path < 0) | (target_path < 0)
    source_image = image_of_path[source_path]  # -1 (the last entry) where the path is outside or unreadable
    target_image = image_of_path[target_path]
    unreadable = ~bad & ((source_image < 0) | (target_image < 0))
    fine = np.flatnonzero(~bad & ~unreadable)
    codes = source_image[fine].astype(np.int64) * max(len(images), 1) + target_image[fine]
    _, first = np.unique(codes, return_index=True)
    duplicate = np.zeros(len(table), bool)
    duplicate[fine] = True
    duplicate[fine[first]] = False

    pair_rejects: list[Reject] = []
    for i in np.flatnonzero(bad | unreadable | duplicate):
        row = table.row(int(i))
        where = f"line {row.line}"
        if bad[i]:
            bad_text = row.source if source_path[i] < 0 else row.target
            pair_rejects.append(Reject(
                kind="pair", id=f"line-{row.line}", stage="pairs", reason="bad_path",
                detail=f"{where}: {bad_text!r} is not a path inside --images", path=f"{row.source},{row.target}",
            ))
            continue
        paths = catalog.paths[source_path[i]], catalog.paths[target_path[i]]
        if unreadable[i]:
            role, p = ("source", source_path[i]) if source_image[i] < 0 else ("target", target_path[i])
            reason = "missing" if failed_reason[p] == "missing_file" else "unreadable"
            problem = (f"{reason}_{role}", f"{where}: {role} {catalog.paths[p]}: {failed_reason[p]}")
        else:
            problem = ("duplicate_pair", f"{where}: the pair {paths[0]} -> {paths[1]} appears earlier in the CSV")
        labels = [catalog.ids[p] if image_of_path[p] >= 0 else catalog.paths[p] for p in (source_path[i], target_path[i])]
        pair_rejects.append(Reject(kind="pair", id=f"{labels[0]}__{labels[1]}@{row.line}", stage="pairs",
                                   reason=problem[0], detail=problem[1], path=f"{paths[0]},{paths[1]}"))
    kept = np.sort(fine[first])
    pairs = PairList(images=images, source=source_image[kept].astype(np.int32),
                     target=target_image[kept].astype(np.int32), line=(kept + FIRST_LINE).astype(np.int32))
    return Inputs(images=images, pairs=pairs, image_rejects=image_rejects, pair_rejects=pair_rejects,
                  images_in=len(catalog), pairs_in=len(table))


def list_inputs(*, rows: PairTable | list[PairRow], hashes: dict[str, tuple[str, int] | OSError]) -> Inputs:
    """The plan from path -> (sha256, size) or OSError for every path the rows name (tests, synthetic
    plans); ids from the hashes, as the job's are."""
    table = rows if isinstance(rows, PairTable) else PairTable.of_rows(rows)
    return plan_pairs(table, Catalog.of_hashes(hashes))
