"""`mcld-data stats OUT -o report.html`: histograms, a rejects table and a gallery in one self-contained page.

The gallery shows what is most likely wrong: the samples with the lowest texture and pose coverage (their
source, texture map, target and target pose), the samples without a source face, and every rejected image
with its reason and a thumbnail where it decoded (from the feature cache, which keeps one per rejected
image). Pictures are inline JPEG data URIs; the page loads nothing.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from shards import storage
from shards.manifest import FEATURES_NAME, REJECTS_NAME, Manifest
from shards.reader import pipeline, resolve
from shards.rejects import read_rejects

LOWEST = 8  # samples shown per "lowest coverage" gallery
NO_FACE_SHOWN = 48  # samples without a face shown (all are counted)
THUMB_HEIGHT = 128


@dataclass(kw_only=True)
class GalleryItem:
    """One gallery entry: a caption and its pictures (title, RGB array or None when not stored)."""

    key: str
    caption: str
    pictures: list[tuple[str, np.ndarray | None]]


def _thumb(image: np.ndarray | None) -> np.ndarray | None:
    if image is None:
        return None
    import cv2

    height, width = image.shape[:2]
    if height <= THUMB_HEIGHT:
        return np.ascontiguousarray(image)
    size = (max(8, round(width * THUMB_HEIGHT / height)), THUMB_HEIGHT)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _pose_picture(pose: np.ndarray) -> np.ndarray:
    from tools.render import part_palette

    return part_palette()[np.clip(pose[..., 0], 0, 24).astype(np.intp)]


class _Lowest:
    """The ``size`` items with the lowest value (ties: by key), kept in a bounded heap."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[tuple[float, _Desc, GalleryItem]] = []  # (-value, reversed key, item)

    def offer(self, value: float, key: str, make) -> None:
        entry = (-value, _Desc(key))
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, (*entry, make()))
        elif entry > self._heap[0][:2]:
            heapq.heapreplace(self._heap, (*entry, make()))

    def items(self) -> list[GalleryItem]:
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], e[1].key))]


@dataclass(frozen=True)
class _Desc:
    """A key that sorts in reverse, so the heap's root is the largest (value, key) among the kept."""

    key: str

    def __lt__(self, other: _Desc) -> bool:
        return self.key > other.key


@dataclass(kw_only=True)
class Collected:
    face_ok: list[bool] = field(default_factory=list)
    source_person_score: list[float] = field(default_factory=list)
    target_person_score: list[float] = field(default_factory=list)
    pose_coverage: list[float] = field(default_factory=list)
    clip_norm: list[float] = field(default_factory=list)
    texture_clip_norm: list[float] = field(default_factory=list)
    latent_sum: np.ndarray | None = None
    latent_sumsq: np.ndarray | None = None
    latent_count: int = 0
    manifest: Manifest | None = None
    low_texture: _Lowest = field(default_factory=lambda: _Lowest(LOWEST))
    low_pose: _Lowest = field(default_factory=lambda: _Lowest(LOWEST))
    no_face: list[GalleryItem] = field(default_factory=list)
    no_face_count: int = 0

    def add(self, sample: dict) -> None:
        meta = sample["meta"]
        self.face_ok.append(bool(meta["face_ok"]))
        self._gallery(sample)
        for name in ("source_person_score", "target_person_score"):
            if isinstance(meta.get(name), (int, float)):
                getattr(self, name).append(float(meta[name]))
        self.pose_coverage.append(float((sample["tgt_pose"][..., 0] > 0).mean()))
        self.clip_norm.append(float(np.linalg.norm(sample["src_clip"].astype(np.float32))))
        self.texture_clip_norm.append(float(np.linalg.norm(sample["tex_clip"].astype(np.float32))))
        latent = sample["tgt_latent"].astype(np.float64)
        flat = latent.reshape(latent.shape[0], -1)
        if self.latent_sum is None:
            self.latent_sum = np.zeros(flat.shape[0])
            self.latent_sumsq = np.zeros(flat.shape[0])
        self.latent_sum += flat.sum(1)
        self.latent_sumsq += (flat**2).sum(1)
        self.latent_count += flat.shape[1]


    def _gallery(self, sample: dict) -> None:
        meta, key = sample["meta"], sample["__key__"]
        texture = meta.get("texture_coverage")
        if isinstance(texture, (int, float)):
            self.low_texture.offer(float(texture), key, lambda: GalleryItem(
                key=key, caption=f"texture coverage {texture:.3f}",
                pictures=[("source", _thumb(sample.get("src"))), ("texture map", _thumb(sample.get("tex")))]))
        pose = float((sample["tgt_pose"][..., 0] > 0).mean())
        self.low_pose.offer(pose, key, lambda: GalleryItem(
            key=key, caption=f"pose coverage {pose:.3f}",
            pictures=[("target", _thumb(sample.get("tgt"))), ("target pose", _thumb(_pose_picture(sample["tgt_pose"])))]))
        if not meta["face_ok"]:
            self.no_face_count += 1
            if len(self.no_face) < NO_FACE_SHOWN:
                status = meta.get("face_status", "no face")
                self.no_face.append(GalleryItem(key=key, caption=f"face: {status}",
                                                pictures=[("source", _thumb(sample.get("src")))]))


def collect(out_dir: str, *, progress: bool = True) -> Collected:
    from tqdm import tqdm

    source = resolve(out_dir)
    total = sum(s.samples for s in source.manifest.shards) if source.manifest else None
    collected = Collected()
    collected.manifest = source.manifest
    for sample in tqdm(pipeline(source), total=total, desc="stats", unit="sample", disable=not progress):
        collected.add(sample)
    return collected


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(collected: Collected) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: list[tuple[str, str]] = []

    def histogram(title: str, values: list[float], xlabel: str) -> None:
        figure, axis = plt.subplots(figsize=(6, 3.2))
        if values:
            axis.hist(values, bins=30, color="#4878a8")
        else:
            axis.text(0.5, 0.5, "no values recorded", ha="center", va="center", transform=axis.transAxes)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("samples")
        axis.set_title(title)
        figure.tight_layout()
        plots.append((title, _png(figure)))
        plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3.2))
    found = sum(collected.face_ok)
    axis.bar(["face found", "no face"], [found, len(collected.face_ok) - found], color=["#4c9a5b", "#b0483f"])
    axis.set_title("source face")
    figure.tight_layout()
    plots.append(("source face found", _png(figure)))
    plt.close(figure)
    histogram("source person score", collected.source_person_score, "DensePose score of the chosen person")
    histogram("target person score", collected.target_person_score, "DensePose score of the chosen person")
    histogram("target IUV coverage", collected.pose_coverage, "fraction of pixels on the body (I > 0)")
    histogram("source CLIP embedding norm", collected.clip_norm, "|src_clip|")
    histogram("texture CLIP embedding norm", collected.texture_clip_norm, "|tex_clip|")
    if collected.latent_count:
        mean = collected.latent_sum / collected.latent_count
        std = np.sqrt(np.maximum(collected.latent_sumsq / collected.latent_count - mean**2, 0))
        half = len(mean) // 2
        figure, axis = plt.subplots(figsize=(6, 3.2))
        x = np.arange(len(mean))
        axis.bar(x - 0.2, mean, 0.4, label="mean")
        axis.bar(x + 0.2, std, 0.4, label="std")
        axis.set_xticks(x, [f"mu{i}" for i in range(half)] + [f"logvar{i}" for i in range(half)], rotation=45)
        axis.legend()
        axis.set_title("target latent, per channel (unscaled)")
        figure.tight_layout()
        plots.append(("latent mean/std per channel", _png(figure)))
        plt.close(figure)
    return plots


def reject_thumbnails(out_dir: str, manifest: Manifest | None) -> dict[str, bytes] | None:
    """image id -> the rejected image's thumbnail JPEG, from the run's feature cache; None when the cache
    is not there (deleted, or another run's folder)."""
    import pyarrow.parquet as pq

    fingerprint = (manifest.settings.get("features_fingerprint") if manifest is not None else None) or ""
    folder = storage.join(out_dir, FEATURES_NAME, fingerprint[:16])
    if not fingerprint or not storage.exists(folder):
        return None
    thumbnails: dict[str, bytes] = {}
    for name in sorted(storage.list_names(folder)):
        if not name.endswith(".parquet"):
            continue
        with storage.open_read(storage.join(folder, name)) as stream:
            schema = pq.read_schema(stream)
            if "preview_jpg" not in schema.names:
                continue
            stream.seek(0)
            table = pq.read_table(stream, columns=["image_id", "status", "preview_jpg"],
                                  filters=[("status", "!=", "ok")])
        for row in table.to_pylist():
            if row["preview_jpg"]:
                thumbnails.setdefault(row["image_id"], row["preview_jpg"])
    return thumbnails


def _data_uri_jpeg(image: np.ndarray) -> str:
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("OpenCV could not encode a gallery picture")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def _picture(title: str, image: np.ndarray | None) -> str:
    if image is None:
        return f'<div class="missing" title="{html.escape(title)}">{html.escape(title)}: not stored</div>'
    return f'<img alt="{html.escape(title)}" title="{html.escape(title)}" src="{_data_uri_jpeg(image)}">'


def _gallery(items: list[GalleryItem], *, kind: str) -> str:
    if not items:
        return '<p class="empty">none</p>'
    cards = "".join(
        f'<figure class="card" data-gallery="{kind}">{"".join(_picture(t, im) for t, im in item.pictures)}'
        f"<figcaption><code>{html.escape(item.key)}</code><br>{html.escape(item.caption)}</figcaption></figure>"
        for item in items
    )
    return f'<div class="gallery">{cards}</div>'


def _reject_gallery(rejects: list, thumbnails: dict[str, bytes] | None) -> str:
    images = [r for r in rejects if r.kind == "image"]
    if not images:
        return '<p class="empty">none</p>'
    cards = []
    for reject in images:
        data = (thumbnails or {}).get(reject.id)
        if data:
            picture = (f'<img alt="{html.escape(reject.id)}" src="data:image/jpeg;base64,'
                       f'{base64.b64encode(data).decode("ascii")}">')
        else:
            why = "feature cache not found" if thumbnails is None else "did not decode"
            picture = f'<div class="missing">no thumbnail ({why})</div>'
        cards.append(
            f'<figure class="card" data-gallery="rejected">{picture}<figcaption><code>{html.escape(reject.id)}</code>'
            f"<br><b>{html.escape(reject.stage)}: {html.escape(reject.reason)}</b><br>"
            f'<span class="detail">{html.escape(reject.detail[:300])}</span></figcaption></figure>'
        )
    return f'<div class="gallery">{"".join(cards)}</div>'


def _counts_table(manifest: Manifest | None, collected: Collected, rejects: list) -> str:
    """The figures the page states, each tagged with data-count (what a reader, or a test, checks)."""
    rows: list[tuple[str, str, int]] = [
        ("samples read from the shards", "samples", len(collected.face_ok)),
        ("samples with a source face", "samples_face_ok", sum(collected.face_ok)),
        ("samples without a source face", "samples_no_face", collected.no_face_count),
        ("rejected images in rejects.parquet", "rejected_images_listed", sum(r.kind == "image" for r in rejects)),
        ("rejected pairs in rejects.parquet", "rejected_pairs_listed", sum(r.kind == "pair" for r in rejects)),
    ]
    if manifest is not None:
        c = manifest.counts
        rows = [
            ("images in (manifest)", "images_in", c.images_in),
            ("images ok (manifest)", "images_ok", c.images_ok),
            ("images rejected (manifest)", "images_rejected", sum(c.images_rejected.values())),
            ("pairs in (manifest)", "pairs_in", c.pairs_in),
            ("pairs written (manifest)", "pairs_written", c.pairs_written),
            ("pairs rejected (manifest)", "pairs_rejected", sum(c.pairs_rejected.values())),
            ("written samples with a source face (manifest)", "pairs_face_ok", c.pairs_face_ok),
        ] + rows
    body = "".join(f'<tr><td>{html.escape(label)}</td><td data-count="{name}">{value}</td></tr>'
                   for label, name, value in rows)
    return f'<table id="counts"><tr><th>what</th><th>count</th></tr>{body}</table>'


def render_report(out_dir: str, collected: Collected) -> str:
    rejects_path = storage.join(out_dir, REJECTS_NAME)
    rejects = read_rejects(rejects_path) if storage.exists(rejects_path) else []
    by_reason = Counter((r.kind, r.stage, r.reason) for r in rejects)
    rows = "".join(
        f"<tr><td>{html.escape(kind)}</td><td>{html.escape(stage)}</td><td>{html.escape(reason)}</td><td>{n}</td></tr>"
        for (kind, stage, reason), n in sorted(by_reason.items())
    ) or '<tr><td colspan="4">no rejects</td></tr>'
    figures = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, data in _plots(collected)
    )
    faces = sum(collected.face_ok)
    manifest = collected.manifest
    thumbnails = reject_thumbnails(out_dir, manifest)
    if manifest is not None:
        mode = manifest.settings.get("face_mode", "paper")
        masks = manifest.settings.get("texture_part_masks_sha256")
        modes = (f"<p>face mode <b>{html.escape(str(mode))}</b>; texture part masks "
                 f"<b>{html.escape(masks[:16] + '...' if masks else 'derived from the DensePose chart')}</b></p>")
    else:
        modes = ""
    shown_no_face = len(collected.no_face)
    no_face_note = (f" (showing {shown_no_face})" if shown_no_face < collected.no_face_count else "")
    gallery = f"""<h2>Gallery</h2>
<h3>Lowest texture coverage</h3>{_gallery(collected.low_texture.items(), kind="low_texture")}
<h3>Lowest pose coverage</h3>{_gallery(collected.low_pose.items(), kind="low_pose")}
<h3>Samples without a source face: <span data-count="gallery_no_face">{collected.no_face_count}</span>{no_face_note}</h3>
{_gallery(collected.no_face, kind="no_face")}
<h3>Rejected images: <span data-count="gallery_rejected">{sum(r.kind == "image" for r in rejects)}</span></h3>
{_reject_gallery(rejects, thumbnails)}"""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mcld-data stats: {html.escape(out_dir)}</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;margin:0.5em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:0.2em 0.6em}}
.gallery{{display:flex;flex-wrap:wrap}} .card{{border:1px solid #ccc;padding:0.3em;max-width:420px}}
.card img{{height:{THUMB_HEIGHT}px;margin:1px}} .missing{{display:inline-block;width:96px;height:{THUMB_HEIGHT}px;
background:#eee;font-size:small;vertical-align:top}} .detail{{font-size:small;color:#555}}</style></head>
<body><h1>{html.escape(out_dir)}</h1>
<p>{len(collected.face_ok)} samples; {faces} with a source face.</p>
{modes}
{_counts_table(manifest, collected, rejects)}
{figures}
<h2>Rejects by reason</h2>
<table><tr><th>kind</th><th>stage</th><th>reason</th><th>count</th></tr>{rows}</table>
{gallery}
</body></html>
"""
