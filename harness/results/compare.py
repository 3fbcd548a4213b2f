"""Comparison tables: per depth, one row per variant, each measured against the baseline variant.

The baseline (`choose_baseline`): the one given (`--baseline`), else the one the runs declare in
`stats.baseline`, else each swept axis at its composed default or its first value in sorted order.

A row gives the number of completed seeds, the mean and 95% t interval of final val bpb and CORE,
throughput, and the difference to the baseline with its interval, p-value, test (paired on the
shared seeds, or Welch) and the smallest difference the design could have detected (stats.py).
Speed is compared like quality: `tok_per_s_delta_pct` (variant / baseline - 1 of the mean of
each run's steady-state median tok/s) with Fieller's 95% interval, `tok_per_s_p` and
`tok_per_s_verdict` (faster / slower / not significant), unless the runs ran on different
devices, world sizes or batch sizes (then the verdict says which differs, and nothing is tested).

Every p-value of the table (every metric, every variant, every depth; the equivalence tests and, in
the report, the interactions too) is one family: each gets a Holm-adjusted `<metric>_p_adjusted`,
and the verdicts use it. The detectable difference `<metric>_mdd` is computed at the level the
verdict uses: alpha / m, Holm's first step over the family's m tests (`mdd_alpha`).

With equivalence margins (equivalence.py), `<metric>_tost_p` and `_tost_p_adjusted` test "no effect"
and a null result reads "equivalent within ±m" when it holds; without, it stays "not significant".
Speed is tested only when the arms interleaved in time (timing.py), else its verdict is
`confounded`. A sequential design the runs declared (sequential.py) turns each p into the
design's p at the current look, and each interval into a repeated confidence interval. Runs that did not complete are
counted in the row, never silently left out; a completed run with a NaN final value is left out
of that metric's statistics with a note. Written as CSV (every number) and Markdown (ready to
paste into a pull request).
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
from harness.results import timing
from harness.results.collect import COMPLETED, UNREADABLE, Collection
from harness.results.equivalence import NO_MARGINS, Margins, tost_difference, tost_ratio
from harness.results.interactions import INTERACTION_FAMILY, judge_interactions
from harness.results.sequential import FIXED, Design
from harness.results.stats import (
    ALPHA,
    NO_TEST,
    PAIRED,
    compare,
    design_min_detectable,
    holm,
    mean_interval,
    min_detectable_difference,
    pooled_sd,
    ratio_compare,
    shared_seeds,
)
from harness.results.timing import speed_context_difference

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
SPEED = "tok_per_s"  # the speed metric's key: tok_per_s_delta_pct, tok_per_s_p, tok_per_s_verdict, ...
# Every metric that gets a p-value, in table order: the family Holm adjusts over.
TESTED = (*(m.key for m in METRICS), SPEED)
BASELINE, BETTER, WORSE, NOT_SIGNIFICANT = "baseline", "better", "worse", "not significant"
FASTER, SLOWER = "faster", "slower"
EQUIVALENT = "equivalent within ±{margin}"
CONFOUNDED = timing.CONFOUNDED
SINGLE_SEED, NO_BASELINE = "one seed: not tested", "no baseline"
NOT_COMPARED = "not compared"


# The config key an experiment declares its baseline in (configs/config.yaml's `stats` section, so
# never part of a run's identity), e.g. `stats.baseline: [rope.split=slice, mlp_lr.name=c_fc_2x]`.
BASELINE_KEY = "stats.baseline"
GIVEN, DECLARED, DERIVED, SEARCH = "given", "declared", "derived", "search"


@dataclass(frozen=True)
class BaselineChoice:
    """The baseline's KEY=VALUE items, which rule chose them (`given` on the command line or by the
    callback, `declared` by the runs' `stats.baseline`, `derived` from the sweep's axes), and why,
    in words for report.md. `strict`: a key no run has is an error (the user named it)."""

    items: dict[str, Any]
    rule: str
    reason: str
    strict: bool = False

    def text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.items.items()) or "(the only variant)"


def choose_baseline(
    collection: Collection,
    given: str | Sequence[str] | Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> BaselineChoice:
    """The first rule that applies: the baseline `given`; the one every run declares in
    `stats.baseline` (when it names keys these runs have); else, per variant key, the composed
    default value (`defaults`, flattened) when some run has it, or the first value in sorted order."""
    if given is not None:
        return BaselineChoice(parse_baseline(given), GIVEN, "given with --baseline (or the report callback)", True)
    declared = {collection.configs[r].get(BASELINE_KEY) for r in collection.configs} - {None}
    notes = []
    if len(declared) == 1:
        items = parse_baseline(_declared_items(next(iter(declared))))
        keys = set().union(*collection.configs.values())
        if all(k in keys for k in items):
            # An axis the declaration does not name (a stray run's own key) is at its derived value.
            derived, reasons = _derived_baseline(collection, defaults or {}, skip=items)
            reason = f"declared by the runs' `{BASELINE_KEY}`" + (f"; {'; '.join(reasons)}" if reasons else "")
            return BaselineChoice({**items, **derived}, DECLARED, reason)
        notes.append(f"the declared `{BASELINE_KEY}` names keys these runs do not have")
    elif len(declared) > 1:
        notes.append(f"the runs declare {len(declared)} different `{BASELINE_KEY}`")
    items, reasons = _derived_baseline(collection, defaults or {})
    reason = "derived from the sweep: " + ("; ".join(reasons) or "one variant")
    if notes:
        reason += f" ({'; '.join(notes)})"
    return BaselineChoice(items, DERIVED, reason)


def _declared_items(value: Any) -> list[str]:
    """`stats.baseline` as flattened by collect: a JSON list of KEY=VALUE, or one string of them."""
    import json

    if isinstance(value, str) and value.startswith("["):
        return [str(v) for v in json.loads(value)]
    return str(value).split()


def _derived_baseline(
    collection: Collection, defaults: Mapping[str, Any], skip: Sequence[str] | Mapping[str, Any] = ()
) -> tuple[dict[str, Any], list[str]]:
    items, reasons = {}, []
    done = collection.completed()
    runs = done if len(done) else collection.runs
    for key in collection.variant_keys:
        if key in skip:
            continue
        values = [v for v in runs[key].dropna().unique()] if key in runs else []
        if not values:
            continue
        default = defaults.get(key)
        if key in defaults and any(_same(v, default) for v in values):
            items[key] = default
            reasons.append(f"`{key}` at its composed default")
        else:
            items[key] = sorted(values, key=_sort_key)[0]
            reasons.append(f"`{key}` at its first value in sorted order (no run has the composed default)")
    return items, reasons


def _sort_key(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


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
    collection: Collection, baseline: Mapping[str, Any] | None, strict: bool = True
) -> tuple[dict[int, str], list[str]]:
    """The baseline variant at each depth where exactly one variant matches; notes for the rest.
    A baseline key no run has is a ConfigError when `strict` (the user named it), else a note.
    None: no baseline (a hyperparameter search, whose trials are each their own variant)."""
    if baseline is None:
        return {}, []
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
    collection: Collection,
    baseline: Mapping[str, Any] | None,
    strict: bool = True,
    margins: Margins = NO_MARGINS,
    design: Design = FIXED,
) -> tuple[pd.DataFrame, list[str]]:
    """One row per (depth, variant); the baseline first within each depth. Returns (table, notes).
    The Holm family is this table's tests; `judge` adjusts it again with the interactions."""
    found, notes = baseline_variants(collection, baseline, strict)
    notes = [*collection.notes, *_unreadable_notes(collection), *notes]
    rows = []
    for depth in collection.depths:
        at_depth = collection.runs[collection.runs["depth"] == depth]
        reference = found.get(depth)
        order = sorted(at_depth["variant"].unique(), key=lambda v: (v != reference, v))
        base_runs = at_depth[at_depth["variant"] == reference]
        for variant in order:
            runs = at_depth[at_depth["variant"] == variant]
            row = _row(depth, variant, runs, base_runs, reference, margins, design)
            keys = {k: runs[k].iloc[0] for k in collection.variant_keys}
            launch = {"launch": _launches(runs), "mixed_launch": False}
            rows.append({"depth": depth, "variant": variant, **keys, **row, **launch})
        mixed = _launch_note(depth, at_depth)
        if mixed:
            notes.append(mixed)
            for row in rows[-len(order) :]:
                row["mixed_launch"] = True
    table = pd.DataFrame(rows)
    if margins.any:
        notes.append(f"equivalence margins (TOST): {margins.text()}")
    if design.sequential:
        notes.append(
            f"{design.text()}: every p is the design's p at this look and every interval a repeated confidence "
            "interval, so looking again after adding seeds keeps the chance of any false verdict at α"
        )
    if not table.empty:
        judge(table, margins=margins, design=design)
    return table, notes


def _unreadable_notes(collection: Collection) -> list[str]:
    runs = collection.runs[collection.runs["status"] == UNREADABLE]
    return [
        f"`{run.run}` is unreadable and left out of the statistics"
        + ("" if run.variant != UNREADABLE else " (its variant is unknown, so it is in no row)")
        + f": {run.note}"
        for run in runs.itertuples()
    ]


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


def _row(
    depth: int,
    variant: str,
    runs: pd.DataFrame,
    base_runs: pd.DataFrame,
    reference: str | None,
    margins: Margins = NO_MARGINS,
    design: Design = FIXED,
) -> dict:
    done = runs[runs["status"] == COMPLETED]
    others = runs[runs["status"] != COMPLETED]["status"].value_counts()
    usable = done[np.isfinite(done["final_val_bpb"].to_numpy(dtype=float))]
    not_finite = done[~done.index.isin(usable.index)]
    notes = []
    if len(not_finite):
        seeds = ", ".join(_seed_text(s) for s in sorted(not_finite["seed"]))
        notes.append(f"completed with a NaN final val bpb, left out: seed {seeds}")
    row: dict[str, Any] = {
        "depth": depth,
        "variant": variant,
        "is_baseline": variant == reference,
        "n_seeds": len(usable),
        "seeds": _seed_list(sorted(usable["seed"].dropna())),
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
            "peak_memory_gib_mean": mean_interval(done["peak_memory_gib"]).mean,
        }
    )
    base_done = base_runs[base_runs["status"] == COMPLETED]
    for metric in METRICS:
        row.update(_difference(metric, done, base_done, variant, reference, margins.for_key(metric.key), design))
    row.update(_speed_difference(done, base_done, variant, reference, margins.speed, design))
    row.update(_pairing_note(row, done, base_done, variant, reference))
    window = [row.pop("speed_note")] if row.get("speed_note") else []
    row["note"] = "; ".join([*notes, *([row.pop("pairing_note")] if row.get("pairing_note") else []), *window])
    return row


def _pairs(runs: pd.DataFrame, column: str) -> list[tuple[int, float]]:
    return list(zip(runs["seed"], runs[column].astype(float), strict=True))


def _difference(
    metric: Metric,
    done: pd.DataFrame,
    base: pd.DataFrame,
    variant: str,
    reference: str | None,
    margin: float | None = None,
    design: Design = FIXED,
):
    """delta, its interval, p, test, seeds paired, standard error, TOST p (with a margin) and detectable
    difference, as `<metric>_...` columns. The verdict and the detectable difference at the verdict's
    level are filled in once every p-value of the table is known (Holm)."""
    pairs, base_pairs = _pairs(done, metric.column), _pairs(base, metric.column)
    names = ("delta", "delta_ci_low", "delta_ci_high", "p", "mdd", "se", "dof", "tost_p")
    values = dict.fromkeys(names, math.nan)
    values.update(test="", n_paired=0, verdict=BASELINE if variant == reference else NO_BASELINE)
    if not any(math.isfinite(value) for _, value in pairs):
        values["verdict"] = ""  # not measured in this sweep (e.g. no CORE)
    elif reference is not None and variant != reference:
        result = compare(pairs, base_pairs)
        looks_n, pivotal = _look(result.test, result.n_paired, result.n_variant, result.n_baseline)
        if design.sequential and result.test != NO_TEST:  # the repeated confidence interval
            result = compare(pairs, base_pairs, alpha=design.level(ALPHA, looks_n, pivotal))
        values.update(
            delta=result.difference,
            delta_ci_low=result.low,
            delta_ci_high=result.high,
            p=design.p_value(result.p_value, looks_n, pivotal),
            mdd=result.min_detectable,
            se=result.se,
            dof=result.dof,
            test=result.test,
            n_paired=result.n_paired,
            verdict="",
        )
        if margin is not None and result.test != NO_TEST:
            tost = tost_difference(pairs, base_pairs, margin, paired=result.test == PAIRED)
            values["tost_p"] = design.one_sided_p_value(tost, looks_n, pivotal)
    return {f"{metric.key}_{name}": value for name, value in values.items()}


def _look(test: str, n_paired: int, n_variant: int, n_baseline: int) -> tuple[int, bool]:
    """The seed count of this look, and whether its test is a paired t (whose null is free of the spread)."""
    return (n_paired, True) if test == PAIRED else (min(n_variant, n_baseline), False)


def _speed_difference(
    done: pd.DataFrame,
    base: pd.DataFrame,
    variant: str,
    reference: str | None,
    margin_pct: float | None = None,
    design: Design = FIXED,
) -> dict:
    """tok_per_s_delta_pct with its interval, p, test and seeds paired; the verdict comes later.
    Arms that did not interleave in time are not tested: verdict `confounded` (timing.py)."""
    values = dict.fromkeys(("delta_pct", "delta_pct_ci_low", "delta_pct_ci_high", "p", "tost_p"), math.nan)
    values.update(test="", n_paired=0, verdict=BASELINE if variant == reference else NO_BASELINE, mixing=math.nan)
    measured = done[np.isfinite(done[SPEED].to_numpy(dtype=float))]
    if measured.empty:
        values["verdict"] = ""
    elif reference is not None and variant != reference:
        base_measured = base[np.isfinite(base[SPEED].to_numpy(dtype=float))]
        differs = speed_context_difference(pd.concat([measured, base_measured]))
        if differs:
            values["verdict"] = f"{NOT_COMPARED}: {differs}"
            return {f"{SPEED}_{name}": value for name, value in values.items()}
        pairs, base_pairs, note = speed_pairs(measured, base_measured)
        values["mixing"] = note.get("mixing", math.nan)
        if note.get("confounded"):
            values["verdict"] = CONFOUNDED
            return {**{f"{SPEED}_{name}": value for name, value in values.items()}, "speed_note": note["text"]}
        result = ratio_compare(pairs, base_pairs)
        looks_n, pivotal = _look(result.test, result.n_paired, result.n_variant, result.n_baseline)
        if design.sequential and result.test != NO_TEST:
            result = ratio_compare(pairs, base_pairs, alpha=design.level(ALPHA, looks_n, pivotal))
        values.update(
            delta_pct=result.delta_pct,
            delta_pct_ci_low=result.low_pct,
            delta_pct_ci_high=result.high_pct,
            p=design.p_value(result.p_value, looks_n, pivotal),
            test=result.test,
            n_paired=result.n_paired,
            verdict="",
        )
        if margin_pct is not None and result.test != NO_TEST:
            tost = tost_ratio(pairs, base_pairs, margin_pct, paired=result.test == PAIRED)
            values["tost_p"] = design.one_sided_p_value(tost, looks_n, pivotal)
    return {f"{SPEED}_{name}": value for name, value in values.items()}


def speed_pairs(measured: pd.DataFrame, base: pd.DataFrame) -> tuple[list, list, dict]:
    """(seed, tok/s) of each side as the speed test should see them, and what timing decided
    (timing.speed_design): confounded; paired by seed; or Welch on every run, the seeds relabelled
    apart so that nothing pairs. Times unknown: paired by seed, as stats.ratio_compare does."""
    pairs, base_pairs = _pairs(measured, SPEED), _pairs(base, SPEED)
    v_times, b_times = timing.times(measured), timing.times(base)
    if v_times is None or b_times is None:
        return pairs, base_pairs, {"unknown": True}
    design, mixing, disjoint = timing.speed_design((list(measured["seed"]), *v_times), (list(base["seed"]), *b_times))
    if design == timing.CONFOUNDED:
        note = timing.confounded_note(mixing, disjoint)
        return pairs, base_pairs, {"confounded": True, "mixing": mixing, "text": note}
    if design == timing.PAIRED:
        return pairs, base_pairs, {"mixing": mixing}
    return [(("variant", s), v) for s, v in pairs], [(("baseline", s), v) for s, v in base_pairs], {"mixing": mixing}


def _pairing_note(row: dict, done: pd.DataFrame, base: pd.DataFrame, variant: str, reference: str | None) -> dict:
    """Say when a paired test used only the shared seeds, or Welch ran because too few were shared."""
    if reference is None or variant == reference or row["val_bpb_test"] in ("", NO_TEST):
        return {}
    bpb = [(s, v) for s, v in _pairs(done, "final_val_bpb") if math.isfinite(v)]
    base_bpb = [(s, v) for s, v in _pairs(base, "final_val_bpb") if math.isfinite(v)]
    shared = shared_seeds(bpb, base_bpb)
    if row["val_bpb_test"] == PAIRED and len(shared) < max(len(bpb), len(base_bpb)):
        return {"pairing_note": f"paired on the {len(shared)} seeds shared with the baseline ({_seed_list(shared)})"}
    if row["val_bpb_test"] != PAIRED:
        return {"pairing_note": f"{len(shared)} seed(s) shared with the baseline: Welch (pairing needs 2)"}
    return {}


def _seed_list(seeds: Sequence[int]) -> str:
    return ",".join(_seed_text(s) for s in seeds)


def _seed_text(seed: Any) -> str:
    """Seeds are integers, even when the column is float because an unreadable run has none."""
    return str(int(seed)) if isinstance(seed, float) and seed.is_integer() else str(seed)


def family_columns(frame: pd.DataFrame, keys: Sequence[str] = TESTED, suffixes: Sequence[str] = ("p", "tost_p")):
    """The p-value columns of a table that belong to the Holm family (those it has)."""
    return [f"{key}_{suffix}" for key in keys for suffix in suffixes if f"{key}_{suffix}" in frame]


def judge(
    table: pd.DataFrame,
    interactions: pd.DataFrame | None = None,
    margins: Margins = NO_MARGINS,
    design: Design = FIXED,
) -> int:
    """Holm over every p-value of the table (and of the interactions) at once, then every verdict
    from the adjusted values, and the detectable differences at the level the verdicts use: alpha / m,
    Holm's first step over the m tests (a true difference that size is found at least that often;
    under a sequential design, at the nominal level of this look). Returns m."""
    frames = [(table, family_columns(table))]
    if interactions is not None and not interactions.empty:
        frames.append((interactions, [c for c in INTERACTION_FAMILY if c in interactions]))
    raw = np.concatenate([frame[columns].to_numpy(dtype=float).ravel() for frame, columns in frames])
    adjusted = holm(raw)
    tests = int(np.isfinite(raw).sum())
    start = 0
    for frame, columns in frames:
        block = adjusted[start : start + len(frame) * len(columns)].reshape(len(frame), len(columns))
        start += len(frame) * len(columns)
        for i, column in enumerate(columns):
            frame[f"{column}_adjusted"] = block[:, i]
    power_alpha = ALPHA / max(tests, 1)
    table["mdd_alpha"] = power_alpha
    table["holm_tests"] = tests
    for metric in METRICS:
        prefix = metric.key
        table[f"{prefix}_mdd"] = [
            min_detectable_difference(
                r[f"{prefix}_se"], r[f"{prefix}_dof"], _power_level(r, prefix, power_alpha, design)
            )
            if math.isfinite(r[f"{prefix}_se"])
            else math.nan
            for _, r in table.iterrows()
        ]
        pending = _revisable(table[f"{prefix}_verdict"]) & (table[f"{prefix}_test"] != "")
        margin = margins.for_key(prefix)
        table.loc[pending, f"{prefix}_verdict"] = [
            _verdict(
                metric.higher_is_better,
                r[f"{prefix}_delta"],
                r[f"{prefix}_p_adjusted"],
                r[f"{prefix}_test"],
                r.get(f"{prefix}_tost_p_adjusted", math.nan),
                margin,
            )  # fmt: skip
            for _, r in table[pending].iterrows()
        ]
    pending = _revisable(table[f"{SPEED}_verdict"]) & (table[f"{SPEED}_test"] != "")
    table.loc[pending, f"{SPEED}_verdict"] = [
        _speed_verdict(
            r[f"{SPEED}_delta_pct"],
            r[f"{SPEED}_p_adjusted"],
            r[f"{SPEED}_test"],
            r.get(f"{SPEED}_tost_p_adjusted", math.nan),
            margins.speed,
        )  # fmt: skip
        for _, r in table[pending].iterrows()
    ]
    if interactions is not None and not interactions.empty:
        judge_interactions(interactions, margins)
    return tests


def _power_level(row: pd.Series, prefix: str, alpha: float, design: Design) -> float:
    """The nominal level at which this row's test rejects at overall level `alpha`."""
    if not design.sequential:
        return alpha
    paired = row[f"{prefix}_test"] == PAIRED
    n = int(row[f"{prefix}_n_paired"]) if paired else int(row["n_seeds"])
    return design.level(alpha, n, pivotal=paired)


def _revisable(verdicts: pd.Series) -> pd.Series:
    """Verdicts a test decides, which a second judgement (with the interactions in the family) may
    revise: not yet given, or given from a p-value. Baseline, one seed, not compared, confounded stay."""
    decided = {BETTER, WORSE, FASTER, SLOWER, NOT_SIGNIFICANT, ""}
    return verdicts.isin(decided) | verdicts.str.startswith("equivalent within")


def _verdict(
    higher_is_better: bool,
    difference: float,
    p_adjusted: float,
    test: str,
    tost_adjusted: float = math.nan,
    margin: float | None = None,
) -> str:
    if test == NO_TEST:
        return SINGLE_SEED
    if p_adjusted < ALPHA:
        return BETTER if (difference > 0) == higher_is_better else WORSE
    if margin is not None and tost_adjusted < ALPHA:
        return EQUIVALENT.format(margin=f"{margin:g}")
    return NOT_SIGNIFICANT


def _speed_verdict(
    delta_pct: float, p_adjusted: float, test: str, tost_adjusted: float = math.nan, margin: float | None = None
) -> str:
    if test == NO_TEST:
        return SINGLE_SEED
    if p_adjusted < ALPHA:
        return FASTER if delta_pct > 0 else SLOWER
    if margin is not None and tost_adjusted < ALPHA:
        return EQUIVALENT.format(margin=f"{margin:g}%")
    return NOT_SIGNIFICANT


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
    header, body = _table_cells(rows, keys, has_core)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _table_cells(rows: pd.DataFrame, keys: list[str], has_core: bool) -> tuple[list[str], list[list[str]]]:
    """The comparison table's header and cells, as the Markdown and LaTeX tables both show them."""
    variant_header = keys or ["variant"]
    header = [*variant_header, "seeds", "val bpb (95% CI)", "Δ val bpb [95% CI]", "p / Holm p", "detectable Δ"]
    if has_core:
        header += ["CORE (95% CI)", "Δ CORE [95% CI]", "p / Holm p (CORE)", "detectable Δ CORE"]
    header += ["tok/s", "Δ tok/s [95% CI]", "p / Holm p (tok/s)", "quality", "speed"]
    show_others = (rows["not_completed"] != "").any()
    show_notes = (rows["note"] != "").any()
    header += (["not completed"] if show_others else []) + (["note"] if show_notes else [])
    body = []
    for _, row in rows.iterrows():
        cells = _variant_cells(row, keys)
        cells += [_seeds(row), _mean_ci(row, "val_bpb", 4), *_delta_cells(row, "val_bpb", 4)]
        if has_core:
            cells += [_mean_ci(row, "core", 4), *_delta_cells(row, "core", 4)]
        tok_per_s = _format(row["tok_per_s_mean"], ",.0f")
        if row["mixed_launch"] and row["launch"]:
            tok_per_s += f" ({row['launch']} ranks x accum)"
        cells += [tok_per_s, *_speed_cells(row)]
        cells += [_verdicts(row, has_core), row["tok_per_s_verdict"]]
        cells += [row["not_completed"]] if show_others else []
        cells += [row["note"].replace("|", "\\|")] if show_notes else []
        body.append(cells)
    return header, body


def comparison_latex(table: pd.DataFrame, variant_keys: Sequence[str]) -> str:
    """The comparison table as LaTeX (booktabs), one table per depth, the same cells as the Markdown."""
    if table.empty:
        return "% No runs found.\n"
    has_core = table["core_mean"].notna().any()
    parts = []
    for depth, rows in table.groupby("depth", sort=True):
        header, body = _table_cells(rows, list(variant_keys), has_core)
        plain = [[cell.replace("**", "").replace("\\|", "|") for cell in cells] for cells in body]
        frame = pd.DataFrame(plain, columns=header)
        baseline = rows.loc[rows["is_baseline"], "variant"]
        caption = f"depth {depth}: difference to the baseline" + (
            f" ({baseline.iloc[0]})" if len(baseline) else " (no baseline)"
        )
        latex = frame.style.hide(axis="index").to_latex(
            hrules=True, caption=_latex_escape(caption), position="htbp", column_format="l" * len(header)
        )
        parts.append(_latex_cells(latex))
    head = "% Generated by harness.report (comparison.csv holds every number); needs \\usepackage{booktabs}.\n"
    return head + "\n".join(parts)


LATEX_SYMBOLS = (("Δ", r"$\Delta$"), ("±", r"$\pm$"), ("−", "$-$"), ("α", r"$\alpha$"), ("≥", r"$\geq$"))


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def _latex_cells(latex: str) -> str:
    """Escape what LaTeX reads as commands in the cells (%, _, &, #) and write symbols in math mode."""
    lines = []
    for line in latex.splitlines():
        if line.startswith("\\") and not line.startswith("\\caption"):
            lines.append(line)
            continue
        if not line.startswith("\\caption"):
            line = line.replace("%", r"\%").replace("_", r"\_").replace("#", r"\#")
        for symbol, math_text in LATEX_SYMBOLS:
            line = line.replace(symbol, math_text)
        lines.append(line)
    return "\n".join(lines) + "\n"


def save_latex(table: pd.DataFrame, variant_keys: Sequence[str], out_dir: str | os.PathLike) -> Path:
    """comparison.tex beside comparison.md (`ablate-report --latex`)."""
    path = Path(out_dir) / "comparison.tex"
    path.write_text(comparison_latex(table, variant_keys))
    return path


def _variant_cells(row: pd.Series, keys: list[str]) -> list[str]:
    cells = [_key_value(row[k]) for k in keys] if keys else [str(row["variant"])]
    return [f"**{c}**" for c in cells] if row["is_baseline"] else cells


def _key_value(value: Any) -> str:
    """A searched float as 4 significant digits (runs.csv and comparison.csv keep every digit)."""
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        return f"{value:.4g}"
    return str(value)


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
    p_text = _p_text(row, key)
    return [_signed(delta, digits) + interval, p_text, _format(row[f"{key}_mdd"], f".{digits}f")]


def _speed_cells(row: pd.Series) -> list[str]:
    delta = row[f"{SPEED}_delta_pct"]
    if not math.isfinite(delta):
        return ["—", "—"]
    low, high = row[f"{SPEED}_delta_pct_ci_low"], row[f"{SPEED}_delta_pct_ci_high"]
    if math.isfinite(low) and math.isfinite(high):
        interval = f" [{_signed(low, 1)}%, {_signed(high, 1)}%]"
    elif math.isinf(low) or math.isinf(high):
        # Fieller's interval when the baseline's mean is not distinguishable from 0: no finite bounds.
        interval = " [unbounded]"
    else:
        interval = ""
    return [f"{_signed(delta, 1)}%{interval}", _p_text(row, SPEED)]


def _p_text(row: pd.Series, key: str) -> str:
    """`raw / Holm-adjusted (test)`; a paired test on fewer seeds than either side ran says how many."""
    p, adjusted = row[f"{key}_p"], row[f"{key}_p_adjusted"]
    if not math.isfinite(p):
        return "—"
    test = row[f"{key}_test"]
    if test == PAIRED:
        test = f"paired, {int(row[f'{key}_n_paired'])} seeds"
    return f"{_p(p)} / {_p(adjusted)} ({test})"


def _p(p: float) -> str:
    return "—" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


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
    counts = {key: int(table[f"{key}_p"].notna().sum()) for key in TESTED}
    names = {"val_bpb": "val bpb", "core": "CORE", SPEED: "speed"}
    parts = ", ".join(f"{names[k]} {n}" for k, n in counts.items() if n or k != "core")
    equivalence = sum(int(table[c].notna().sum()) for c in family_columns(table, suffixes=("tost_p",)))
    tests = int(table["holm_tests"].iloc[0]) if "holm_tests" in table else sum(counts.values())
    interactions = tests - sum(counts.values()) - equivalence
    parts += f", equivalence {equivalence}" if equivalence else ""
    parts += f", interactions {interactions}" if interactions > 0 else ""
    alpha = float(table["mdd_alpha"].iloc[0]) if "mdd_alpha" in table else ALPHA
    power_level = f"α = {ALPHA}/{tests} = {alpha:.2g} (Holm's first step over the {tests} tests)"
    power_level = power_level if tests > 1 else f"α = {ALPHA}"
    words = f"{BETTER}/{WORSE}, {FASTER}/{SLOWER}"
    null = (
        'a null result reads "equivalent within ±m" only when both one-sided tests (TOST, margin m) reject '
        'at the adjusted level, else "not significant", which is not evidence of no difference'
    )
    speed_time = (
        f"speed is `{CONFOUNDED}` (not tested) when the variant's runs and the baseline's did not interleave in "
        "time (start-order mixing outside 0.25-0.75, and not side by side), since machine drift is then not "
        "cancelled; `harness.bench ab` "
        "interleaves. tok/s pairs by seed only when each seed's two runs shared a time window, else Welch. "
    )
    tested = table[f"{SPEED}_test"].isin([PAIRED, "welch"])
    if f"{SPEED}_mixing" in table and (tested & table[f"{SPEED}_mixing"].isna()).any():
        speed_time += "Some speed rows' runs did not record start and end, so their interleaving was not checked. "
    metrics = "val bpb: lower is better; CORE: higher is better" if has_core else "val bpb: lower is better"
    family = (
        f"Holm p: adjusted over all {tests} tests of this table ({parts}), which keeps the chance of any "
        f"false verdict at α = {ALPHA}; the verdicts use it. "
        if tests
        else ""
    )
    return (
        f"Completed runs only; Δ = variant − baseline ({metrics}). Means with 95% t intervals over "
        "seeds. p: paired t-test on the seeds variant and baseline share (when at least 2 are shared), "
        f"Welch's t-test otherwise. {family}detectable Δ: the smallest true difference this design finds "
        f"with 80% power at {power_level}, so the verdict ({words}) finds it at least that often, given the "
        f"observed seed-to-seed spread; {null}. {speed_time}Δ tok/s: the relative difference "
        "of the mean of each run's steady-state median tok/s, with Fieller's 95% interval (the ratios the same "
        "t-test does not reject); runs on different devices, world sizes or batch sizes are not compared for "
        "speed. quality and speed are separate verdicts. A variant with one seed has no interval and is "
        "never called significant."
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
    number of seeds) could detect with it, paired and unpaired, at the level the verdicts use
    (`alpha`: the table's `mdd_alpha`, Holm's first step)."""
    rows = []
    alpha = float(table["mdd_alpha"].iloc[0]) if "mdd_alpha" in table and len(table) else ALPHA
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
                        "alpha": alpha,
                        "mdd_paired": design_min_detectable(paired_sd, seeds, paired=True, alpha=alpha),
                        "mdd_unpaired": design_min_detectable(sd, seeds, paired=False, alpha=alpha),
                    }
                )
    return pd.DataFrame(rows)


def _paired_differences(runs: pd.DataFrame, column: str, baseline: str) -> list[np.ndarray]:
    """Per variant sharing at least two seeds with the baseline: its per-seed differences on those."""
    base = runs[runs["variant"] == baseline].dropna(subset=[column])
    base_pairs = _pairs(base, column)
    diffs = []
    for _, group in runs[runs["variant"] != baseline].dropna(subset=[column]).groupby("variant"):
        pairs = _pairs(group, column)
        shared = shared_seeds(pairs, base_pairs)
        if len(shared) >= 2:
            v, b = dict(pairs), dict(base_pairs)
            diffs.append(np.array([v[s] - b[s] for s in shared]))
    return diffs
