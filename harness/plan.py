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
to be found with 80% power, paired by seed and unpaired, for each comparison of that sweep from its
own spread. Power is at the level the report's verdicts use: alpha / m, Holm's first step over the
planned sweep's m tests (its comparisons with the baseline x val bpb, CORE when measured, and speed;
--tests sets m). A spread estimated from a few seeds is uncertain, so each count comes with the
counts at the ends of the spread's 95% chi-square interval ("44 (19-180 plausible)") and at its 80%
upper confidence bound. With `stats.sequential=true` among the overrides, the chance that the
design has found the difference by each of its looks (`stats.looks`) says how many rounds of seeds
to plan for.
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
    # torch and the model: imported once a job is planned, not for --help.
    from harness.launch import launcher_world_size
    from harness.run.spec import resolve_run

    cfg = compose(list(job))
    gpus = launcher_world_size(cfg, submitting=False) or 1
    run = resolve_run(cfg, check_inputs=False, world_size=gpus)
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


def unmatched_throughput(runs: Sequence[PlannedRun], throughputs: list[dict], path: Path) -> list[str]:
    """One line per (depth, window pattern) of a GPU run that no entry of --throughput matches, so a
    measurement of another model is never silently replaced by the assumed MFU."""
    have = sorted({(int(t["model_depth"]), str(t["window_pattern"])) for t in throughputs})
    listed = ", ".join(f"depth {d} pattern {p}" for d, p in have) or "no entries"
    missing = sorted({(r.depth, r.window_pattern) for r in runs if r.gpus and r.estimate.startswith("assumed")})
    return [
        f"--throughput {path} has no entry for depth {depth} pattern {pattern} (it has {listed}); "
        "those runs are estimated from the assumed MFU"
        for depth, pattern in missing
    ]


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
    for entry in entries if isinstance(entries, list) else [entries]:
        if not isinstance(entry, dict):
            raise ConfigError(f"--throughput {path}: an entry is {entry!r}, not an object with {', '.join(required)}")
        missing = [k for k in required if k not in entry]
        if missing:
            raise ConfigError(f"--throughput {path}: an entry lacks {', '.join(missing)}; needs {', '.join(required)}")
        _check_throughput_entry(path, entry)
    return entries if isinstance(entries, list) else [entries]


def _check_throughput_entry(path: Path, entry: dict) -> None:
    """The numbers an estimate divides by: an integer depth, a positive tok/s and world size."""
    numbers = {"model_depth": int, "tok_per_s": float, "world_size": int}
    for key, kind in numbers.items():
        value = entry.get(key, 1)
        try:
            number = kind(value) if not isinstance(value, (bool, list, dict)) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not 0 < number < math.inf or (kind is int and number != value):
            raise ConfigError(f"--throughput {path}: {key}={value!r} must be a positive {kind.__name__}")


# seeds needed ------------------------------------------------------------------------------
# The spread's own uncertainty: a two-sided 95% chi-square interval ("plausible") and a one-sided
# 80% upper confidence bound of the sd, each turned into a seed count.
PLAUSIBLE, UPPER_BOUND = 0.95, 0.80


def planned_tests(jobs: Sequence[Sequence[str]]) -> tuple[int, str]:
    """m, the tests the planned sweep's report will adjust over, and how it was counted: per depth,
    (variants - 1) comparisons x (val bpb, speed, and CORE when measured)."""
    variants: dict[int, set] = {}
    core = False
    for job in jobs:
        cfg = compose(list(job))
        core = core or bool(cfg.eval.core.enabled)
        variant = tuple(sorted(o for o in job if not o.startswith("seed=")))
        variants.setdefault(int(cfg.model.depth), set()).add(variant)
    comparisons = sum(max(len(v) - 1, 0) for v in variants.values())
    metrics = ["val bpb", *(["CORE"] if core else []), "speed"]
    m = max(comparisons * len(metrics), 1)
    return m, f"{comparisons} comparison(s) x {len(metrics)} metrics ({', '.join(metrics)})"


def sd_bounds(sd: float, dof: int) -> tuple[float, float, float]:
    """(low, high) of the sd's two-sided PLAUSIBLE chi-square interval and its one-sided UPPER_BOUND bound."""
    from scipy import stats  # scipy: only for --spread-from

    if not (math.isfinite(sd) and dof >= 1):
        return math.nan, math.nan, math.nan
    tail = (1 - PLAUSIBLE) / 2
    low = sd * math.sqrt(dof / stats.chi2.ppf(1 - tail, dof))
    high = sd * math.sqrt(dof / stats.chi2.ppf(tail, dof))
    upper = sd * math.sqrt(dof / stats.chi2.ppf(1 - UPPER_BOUND, dof))
    return low, high, upper


def seeds_table(
    sweep_dirs: Sequence[Path],
    baseline: Sequence[str] | None,
    detect: float | None,
    detect_core: float | None,
    tests: int = 1,
    looks: Sequence[int] = (),
) -> list[dict]:
    """Per depth, comparison with the baseline and metric of the earlier sweep: its own spread (paired:
    of its per-seed differences; unpaired: pooled over its two arms) and the seeds a chosen difference
    needs at alpha / `tests`, with the range the spread's uncertainty allows. With `looks`, the
    sequential design's chance of having found the difference by each look."""
    # numpy, pandas and scipy: only for --spread-from.
    import numpy as np

    from harness.results.collect import collect_dirs
    from harness.results.compare import METRICS, comparison_table, parse_baseline
    from harness.results.sequential import min_p_quantile, power_by_look
    from harness.results.stats import ALPHA, pooled_sd, seeds_needed, shared_seeds

    collection = collect_dirs(*sweep_dirs)
    table, _ = comparison_table(collection, parse_baseline(baseline), strict=baseline is not None)
    done = collection.completed()
    alpha = ALPHA / tests
    nominal = min_p_quantile(tuple(looks), alpha) if looks else alpha
    rows = []
    for depth, comparison in table.groupby("depth", sort=True):
        reference = comparison.loc[comparison["is_baseline"], "variant"]
        if reference.empty:
            continue
        at_depth = done[done["depth"] == depth]
        base_runs = at_depth[at_depth["variant"] == reference.iloc[0]]
        seeds = int(comparison["n_seeds"].median())
        for variant in comparison.loc[~comparison["is_baseline"], "variant"]:
            runs = at_depth[at_depth["variant"] == variant]
            for metric in METRICS:
                difference = detect if metric.key == "val_bpb" else detect_core
                pairs = _finite_pairs(runs, metric.column)
                base = _finite_pairs(base_runs, metric.column)
                if not pairs or not base:
                    continue
                sd, _ = pooled_sd([[v for _, v in pairs], [v for _, v in base]])
                shared = shared_seeds(pairs, base)
                v_by, b_by = dict(pairs), dict(base)
                diffs = np.array([v_by[s] - b_by[s] for s in shared])
                paired_sd = float(diffs.std(ddof=1)) if len(diffs) >= 2 else math.nan
                low, high, upper = sd_bounds(paired_sd, len(diffs) - 1)

                def needed(spread: float, paired: bool, difference=difference) -> int | None:
                    return seeds_needed(difference, spread, paired=paired, alpha=alpha) if difference else None

                row = {
                    "depth": depth,
                    "metric": metric.key,
                    "sweep_seeds": seeds,
                    "comparison": f"{variant} vs {reference.iloc[0]}",
                    "sd": sd,
                    "paired_sd": paired_sd,
                    "paired_dof": max(len(diffs) - 1, 0),
                    "detect": difference,
                    "alpha": alpha,
                    "seeds_unpaired": needed(sd, False),
                    "seeds_paired": needed(paired_sd, True),
                    "seeds_paired_low": needed(low, True),
                    "seeds_paired_high": needed(high, True),
                    "seeds_paired_upper80": needed(upper, True),
                }
                if looks and difference and math.isfinite(paired_sd) and paired_sd > 0:
                    row["power_by_look"] = power_by_look(difference / paired_sd, looks, nominal)
                rows.append(row)
    return rows


def _finite_pairs(runs, column: str) -> list[tuple[int, float]]:
    return [(s, float(v)) for s, v in zip(runs["seed"], runs[column], strict=True) if math.isfinite(v)]


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
    # The memory flags follow the table they refer to; the plan still ends with its total.
    table = _markdown(header, rows) + memory_flags(runs)
    return table + "\n\n" + depth_totals_markdown(runs) + f"\n\nTotal: {_total(runs)}."


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
    return "".join("\n\n" + line for line in lines)


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


def seeds_markdown(
    rows: list[dict], sources: Sequence[Path], tests: int = 1, counted: str = "", looks: Sequence[int] = ()
) -> str:
    def count(n):
        return "—" if n is None else str(n)

    def plausible(r) -> str:
        if r["seeds_paired"] is None:
            return "—"
        return f"{count(r['seeds_paired'])} ({count(r['seeds_paired_low'])}–{count(r['seeds_paired_high'])} plausible)"

    header = [
        "depth",
        "metric",
        "seeds in that sweep",
        "comparison",
        "sd, both arms",
        "sd of per-seed differences (df)",
        "detect Δ",
        "paired, with the sd's 95% range",
        "paired, at the sd's 80% upper bound",
        "seeds needed, unpaired",
        "seeds needed, paired by seed",
    ]
    table = [
        [
            str(r["depth"]),
            "val bpb" if r["metric"] == "val_bpb" else "CORE",
            str(r["sweep_seeds"]),
            f"`{r['comparison']}`",
            _fixed(r["sd"]),
            f"{_fixed(r['paired_sd'])} ({r['paired_dof']})",
            "—" if r["detect"] is None else f"{r['detect']:g}",
            plausible(r),
            count(r["seeds_paired_upper80"]),
            count(r["seeds_unpaired"]),
            count(r["seeds_paired"]),
        ]
        for r in rows
    ]
    alpha = rows[0]["alpha"] if rows else 0.05
    level = f"alpha = 0.05/{tests} = {alpha:.2g}, Holm's first step over the {tests} planned tests"
    level += f" ({counted}; --tests sets it)" if counted else ""
    note = (
        f"Spread from {', '.join(str(s) for s in sources)}, each comparison from its own seeds; seeds per "
        f"variant for 80% power at {level} (two-sided t-test), the level the report's verdicts use. Paired: every "
        "variant runs the baseline's seeds. The sd of a few seeds is uncertain: the range is the seed count at "
        "the ends of its 95% chi-square interval, and the next column at its one-sided 80% upper bound."
    )
    text = _markdown(header, table) + "\n\n" + note
    sequential = [r for r in rows if r.get("power_by_look")]
    if looks and sequential:
        text += "\n\n" + _rounds_markdown(sequential, looks)
    return text


def _rounds_markdown(rows: list[dict], looks: Sequence[int]) -> str:
    """The sequential design: the chance it has found each difference by each look (round of seeds)."""
    header = ["depth", "metric", "comparison", *(f"by {n} seeds" for n in looks), "80% reached at"]
    table = []
    for r in rows:
        powers = r["power_by_look"]
        reached = next((f"{n} seeds" for n, p in zip(looks, powers, strict=True) if p >= 0.8), "not within the looks")
        metric = "val bpb" if r["metric"] == "val_bpb" else "CORE"
        table.append([str(r["depth"]), metric, f"`{r['comparison']}`", *(f"{p:.0%}" for p in powers), reached])
    note = (
        "Sequential design (stats.sequential=true): the results are looked at after each of these seed counts "
        "(stats.looks) and the sweep stops at the first significant look; each look tests at the Pocock-type "
        "level that keeps the chance of any false verdict at the Holm level above. Each cell: the chance of "
        "having found the difference by then (simulated), i.e. how many rounds of seeds to plan for."
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
        "--tests",
        type=int,
        metavar="M",
        help="tests the report will adjust over (Holm); default: the planned sweep's comparisons x metrics",
    )
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
    if args.tests is not None and args.tests < 1:
        parser.error(f"--tests={args.tests} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not 0 < args.peak_flops < math.inf:  # the MFU estimate divides by it
            raise ConfigError(f"--peak-flops={args.peak_flops:g} must be a positive, finite FLOP/s per GPU")
        jobs, shared = jobs_and_shared(args.overrides)
        throughputs = load_throughputs(args.throughput)
        runs = check_jobs(
            jobs, lambda job: plan_run(job, shared, throughputs, args.mfu, args.peak_flops, args.gpu_memory_gib)
        )
        if args.throughput is not None:
            for warning in unmatched_throughput(runs, throughputs, args.throughput):
                print(f"warning: {warning}", file=sys.stderr)
        print(f"Overrides shared by every run: {' '.join(shared) or '(none)'}\n")
        print(runs_markdown(runs))
        if args.csv:
            import pandas as pd

            pd.DataFrame([{**asdict(r), "hours": r.hours} for r in runs]).to_csv(args.csv, index=False)
        if args.spread_from:
            from harness.results.sequential import check_looks

            tests, counted = (args.tests, "") if args.tests else planned_tests(jobs)
            cfg = compose(list(jobs[0]))
            stats_cfg = cfg.get("stats") or {}
            looks = check_looks(stats_cfg.get("looks")) if stats_cfg.get("sequential") else ()
            rows = seeds_table(args.spread_from, args.baseline, args.detect, args.detect_core, tests, looks)
            print()
            print(seeds_markdown(rows, args.spread_from, tests, counted, looks))
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
