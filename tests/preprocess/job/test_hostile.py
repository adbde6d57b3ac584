"""A folder of hostile inputs through the whole job: each ends accounted for with a reason; the job finishes."""

from __future__ import annotations

import csv
from collections import Counter
import hashlib
import json

import pyarrow.parquet as pq

from preprocess.build_shards import main
from shards.manifest import read_manifest
from shards.reader import iter_samples
from shards.verify import verify_output
from tests.preprocess.job.conftest import PINNED_SHARD_ARGS
from tests.preprocess.job.hostile import write_hostile_folder


def hostile_inputs(root) -> tuple[dict[str, str], list[tuple[str, str]], object]:
    """The hostile folder under root/images and a pairs CSV naming every file both ways plus bad rows."""
    images = root / "images"
    expected = write_hostile_folder(images)
    names = sorted(expected)
    rows = [("good.jpg", name) for name in names if name != "good.jpg"]
    rows += [(name, "good.jpg") for name in names if name != "good.jpg"]
    rows += [("good.jpg", "not there.jpg"), ("gone/away.png", "good.jpg"), ("good.jpg", "../escape.jpg"),
             ("good.jpg", "copy of good.jpg")]  # the last repeats an earlier row
    pairs = root / "pairs.csv"
    with pairs.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["from", "to"])
        writer.writerows(rows)
    return expected, rows, pairs


def run_hostile(images, pairs, out, *extra: str) -> int:
    return main(["--images", str(images), "--pairs", str(pairs), "--out", str(out), "--models", "tiny",
                 "--no-progress", "--max-errors", "1.0", "--device", "cpu", *extra])


def test_hostile_folder(hostile_run, tmp_path):
    """The session's hostile run (conftest.hostile_run, which asserts the job exits 0) accounts for every input."""
    expected, rows, pairs, images, out = (hostile_run.expected, hostile_run.rows, hostile_run.pairs,
                                          hostile_run.images, hostile_run.out)
    names = sorted(expected)
    manifest = read_manifest(str(out))
    counts = manifest.counts
    named = len(names) + 2  # the hostile files plus two missing paths; ../escape.jpg is no image path
    assert counts.images_in == named and counts.pairs_in == len(rows)
    assert not counts.problems()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    by_path = {r["path"]: r for r in rejects if r["kind"] == "image"}
    for name, reason in expected.items():
        if reason:
            assert by_path[name]["reason"] == reason, (name, by_path.get(name))
            assert name in by_path[name]["detail"]
            assert " at 0x" not in by_path[name]["detail"], by_path[name]  # no object reprs
        else:
            assert name not in by_path, by_path.get(name)
    assert by_path["not there.jpg"]["reason"] == "missing_file"
    assert by_path["gone/away.png"]["reason"] == "missing_file"
    pair_reasons = sorted(r["reason"] for r in rejects if r["kind"] == "pair")
    bad_images = sum(1 for r in expected.values() if r)
    assert pair_reasons.count("source_rejected") + pair_reasons.count("unreadable_source") == bad_images
    assert pair_reasons.count("target_rejected") + pair_reasons.count("unreadable_target") == bad_images
    assert {"missing_target", "missing_source", "bad_path", "duplicate_pair"} <= set(pair_reasons)
    assert counts.pairs_written == len(rows) - len(pair_reasons)
    # the rejects table and the manifest's counts agree reason by reason (this run has rejects of each kind)
    table = pq.read_table(out / "rejects.parquet")
    assert table.column_names == ["kind", "id", "stage", "reason", "detail", "path"]
    for kind, counted in (("image", counts.images_rejected), ("pair", counts.pairs_rejected)):
        listed = Counter(r["reason"] for r in rejects if r["kind"] == kind)
        assert listed and dict(listed) == counted, (kind, listed, counted)
    # duplicate content under three names (good, copy of good, the unicode name): three ids; each name is
    # computed (its hash is only known where a worker reads it), one feature row per content is used
    readable = [name for name in names if expected[name] != "unreadable"]
    contents = {hashlib.sha256((images / name).read_bytes()).hexdigest() for name in readable}
    assert len(contents) == len(readable) - 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images_computed"] == len(readable) and stats["images_cached"] == 0
    ids = {sample["meta"]["source_path"]: sample["meta"]["source_id"] for sample in iter_samples(str(out))}
    assert len({ids["good.jpg"], ids["copy of good.jpg"], ids["portrait ünïcode ü.jpg"]}) == 3
    assert verify_output(str(out), progress=False).ok

    # the same inputs again, with another batching, give the same rejects table, byte for byte
    again = tmp_path / "again"
    assert run_hostile(images, pairs, again, *PINNED_SHARD_ARGS, "--batch-size", "3", "--workers", "1") == 0
    assert (again / "rejects.parquet").read_bytes() == (out / "rejects.parquet").read_bytes()


def test_error_budget_stops_the_job_with_a_clear_message(ray_local, tmp_path, capsys):
    images = tmp_path / "images"
    write_hostile_folder(images)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("from,to\ngood.jpg,zero bytes.jpg\ngood.jpg,notes.jpg\nnotes.jpg,truncated.jpg\n")
    out = tmp_path / "out"
    # one image per batch and one worker: the rejects arrive one at a time, so the job stops at the second
    code = main(["--images", str(images), "--pairs", str(pairs), "--out", str(out), "--models", "tiny",
                 "--no-progress", "--max-errors", "1", "--batch-size", "1", "--workers", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error budget spent: 2 of 4 images rejected" in err
    assert "--resume" in err
    assert not (out / "manifest.json").exists()
    # what was done before the stop is on disk: partial figures, and the run's log with the reason
    stats = json.loads((out / "stats.json").read_text())
    assert stats["complete"] is False and stats["images_done"] >= 2
    assert stats["stages"]["decode"]["rejected"] == {"decode_failed": 2}
    log = (out / "build_shards.log").read_text()
    assert "error budget spent: 2 of 4 images rejected" in log and "to compute" in log


def test_inputs_that_all_fail_to_read_stop_before_any_work(tmp_path, capsys, model_cache):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("from,to\na.jpg,b.jpg\n")
    code = main(["--images", str(tmp_path / "nowhere"), "--pairs", str(pairs), "--out", str(tmp_path / "out"),
                 "--models", "tiny", "--no-progress"])
    assert code == 1
    assert "2 of 2 images named by --pairs cannot be read" in capsys.readouterr().err
