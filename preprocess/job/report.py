"""The job's figures: per-stage counts and times (stats.json) and the table printed at the end.

stats.json is written while the features are computed (``"complete": false``, at most every
PARTIAL_EVERY seconds, and when the error budget stops the job), so a killed run leaves its figures so far;
the finished run replaces it with the full figures (``"complete": true``)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from shards import storage

PARTIAL_EVERY = 10.0  # seconds between two partial stats.json writes


@dataclass(kw_only=True)
class StageStats:
    rows: int = 0
    rejected: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    placed: Counter = field(default_factory=Counter)  # rows per placement, "NODE_ID[/gpu:IDS]" (chain.placement)


def job_stats(config, pipeline, stage_stats, phases, *, computed: int, cached: int, counts) -> dict:
    """The finished run's stats.json."""
    stages = stage_figures(pipeline, stage_stats)
    return {
        "complete": True,
        "stages": stages,
        "phases_seconds": {k: round(v, 3) for k, v in phases.items()},
        "images_computed": computed,
        "images_cached": cached,
        "images_per_second": round(computed / phases["features"], 3) if computed and phases.get("features") else None,
        "workers": pipeline.workers,
        "layout": pipeline.layout,
        "counts": asdict(counts),
    }


def stage_figures(pipeline, stage_stats) -> dict:
    """Per stage: images seen, rejects by reason, worker seconds and images per worker second."""
    stages = {}
    for name in pipeline.stage_names:
        s = stage_stats.get(name, StageStats())
        stages[name] = {
            "images": s.rows,
            "rejected": dict(sorted(s.rejected.items())),
            "worker_seconds": round(s.seconds, 3),
            "images_per_worker_second": round(s.rows / s.seconds, 2) if s.seconds > 0 else None,
            "placed": dict(sorted(s.placed.items())),  # rows per Ray node (and GPU ids) the stage ran on
        }
    return stages


def write_stats(location: str, stats: dict) -> None:
    storage.write_bytes_atomic(location, (json.dumps(stats, indent=1, sort_keys=True) + "\n").encode())


class PartialStats:
    """Writes the figures so far to stats.json while the features are computed (throttled)."""

    def __init__(self, location: str, *, pipeline, images_to_compute: int) -> None:
        self.location = location
        self.pipeline = pipeline
        self.images_to_compute = images_to_compute
        self.started = time.perf_counter()
        self.last = float("-inf")

    def update(self, stage_stats, *, images_done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < PARTIAL_EVERY:
            return
        self.last = now
        write_stats(self.location, {
            "complete": False,
            "stages": stage_figures(self.pipeline, stage_stats),
            "images_done": images_done,
            "images_to_compute": self.images_to_compute,
            "seconds": round(now - self.started, 3),
        })


def format_table(stats: dict) -> str:
    """The per-stage table and the throughput line, as the CLI prints them at the end of a run."""
    lines = [f"{'stage':<12}{'images':>8}{'rejected':>10}{'worker s':>10}{'img/s/worker':>14}"]
    for name, s in stats["stages"].items():
        rate = s["images_per_worker_second"]
        lines.append(f"{name:<12}{s['images']:>8}{sum(s['rejected'].values()):>10}{s['worker_seconds']:>10.2f}"
                     f"{(f'{rate:.2f}' if rate else '-'):>14}")
    rate = stats["images_per_second"]
    lines.append(f"{stats['images_computed']} images computed ({stats['images_cached']} from the cache) with "
                 f"{stats['workers']} workers ({stats['layout']}): "
                 f"{rate if rate is not None else '-'} images/s end to end")
    return "\n".join(lines)
