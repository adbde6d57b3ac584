"""Checkpoint sweeps and comparisons: a 2-checkpoint tiny run on the demo shards (the session's demo_run) is
sampled and evaluated per checkpoint, the metrics land in metrics.parquet and in the run's TensorBoard at the
checkpoint's step; a rerun redoes nothing; `compare` puts the sweep, one report and a published table side
by side in a page that headless Chromium renders."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.tools import test_stats_gallery
from tests.tools.test_stats_gallery import chromium, render_in_browser  # noqa: F401 (a fixture)
from tools.cli import main as cli

SWEEP_ARGS = ("--resolutions", "256", "--steps", "2", "--workers", "0", "--quiet")
# What the page shows, for --dump-dom: every image decoded or not, and each row label of the metrics table.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var result = {images: images.length,
                broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                              .map(function (i) { return i.alt; }),
                rows: Array.prototype.map.call(document.querySelectorAll("tr[data-label]"),
                                               function (r) { return r.dataset.label; })};
  var pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def swept(demo_run, eval_models, tmp_path_factory) -> dict:
    """The sweep of the session's 2-step tiny run on the demo shards (checkpoints 1 and 2) at 256x176."""
    base = tmp_path_factory.mktemp("sweep")
    command = ["sweep", str(demo_run.run), "--shards", str(demo_run.shards), "--images", str(demo_run.images),
               "--models", str(eval_models), "--train-images", str(demo_run.train_images), "--cache-dir",
               str(base / "cache"), "-o", str(base / "sweep"), "--every", "1", *SWEEP_ARGS]
    assert cli(command) == 0
    return {"run": demo_run.run, "sweep": base / "sweep", "command": command, "base": base}


def _eval_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if tag.startswith("eval/")}


@pytest.mark.slow
def test_each_checkpoint_is_sampled_evaluated_and_logged_at_its_step(swept):
    rows = pq.read_table(swept["sweep"] / "metrics.parquet").to_pylist()
    assert [(r["checkpoint"], r["step"], r["resolution"]) for r in rows] == [
        ("checkpoint-1", 1, "256x176"), ("checkpoint-2", 2, "256x176")]
    for row in rows:
        report = swept["sweep"] / row["checkpoint"] / "report"
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["generated"] == str(swept["sweep"] / row["checkpoint"] / "gen")
        aggregates = metrics["resolutions"]["256x176"]
        for name in ("FID", "LPIPS", "SSIM", "SSIM_256", "PSNR"):
            assert math.isfinite(row[name]) and row[name] == pytest.approx(float(aggregates[name])), name
    assert rows[0]["LPIPS"] != rows[1]["LPIPS"]  # two checkpoints, two sets of images
    # evaluate's report.html: a distributions chart, and worst-pair strips of source | generated | target
    page = (swept["sweep"] / "checkpoint-2" / "report" / "report.html").read_text(encoding="utf-8")
    assert '<img alt="Per-pair distributions at 256x176"' in page
    worst = page[page.index("<h2>Worst lpips at 256x176 (source | generated | ground truth)</h2>"):]
    strip = Image.open(io.BytesIO(base64.b64decode(re.search(r'base64,([^"]+)"', worst).group(1))))
    assert strip.width / strip.height == pytest.approx(3 * 176 / 256, rel=0.01)
    scalars = _eval_scalars(swept["run"])
    for name in ("FID", "LPIPS", "PSNR"):
        logged = scalars[f"eval/256x176/{name}"]
        assert [step for step, _ in logged] == [1, 2]
        assert [value for _, value in logged] == pytest.approx([row[name] for row in rows], rel=1e-6)


@pytest.mark.slow
def test_a_finished_sweep_is_not_redone_nor_logged_twice(swept):
    gen = swept["sweep"] / "checkpoint-1" / "gen" / "256x176"
    before = {p.name: p.stat().st_mtime_ns for p in gen.iterdir()}
    table = pq.read_table(swept["sweep"] / "metrics.parquet").to_pylist()
    assert cli(swept["command"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in gen.iterdir()} == before
    assert pq.read_table(swept["sweep"] / "metrics.parquet").to_pylist() == table
    log = (swept["sweep"] / "sweep.log").read_text()
    assert log.count("already evaluated") == 2
    assert [step for step, _ in _eval_scalars(swept["run"])["eval/256x176/LPIPS"]] == [1, 2]


@pytest.mark.slow
def test_compare_page_renders_every_image_and_lists_every_input(swept, chromium, tmp_path, capsys,  # noqa: F811
                                                                monkeypatch):
    reference = tmp_path / "paper.csv"
    reference.write_text("source,resolution,FID,LPIPS,SSIM,PSNR\nMCLD paper Table 1,256x176,7.44,0.1749,0.7402,\n")
    page = tmp_path / "compare.html"
    capsys.readouterr()
    assert cli(["compare", str(swept["sweep"]), str(swept["sweep"] / "checkpoint-1" / "report"), "--labels",
                "sweep,ck1", "--reference", str(reference), "-o", str(page)]) == 0
    console = capsys.readouterr().out.splitlines()
    labels = ["sweep checkpoint-1", "sweep checkpoint-2", "ck1", "MCLD paper Table 1 (reference)"]
    assert console[0].split()[:3] == ["label", "resolution", "FID"]
    for label, line in zip(labels, console[1:5]):
        assert line.startswith(label), (label, line)
    assert "0.1749" in console[4] and console[-1] == f"-> {page}"
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and not re.search(r'(src|href)="(?!data:)', text)  # no JavaScript, self-contained
    monkeypatch.setattr(test_stats_gallery, "PROBE", PROBE)
    shown = render_in_browser(chromium, page, tmp_path)
    assert shown["broken"] == [] and shown["rows"] == labels
    # one curves chart (the sweep), one distributions chart (256x176), and differing pairs A | B | ground truth
    assert shown["images"] >= 3
    assert text.count("differ most") == 1


def test_sweep_and_compare_refuse_bad_inputs_in_one_line(tmp_path, capsys):
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    common = ["--shards", str(tmp_path), "--images", str(tmp_path), "--models", str(tmp_path / "m.yaml"),
              "-o", str(tmp_path / "sweep")]
    assert cli(["sweep", str(tmp_path / "nothing"), *common]) == 1
    assert capsys.readouterr().err.strip() == f"mcld-data sweep: {tmp_path / 'nothing'}: no such run folder"
    assert cli(["sweep", str(tmp_path / "run"), *common, "--checkpoints", "checkpoint-2"]) == 1
    assert "--checkpoints checkpoint-2: not a checkpoint of" in capsys.readouterr().err
    assert cli(["sweep", str(tmp_path / "run"), *common, "--every", "2"]) == 1
    assert "--every 2: no checkpoint of" in capsys.readouterr().err
    assert cli(["compare", str(tmp_path / "run"), "-o", str(tmp_path / "c.html")]) == 1
    assert "neither an evaluation report (metrics.json) nor a sweep" in capsys.readouterr().err
    assert not (tmp_path / "c.html").exists()
