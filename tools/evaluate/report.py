"""The evaluation's self-contained HTML page (no JavaScript, every image inline): the metrics table, per
resolution the per-pair distribution of each metric as matplotlib charts, and per metric the worst pairs as
thumbnails: source | generated | ground truth (a sampler GEN folder's source photo, from its index.parquet;
the reference layout has no source, so its strips are generated | ground truth)."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

THUMB_HEIGHT = 160
CHART_METRICS = ("lpips", "ssim", "ssim_256", "psnr", "face_cosine")
_WORST_FIRST = {"lpips": "high", "face_euclidean": "high", "psnr": "low", "ssim": "low", "ssim_256": "low",
                "face_cosine": "low"}


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}" if math.isfinite(value) else str(float(value))
    return html.escape(str(value))


def _thumbnail(pair, resolution, loader, source: Path | None = None) -> str:
    images = loader(pair, resolution)
    cells = [images["generated"], images["ground_truth"]]
    if source is not None:
        from tools.evaluate.inputs import EvaluationInputError, read_rgb

        try:
            cells.insert(0, read_rgb(source, size=(resolution.height, resolution.width))[0])
        except EvaluationInputError as error:  # the strip goes on without it; the log names the file
            log.warning("report: %s: source photo not shown (%s)", source, error)
    strip = np.concatenate(cells, axis=1)
    picture = Image.fromarray(strip)
    scale = THUMB_HEIGHT / picture.height
    picture = picture.resize((max(1, round(picture.width * scale)), THUMB_HEIGHT), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return f'<img alt="{html.escape(pair.name)}" src="data:image/png;base64,' \
           f'{base64.b64encode(buffer.getvalue()).decode()}">'


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def distribution_chart(rows: list[dict], title: str) -> str | None:
    """One inline PNG: a histogram per metric of the scored pairs (finite values; PSNR's inf left out and
    counted in the panel title). None when no pair was scored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for metric in CHART_METRICS:
        values = np.array([row[metric] for row in rows if row["status"] == "ok" and row[metric] is not None],
                          dtype=float)
        if values.size:
            panels.append((metric, values))
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 2.4), squeeze=False)
    for axis, (metric, values) in zip(axes[0], panels):
        finite = values[np.isfinite(values)]
        axis.hist(finite, bins=min(20, max(1, finite.size)), color="#4c72b0")
        left_out = values.size - finite.size
        axis.set_title(f"{metric} (n={finite.size}" + (f", {left_out} inf)" if left_out else ")"), fontsize=9)
    figure.suptitle(title, fontsize=10)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{_png(figure)}">'


def source_paths(metrics: dict) -> dict[str, Path]:
    """Pair name -> its source photo, for a sampler GEN folder (index.parquet's source_path under --images)."""
    index = Path(metrics["generated"]) / "index.parquet"
    if metrics.get("layout") != "gen" or not index.is_file():
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(index, columns=["key", "source_path"]).to_pylist()
    root = Path(metrics["ground_truth"])
    return {row["key"]: root / row["source_path"] for row in table if row["source_path"]}


def worst_rows(rows: list[dict], metric: str, count: int) -> list[dict]:
    """The `count` worst scored pairs by one metric; non-finite values (PSNR inf = identical) are never worst."""
    scored = [row for row in rows if row["status"] == "ok" and row[metric] is not None
              and math.isfinite(row[metric])]
    reverse = _WORST_FIRST[metric] == "high"
    return sorted(scored, key=lambda row: (row[metric], row["name"]), reverse=reverse)[:count]


def render_report(evaluation, *, worst: int, loader) -> str:
    metrics = evaluation.metrics
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mcld-data evaluate</title><style>",
             "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}figure{display:inline-block;"
             "margin:.3em;font-size:.8em}figcaption{max-width:22em;word-break:break-all}",
             "</style></head><body><h1>Evaluation</h1>",
             f"<p>{html.escape(metrics['layout'])} layout: {html.escape(metrics['generated'])} against "
             f"{html.escape(str(metrics['ground_truth']))}; FID real side: "
             f"{html.escape(str(metrics['train_images']))}; device {html.escape(metrics['device'])}</p>"]
    labels = ("FID", "LPIPS", "SSIM", "SSIM_256", "PSNR", "PSNR_finite_mean", "scored", "pairs")
    parts.append("<table><tr><th>resolution</th>" + "".join(f"<th>{label}</th>" for label in labels) + "</tr>")
    for result in evaluation.results:
        a = result.aggregates
        parts.append(f"<tr><th>{result.resolution.gen_folder}</th>"
                     + "".join(f"<td>{_number(a.get(label))}</td>" for label in labels) + "</tr>")
    parts.append("</table>")
    for result in evaluation.results:
        if result.aggregates["missing_generated"]:
            names = ", ".join(result.aggregates["missing_generated"])
            parts.append(f"<p><b>Missing generated at {result.resolution.gen_folder}:</b> {html.escape(names)}</p>")
        if result.aggregates["unreadable"]:
            parts.append(f"<p><b>Unreadable at {result.resolution.gen_folder} (not scored):</b></p><ul>" + "".join(
                f"<li>{html.escape(reason)}</li>" for reason in result.aggregates["unreadable"].values()) + "</ul>")
    face = metrics.get("face")
    if face:
        parts.append("<h2>Faces (256x176)</h2><table>" + "".join(
            f"<tr><th>{html.escape(key)}</th><td>{_number(value)}</td></tr>" for key, value in face.items())
            + "</table>")
    for result in evaluation.results:
        chart = distribution_chart(result.rows, f"Per-pair distributions at {result.resolution.gen_folder}")
        if chart:
            parts.append(f"<h2>Distributions at {result.resolution.gen_folder}</h2><figure>{chart}</figure>")
    sources = source_paths(metrics)
    order = "source | generated | ground truth" if sources else "generated | ground truth"
    for result in evaluation.results:
        for metric in ("lpips", "psnr", "ssim", "ssim_256", "face_cosine"):
            chosen = worst_rows(result.rows, metric, worst)
            if not chosen:
                continue
            parts.append(f"<h2>Worst {metric} at {result.resolution.gen_folder} ({order})</h2>")
            for row in chosen:
                pair = result.pairs[row["name"]]
                thumbnail = _thumbnail(pair, result.resolution, loader, sources.get(row["name"]))
                parts.append(f"<figure>{thumbnail}<figcaption>"
                             f"{html.escape(row['name'])}: {metric} {_number(row[metric])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
