"""`mcld-data stats OUT -o report.html`: histograms and a rejects table in one self-contained page."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from shards import storage
from shards.manifest import REJECTS_NAME
from shards.reader import pipeline, resolve
from shards.rejects import read_rejects


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

    def add(self, sample: dict) -> None:
        meta = sample["meta"]
        self.face_ok.append(bool(meta["face_ok"]))
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


def collect(out_dir: str, *, progress: bool = True) -> Collected:
    from tqdm import tqdm

    source = resolve(out_dir)
    total = sum(s.samples for s in source.manifest.shards) if source.manifest else None
    collected = Collected()
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
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mcld-data stats: {html.escape(out_dir)}</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;margin:0.5em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:0.2em 0.6em}}</style></head>
<body><h1>{html.escape(out_dir)}</h1>
<p>{len(collected.face_ok)} samples; {faces} with a source face.</p>
{figures}
<h2>Rejects by reason</h2>
<table><tr><th>kind</th><th>stage</th><th>reason</th><th>count</th></tr>{rows}</table>
</body></html>
"""
