"""`mcld-data compare`: evaluation reports and checkpoint sweeps side by side, in one self-contained HTML page
(no JavaScript, images inline) and a text table on the console.

    mcld-data compare REPORT_OR_SWEEP... [--reference paper.csv] [--labels a,b] [--differ 8] -o compare.html

A REPORT is an `mcld-data evaluate` folder (metrics.json, per_image.parquet); a SWEEP an `mcld-data sweep`
folder (metrics.parquet, checkpoint-STEP/report). The page holds: the metrics table (a sweep contributes one row
per checkpoint; --reference adds rows from a CSV with columns source, resolution and metric names, each labelled
with its source), each sweep's curves over steps, the per-pair distributions of every report, and the pairs
where the first two inputs differ most (LPIPS), as generated A | generated B | ground truth.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

METRICS = ("FID", "LPIPS", "SSIM", "SSIM_256", "PSNR", "face_cosine", "face_euclidean")
FACE_KEYS = {"face_cosine": "Face cosine similarity", "face_euclidean": "Face euclidean distance"}
PAIR_METRICS = ("lpips", "ssim", "psnr")
THUMB_HEIGHT = 160


class CompareError(ValueError):
    """An input that is neither a report nor a sweep folder, or a reference CSV that cannot be read."""


@dataclass
class Source:
    """One input: its rows of the metrics table, and (a report, or a sweep's last checkpoint) per-pair scores."""

    label: str
    path: Path
    kind: str  # "report", "sweep" or "reference"
    rows: list[dict]  # {"label", "resolution", "step", metric: value}
    per_pair: list[dict] = field(default_factory=list)
    pair_label: str = ""


def _float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _report_rows(label: str, metrics: dict, *, step: int | None = None) -> list[dict]:
    rows = []
    face = metrics.get("face") or {}
    for resolution, aggregates in metrics["resolutions"].items():
        row = {"label": label, "resolution": resolution, "step": step}
        row.update({metric: _float(aggregates.get(metric)) for metric in METRICS[:5]})
        for column, key in FACE_KEYS.items():
            row[column] = _float(face.get(key)) if resolution == "256x176" else None
        rows.append(row)
    return rows


def _per_pair(report: Path) -> list[dict]:
    import pyarrow.parquet as pq

    path = report / "per_image.parquet"
    return pq.read_table(path).to_pylist() if path.is_file() else []


def load_source(path: Path, label: str) -> Source:
    import pyarrow.parquet as pq

    if (path / "metrics.parquet").is_file():
        table = pq.read_table(path / "metrics.parquet").to_pylist()
        rows = [{"label": f"{label} {row['checkpoint']}", "resolution": row["resolution"], "step": row["step"],
                 **{metric: row.get(metric) for metric in METRICS}} for row in table]
        if not rows:
            raise CompareError(f"{path / 'metrics.parquet'}: no rows (the sweep evaluated no checkpoint)")
        last = max(table, key=lambda row: row["step"])["checkpoint"]
        return Source(label=label, path=path, kind="sweep", rows=rows, per_pair=_per_pair(path / last / "report"),
                      pair_label=f"{label} {last}")
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CompareError(f"{path / 'metrics.json'}: not JSON ({error})") from error
        return Source(label=label, path=path, kind="report", rows=_report_rows(label, metrics),
                      per_pair=_per_pair(path), pair_label=label)
    raise CompareError(f"{path}: neither an evaluation report (metrics.json) nor a sweep (metrics.parquet)")


def load_reference(path: Path) -> Source:
    """Rows of a published table: columns source, resolution, then any of the metric names."""
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            records = list(csv.DictReader(stream))
    except OSError as error:
        raise CompareError(f"--reference {path}: cannot read ({error})") from error
    if not records or not {"source", "resolution"} <= set(records[0]):
        raise CompareError(f"--reference {path}: needs a header with source, resolution and metric columns")
    rows = []
    for number, record in enumerate(records, start=2):
        if not record["source"]:
            raise CompareError(f"--reference {path}: line {number} has no source")
        rows.append({"label": f"{record['source']} (reference)", "resolution": record["resolution"], "step": None,
                     **{metric: _float(record.get(metric)) for metric in METRICS}})
    return Source(label=path.name, path=path, kind="reference", rows=rows)


# ---------------------------------------------------------------- rendering


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.5g}" if math.isfinite(value) else str(value)
    return html.escape(str(value))


def table_rows(sources: list[Source]) -> list[dict]:
    return [row for source in sources for row in source.rows]


def text_table(sources: list[Source]) -> str:
    rows = table_rows(sources)
    header = ["label", "resolution", *METRICS]
    cells = [header] + [[row["label"], row["resolution"], *(_cell(row[m]) for m in METRICS)] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells)


def curves(source: Source) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in METRICS if any(r[m] is not None and math.isfinite(r[m]) for r in source.rows)]
    if not present:
        return None
    figure, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.6), squeeze=False)
    for axis, metric in zip(axes[0], present):
        for resolution in sorted({r["resolution"] for r in source.rows}):
            points = sorted((r["step"], r[metric]) for r in source.rows
                            if r["resolution"] == resolution and r[metric] is not None and math.isfinite(r[metric]))
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=resolution)
        axis.set_title(metric)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    return _png(figure)


def distributions(sources: list[Source]) -> list[tuple[str, str]]:
    """(title, PNG) per resolution: each report's per-pair histogram of every pair metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    charts = []
    scored = [s for s in sources if s.per_pair]
    for resolution in sorted({r["resolution"] for s in scored for r in s.per_pair}):
        figure, axes = plt.subplots(1, len(PAIR_METRICS), figsize=(3.4 * len(PAIR_METRICS), 2.6), squeeze=False)
        for axis, metric in zip(axes[0], PAIR_METRICS):
            for source in scored:
                values = np.array([r[metric] for r in source.per_pair if r["resolution"] == resolution
                                   and r["status"] == "ok" and r[metric] is not None], dtype=float)
                values = values[np.isfinite(values)]
                if values.size:
                    axis.hist(values, bins=20, alpha=0.5, label=source.pair_label)
            axis.set_title(metric)
            axis.legend(fontsize=7)
        charts.append((f"Per-pair distributions at {resolution}", _png(figure)))
    return charts


def _strip(paths: list[Path], size: tuple[int, int]) -> str:
    import numpy as np
    from PIL import Image

    from tools.evaluate.inputs import read_rgb

    pictures = [read_rgb(path, size=size)[0] for path in paths]
    strip = Image.fromarray(np.concatenate(pictures, axis=1))
    scale = THUMB_HEIGHT / strip.height
    strip = strip.resize((max(1, round(strip.width * scale)), THUMB_HEIGHT), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def differing_pairs(first: Source, second: Source, count: int) -> list[dict]:
    """The pairs (same resolution and name, both scored) whose LPIPS differs most between two inputs."""
    index = {(r["resolution"], r["name"]): r for r in second.per_pair if r["status"] == "ok" and r["lpips"] is not None}
    found = []
    for row in first.per_pair:
        other = index.get((row["resolution"], row["name"]))
        if other is None or row["status"] != "ok" or row["lpips"] is None:
            continue
        found.append({"resolution": row["resolution"], "name": row["name"], "a": row, "b": other,
                      "delta": float(other["lpips"]) - float(row["lpips"])})
    return sorted(found, key=lambda item: (-abs(item["delta"]), item["resolution"], item["name"]))[:count]


def render(sources: list[Source], *, differ: int) -> str:
    measured = [s for s in sources if s.kind != "reference"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mcld-data compare</title><style>",
             "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}"
             "tr.reference td,tr.reference th{color:#555;font-style:italic}figure{display:inline-block;"
             "margin:.3em;font-size:.8em}figcaption{max-width:30em;word-break:break-all}",
             "</style></head><body><h1>Comparison</h1><ul>"]
    parts += [f"<li>{html.escape(s.label)}: {s.kind} {html.escape(str(s.path))}</li>" for s in sources]
    parts.append("</ul><h2>Metrics</h2><table><tr><th>label</th><th>resolution</th>"
                 + "".join(f"<th>{m}</th>" for m in METRICS) + "</tr>")
    for source in sources:
        for row in source.rows:
            css = ' class="reference"' if source.kind == "reference" else ""
            parts.append(f"<tr{css} data-label=\"{html.escape(row['label'])}\"><th>{html.escape(row['label'])}</th>"
                         f"<td>{html.escape(row['resolution'])}</td>"
                         + "".join(f"<td>{_cell(row[m])}</td>" for m in METRICS) + "</tr>")
    parts.append("</table>")
    for source in measured:
        chart = curves(source) if source.kind == "sweep" else None
        if chart:
            parts.append(f"<h2>{html.escape(source.label)}: metrics over steps</h2>"
                         f"<figure>{_img(chart, source.label + ' curves')}</figure>")
    for title, chart in distributions(measured):
        parts.append(f"<h2>{html.escape(title)}</h2><figure>{_img(chart, title)}</figure>")
    if len(measured) >= 2 and differ > 0:
        first, second = measured[0], measured[1]
        chosen = differing_pairs(first, second, differ)
        if chosen:
            parts.append(f"<h2>Pairs where {html.escape(first.pair_label)} and {html.escape(second.pair_label)} "
                         "differ most (LPIPS): generated A | generated B | ground truth</h2>")
        for item in chosen:
            height, width = (int(v) for v in item["resolution"].split("x"))
            paths = [Path(item["a"]["generated_path"]), Path(item["b"]["generated_path"]),
                     Path(item["a"]["ground_truth_path"])]
            caption = (f"{item['name']} at {item['resolution']}: LPIPS {float(item['a']['lpips']):.4g} vs "
                       f"{float(item['b']['lpips']):.4g}")
            parts.append(f"<figure>{_img(_strip(paths, (height, width)), item['name'])}"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="mcld-data compare", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", type=Path, nargs="+", help="evaluation report or sweep folders")
    parser.add_argument("-o", "--output", type=Path, required=True, help="HTML page to write")
    parser.add_argument("--reference", type=Path, default=None,
                        help="CSV of published results: source, resolution, metric columns (FID, LPIPS, ...)")
    parser.add_argument("--labels", default=None, help="comma-separated labels, one per input (default: folder names)")
    parser.add_argument("--differ", type=int, default=8, help="pairs shown where the first two inputs differ most")
    return parser


def run(args: argparse.Namespace) -> int:
    from shards.cli import prepare_output_file

    labels = [label.strip() for label in args.labels.split(",")] if args.labels else [p.name for p in args.inputs]
    try:
        if len(labels) != len(args.inputs):
            raise CompareError(f"--labels gives {len(labels)} label(s) for {len(args.inputs)} input(s)")
        sources = [load_source(path, label) for path, label in zip(args.inputs, labels)]
        if args.reference is not None:
            sources.append(load_reference(args.reference))
    except CompareError as error:
        print(f"mcld-data compare: {error}", file=sys.stderr)
        return 1
    output = prepare_output_file(str(args.output))
    Path(output).write_text(render(sources, differ=args.differ), encoding="utf-8")
    print(text_table(sources))
    print(f"-> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
