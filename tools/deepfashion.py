"""DeepFashion In-shop -> job inputs: a pairs CSV per split, with paths relative to the dataset root.

Also a folder per split of links named as the published lists name the images (``OUT/train/*.jpg``): the
reference's ``fashion/train`` folder, which its evaluation reads as FID's real side
(``mcld-data evaluate --train-images OUT/train``), made without copying 48,674 photos.

The published split and pair lists (CFLD's, used by MCLD) name images by a flattened path:
``WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg`` is ``fashionWOMENBlouses_Shirtsid0000000102_1front.jpg``
(gender and category as they are, the id without its underscore, then the photo number, ``_``, and the pose
number and view run together). We compute that name for every file of the tree and refuse any name two
files would share, so the mapping is one-to-one by construction rather than by luck.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def flattened_name(relative_path: str) -> str | None:
    """The published list name of a file of the tree, or None for a path not shaped like the dataset's."""
    parts = relative_path.replace("\\", "/").split("/")
    if len(parts) != 4:
        return None
    gender, category, item, photo = parts
    if gender not in ("MEN", "WOMEN") or not item.startswith("id_") or "_" not in photo:
        return None
    number, rest = photo.split("_", 1)
    return f"fashion{gender}{category}{item.replace('_', '')}{number}_{rest.replace('_', '')}"


def item_of(relative_path: str) -> str:
    """The folder of one garment item (gender/category/id): photos of it form the training pairs."""
    return relative_path.rsplit("/", 1)[0]


@dataclass(kw_only=True)
class Report:
    files_in_tree: int = 0
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # list name -> files that map to it
    unshaped: list[str] = field(default_factory=list)  # image files not shaped like the dataset's tree
    splits: dict[str, dict] = field(default_factory=dict)
    files_in_no_list: list[str] = field(default_factory=list)


def scan_tree(root: Path) -> tuple[dict[str, str], Report]:
    """Map every list name to its file (relative path), reporting files that cannot be mapped."""
    report = Report()
    by_name: dict[str, list[str]] = defaultdict(list)
    for directory, _, files in os.walk(root):
        for file in files:
            if not file.lower().endswith(IMAGE_SUFFIXES):
                continue
            relative = Path(directory, file).relative_to(root).as_posix()
            report.files_in_tree += 1
            name = flattened_name(relative)
            if name is None:
                report.unshaped.append(relative)
            else:
                by_name[name].append(relative)
    report.ambiguous = {n: sorted(paths) for n, paths in by_name.items() if len(paths) > 1}
    report.unshaped.sort()
    return {n: paths[0] for n, paths in by_name.items() if len(paths) == 1}, report


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or not {"from", "to"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV with columns from,to; found {reader.fieldnames}")
        return [(row["from"].strip(), row["to"].strip()) for row in reader]


def _write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["from", "to"])
        writer.writerows(pairs)
    temporary.replace(path)


def write_links(folder: Path, targets: dict[str, Path]) -> None:
    """``folder/NAME`` -> the file, for every name; the folder is built aside and swapped in whole. An
    existing folder is replaced only when it holds nothing but links (an earlier run's), never real files."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"{folder}: exists and is not a folder; move it away")
    if folder.is_dir():
        kept = [entry.name for entry in os.scandir(folder) if not entry.is_symlink()]
        if kept:
            raise ValueError(f"{folder}: holds files that are not links (e.g. {kept[0]}); it is not replaced")
    building = folder.with_name(f".{folder.name}.building")
    if building.is_dir():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    for name, target in targets.items():
        os.symlink(target, building / name)
    if folder.is_dir():
        shutil.rmtree(folder)  # only links (checked above); their targets are untouched
    building.rename(folder)


def convert(*, root: Path, lists: Path, out: Path) -> Report:
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root}: not a directory")
    splits = sorted(p.stem for p in lists.glob("*.lst"))
    if not splits:
        raise FileNotFoundError(f"--lists {lists}: no split lists (*.lst) found")
    files, report = scan_tree(root)
    absolute_root = root.resolve()  # the links' targets; resolved once, not per file
    out.mkdir(parents=True, exist_ok=True)
    listed: set[str] = set()
    for split in splits:
        names = _read_list(lists / f"{split}.lst")
        listed.update(names)
        present = [n for n in names if n in files]
        missing = sorted(n for n in names if n not in files)
        info: dict = {"listed": len(names), "found": len(present), "names_matching_no_file": missing}
        write_links(out / split, {name: absolute_root / files[name] for name in present})
        info["image_links"] = f"{split}/"
        pair_list = lists / f"{split}.csv"
        if pair_list.exists():
            published = _read_pairs(pair_list)
            pairs = [(files[a], files[b]) for a, b in published if a in files and b in files]
            info["pairs_source"] = f"published list {pair_list.name}"
            info["pairs_published"] = len(published)
            info["pairs_dropped_missing_file"] = len(published) - len(pairs)
        else:
            items: dict[str, list[str]] = defaultdict(list)
            for name in present:
                items[item_of(files[name])].append(files[name])
            pairs = [(a, b) for photos in items.values() for a in sorted(photos) for b in sorted(photos) if a != b]
            pairs.sort()
            info["pairs_source"] = "all ordered pairs of distinct photos of the same item (no published list)"
            info["items"] = len(items)
        info["pairs_written"] = len(pairs)
        _write_pairs(out / f"{split}_pairs.csv", pairs)
        report.splits[split] = info
    report.files_in_no_list = sorted(path for name, path in files.items() if name not in listed)
    (out / "deepfashion_report.json").write_text(json.dumps(report.__dict__, indent=1, sort_keys=True) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcld-data deepfashion", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="img_highres folder (WOMEN/..., MEN/...)")
    parser.add_argument("--lists", required=True, type=Path, help="folder with {split}.lst and optional {split}.csv")
    parser.add_argument("--out", required=True, type=Path,
                        help="where {split}_pairs.csv, the {split}/ folders of links and the report go")
    args = parser.parse_args(argv)
    try:
        report = convert(root=args.root, lists=args.lists, out=args.out)
    except (OSError, ValueError) as error:
        print(f"mcld-data deepfashion: {error}", file=sys.stderr)
        return 1
    print(f"{args.root}: {report.files_in_tree} image files")
    for split, info in report.splits.items():
        print(
            f"  {split}: {info['found']}/{info['listed']} listed names found, {len(info['names_matching_no_file'])} "
            f"match no file; {info['pairs_written']} pairs ({info['pairs_source']}) -> {args.out / f'{split}_pairs.csv'}"
        )
        print(f"    images as the published lists name them (links): {args.out / split}")
        for name in info["names_matching_no_file"][:5]:
            print(f"    no file for {name}")
    print(f"  files in no list: {len(report.files_in_no_list)}; files not shaped like the dataset: {len(report.unshaped)}")
    if report.ambiguous:
        print(f"  AMBIGUOUS: {len(report.ambiguous)} list names match more than one file; none of them is used:")
        for name, paths in list(report.ambiguous.items())[:5]:
            print(f"    {name}: {', '.join(paths)}")
    print(f"  report: {args.out / 'deepfashion_report.json'}")
    return 1 if report.ambiguous else 0


if __name__ == "__main__":
    raise SystemExit(main())
