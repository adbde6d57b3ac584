"""Each input image crosses the network once: the job on s3:// inputs, with the S3 server's own request log
(moto's server logs one line per request) counted per key.

A few hundred images, most of them 8 x 8 (decode rejects them as too small, so the run stays short; what
is counted is the reading, which is the same for every image), the eight demo photos among them."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from urllib.parse import parse_qs, unquote, urlsplit

import fsspec
import numpy as np
import pytest
from PIL import Image

from shards.manifest import read_manifest

REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[0-9.]+"')
TINY_IMAGES = 240


def requests_since(log, offset: int) -> list[tuple[str, str, dict]]:
    """(method, unquoted path, query) of every request the server logged after ``offset`` bytes."""
    text = log.read_bytes()[offset:].decode("utf-8", "replace")
    out = []
    for method, target in REQUEST.findall(text):
        parts = urlsplit(target)
        out.append((method, unquote(parts.path), parse_qs(parts.query)))
    return out


@pytest.mark.slow
def test_s3_requests_each_image_fetched_once_no_head_paginated_listing(s3_server, demo_inputs, tmp_path):
    from tests.preprocess.job.test_job import _job_command, _run_detached

    images, pairs = demo_inputs
    bucket = s3_server.new_bucket()
    fs = fsspec.filesystem("s3")
    demo_names = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    for name in demo_names:
        fs.put_file(str(images / name), f"{bucket}/in/images/demo/{name}")
    tiny = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tiny, format="PNG")
    tiny_names = [f"tiny/{i:04d}.png" for i in range(TINY_IMAGES)]
    fs.pipe({f"{bucket}/in/images/{name}": tiny.getvalue() for name in tiny_names})
    rows = [(f"demo/{a}", f"demo/{b}") for a, b in csv.reader(pairs.read_text().splitlines()[1:])]
    rows += [(name, f"demo/{demo_names[i % len(demo_names)]}") for i, name in enumerate(tiny_names)]
    text = io.StringIO()
    csv.writer(text).writerows([("from", "to"), *rows])
    fs.pipe_file(f"{bucket}/in/pairs.csv", text.getvalue().encode())
    image_keys = {f"/{bucket}/in/images/demo/{n}" for n in demo_names} | {f"/{bucket}/in/images/{n}" for n in tiny_names}

    offset = s3_server.log.stat().st_size
    out = tmp_path / "out"  # local output: only the inputs' requests are S3's
    code, output = _run_detached(_job_command((f"s3://{bucket}/in/images", f"s3://{bucket}/in/pairs.csv"), out,
                                              "--max-errors", "1.0"))
    assert code == 0, output
    counts = read_manifest(str(out)).counts
    assert counts.images_in == len(image_keys) and counts.images_rejected == {"too_small": TINY_IMAGES}

    requests = requests_since(s3_server.log, offset)
    gets = Counter(path for method, path, query in requests if method == "GET" and path in image_keys)
    heads = [path for method, path, _ in requests if method == "HEAD" and path.startswith(f"/{bucket}/in/images/")]
    listings = [query for method, path, query in requests if method == "GET" and path == f"/{bucket}"]
    assert set(gets) == image_keys, f"never fetched: {sorted(image_keys - set(gets))[:5]}"
    assert set(gets.values()) == {1}, f"fetched more than once: {[k for k, n in gets.items() if n > 1][:5]}"
    assert heads == []
    # ListObjectsV2 listings: one per image folder (a page each at this size), however many images, plus
    # the run's own checks of --images and --pairs (a few listings of their parents, once per run)
    folders = {f"demo/{name.rsplit('/', 1)[0]}" for name in demo_names if "/" in name} | {"tiny"}
    assert listings and all(q.get("list-type") == ["2"] for q in listings)
    of_folders = [q["prefix"][0] for q in listings if q.get("prefix", [""])[0].startswith("in/images/")]
    assert sorted(of_folders) == sorted({f"in/images/{f}/" for f in folders}), of_folders
    assert len(listings) - len(of_folders) <= 3, listings
