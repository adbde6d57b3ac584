"""The check's entry point: runs each part in turn within a time budget and always writes DIR/gpu_check.json.

    PYTHONPATH=. python -m tools.gpu_check -o DIR [--device cuda] [--quick] [--fixtures DIR]

Parts, in order: parity (DensePose, sampler, evaluator, VAE/CLIP), then throughput (trainer, DensePose,
VAE/CLIP, sampler, evaluator, face). A part that cannot run here (no CUDA, a package missing, the budget
spent) is "skipped" with the reason; one that raises is "failed" with the error, and the next part runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from tools.gpu_check import parity, speed
from tools.gpu_check.common import Budget, Context, PartRecord, Skip, release_memory

log = logging.getLogger("tools.gpu_check")

ROOT = Path(__file__).resolve().parents[2]
REPORT_NAME = "gpu_check.json"

#: (name, function, estimated seconds with real sizes on one H100, the same with tiny sizes on a CPU).
#: A part starts only when its estimate is left in the budget; parts check the budget again between steps.
PARTS: list[tuple[str, Callable[[Context, PartRecord], None], float, float]] = [
    ("densepose_parity", parity.densepose_parity, 20, 10),
    ("sampler_parity", parity.sampler_parity, 20, 5),
    ("evaluator_parity", parity.eval_parity, 40, 15),
    ("vae_clip_parity", parity.vae_clip_parity, 30, 3),
    ("trainer_speed", speed.trainer_speed, 90, 5),
    ("densepose_speed", speed.densepose_speed, 60, 5),
    ("vae_clip_speed", speed.vae_clip_speed, 40, 3),
    ("sampler_speed", speed.sampler_speed, 60, 5),
    ("evaluator_speed", speed.evaluator_speed, 30, 5),
    ("face_speed", speed.face_speed, 30, 2),
]

VERSIONED = ("torch", "torchvision", "numpy", "diffusers", "transformers", "accelerate", "safetensors", "pyarrow",
             "opencv-python", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "pillow", "webdataset",
             "lpips", "scipy", "scikit-image", "insightface", "ray")


def default_fixtures() -> Path:
    return ROOT.parent / "shared" / "fixtures"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and steps (about 3 minutes on a GPU)")
    parser.add_argument("--sizes", choices=("real", "tiny"), default=None,
                        help="throughput at the official architectures (random weights) or toy widths; "
                             "default: real on CUDA, tiny on the CPU")
    parser.add_argument("--fixtures", type=Path, default=None,
                        help="the shared fixtures folder (default: ../shared/fixtures beside the repository)")
    parser.add_argument("--eval-weights", type=Path, default=None,
                        help="a folder make_weights.py of the evaluation fixtures already wrote (default: write it)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds the whole check may take (default 450, --quick 160)")
    parser.add_argument("--only", default=None, help="comma-separated part names (default: all)")
    parser.add_argument("--max-cases", type=int, default=None,
                        help="parity cases per fixture (default: every case; the CPU test runs one)")
    return parser


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cuda_available": torch.cuda.is_available(), "requested_device": device}
    try:
        from shards.bench import cpu_model

        info["cpu"] = cpu_model()
    except (ImportError, OSError) as error:
        info["cpu"] = f"unknown ({error})"
    if torch.cuda.is_available():
        index = torch.device(device).index or 0 if device.startswith("cuda") else 0
        properties = torch.cuda.get_device_properties(index)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 2),
                    gpu_capability=f"{properties.major}.{properties.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpu_count=torch.cuda.device_count())
    return info


def versions() -> dict[str, str | None]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_part(ctx: Context, name: str, function: Callable[[Context, PartRecord], None], estimate: float) -> PartRecord:
    part = PartRecord(name=name)
    started = time.monotonic()
    try:
        ctx.budget.require(estimate, name)
        function(ctx, part)
    except Skip as why:
        part.status, part.why = "skipped", str(why)
    except Exception as error:  # a part's failure is its record; the next part still runs
        part.status, part.why = "failed", f"{type(error).__name__}: {error}"
        log.error("%s failed:\n%s", name, traceback.format_exc())
    finally:
        release_memory()
    part.seconds = time.monotonic() - started
    outside = [row for row in part.parity if not row["within"]]
    if part.status == "ok" and outside:
        part.why = f"{len(outside)} of {len(part.parity)} parity rows outside the CPU test's tolerance"
    return part


def json_safe(value: Any) -> Any:
    """inf and nan as strings: strict JSON has no Infinity/NaN, and a benchmark may report either."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_report(path: Path, report: dict[str, Any]) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
    temporary.replace(path)


def table(report: dict[str, Any]) -> str:
    lines = [f"{'part':<18} {'status':<8} {'s':>6}  parity within / rows; worst (max_abs / tolerance)  why"]
    for part in report["parts"]:
        rows = part["parity"]
        summary = ""
        if rows:
            within = sum(row["within"] for row in rows)
            outside = [row for row in rows if not row["within"]]
            worst = max(outside or rows, key=_ratio)
            summary = (f"{within}/{len(rows)}; {worst['device']} {worst['dtype']} {worst['case'][:48]}: "
                       f"{worst['max_abs']} / {worst['tolerance']}")
        lines.append(f"{part['name']:<18} {part['status']:<8} {part['seconds']:>6.1f}  {summary}  {part['why'][:160]}")
    return "\n".join(lines)


def _ratio(row: dict[str, Any]) -> float:
    value = float(row["max_abs"])
    return value / row["tolerance"] if row["tolerance"] else (0.0 if value == 0 else float("inf"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    budget = Budget(args.budget if args.budget is not None else (160.0 if args.quick else 450.0))
    names = [name for name, *_ in PARTS]
    only = [n.strip() for n in args.only.split(",")] if args.only else names
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise SystemExit(f"error: unknown part(s) {', '.join(unknown)}; parts: {', '.join(names)}")
    args.output.mkdir(parents=True, exist_ok=True)
    fixtures = args.fixtures if args.fixtures is not None else default_fixtures()
    report: dict[str, Any] = {
        "check": "python -m tools.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": budget.seconds, "quick": args.quick, "fixtures": str(fixtures), "max_cases": args.max_cases,
        "machine": machine(args.device), "versions": versions(), "parts": [],
    }
    sizes = args.sizes or ("real" if args.device.startswith("cuda") and report["machine"]["cuda_available"] else "tiny")
    report["sizes"] = sizes
    path = args.output / REPORT_NAME
    write_report(path, report)
    with tempfile.TemporaryDirectory(prefix="mcld-gpu-check-") as work:
        ctx = Context(device=args.device, quick=args.quick, sizes=sizes,
                      fixtures=fixtures if fixtures.is_dir() else None, eval_weights=args.eval_weights,
                      work=Path(work), budget=budget, max_cases=args.max_cases)
        for name, function, real_estimate, tiny_estimate in PARTS:
            if name not in only:
                continue
            log.info("part %s (%.0f s left)", name, budget.left())
            part = run_part(ctx, name, function, real_estimate if sizes == "real" else tiny_estimate)
            report["parts"].append(part.as_json())
            report["seconds"] = round(budget.elapsed(), 1)
            write_report(path, report)  # after every part: a killed run still leaves what it measured
    print(table(report))
    print(f"-> {path}")
    failed = [part["name"] for part in report["parts"] if part["status"] == "failed"]
    return 1 if failed else 0
