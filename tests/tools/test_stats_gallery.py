"""`mcld-data stats`'s gallery, opened in a real headless Chromium: every picture renders, the counts are the
manifest's. The page is the one a job with the reference's feature modes produced (tests/conftest.py)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest

from shards.manifest import read_manifest
from tools.cli import main as cli

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Injected into a copy of the report (the report itself has no script): after the load event, when every
# data: image has decoded or failed, write what the page shows into the DOM for --dump-dom to print.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var result = {images: images.length, rejected_images: document.querySelectorAll('[data-gallery="rejected"] img').length,
                broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                              .map(function (i) { return i.alt || i.src.slice(0, 40); }),
                counts: {}, cards: {}};
  document.querySelectorAll("[data-count]").forEach(function (e) { result.counts[e.dataset.count] = Number(e.textContent); });
  document.querySelectorAll("[data-gallery]").forEach(function (e) {
    result.cards[e.dataset.gallery] = (result.cards[e.dataset.gallery] || 0) + 1; });
  var pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def _find_browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless-capable Chromium; installed from Debian's packages where missing (apt-get, as root)."""
    found = _find_browser()
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("no Chromium on PATH and no way to install it here (apt-get as root is needed)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing Chromium timed out: {' '.join(command)}")
        if done.returncode != 0:
            pytest.skip(f"Chromium could not be installed ({' '.join(command)}): {done.stderr.strip()[-300:]}")
    found = _find_browser()
    if not found:
        pytest.skip("apt-get installed chromium but no browser binary is on PATH")
    return found


def render_in_browser(browser: str, page, tmp_path) -> dict:
    """Load ``page`` (with the probe added) in headless Chromium and return what the probe found."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HOME": str(tmp_path)})
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert match, f"Chromium printed no probe result (exit {done.returncode}): {done.stderr[-1500:]}"
    return json.loads(html.unescape(match.group(1)))


def test_every_picture_renders_and_the_counts_are_the_manifests(feature_modes_run, chromium, tmp_path):
    out, _, _ = feature_modes_run
    page = tmp_path / "report.html"
    assert cli(["stats", str(out), "-o", str(page), "--quiet"]) == 0
    text = page.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(?!data:)', text)  # self-contained: nothing to fetch
    result = render_in_browser(chromium, page, tmp_path)

    assert result["images"] > 10 and result["broken"] == []
    counts = read_manifest(str(out)).counts
    rejected_images = sum(counts.images_rejected.values())
    expected = {
        "images_in": counts.images_in, "images_ok": counts.images_ok, "images_rejected": rejected_images,
        "pairs_in": counts.pairs_in, "pairs_written": counts.pairs_written,
        "pairs_rejected": sum(counts.pairs_rejected.values()), "pairs_face_ok": counts.pairs_face_ok,
        # the same figures as read back from the shards and the rejects table
        "samples": counts.pairs_written, "samples_face_ok": counts.pairs_face_ok,
        "samples_no_face": counts.pairs_written - counts.pairs_face_ok,
        "gallery_no_face": counts.pairs_written - counts.pairs_face_ok,
        "rejected_images_listed": rejected_images, "gallery_rejected": rejected_images,
        "rejected_pairs_listed": sum(counts.pairs_rejected.values()),
    }
    assert result["counts"] == expected
    assert result["cards"]["rejected"] == rejected_images >= 2  # every rejected image has its card
    assert result["rejected_images"] == rejected_images - counts.images_rejected.get("decode_failed", 0)
    assert result["cards"]["low_texture"] == result["cards"]["low_pose"] == min(8, counts.pairs_written)
    assert result["cards"].get("no_face", 0) == min(48, counts.pairs_written - counts.pairs_face_ok)


def test_the_lowest_coverage_gallery_keeps_the_lowest_values():
    import random

    from tools.stats import GalleryItem, _Lowest

    rng = random.Random(3)
    values = [(round(rng.random(), 1), f"k{i:03d}") for i in range(60)]  # many ties: ordered by key
    rng.shuffle(values)
    lowest = _Lowest(8)
    for value, key in values:
        lowest.offer(value, key, lambda key=key: GalleryItem(key=key, caption="", pictures=[]))
    assert [item.key for item in lowest.items()] == [key for _, key in sorted(values)[:8]]
