"""The evaluation's self-contained HTML page: the metrics table and, per metric, the worst pairs as inline
thumbnails (generated | ground truth)."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from PIL import Image

THUMB_HEIGHT = 160
_WORST_FIRST = {"lpips": "high", "face_euclidean": "high", "psnr": "low", "ssim": "low", "ssim_256": "low",
                "face_cosine": "low"}


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}" if math.isfinite(value) else str(float(value))
    return html.escape(str(value))


def _thumbnail(pair, resolution, loader) -> str:
    images = loader(pair, resolution)
    strip = np.concatenate([images["generated"], images["ground_truth"]], axis=1)
    picture = Image.fromarray(strip)
    scale = THUMB_HEIGHT / picture.height
    picture = picture.resize((max(1, round(picture.width * scale)), THUMB_HEIGHT), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return f'<img alt="{html.escape(pair.name)}" src="data:image/png;base64,' \
           f'{base64.b64encode(buffer.getvalue()).decode()}">'


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
        for metric in ("lpips", "psnr", "ssim", "ssim_256", "face_cosine"):
            chosen = worst_rows(result.rows, metric, worst)
            if not chosen:
                continue
            parts.append(f"<h2>Worst {metric} at {result.resolution.gen_folder} (generated | ground truth)</h2>")
            for row in chosen:
                pair = result.pairs[row["name"]]
                parts.append(f"<figure>{_thumbnail(pair, result.resolution, loader)}<figcaption>"
                             f"{html.escape(row['name'])}: {metric} {_number(row[metric])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
