"""The `mcld-data` command: look at and check what is in an output folder, and prepare inputs."""

from __future__ import annotations

import argparse
import sys

from shards.cli import OutputPathError, prepare_output_file
from shards.manifest import ManifestError
from shards.reader import ShardError


def _summary(args: argparse.Namespace) -> int:
    from tools.summary import summarize

    lines, adds_up = summarize(args.out)
    print("\n".join(lines))
    return 0 if adds_up else 1


def _verify(args: argparse.Namespace) -> int:
    from shards.verify import verify_output

    report = verify_output(args.out, progress=not args.quiet)
    for problem in report.problems:
        print(f"BAD {problem}")
    state = "OK" if report.ok else f"FAILED: {len(report.problems)} problem(s)"
    print(f"{args.out}: {report.shards} shards, {report.samples} samples checked: {state}")
    return 0 if report.ok else 1


def _show(args: argparse.Namespace) -> int:
    from tools.show import find_sample, render_sheet

    if (args.key is None) == (args.index is None):
        print("mcld-data show: give exactly one of --key or --index", file=sys.stderr)
        return 2
    try:
        sample = find_sample(args.out, key=args.key, index=args.index)
    except KeyError as error:
        print(f"mcld-data show: {error.args[0]}", file=sys.stderr)
        return 1
    render_sheet(sample, prepare_output_file(args.output))
    print(f"{sample['__key__']} -> {args.output}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tools.stats import collect, render_report

    output = prepare_output_file(args.output)  # before the work, so a bad path fails at once
    page = render_report(args.out, collect(args.out, progress=not args.quiet))
    Path(output).write_text(page, encoding="utf-8")
    print(f"{args.out} -> {args.output}")
    return 0


def _deepfashion(args: argparse.Namespace) -> int:
    from tools.deepfashion import main as deepfashion_main

    return deepfashion_main(["--root", args.root, "--lists", args.lists, "--out", args.out_dir])


def _evaluate(args: argparse.Namespace) -> int:
    from tools.evaluate.run import run

    return run(args)


def _sweep(args: argparse.Namespace) -> int:
    from tools.sweep import run

    return run(args)


def _compare(args: argparse.Namespace) -> int:
    from tools.compare import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcld-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="counts, models, resolution, shards, face coverage")
    summary.add_argument("out", help="output folder of build_shards.py")
    summary.set_defaults(run=_summary)
    verify = commands.add_parser("verify", help="check every shard and sample against the manifest and schema")
    verify.add_argument("out")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)
    show = commands.add_parser("show", help="a contact sheet PNG of one sample")
    show.add_argument("out")
    show.add_argument("--key", help="sample key {source_id}__{target_id}")
    show.add_argument("--index", type=int, help="the N-th sample, in manifest order")
    show.add_argument("-o", "--output", required=True, help="PNG to write")
    show.set_defaults(run=_show)
    stats = commands.add_parser("stats", help="one self-contained HTML page of histograms and rejects")
    stats.add_argument("out")
    stats.add_argument("-o", "--output", required=True, help="HTML to write")
    stats.add_argument("--quiet", action="store_true", help="no progress bar")
    stats.set_defaults(run=_stats)
    deepfashion = commands.add_parser("deepfashion", help="DeepFashion In-shop tree + published lists -> job inputs")
    deepfashion.add_argument("--root", required=True, help="the dataset's img_highres folder (WOMEN/..., MEN/...)")
    deepfashion.add_argument("--lists", required=True, help="folder with train.lst, test.lst, test.csv [, train.csv]")
    deepfashion.add_argument("--out", dest="out_dir", required=True, help="folder for the pairs CSVs and the report")
    deepfashion.set_defaults(run=_deepfashion)
    from tools.evaluate.args import add_arguments

    evaluate = commands.add_parser("evaluate", help="the paper's metrics (FID, LPIPS, SSIM, PSNR, face) as the "
                                                    "reference computes them")
    add_arguments(evaluate)
    evaluate.set_defaults(run=_evaluate)
    from tools.compare import build_parser as compare_arguments
    from tools.sweep import build_parser as sweep_arguments

    sweep = commands.add_parser("sweep", help="sample and evaluate each checkpoint of a training run -> "
                                              "metrics.parquet, logged to the run's tracker")
    sweep_arguments(sweep)
    sweep.set_defaults(run=_sweep)
    compare = commands.add_parser("compare", help="evaluation reports and sweeps side by side (HTML + console)")
    compare_arguments(compare)
    compare.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shards.storage import StorageError, preflight

    args = build_parser().parse_args(argv)
    try:
        if args.command in ("summary", "verify", "show", "stats"):
            preflight(args.out, what="output folder")
        return args.run(args)
    except (ManifestError, ShardError, OutputPathError, StorageError) as error:
        print(f"mcld-data {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
