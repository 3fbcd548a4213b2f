"""Report a sweep: `python -m harness.report <sweep_dir> [more dirs] [--out DIR] [--baseline KEY=VALUE ...]`.

Walks the run directories under the given folders (any depth; a Hydra multirun folder as it is),
optionally adds the runs of wandb projects, and writes to --out (default results/<name of the
first folder>): report.md, runs and curves tables (parquet and CSV), comparison tables against
the baseline (Markdown and CSV; LaTeX with --latex), the seed-to-seed spread, and plots (PNG and SVG). Prints the
comparison table and the report's path.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import USAGE_EXIT_CODE, ConfigError
from harness.results.compare import BASELINE_KEY
from harness.results.equivalence import parse_margins


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Collect a sweep's runs into tables, statistics over seeds against a baseline, and plots.",
        epilog="Example: python -m harness.report runs/smoke --baseline rope.split=slice mlp_lr.name=c_fc_2x",
    )
    parser.add_argument("sweep_dirs", nargs="*", type=Path, help="folders holding run directories (any depth)")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="report folder (default: results/<name of the first sweep dir>)"
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="config values that pick the baseline variant at each depth (default: what the runs declare in "
        f"{BASELINE_KEY}, else each axis at its composed default, or its first value in sorted order)",
    )
    parser.add_argument(
        "--wandb",
        action="append",
        default=[],
        metavar="ENTITY/PROJECT",
        help="also import the runs of this wandb project (needs network; repeatable)",
    )
    parser.add_argument("--title", help="report title (default: the first sweep dir's name)")
    parser.add_argument(
        "--target-bpb",
        type=float,
        metavar="X",
        help="val bpb whose time, tokens and FLOPs to reach are compared (default: the baseline's mean final "
        "val bpb at each depth)",
    )
    parser.add_argument(
        "--equivalence-margin",
        nargs="*",
        metavar="NAME=VALUE",
        help="test equivalence (TOST) within these margins: bpb (absolute val bpb), core (absolute CORE), speed "
        "(percent of tok/s); a name left out takes its default (bpb=0.002 core=0.005 speed=1); "
        'without the flag a null result stays "not significant"',
    )
    parser.add_argument(
        "--latex", action="store_true", help="also write the comparison table as LaTeX: comparison.tex (booktabs)"
    )
    args = parser.parse_args(argv)
    if not args.sweep_dirs and not args.wandb:
        parser.error("give at least one sweep directory or --wandb ENTITY/PROJECT")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from harness.results.render import build_report

    if args.target_bpb is not None and not (math.isfinite(args.target_bpb) and args.target_bpb > 0):
        print(f"error: --target-bpb={args.target_bpb} must be a positive number (a val bpb)", file=sys.stderr)
        return USAGE_EXIT_CODE
    name = args.sweep_dirs[0].name if args.sweep_dirs else args.wandb[0].split("/")[-1]
    out = args.out or Path("results") / name
    command = "python -m harness.report " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder for the report (report.md, tables and plots)")
        margins = parse_margins(args.equivalence_margin)
        report = build_report(
            args.sweep_dirs,
            out,
            args.baseline,
            args.wandb,
            title=args.title,
            command=command,
            margins=margins,
            latex=args.latex,
            target_bpb=args.target_bpb,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT_CODE
    print(report.console_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
