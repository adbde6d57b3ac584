import json
import re

import numpy as np
import pytest
from PIL import Image

from shards.rejects import Reject, write_rejects
from shards.schema import Geometry
from shards.synthetic import write_synthetic_dataset
from tools.cli import main

GEOMETRY = Geometry(height=256, width=176, clip_dim=32)


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    write_synthetic_dataset(str(folder), geometry=GEOMETRY, samples=7, seed=2, samples_per_shard=3, rejected_images=2)
    return folder


def test_summary_shows_counts_models_and_coverage(out, capsys):
    assert main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "images: 9 in = 7 ok + 2 rejected (decode_failed 2)" in text
    assert "pairs:  7 in = 7 written + 0 rejected (none)" in text
    assert "counts add up" in text
    assert "TINY MODELS" in text
    assert "resolution 256x176" in text
    assert re.search(r"face coverage: \d/7 samples", text)
    assert "train: 3 shards, 7 samples (1-3 per shard)" in text
    assert "synthetic (tiny)" in text


def test_summary_flags_counts_that_do_not_add_up(out, capsys):
    write_rejects(str(out / "rejects.parquet"), [
        Reject(kind="image", id="x", stage="decode", reason="decode_failed", detail="x.jpg: bad")
    ])
    assert main(["summary", str(out)]) == 1
    assert "COUNTS DO NOT ADD UP" in capsys.readouterr().out


def test_verify_ok_and_names_bad_shard(out, capsys):
    assert main(["verify", str(out), "--quiet"]) == 0
    assert "3 shards, 7 samples checked: OK" in capsys.readouterr().out
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(out), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "BAD train-000001.tar" in text and "FAILED" in text
    assert "train-000000.tar" not in text.replace("3 shards", "")


def test_show_writes_a_sheet_by_key_and_index(out, tmp_path, capsys):
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"]
    sheet = tmp_path / "sheet.png"
    assert main(["show", str(out), "--index", "4", "-o", str(sheet)]) == 0
    key = capsys.readouterr().out.split(" -> ")[0]
    picture = np.asarray(Image.open(sheet))
    assert picture.shape[0] > 300 and picture.shape[1] > 600 and picture.std() > 10
    sheet2 = tmp_path / "sheet2.png"
    assert main(["show", str(out), "--key", key, "-o", str(sheet2)]) == 0
    assert sheet2.read_bytes() == sheet.read_bytes()
    assert main(["show", str(out), "--key", "nope__nope", "-o", str(sheet2)]) == 1
    assert "no sample with key 'nope__nope'" in capsys.readouterr().err
    assert main(["show", str(out), "--index", "7", "-o", str(sheet2)]) == 1
    assert "there are 7 samples" in capsys.readouterr().err


def test_stats_page_is_self_contained(out, tmp_path):
    page = tmp_path / "report.html"
    assert main(["stats", str(out), "-o", str(page), "--quiet"]) == 0
    text = page.read_text()
    images = re.findall(r'src="data:image/png;base64,', text)
    assert len(images) == 7
    assert "http://" not in text and "https://" not in text
    assert "<td>image</td><td>decode</td><td>decode_failed</td><td>2</td>" in text


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "missing")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), "--quiet"]) == 1
    assert "no manifest" in capsys.readouterr().out
    assert main(["stats", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 1
    assert "empty output folder" in capsys.readouterr().err


def test_outputs_into_a_new_folder_are_written_and_impossible_ones_refused_in_one_line(out, tmp_path, capsys):
    page = tmp_path / "new" / "deeper" / "report.html"
    assert main(["stats", str(out), "-o", str(page), "--quiet"]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>") or "<html" in page.read_text()
    sheet = tmp_path / "sheets" / "one.png"
    assert main(["show", str(out), "--index", "0", "-o", str(sheet)]) == 0
    assert Image.open(sheet).size[0] > 0
    capsys.readouterr()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for command in (["stats", str(out), "--quiet"], ["show", str(out), "--index", "0"]):
        assert main([*command, "-o", str(blocker / "report.out")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(blocker) in err and "Traceback" not in err, err
