"""`mcld-data show OUT --key KEY -o sheet.png`: one sample as a contact sheet."""

from __future__ import annotations

import json
import tarfile
from typing import Any

import numpy as np
from tqdm import tqdm

from shards import storage
from shards.reader import ShardError, iter_shard_members, resolve
from shards.schema import decode_sample
from tools.render import iuv_panels


def _member_keys(url: str) -> list[str]:
    """Sample keys of a shard in order, from the tar headers alone where the file is local."""
    if storage.is_url(url):
        return [m["__key__"] for m in iter_shard_members(url)]
    try:
        with tarfile.open(url, "r:") as archive:
            names = archive.getnames()
    except (tarfile.TarError, OSError) as error:
        raise ShardError(f"{url}: truncated or corrupt tar: {error}") from error
    keys: list[str] = []
    for name in names:
        key = name.split(".", 1)[0]
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys


def find_sample(out_dir: str, *, key: str | None = None, index: int | None = None) -> dict[str, Any]:
    """Decode the sample with this key, or the index-th sample in manifest order."""
    source = resolve(out_dir)
    expected = source.expected()
    position = 0
    for url in tqdm(source.urls, desc="search", unit="shard", leave=False):
        record = expected.get(url)
        if key is not None:
            if key not in _member_keys(url):
                continue
        elif record is not None and index >= position + record.samples:
            position += record.samples
            continue
        for members in iter_shard_members(url, expected=record):
            if (key is not None and members["__key__"] == key) or (key is None and position == index):
                sample = decode_sample(members, geometry=source.geometry)
                sample["__url__"] = url
                return sample
            position += 1
    what = f"key {key!r}" if key is not None else f"index {index} (there are {position} samples)"
    raise KeyError(f"{out_dir}: no sample with {what}")


def render_sheet(sample: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = sample["meta"]
    panels: list[tuple[str, np.ndarray | None]] = [
        ("source", sample.get("src")),
        ("source texture map", sample.get("tex")),  # next to the source: wrong person or layout shows here
        ("target", sample.get("tgt")),
        ("source face" if meta["face_ok"] else "no face found", sample.get("face")),
    ]
    panels += list(iuv_panels(sample["tgt_pose"]).items())
    figure, axes = plt.subplots(2, 5, figsize=(20, 9))
    for axis, (title, image) in zip(axes.flat, panels):
        plain = title in ("source", "target") or "face" in title or "texture" in title
        axis.set_title(title if plain else f"target pose {title}")
        if image is None:
            axis.text(0.5, 0.5, "(not stored)", ha="center", va="center")
        else:
            axis.imshow(image)
        axis.axis("off")
    norms = {
        name: float(np.linalg.norm(sample[name].astype(np.float32)))
        for name in ("src_clip", "tex_clip", "face_emb")
    }
    latent = sample["tgt_latent"].astype(np.float32)
    half = latent.shape[0] // 2
    figures = [f"key: {sample['__key__']}", f"shard: {storage.name_of(sample.get('__url__', ''))}", ""]
    figures += [f"|{name}| = {value:.3f}" for name, value in norms.items()]
    figures += [
        f"tgt latent mean {latent[:half].mean():+.3f}, std {latent[:half].std():.3f}",
        f"tgt latent logvar mean {latent[half:].mean():+.2f}",
    ]
    fields = [f"{k}: {json.dumps(v)}"[:60] for k, v in sorted(meta.items())]
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, lines in zip(axes.flat[len(panels):], (figures, fields)):
        axis.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
