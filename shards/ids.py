"""Image ids: an input path relative to the images root -> a dot-free id that never contains ``__``."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

from shards.schema import validate_image_id

_OUTSIDE = re.compile(r"[^A-Za-z0-9_-]")
_RUNS = re.compile(r"_+")
HASH_CHARS = 8


def base_image_id(relative_path: str) -> str:
    """DESIGN.md's mapping: every character outside [A-Za-z0-9_-] -> '_', runs of '_' collapsed to one.

    Leading and trailing '_' are dropped as well, so that ``{source}__{target}`` splits one way only.
    """
    text = _RUNS.sub("_", _OUTSIDE.sub("_", relative_path.replace("\\", "/"))).strip("_")
    return text or "image"


def assign_image_ids(paths_and_hashes: list[tuple[str, str]]) -> dict[str, str]:
    """Map each relative path to its id; where ids collide, append a short content hash to each.

    ``paths_and_hashes`` holds (relative path, content sha256 hex). The result does not depend on the
    order of the list. Where two colliding paths also share their content, the hash of the path breaks
    the tie, so every path still gets its own id.
    """
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for path, digest in paths_and_hashes:
        groups[base_image_id(path)].append((path, digest))
    ids: dict[str, str] = {}
    taken = {base for base, members in groups.items() if len(members) == 1}
    for base, members in sorted(groups.items()):
        if len(members) == 1:
            ids[members[0][0]] = base
            continue
        content_counts = defaultdict(int)
        for _, digest in members:
            content_counts[digest[:HASH_CHARS]] += 1
        for path, digest in sorted(members):
            suffix = digest[:HASH_CHARS]
            if content_counts[suffix] > 1:
                suffix = hashlib.sha256(path.encode("utf-8")).hexdigest()[:HASH_CHARS]
            candidate = f"{base}_{suffix}"
            if candidate in taken:
                raise ValueError(f"image id {candidate!r} for {path!r} collides with another input's id")
            taken.add(candidate)
            ids[path] = candidate
    for path, image_id in ids.items():
        validate_image_id(image_id, what=f"id of {path!r}")
    return ids
