import csv
import json
import re
from pathlib import Path

import pytest

from tools.deepfashion import flattened_name, main
from tools.evaluate.inputs import training_images

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LISTS = SHARED / "fixtures" / "deepfashion"
NAME = re.compile(r"^fashion(WOMEN|MEN)([A-Za-z_]+?)id(\d{8})(\d{2})_(\d)([a-z]+)\.jpg$")


def tree_path(name: str) -> str:
    """The dataset's own path of a published name (the inverse of the flattening, for building trees)."""
    gender, category, item, photo, pose, view = NAME.match(name).groups()
    return f"{gender}/{category}/id_{item}/{photo}_{pose}_{view}.jpg"


def test_flattening_matches_the_published_form():
    assert flattened_name("WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg") == "fashionWOMENBlouses_Shirtsid0000000102_1front.jpg"
    assert flattened_name("MEN/Tees_Tanks/id_00007301/04_7_additional.jpg") == "fashionMENTees_Tanksid0000730104_7additional.jpg"
    assert flattened_name("notes/readme.jpg") is None


@pytest.mark.skipif(not LISTS.exists(), reason=f"needs the shared fixtures at {LISTS} (absent in a user's clone)")
def test_all_published_names_map_unambiguously(tmp_path, capsys):
    root = tmp_path / "img_highres"
    names = {split: (LISTS / f"{split}.lst").read_text().split() for split in ("train", "test")}
    assert len(names["train"]) + len(names["test"]) == 52712
    for name in names["train"] + names["test"]:
        path = root / tree_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    (root / "WOMEN" / "Dresses" / "id_99999999").mkdir(parents=True)
    (root / "WOMEN" / "Dresses" / "id_99999999" / "01_1_front.jpg").touch()  # in no list
    missing = names["test"][0]
    (root / tree_path(missing)).unlink()  # a listed name with no file
    out = tmp_path / "inputs"
    assert main(["--root", str(root), "--lists", str(LISTS), "--out", str(out)]) == 0
    report = json.loads((out / "deepfashion_report.json").read_text())
    assert report["files_in_tree"] == 52712
    assert report["ambiguous"] == {} and report["unshaped"] == []
    assert report["files_in_no_list"] == ["WOMEN/Dresses/id_99999999/01_1_front.jpg"]
    assert report["splits"]["train"]["found"] == 48674
    assert report["splits"]["test"]["names_matching_no_file"] == [missing]
    with (out / "test_pairs.csv").open() as stream:
        test_pairs = list(csv.DictReader(stream))
    published = (LISTS / "test.csv").read_text().splitlines()[1:]
    dropped = sum(1 for line in published if missing in line.split(","))
    assert len(test_pairs) == 8570 - dropped
    first = published[0].split(",")
    if missing not in first:
        assert (test_pairs[0]["from"], test_pairs[0]["to"]) == (tree_path(first[0]), tree_path(first[1]))
    for row in test_pairs[:50]:
        assert (root / row["from"]).exists() and (root / row["to"]).exists()
    with (out / "train_pairs.csv").open() as stream:
        train_pairs = list(csv.DictReader(stream))
    assert report["splits"]["train"]["pairs_written"] == len(train_pairs) > 48674
    for row in train_pairs[:200]:
        assert row["from"] != row["to"]
        assert row["from"].rsplit("/", 1)[0] == row["to"].rsplit("/", 1)[0]
    text = capsys.readouterr().out
    assert "test: 4037/4038 listed names found, 1 match no file" in text
    # The reference's fashion/train folder, as links: FID's real side for `mcld-data evaluate --train-images`.
    assert training_images(out / "train") == sorted(out / "train" / name for name in names["train"])
    assert (out / "train" / names["train"][7]).resolve() == (root / tree_path(names["train"][7])).resolve()
    assert len(list((out / "test").iterdir())) == 4037


def test_two_files_with_one_list_name_are_refused(tmp_path, capsys):
    root = tmp_path / "root"
    for name in ("02_1_front.jpg", "02_1front.jpg"):
        path = root / "MEN" / "Denim" / "id_00000080" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.lst").write_text("fashionMENDenimid0000008002_1front.jpg\n")
    assert main(["--root", str(root), "--lists", str(lists), "--out", str(tmp_path / "o")]) == 1
    assert "AMBIGUOUS: 1 list names match more than one file" in capsys.readouterr().out


def test_the_split_folders_of_links_are_the_reference_layout_and_are_rebuilt(tmp_path, capsys):
    root = tmp_path / "img_highres"
    names = ["fashionWOMENDressesid0000000101_1front.jpg", "fashionWOMENDressesid0000000101_2side.jpg",
             "fashionMENDenimid0000008002_1front.jpg"]
    for number, name in enumerate(names):
        path = root / tree_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([number]) * 10)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.lst").write_text("\n".join(names[:2]) + "\n")
    (lists / "test.lst").write_text(names[2] + "\n")
    out = tmp_path / "inputs"
    for _ in range(2):  # a second run replaces the links of the first
        assert main(["--root", str(root), "--lists", str(lists), "--out", str(out)]) == 0
        assert sorted(p.name for p in (out / "train").iterdir()) == sorted(names[:2])
        assert [(out / "test" / names[2]).read_bytes()] == [bytes([2]) * 10]
        assert all((out / "train" / name).is_symlink() for name in names[:2])
    assert not list(out.glob(".*building"))
    # A split folder that holds real files is not the tool's to replace.
    (out / "test" / names[2]).unlink()
    (out / "test" / "mine.jpg").write_bytes(b"a user's file")
    assert main(["--root", str(root), "--lists", str(lists), "--out", str(out)]) == 1
    assert f"{out / 'test'}: holds files that are not links (e.g. mine.jpg)" in capsys.readouterr().err
    assert (out / "test" / "mine.jpg").read_bytes() == b"a user's file"
