"""The command line of `python -m harness.bench` (ablate-bench): one subcommand per benchmark;
`suite` has its own options (harness.bench.suite). It parses and dispatches only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.bench.ab import run_ab
from harness.bench.common import DEFAULT_OUT_DIR, write_json
from harness.bench.rope import run_rope
from harness.bench.suite import main as run_suite
from harness.bench.throughput import run_throughput
from harness.cli import exit_on_config_error


# command line ----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench",
        description="GPU speed benchmarks of the training step and of the rotary + QK-norm kernels.",
    )
    sub = parser.add_subparsers(dest="benchmark", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m harness.train")
    common.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    common.add_argument("--out", type=Path, help=f"JSON file to write (default: a new file under {DEFAULT_OUT_DIR}/)")
    throughput = sub.add_parser(
        "throughput",
        parents=[common],
        help="tok/s, MFU and peak memory of the composed config's training step",
        epilog="Example: python -m harness.bench throughput model=d12 model.window_pattern=L",
    )
    throughput.add_argument("--steps", type=int, default=10, help="timed optimizer steps (median reported)")
    throughput.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    throughput.add_argument(
        "--profile", type=Path, metavar="TRACE.json", help="then profile 2 more steps, writing a Chrome trace here"
    )
    ab = sub.add_parser(
        "ab",
        help="configs A and B in one process, timed in interleaved blocks: B's step time vs A's with a 95%% CI",
        epilog='Example: python -m harness.bench ab "rope=slice" "rope=chunk" model=d12 --blocks 20',
    )
    ab.add_argument("a", help='config A\'s own overrides, one quoted string (e.g. "rope=slice"; "" for none)')
    ab.add_argument("b", help="config B's own overrides, likewise")
    ab.add_argument("overrides", nargs="*", help="overrides both share, as for python -m harness.train")
    ab.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ab.add_argument("--out", type=Path, help=f"JSON file to write (default: a new file under {DEFAULT_OUT_DIR}/)")
    ab.add_argument("--blocks", type=int, default=10, help="timed blocks per config, interleaved ABBA...")
    ab.add_argument(
        "--steps-per-block", type=int, default=3, help="optimizer steps per block (their mean is one value)"
    )
    ab.add_argument("--warmup", type=int, default=3, help="untimed steps of each config first (compilation)")
    ab.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    rope = sub.add_parser(
        "rope",
        parents=[common],
        help="rotary + QK RMSNorm alone, every rope.split, beside the memory-traffic floor",
        epilog="Example: python -m harness.bench rope --depths 12 24",
    )
    rope.add_argument("--depths", type=int, nargs="+", default=[12, 16, 20, 24], help="model depths (head counts)")
    rope.add_argument("--batch", type=int, help="batch rows (default: train.device_batch_size on CUDA, 2 on CPU)")
    rope.add_argument("--seq-len", type=int, help="sequence length (default: model.sequence_len on CUDA, 256 on CPU)")
    rope.add_argument("--splits", nargs="+", help="rope.split modes to time (default: all)")
    rope.add_argument("--blocks", type=int, default=10, help="interleaved blocks; the splits take turns in each")
    rope.add_argument("--iters", type=int, default=20, help="timed iterations per block and measurement (median)")
    rope.add_argument("--warmup", type=int, default=5, help="untimed iterations before the first block")
    rope.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    # Listed for --help only: main hands `suite` and its own options to harness.bench.suite first.
    sub.add_parser("suite", add_help=False, help="every GPU measurement of issue 16 in one call (suite --help)")
    if not argv or argv[0] not in sub.choices:
        parser.parse_args(argv)  # prints the usage or help and exits
    # Each subcommand parses on its own so overrides and options may interleave.
    args = sub.choices[argv[0]].parse_intermixed_args(argv[1:])
    args.benchmark = argv[0]
    for name in ("steps", "iters", "steps_per_block"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if getattr(args, "blocks", 2) < 2:
        parser.error("--blocks must be at least 2 (an interval needs two blocks of each)")
    if not 0 < getattr(args, "confidence", 0.5) < 1:
        parser.error("--confidence must be between 0 and 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["suite"]:  # every GPU measurement of issue 16 in one call (harness/bench/suite.py)
        return run_suite(argv[1:])
    args = parse_args(argv)
    if args.benchmark == "throughput":
        record = run_throughput(args, argv)
        r = record
        stem = f"throughput-d{r['model_depth']}-{r['window_pattern']}-{r['attention']}-{r['rope_split']}-{r['device']}"
    elif args.benchmark == "ab":
        record = run_ab(args, argv)
        stem = f"ab-{record['device']}"
    else:
        record = run_rope(args, argv)
        stem = f"rope-{record['device']}"
    path = write_json(record, args.out, stem)
    print(f"wrote {path}")
    return record
