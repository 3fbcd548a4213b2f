"""Time, tokens and FLOPs to a target val bpb: does a variant reach a given quality sooner?

Pure functions on the `runs` and `curves` tables (collect.py):
- `default_targets`: per depth, the baseline's mean final val bpb (what `report --target-bpb X`
  replaces with one number for every depth).
- `time_to_target`: per completed run, where val bpb first reaches the target. Validation runs every
  `eval.val_every` steps, so the crossing is interpolated linearly in val bpb between the last
  evaluation above the target and the first at or below it, and the training time, tokens and FLOPs
  are interpolated at that point between the two evaluations' values. The time is metrics.jsonl's
  `time_s`: the sum of the optimizer steps' times, evaluation and checkpointing excluded (train.py).
  A run that never reaches the target is censored at its training end, not dropped.
- `target_comparison`: per variant and depth against the baseline, `time_to_target_ratio` (variant /
  baseline) with its 95% interval: a t interval on log times (stats.compare: paired by seed where two
  or more seeds are shared, Welch otherwise), exponentiated, so the ratio is a geometric mean. A
  censored run enters with its training end as its time: the estimate is of the restricted mean (time
  to target, capped at the training length), the usual estimand when every censoring happens at the
  end of the observation window. Capping can only shorten a time, so it pulls the ratio toward the
  censored side's training length: when the slower side is the censored one the ratio understates the
  difference. `time_to_target_reached` and `time_to_target_censored` count the variant's runs, and the
  note says when either side had censored runs.
- Time is speed: a ratio between runs on different devices, world sizes or batches is not computed, and
  timing.py's rule for speed decides the rest: arms that did not interleave in time (a sequential sweep
  on a shared machine) keep their ratio, marked `time_to_target_confounded` with the note speed gets;
  seeds whose two runs did not share a time window are not paired (Welch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from harness.results import timing
from harness.results.compare import speed_context_difference
from harness.results.stats import compare

METRIC = "val_bpb"
RUN_COLUMNS = (
    "run",
    "variant",
    "depth",
    "seed",
    "target_bpb",
    "reached",
    "time_to_target_s",
    "tokens_to_target",
    "flops_to_target",
    "restricted_time_s",
)
COMPARISON_COLUMNS = (
    "time_to_target_bpb",
    "time_to_target_ratio",
    "time_to_target_ratio_ci_low",
    "time_to_target_ratio_ci_high",
    "time_to_target_reached",
    "time_to_target_censored",
    "time_to_target_confounded",
    "time_to_target_note",
)


def default_targets(runs: pd.DataFrame, baselines: Mapping[int, str]) -> dict[int, float]:
    """Per depth: the mean final val bpb of the baseline's completed runs."""
    done = runs[runs["status"] == "completed"]
    targets = {}
    for depth, variant in baselines.items():
        values = done.loc[(done["depth"] == depth) & (done["variant"] == variant), "final_val_bpb"].astype(float)
        values = values[np.isfinite(values)]
        if len(values):
            targets[int(depth)] = float(values.mean())
    return targets


def crossing(evaluations: pd.DataFrame, target: float) -> dict[str, float] | None:
    """Where a run's val bpb first reaches `target` (<=), interpolated between evaluations: time_s,
    tokens and flops at the crossing; None if it never does. `evaluations` has step, tokens, flops,
    time_s and value, one row per evaluation."""
    points = evaluations.sort_values("step")
    values = points["value"].to_numpy(dtype=float)
    below = np.flatnonzero(values <= target)
    if not len(below):
        return None
    i = int(below[0])
    at = points.iloc[i]
    if i == 0:
        return {k: float(at[k]) for k in ("time_s", "tokens", "flops")}
    before = points.iloc[i - 1]
    fraction = (values[i - 1] - target) / (values[i - 1] - values[i])
    return {k: float(before[k] + fraction * (at[k] - before[k])) for k in ("time_s", "tokens", "flops")}


def time_to_target(runs: pd.DataFrame, curves: pd.DataFrame, targets: Mapping[int, float]) -> pd.DataFrame:
    """One row per completed run at a depth with a target."""
    done = runs[(runs["status"] == "completed") & runs["depth"].isin(list(targets))]
    evaluations = curves[curves["metric"] == METRIC]
    by_run = dict(tuple(evaluations.groupby("run")))
    rows = []
    for run in done.itertuples():
        target = targets[int(run.depth)]
        points = by_run.get(run.run, evaluations.iloc[:0])
        found = crossing(points, target) if len(points) else None
        end = float(points["time_s"].max()) if len(points) else math.nan
        rows.append(
            {
                "run": run.run,
                "variant": run.variant,
                "depth": int(run.depth),
                "seed": run.seed,
                "target_bpb": target,
                "reached": found is not None,
                "time_to_target_s": found["time_s"] if found else math.nan,
                "tokens_to_target": found["tokens"] if found else math.nan,
                "flops_to_target": found["flops"] if found else math.nan,
                "restricted_time_s": found["time_s"] if found else end,
            }
        )
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def target_comparison(per_run: pd.DataFrame, runs: pd.DataFrame, baselines: Mapping[int, str]) -> pd.DataFrame:
    """Per (depth, variant): the time-to-target ratio against the baseline, counts and a note."""
    rows = []
    for (depth, variant), group in per_run.groupby(["depth", "variant"], sort=True):
        reference = baselines.get(int(depth))
        base = per_run[(per_run["depth"] == depth) & (per_run["variant"] == reference)]
        row = {
            "depth": int(depth),
            "variant": variant,
            "time_to_target_bpb": float(group["target_bpb"].iloc[0]),
            "time_to_target_reached": int(group["reached"].sum()),
            "time_to_target_censored": int((~group["reached"]).sum()),
            "time_to_target_ratio": math.nan,
            "time_to_target_ratio_ci_low": math.nan,
            "time_to_target_ratio_ci_high": math.nan,
            "time_to_target_confounded": False,
            "time_to_target_note": "",
        }
        if reference is not None and variant != reference and len(base):
            row.update(_ratio(group, base, runs))
        rows.append(row)
    return pd.DataFrame(rows, columns=["depth", "variant", *COMPARISON_COLUMNS])


def _ratio(group: pd.DataFrame, base: pd.DataFrame, runs: pd.DataFrame) -> dict:
    members = runs[runs["run"].isin(set(group["run"]) | set(base["run"]))]
    differs = speed_context_difference(members)
    if differs:
        return {"time_to_target_note": f"not compared: {differs}"}
    notes = []
    design = _time_design(runs, group, base, notes)
    variant_times, base_times = _log_times(group), _log_times(base)
    if design == timing.WELCH:  # the seed did not share a time window: pairing by it cancels nothing
        base_times = [(("baseline", seed), value) for seed, value in base_times]
    result = compare(variant_times, base_times)
    censored, base_censored = int((~group["reached"]).sum()), int((~base["reached"]).sum())
    if censored or base_censored:
        notes.insert(
            0,
            f"censored (never reached the target, counted at their training end): {censored} of {len(group)} "
            f"variant runs, {base_censored} of {len(base)} baseline runs",
        )
    return {
        "time_to_target_ratio": math.exp(result.difference),
        "time_to_target_ratio_ci_low": math.exp(result.low),
        "time_to_target_ratio_ci_high": math.exp(result.high),
        "time_to_target_confounded": design == timing.CONFOUNDED,
        "time_to_target_note": "; ".join(notes),
    }


def _time_design(runs: pd.DataFrame, group: pd.DataFrame, base: pd.DataFrame, notes: list[str]) -> str:
    """timing.py's rule for speed, applied to time: confounded when the arms did not interleave (the
    ratio is kept and marked), Welch when the seeds' runs did not share a time window, else paired."""
    arms = []
    for members in (group, base):
        rows = runs[runs["run"].isin(set(members["run"]))]
        window = timing.times(rows)
        if window is None:
            return timing.PAIRED  # unknown: paired by seed, as compare.py does for speed
        arms.append((list(rows["seed"]), *window))
    design, mixing, disjoint = timing.speed_design(arms[0], arms[1])
    if design == timing.CONFOUNDED:
        notes.append(timing.confounded_note(mixing, disjoint).replace("speed:", "time to target (as for speed):", 1))
    return design


def _log_times(group: pd.DataFrame) -> list[tuple[int, float]]:
    times = group["restricted_time_s"].astype(float).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(times > 0, np.log(times), math.nan)
    return list(zip(group["seed"], logs, strict=True))


def with_time_to_target(comparison: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """comparison.csv with the time-to-target columns merged in by (depth, variant)."""
    if comparison.empty:
        return comparison
    if targets.empty:
        empty = {
            c: math.nan for c in COMPARISON_COLUMNS if c not in ("time_to_target_confounded", "time_to_target_note")
        }
        return comparison.assign(**empty, time_to_target_confounded=False, time_to_target_note="")
    return comparison.merge(targets, on=["depth", "variant"], how="left")


# the report's section ------------------------------------------------------------------------
def target_markdown(comparison: pd.DataFrame, explicit_target: bool) -> str:
    """report.md's "Time to target" section: per depth and variant, the ratio, counts and notes."""
    if comparison.empty or "time_to_target_ratio" not in comparison or comparison["time_to_target_bpb"].isna().all():
        return "No completed baseline run: no target."
    source = "given by --target-bpb" if explicit_target else "the baseline's mean final val bpb at that depth"
    lines = [
        f"Target: {source}. Time is training time, evaluation and checkpointing excluded (metrics.jsonl's "
        "`time_s`); the crossing is interpolated linearly between the evaluation before it and the one at or "
        "below it (`eval.val_every` sets the resolution). Ratio = variant / baseline time (below 1: the variant "
        "gets there sooner), a geometric mean with a 95% t interval on log times, paired by seed where two or "
        "more seeds are shared. A run that never reaches the target is censored at its training end and enters "
        "with that time (the restricted mean: it shortens the censored side's time, so the ratio understates "
        "the difference when the slower side is censored). Time includes speed: runs on different devices, "
        "world sizes or batches are not compared, and separate time windows are noted. Per run: "
        "[target.csv](target.csv) (time, tokens and FLOPs to the target).",
        "",
        "| depth | variant | target bpb | reached / runs | time-to-target ratio [95% CI] | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in comparison.itertuples():
        runs = row.time_to_target_reached + row.time_to_target_censored
        if not math.isfinite(runs):
            continue
        ratio = "baseline" if row.is_baseline else "—"
        if math.isfinite(row.time_to_target_ratio):
            ratio = f"{row.time_to_target_ratio:.3f}"
            if math.isfinite(row.time_to_target_ratio_ci_low):
                ratio += f" [{row.time_to_target_ratio_ci_low:.3f}, {row.time_to_target_ratio_ci_high:.3f}]"
        note = str(row.time_to_target_note) if isinstance(row.time_to_target_note, str) else ""
        lines.append(
            f"| {row.depth} | {row.variant} | {row.time_to_target_bpb:.4f} | {int(row.time_to_target_reached)} / "
            f"{int(runs)} | {ratio} | {note} |"
        )
    return "\n".join(lines)


def add_time_to_target(
    comparison: pd.DataFrame,
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    baselines: Mapping[int, str],
    target_bpb: float | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table with the time-to-target columns, and the per-run table (target.csv)."""
    depths = sorted(int(d) for d in runs["depth"].dropna().unique())
    targets = {d: float(target_bpb) for d in depths} if target_bpb is not None else default_targets(runs, baselines)
    per_run = time_to_target(runs, curves, targets)
    return with_time_to_target(comparison, target_comparison(per_run, runs, baselines)), per_run
