"""Plan a sweep before spending GPU time on it: `python -m harness.plan <hydra overrides>`.

Lists every run that `python -m harness.train -m <the same overrides>` would launch (the
experiment's `hydra.sweeper.params` and any comma-separated command-line values, expanded by
`harness.cli.expand_sweep` as Hydra's basic sweeper does). For each run: model depth,
parameters, training FLOPs per token, steps, tokens, FLOPs and estimated GPU-hours, from a
measured throughput (--throughput, the JSON `harness.bench throughput` writes; matched on depth
and window pattern) or else an assumed MFU of the H100's bf16 peak.

Each run also gets its estimated peak memory per GPU (`harness.memory`: parameters, gradients,
optimizer state sharded over the world size, and one traced training step at the device batch);
runs over --gpu-memory-gib (80) are flagged with the largest device batch that fits.

With --spread-from SWEEP_DIR, it also reads the seed-to-seed spread of an earlier sweep and says
how many seeds a chosen difference (--detect, in final val bpb; --detect-core, in CORE) needs
to be found with 80% power at alpha 0.05, paired by seed and unpaired.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.cli import check_jobs, compose, expand_sweep
from harness.errors import USAGE_EXIT_CODE, ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
H100_BF16_PEAK_FLOPS = 989e12
DEFAULT_MFU = 0.45
# An H100 or A100 80GB; torch sees about 79.1 GiB of it, so runs near 80 are flagged as tight.
DEFAULT_GPU_MEMORY_GIB = 80.0


@dataclass(frozen=True)
class PlannedRun:
    overrides: str
    depth: int
    window_pattern: str
    sequence_len: int
    params: int
    scaling_params: int
    flops_per_token: float
    steps: int
    tokens: int
    flops: float
    gpus: int
    gpu_hours: float
    estimate: str
    device_batch_size: int
    peak_memory_gib: float
    fits: bool
    fitting_batch: int  # the largest power-of-two device batch that fits (the planned one when it does)

    @property
    def hours(self) -> float:
        """Wall-clock hours of the run on its GPUs."""
        return self.gpu_hours / self.gpus if self.gpus else math.nan


# expanding the sweep -----------------------------------------------------------------------
def jobs_and_shared(overrides: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    """The override list of every job (as the multirun expands them), and the overrides all share."""
    jobs = expand_sweep(list(overrides))
    shared = [o for o in jobs[0] if all(o in job for job in jobs)] if jobs else []
    return jobs, shared


# sizing one run ----------------------------------------------------------------------------
def plan_run(
    job: Sequence[str],
    shared: Sequence[str],
    throughputs: list[dict],
    mfu: float,
    peak_flops: float,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> PlannedRun:
    """One job, checked as the training preflight checks it (batch arithmetic for the world size
    the launcher starts, horizon, LR placement), without needing its data to be prepared yet."""
    from harness.launch import launcher_world_size
    from harness.train import plan_run as plan_training

    cfg = compose(list(job))
    gpus = launcher_world_size(cfg) or 1
    run = plan_training(cfg, check_inputs=False, world_size=gpus)
    counts, fpt, steps = run.param_counts, float(run.flops_per_token), run.num_iterations
    tokens = steps * run.train.total_batch_tokens
    depth, pattern, seq = run.model.n_layer, run.model.window_pattern, run.model.sequence_len
    gpu_hours, estimate = _gpu_hours(tokens, tokens * fpt, depth, pattern, seq, throughputs, mfu, peak_flops)
    if run.train.device == "cpu":
        gpus, gpu_hours, estimate = 0, math.nan, "CPU run"
    device_batch = run.train.device_batch_size
    peak_gib, fitting_batch = _peak_memory(run, device_batch, max(gpus, 1), gpu_memory_gib)
    return PlannedRun(
        overrides=" ".join(o for o in job if o not in shared) or "(single run)",
        depth=depth,
        window_pattern=pattern,
        sequence_len=seq,
        params=counts["total"],
        scaling_params=counts["scaling"],
        flops_per_token=fpt,
        steps=steps,
        tokens=tokens,
        flops=tokens * fpt,
        gpus=gpus,
        gpu_hours=gpu_hours,
        estimate=estimate,
        device_batch_size=device_batch,
        peak_memory_gib=peak_gib,
        fits=fitting_batch == device_batch,
        fitting_batch=fitting_batch,
    )


def _peak_memory(run, device_batch: int, world_size: int, limit_gib: float) -> tuple[float, int]:
    """(estimated peak GiB per device, the largest device batch that fits in limit_gib): the planned
    batch when it fits. A CPU run is estimated with its CPU dtypes."""
    from harness import memory
    from harness.optim import parameter_table
    from models.gpt import GPT

    device_type = "cpu" if run.train.device == "cpu" else "cuda"
    rows = parameter_table(GPT.on_meta(run.model), run.optim, run.placement, run.train.total_batch_tokens)
    args = (run.model, rows, device_batch, device_type, world_size, run.train.dtype, run.train.compile)
    peak = memory.estimate(*args).peak
    limit = limit_gib * memory.GIB
    fitting = device_batch if peak <= limit else memory.largest_fitting_batch(*args, limit)
    return peak / memory.GIB, fitting


def _gpu_hours(tokens, flops, depth, pattern, seq, throughputs, mfu, peak_flops) -> tuple[float, str]:
    """GPU-hours from a measured throughput when one matches depth and window pattern, else from MFU."""
    matches = [t for t in throughputs if int(t["model_depth"]) == depth and str(t["window_pattern"]) == pattern]
    matches.sort(key=lambda t: int(t.get("sequence_len", seq)) != seq)
    if matches:
        m = matches[0]
        per_gpu = float(m["tok_per_s"]) / max(int(m.get("world_size", 1)), 1)
        return tokens / per_gpu / 3600, f"measured {per_gpu:,.0f} tok/s/GPU ({m.get('gpu_name', '?')})"
    return flops / (mfu * peak_flops) / 3600, f"assumed MFU {mfu:.0%} of {peak_flops:.3g} FLOP/s"


def load_throughputs(path: Path | None) -> list[dict]:
    """Entries of a `harness.bench throughput` JSON: one object, a list, or {"results": [...]}."""
    if path is None:
        return []
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--throughput {path}: {e}") from None
    entries = data.get("results", [data]) if isinstance(data, dict) else data
    required = ("model_depth", "window_pattern", "tok_per_s")
    for entry in entries:
        missing = [k for k in required if k not in entry]
        if missing:
            raise ConfigError(f"--throughput {path}: an entry lacks {', '.join(missing)}; needs {', '.join(required)}")
    return entries


# seeds needed ------------------------------------------------------------------------------
def seeds_table(
    sweep_dirs: Sequence[Path], baseline: Sequence[str] | None, detect: float | None, detect_core: float | None
) -> list[dict]:
    """Per depth and metric of the earlier sweep: its spread and the seeds a chosen difference needs."""
    from harness.results.collect import collect_dirs
    from harness.results.compare import comparison_table, parse_baseline, spread_table
    from harness.results.stats import seeds_needed

    collection = collect_dirs(*sweep_dirs)
    table, _ = comparison_table(collection, parse_baseline(baseline), strict=baseline is not None)
    rows = []
    for row in spread_table(collection, table).itertuples():
        difference = detect if row.metric == "val_bpb" else detect_core
        rows.append(
            {
                "depth": row.depth,
                "metric": row.metric,
                "sweep_seeds": row.seeds,
                "sd": row.sd,
                "paired_sd": row.paired_sd,
                "detect": difference,
                "seeds_unpaired": seeds_needed(difference, row.sd, paired=False) if difference else None,
                "seeds_paired": seeds_needed(difference, row.paired_sd, paired=True) if difference else None,
            }
        )
    return rows


# printing ----------------------------------------------------------------------------------
def _si(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def runs_markdown(runs: list[PlannedRun]) -> str:
    header = [
        "#",
        "overrides",
        "depth",
        "params",
        "scaling params",
        "FLOPs/token",
        "steps",
        "tokens",
        "FLOPs",
        "GPUs",
        "GPU-hours",
        "peak GiB/GPU",
        "hours",
        "estimate from",
    ]
    rows = [
        [
            str(i),
            f"`{r.overrides}`",
            str(r.depth),
            _si(r.params),
            _si(r.scaling_params),
            _si(r.flops_per_token),
            f"{r.steps:,}",
            _si(r.tokens),
            f"{r.flops:.3g}",
            str(r.gpus),
            _hours(r.gpu_hours),
            f"{r.peak_memory_gib:.1f}" + ("" if r.fits else " (over)"),
            _hours(r.hours),
            r.estimate,
        ]
        for i, r in enumerate(runs, 1)
    ]
    table = _markdown(header, rows) + "\n\n" + depth_totals_markdown(runs) + f"\n\nTotal: {_total(runs)}."
    return table + memory_flags(runs)


def memory_flags(runs: list[PlannedRun]) -> str:
    """One line per run whose estimated peak exceeds the GPU's memory, with the batch that fits."""
    lines = []
    for i, r in enumerate(runs, 1):
        if r.fits:
            continue
        advice = (
            f"the largest device batch that fits is {r.fitting_batch} (train.device_batch_size={r.fitting_batch})"
            if r.fitting_batch
            else "not even device batch 1 fits"
        )
        lines.append(
            f"Run {i} needs an estimated {r.peak_memory_gib:.1f} GiB per GPU at device batch "
            f"{r.device_batch_size}, over --gpu-memory-gib; {advice}."
        )
    return "".join("\n" + line for line in lines)


def depth_totals_markdown(runs: list[PlannedRun]) -> str:
    """Runs, tokens, FLOPs, GPU-hours and wall-clock hours (one run after another) at each depth."""
    header = ["depth", "runs", "tokens", "FLOPs", "GPU-hours", "hours, one after another"]
    rows = []
    for depth in sorted({r.depth for r in runs}):
        at_depth = [r for r in runs if r.depth == depth]
        rows.append(
            [
                str(depth),
                str(len(at_depth)),
                _si(sum(r.tokens for r in at_depth)),
                f"{sum(r.flops for r in at_depth):.3g}",
                _hours(_known_sum(r.gpu_hours for r in at_depth)),
                _hours(_known_sum(r.hours for r in at_depth)),
            ]
        )
    return _markdown(header, rows)


def _total(runs: list[PlannedRun]) -> str:
    tokens, flops = _si(sum(r.tokens for r in runs)), sum(r.flops for r in runs)
    gpu_hours = _hours(_known_sum(r.gpu_hours for r in runs))
    return f"{len(runs)} runs, {tokens} tokens, {flops:.3g} FLOPs, {gpu_hours} GPU-hours"


def _known_sum(values) -> float:
    """The sum of the estimates that exist (CPU runs have none); NaN when none does."""
    known = [v for v in values if not math.isnan(v)]
    return sum(known) if known else math.nan


def _hours(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def seeds_markdown(rows: list[dict], sources: Sequence[Path]) -> str:
    def count(n):
        return "—" if n is None else str(n)

    header = [
        "depth",
        "metric",
        "seeds in that sweep",
        "sd within a variant",
        "sd of per-seed differences",
        "detect Δ",
        "seeds needed, unpaired",
        "seeds needed, paired by seed",
    ]
    table = [
        [
            str(r["depth"]),
            "val bpb" if r["metric"] == "val_bpb" else "CORE",
            str(r["sweep_seeds"]),
            _fixed(r["sd"]),
            _fixed(r["paired_sd"]),
            "—" if r["detect"] is None else f"{r['detect']:g}",
            count(r["seeds_unpaired"]),
            count(r["seeds_paired"]),
        ]
        for r in rows
    ]
    note = (
        f"Spread from {', '.join(str(s) for s in sources)}; seeds per variant for 80% power at alpha 0.05 "
        "(two-sided t-test). Paired: every variant runs the baseline's seeds."
    )
    return _markdown(header, table) + "\n\n" + note


def _fixed(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4f}"


# command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.plan",
        description="List the runs a multirun would launch, with their size, compute and estimated GPU-hours; "
        "optionally, how many seeds a difference needs given an earlier sweep's spread.",
        epilog="Example: python -m harness.plan experiment=smoke --spread-from runs/smoke --detect 0.002",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides as for the multirun; a,b sweeps over values")
    parser.add_argument(
        "--throughput", type=Path, metavar="FILE", help="measured tok/s JSON (harness.bench throughput)"
    )
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed MFU without a measurement (0.45)")
    parser.add_argument(
        "--peak-flops",
        type=float,
        default=H100_BF16_PEAK_FLOPS,
        metavar="FLOP_PER_S",
        help="peak FLOP/s per GPU for the MFU estimate (989e12: H100 SXM bf16)",
    )
    parser.add_argument(
        "--spread-from",
        type=Path,
        action="append",
        metavar="SWEEP_DIR",
        help="an earlier sweep whose seed-to-seed spread sizes the seed count (repeat the flag for more)",
    )
    parser.add_argument("--detect", type=float, help="difference in final val bpb to detect (e.g. 0.002)")
    parser.add_argument("--detect-core", type=float, help="difference in CORE to detect (e.g. 0.005)")
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="KEY=VALUE",
        help="one config value of the baseline variant (repeat the flag for more)",
    )
    parser.add_argument(
        "--gpu-memory-gib",
        type=float,
        default=DEFAULT_GPU_MEMORY_GIB,
        metavar="GIB",
        help="memory per GPU; runs whose estimated peak exceeds it are flagged (80: H100/A100 80GB)",
    )
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the run list as CSV")
    args = parser.parse_intermixed_args(argv)
    if (args.detect or args.detect_core) and not args.spread_from:
        parser.error("--detect and --detect-core need --spread-from SWEEP_DIR")
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu={args.mfu} must be in (0, 1]")
    if not args.gpu_memory_gib > 0:
        parser.error(f"--gpu-memory-gib={args.gpu_memory_gib} must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        jobs, shared = jobs_and_shared(args.overrides)
        throughputs = load_throughputs(args.throughput)
        runs = check_jobs(
            jobs, lambda job: plan_run(job, shared, throughputs, args.mfu, args.peak_flops, args.gpu_memory_gib)
        )
        print(f"Overrides shared by every run: {' '.join(shared) or '(none)'}\n")
        print(runs_markdown(runs))
        if args.csv:
            import pandas as pd

            pd.DataFrame([{**asdict(r), "hours": r.hours} for r in runs]).to_csv(args.csv, index=False)
        if args.spread_from:
            print()
            print(
                seeds_markdown(
                    seeds_table(args.spread_from, args.baseline, args.detect, args.detect_core), args.spread_from
                )
            )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT_CODE
    return 0


def planned(
    overrides: Sequence[str],
    throughput: Path | None = None,
    mfu: float = DEFAULT_MFU,
    peak_flops: float = H100_BF16_PEAK_FLOPS,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> list[PlannedRun]:
    """The planned runs as data, for scripts and tests."""
    jobs, shared = jobs_and_shared(overrides)
    throughputs = load_throughputs(throughput)
    return [plan_run(job, shared, throughputs, mfu, peak_flops, gpu_memory_gib) for job in jobs]


if __name__ == "__main__":
    sys.exit(main())
