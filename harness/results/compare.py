"""Comparison tables: per depth, one row per variant, each measured against the baseline variant.

A row gives the number of completed seeds, the mean and 95% t interval of final val bpb and CORE,
throughput, and the difference to the baseline with its interval, p-value, test (paired by seed
or Welch) and the smallest difference the design could have detected (stats.py). Runs that did
not complete are counted in the row, never silently left out. Written as CSV (every number) and
Markdown (ready to paste into a pull request).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness.errors import ConfigError
from harness.results.collect import COMPLETED, Collection
from harness.results.stats import ALPHA, NO_TEST, compare, design_min_detectable, mean_interval, pooled_sd

# The recipe's own setting: rotary halves by slicing, 2x Muon LR on the MLP input matrix.
DEFAULT_BASELINE = ("rope.split=slice", "mlp_lr.name=c_fc_2x")


@dataclass(frozen=True)
class Metric:
    column: str
    key: str
    label: str
    higher_is_better: bool


METRICS = (
    Metric("final_val_bpb", "val_bpb", "val bpb", higher_is_better=False),
    Metric("core", "core", "CORE", higher_is_better=True),
)
BASELINE, BETTER, WORSE, NOT_SIGNIFICANT = "baseline", "better", "worse", "not significant"
SINGLE_SEED, NO_BASELINE = "one seed: not tested", "no baseline"


# the baseline ------------------------------------------------------------------------------
def parse_baseline(spec: str | Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """KEY=VALUE items (a list, or one space-separated string, or a mapping) to typed values."""
    if spec is None:
        spec = DEFAULT_BASELINE
    if isinstance(spec, Mapping):
        return dict(spec)
    items = spec.split() if isinstance(spec, str) else list(spec)
    baseline = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"baseline item {item!r} is not KEY=VALUE (e.g. rope.split=slice)")
        baseline[key] = yaml.safe_load(value) if value else ""
    return baseline


def baseline_variants(
    collection: Collection, baseline: Mapping[str, Any], strict: bool = True
) -> tuple[dict[int, str], list[str]]:
    """The baseline variant at each depth where exactly one variant matches; notes for the rest.
    A baseline key no run has is a ConfigError when `strict` (the user named it), else a note."""
    keys = set().union(*collection.configs.values()) if collection.configs else set()
    for key in baseline:
        if key not in keys:
            axes = ", ".join(collection.axes) or "none"
            message = f"baseline key {key!r} is not a config key of these runs; the sweep's axes: {axes}"
            if strict:
                raise ConfigError(message)
            return {}, [message]
    matching = [
        run for run, flat in collection.configs.items() if all(_same(flat.get(k), v) for k, v in baseline.items())
    ]
    runs = collection.runs.set_index("run")
    found, notes = {}, []
    label = " ".join(f"{k}={v}" for k, v in baseline.items())
    for depth in collection.depths:
        at_depth = runs.loc[[r for r in matching if runs.at[r, "depth"] == depth], "variant"].unique()
        if len(at_depth) == 1:
            found[depth] = at_depth[0]
        elif not len(at_depth):
            notes.append(f"depth {depth}: no run matches the baseline `{label}`; differences are not computed")
        else:
            names = "; ".join(sorted(at_depth))
            notes.append(
                f"depth {depth}: the baseline `{label}` matches {len(at_depth)} variants ({names}); "
                "name more keys with --baseline"
            )
    return found, notes


def _same(config_value: Any, wanted: Any) -> bool:
    if isinstance(config_value, (int, float)) and isinstance(wanted, (int, float)):
        return not isinstance(config_value, bool) and float(config_value) == float(wanted)
    return str(config_value) == str(wanted)


# the table ---------------------------------------------------------------------------------
def comparison_table(
    collection: Collection, baseline: Mapping[str, Any], strict: bool = True
) -> tuple[pd.DataFrame, list[str]]:
    """One row per (depth, variant); the baseline first within each depth. Returns (table, notes)."""
    found, notes = baseline_variants(collection, baseline, strict)
    rows = []
    for depth in collection.depths:
        at_depth = collection.runs[collection.runs["depth"] == depth]
        reference = found.get(depth)
        order = sorted(at_depth["variant"].unique(), key=lambda v: (v != reference, v))
        base_runs = at_depth[at_depth["variant"] == reference]
        for variant in order:
            runs = at_depth[at_depth["variant"] == variant]
            row = _row(depth, variant, runs, base_runs, reference)
            keys = {k: runs[k].iloc[0] for k in collection.variant_keys}
            launch = {"launch": _launches(runs), "mixed_launch": False}
            rows.append({"depth": depth, "variant": variant, **keys, **row, **launch})
        mixed = _launch_note(depth, at_depth)
        if mixed:
            notes.append(mixed)
            for row in rows[-len(order) :]:
                row["mixed_launch"] = True
    return pd.DataFrame(rows), notes


def _launches(runs: pd.DataFrame) -> str:
    """The completed runs' ranks x gradient-accumulation steps, e.g. "1x4" or "1x4, 2x2"."""
    done = runs[runs["status"] == COMPLETED]
    if "world_size" not in done or "grad_accum_steps" not in done:
        return ""
    pairs = {(w, a) for w, a in zip(done["world_size"], done["grad_accum_steps"], strict=True) if w == w and a == a}
    return ", ".join(f"{int(w)}x{int(a)}" for w, a in sorted(pairs))


def _launch_note(depth: int, runs: pd.DataFrame) -> str | None:
    """A note when a depth's runs ran on different world sizes or accumulation splits: quality numbers
    still compare (the data order and validation set do not depend on them), throughput does not."""
    launches = _launches(runs)
    if "," not in launches:
        return None
    return (
        f"depth {depth}: runs on different ranks x accumulation ({launches}); val bpb and CORE compare "
        "(the data order and validation set do not depend on the world size), tok/s does not: "
        "its cells name each variant's ranks x accumulation"
    )


def _row(depth: int, variant: str, runs: pd.DataFrame, base_runs: pd.DataFrame, reference: str | None) -> dict:
    done = runs[runs["status"] == COMPLETED]
    others = runs[runs["status"] != COMPLETED]["status"].value_counts()
    row: dict[str, Any] = {
        "depth": depth,
        "variant": variant,
        "is_baseline": variant == reference,
        "n_seeds": int(done["final_val_bpb"].notna().sum()),
        "seeds": ",".join(str(s) for s in sorted(done["seed"].dropna().unique())),
        "not_completed": ", ".join(f"{n} {status}" for status, n in others.items()),
    }
    for metric in METRICS:
        interval = mean_interval(done[metric.column])
        row.update(
            {
                f"{metric.key}_mean": interval.mean,
                f"{metric.key}_ci_low": interval.low,
                f"{metric.key}_ci_high": interval.high,
                f"{metric.key}_sd": interval.sd,
            }
        )
    throughput = mean_interval(done["tok_per_s"])
    row.update(
        {
            "tok_per_s_mean": throughput.mean,
            "tok_per_s_ci_low": throughput.low,
            "tok_per_s_ci_high": throughput.high,
            "mfu_mean": mean_interval(done["mfu"]).mean,
        }
    )
    base_done = base_runs[base_runs["status"] == COMPLETED]
    for metric in METRICS:
        row.update(_difference(metric, done, base_done, variant, reference))
    return row


def _difference(metric: Metric, done: pd.DataFrame, base: pd.DataFrame, variant: str, reference: str | None):
    """delta, its interval, p, test, detectable difference and verdict, as `<metric>_...` columns."""
    pairs = list(zip(done["seed"], done[metric.column], strict=True))
    base_pairs = list(zip(base["seed"], base[metric.column], strict=True))
    values = dict.fromkeys(("delta", "delta_ci_low", "delta_ci_high", "p", "mdd"), math.nan)
    values.update(test="", verdict=BASELINE if variant == reference else NO_BASELINE)
    if not any(math.isfinite(value) for _, value in pairs):
        values["verdict"] = ""  # not measured in this sweep (e.g. no CORE)
    elif reference is not None and variant != reference:
        result = compare(pairs, base_pairs)
        values.update(
            delta=result.difference,
            delta_ci_low=result.low,
            delta_ci_high=result.high,
            p=result.p_value,
            mdd=result.min_detectable,
            test=result.test,
            verdict=_verdict(metric, result.difference, result.p_value, result.test),
        )
    return {f"{metric.key}_{name}": value for name, value in values.items()}


def _verdict(metric: Metric, difference: float, p_value: float, test: str) -> str:
    if test == NO_TEST:
        return SINGLE_SEED
    if not p_value < ALPHA:
        return NOT_SIGNIFICANT
    return BETTER if (difference > 0) == metric.higher_is_better else WORSE


# Markdown ----------------------------------------------------------------------------------
def comparison_markdown(table: pd.DataFrame, variant_keys: Sequence[str], notes: Sequence[str] = ()) -> str:
    """Per depth, a Markdown table with one column per variant key, then a key to the columns."""
    if table.empty:
        return "No runs found.\n"
    has_core = table["core_mean"].notna().any()
    parts = [f"> {note}" for note in notes]
    for depth, rows in table.groupby("depth", sort=True):
        baseline = rows[rows["is_baseline"]]
        name = f" (baseline: `{baseline['variant'].iloc[0]}`)" if len(baseline) else " (no baseline)"
        parts.append(f"#### depth {depth}{name}")
        parts.append(_markdown_rows(rows, list(variant_keys), has_core))
    parts.append(_legend(table, has_core))
    return "\n\n".join(parts) + "\n"


def _markdown_rows(rows: pd.DataFrame, keys: list[str], has_core: bool) -> str:
    variant_header = keys or ["variant"]
    header = [*variant_header, "seeds", "val bpb (95% CI)", "Δ val bpb [95% CI]", "p", "detectable Δ"]
    if has_core:
        header += ["CORE (95% CI)", "Δ CORE [95% CI]", "p (CORE)", "detectable Δ CORE"]
    show_others = (rows["not_completed"] != "").any()
    header += ["tok/s", "verdict"] + (["not completed"] if show_others else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in rows.iterrows():
        cells = _variant_cells(row, keys)
        cells += [_seeds(row), _mean_ci(row, "val_bpb", 4), *_delta_cells(row, "val_bpb", 4)]
        if has_core:
            cells += [_mean_ci(row, "core", 4), *_delta_cells(row, "core", 4)]
        tok_per_s = _format(row["tok_per_s_mean"], ",.0f")
        if row["mixed_launch"] and row["launch"]:
            tok_per_s += f" ({row['launch']} ranks x accum)"
        cells += [tok_per_s, _verdicts(row, has_core)]
        cells += [row["not_completed"]] if show_others else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _variant_cells(row: pd.Series, keys: list[str]) -> list[str]:
    cells = [str(row[k]) for k in keys] if keys else [str(row["variant"])]
    return [f"**{c}**" for c in cells] if row["is_baseline"] else cells


def _seeds(row: pd.Series) -> str:
    n = int(row["n_seeds"])
    return f"{n} (one: no interval)" if n == 1 else str(n)


def _mean_ci(row: pd.Series, key: str, digits: int) -> str:
    mean, low, high = row[f"{key}_mean"], row[f"{key}_ci_low"], row[f"{key}_ci_high"]
    if not math.isfinite(mean):
        return "—"
    if not math.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def _delta_cells(row: pd.Series, key: str, digits: int) -> list[str]:
    delta = row[f"{key}_delta"]
    if not math.isfinite(delta):
        return ["—", "—", "—"]
    low, high = row[f"{key}_delta_ci_low"], row[f"{key}_delta_ci_high"]
    interval = f" [{_signed(low, digits)}, {_signed(high, digits)}]" if math.isfinite(low) else ""
    p = row[f"{key}_p"]
    p_text = "—" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")
    if math.isfinite(p):
        p_text += f" ({row[f'{key}_test']})"
    return [_signed(delta, digits) + interval, p_text, _format(row[f"{key}_mdd"], f".{digits}f")]


def _verdicts(row: pd.Series, has_core: bool) -> str:
    bpb, core = row["val_bpb_verdict"], row["core_verdict"]
    if not has_core or bpb == core:
        return bpb
    return f"bpb: {bpb}; CORE: {core}"


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def _format(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "—"


def _legend(table: pd.DataFrame, has_core: bool) -> str:
    tested = int(table["val_bpb_p"].notna().sum())
    metrics = "val bpb: lower is better; CORE: higher is better" if has_core else "val bpb: lower is better"
    multiple = (
        f"; unadjusted for the {tested} comparisons (expect about {tested * ALPHA:.1f} false positives at "
        f"α = {ALPHA} if nothing differs)"
        if tested > 1
        else ""
    )
    return (
        f"Completed runs only; Δ = variant − baseline ({metrics}). Means with 95% t intervals over "
        "seeds. p: paired t-test over seeds when variant and baseline ran the same seeds, Welch's "
        f"t-test otherwise{multiple}. detectable Δ: the smallest true difference this design finds "
        f"with 80% power at α = {ALPHA} (two-sided), given the observed seed-to-seed spread; a "
        'smaller true difference would likely read as "not significant". A variant with one seed '
        "has no interval and is never called significant."
    )


def save_comparison(table: pd.DataFrame, markdown: str, out_dir: str | os.PathLike) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "comparison.csv", index=False)
    (out_dir / "comparison.md").write_text(markdown)


# spread and power --------------------------------------------------------------------------
def spread_table(collection: Collection, table: pd.DataFrame) -> pd.DataFrame:
    """Per depth and metric: the seed-to-seed spread pooled over variants (within a variant, and
    of the per-seed differences to the baseline), and what the sweep's own design (its typical
    number of seeds) could detect with it, paired and unpaired."""
    rows = []
    done = collection.completed()
    for depth, comparison in table.groupby("depth", sort=True):
        at_depth = done[done["depth"] == depth]
        counts = comparison.loc[comparison["n_seeds"] > 0, "n_seeds"]
        seeds = int(counts.median()) if len(counts) else 0
        baseline = comparison.loc[comparison["is_baseline"], "variant"]
        for metric in METRICS:
            sd, dof = pooled_sd([g[metric.column].to_numpy() for _, g in at_depth.groupby("variant")])
            diffs = _paired_differences(at_depth, metric.column, baseline.iloc[0]) if len(baseline) else []
            paired_sd, paired_dof = pooled_sd(diffs)
            if math.isfinite(sd) or math.isfinite(paired_sd):
                rows.append(
                    {
                        "depth": depth,
                        "metric": metric.key,
                        "seeds": seeds,
                        "sd": sd,
                        "sd_dof": dof,
                        "paired_sd": paired_sd,
                        "paired_dof": paired_dof,
                        "mdd_paired": design_min_detectable(paired_sd, seeds, paired=True),
                        "mdd_unpaired": design_min_detectable(sd, seeds, paired=False),
                    }
                )
    return pd.DataFrame(rows)


def _paired_differences(runs: pd.DataFrame, column: str, baseline: str) -> list[np.ndarray]:
    """Per variant with exactly the baseline's seeds: its per-seed differences to the baseline."""
    base = runs[runs["variant"] == baseline].dropna(subset=[column])
    if base["seed"].duplicated().any():
        return []
    base_values = base.set_index("seed")[column]
    diffs = []
    for _, group in runs[runs["variant"] != baseline].dropna(subset=[column]).groupby("variant"):
        if not group["seed"].duplicated().any() and set(group["seed"]) == set(base_values.index):
            diffs.append((group.set_index("seed")[column] - base_values).to_numpy())
    return diffs
