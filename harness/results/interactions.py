"""Interactions in a factorial sweep: does one axis's effect depend on another's level?

For two axes A and B of a sweep that crosses them, with the baseline's levels a0 and b0 and any
other levels a1 and b1 (every other axis at the baseline's value), the interaction is the
difference of differences

    [Y(a1, b1) - Y(a0, b1)] - [Y(a1, b0) - Y(a0, b0)]

(e.g. Δ(chunk − slice | fp8) − Δ(chunk − slice | bf16)). Paired by seed where at least two seeds
ran all four cells: a one-sample t-test of the per-seed difference of differences. Otherwise the
two-way analysis of variance with one pooled spread over the four cells (OLS with an interaction
term). val bpb and CORE are absolute; speed is the ratio of ratios of tok/s, in percent, tested on
the log scale (so "the speed-up is 3% smaller under B"). Speed cells that did not interleave in time
(timing.py) or ran on different devices or batches are not tested.

One row per depth, pair of axes and pair of level changes (`interactions.csv`), with
`<metric>_interaction`, `_ci_low`, `_ci_high`, `_p`, `_p_adjusted` (Holm, in the same family as the
comparison table) and, with an equivalence margin, `_tost_p` / `_tost_p_adjusted`. Verdict:
`depends on <B>` when the adjusted p is below alpha, `equivalent within ±m` when the TOST says so,
else `no evidence of interaction`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from harness.results import timing
from harness.results.collect import Collection
from harness.results.equivalence import NO_MARGINS, Margins
from harness.results.sequential import FIXED, Design
from harness.results.stats import ALPHA

METRIC_COLUMNS = {"val_bpb": "final_val_bpb", "core": "core", "tok_per_s": "tok_per_s"}
INTERACTION_FAMILY = tuple(f"{key}_interaction{suffix}" for key in METRIC_COLUMNS for suffix in ("_p", "_tost_p"))
DEPENDS, NO_EVIDENCE = "depends on {axis}", "no evidence of interaction"
LOG_SPEED = "tok_per_s"


def interaction_table(
    collection: Collection,
    baselines: Mapping[int, str],
    margins: Margins = NO_MARGINS,
    design: Design = FIXED,
) -> pd.DataFrame:
    """Every 2x2 sub-grid with the baseline in a corner, at each depth with a baseline."""
    keys = list(collection.variant_keys)
    rows = []
    if len(keys) < 2:
        return pd.DataFrame()
    done = collection.completed()
    for depth, reference in sorted(baselines.items()):
        at_depth = done[done["depth"] == depth]
        base_runs = at_depth[at_depth["variant"] == reference]
        if base_runs.empty:
            continue
        base_levels = {k: base_runs[k].iloc[0] for k in keys}
        for axis_a, axis_b in itertools.combinations(keys, 2):
            fixed = [k for k in keys if k not in (axis_a, axis_b)]
            grid = at_depth
            for key in fixed:
                grid = grid[grid[key] == base_levels[key]]
            levels_a = [v for v in _levels(grid, axis_a) if v != base_levels[axis_a]]
            levels_b = [v for v in _levels(grid, axis_b) if v != base_levels[axis_b]]
            for a1, b1 in itertools.product(levels_a, levels_b):
                cells = {
                    (i, j): grid[
                        (grid[axis_a] == (a1 if i else base_levels[axis_a]))
                        & (grid[axis_b] == (b1 if j else base_levels[axis_b]))
                    ]  # fmt: skip
                    for i in (0, 1)
                    for j in (0, 1)
                }
                if any(cell.empty for cell in cells.values()):
                    continue
                row = {
                    "depth": depth,
                    "axis": axis_a,
                    "change": f"{base_levels[axis_a]} → {a1}",
                    "by_axis": axis_b,
                    "by_change": f"{base_levels[axis_b]} → {b1}",
                }
                for key, column in METRIC_COLUMNS.items():
                    row.update(_metric(key, column, cells, margins.for_key(key), design))
                rows.append(row)
    return pd.DataFrame(rows)


def _levels(runs: pd.DataFrame, key: str) -> list:
    return list(dict.fromkeys(runs[key].tolist()))


def _metric(key: str, column: str, cells: dict, margin: float | None, design: Design = FIXED) -> dict:
    names = ("", "_ci_low", "_ci_high", "_p", "_tost_p")
    out = {f"{key}_interaction{n}": math.nan for n in names}
    out.update({f"{key}_interaction_test": "", f"{key}_interaction_n_paired": 0, f"{key}_interaction_verdict": ""})
    values = {c: runs[["seed", column]].dropna() for c, runs in cells.items()}
    if key == LOG_SPEED:
        if not _speed_comparable(cells):
            out[f"{key}_interaction_verdict"] = timing.CONFOUNDED
            return out
        values = {c: v.assign(**{column: np.log(v[column].astype(float))}) for c, v in values.items()}
    if any(v.empty for v in values.values()):
        return out
    result = difference_of_differences(values, column, margin if key != LOG_SPEED else _log_margin(margin), design)
    if result is None:
        return out
    estimate, low, high, p, tost_p, test, n_paired = result
    if key == LOG_SPEED:  # the ratio of ratios, in percent
        estimate, low, high = (100 * math.expm1(x) for x in (estimate, low, high))
    out.update(
        {
            f"{key}_interaction": estimate,
            f"{key}_interaction_ci_low": low,
            f"{key}_interaction_ci_high": high,
            f"{key}_interaction_p": p,
            f"{key}_interaction_tost_p": tost_p,
            f"{key}_interaction_test": test,
            f"{key}_interaction_n_paired": n_paired,
        }
    )
    return out


def _log_margin(margin_pct: float | None) -> float | None:
    return None if margin_pct is None else math.log1p(margin_pct / 100)


def _speed_comparable(cells: dict) -> bool:
    """The four cells ran interleaved: the + cells (a1b1, a0b0) mix with the - cells (a1b0, a0b1)."""
    from harness.results.compare import speed_context_difference

    every = pd.concat(list(cells.values()))
    if speed_context_difference(every):
        return False
    plus = pd.concat([cells[(1, 1)], cells[(0, 0)]])
    minus = pd.concat([cells[(1, 0)], cells[(0, 1)]])
    plus_times, minus_times = timing.times(plus), timing.times(minus)
    if plus_times is None or minus_times is None:
        return True
    return timing.interleaved(plus_times, minus_times)


def difference_of_differences(values: dict, column: str, margin: float | None, design: Design = FIXED):
    """(estimate, ci low, ci high, p, TOST p, test, seeds paired) or None when nothing can be tested."""
    by_seed = {c: v.groupby("seed")[column].agg(["count", "first"]) for c, v in values.items()}
    shared = set.intersection(*({s for s, r in frame.iterrows() if r["count"] == 1} for frame in by_seed.values()))
    if len(shared) >= 2:
        seeds = sorted(shared)
        cell = {c: frame.loc[seeds, "first"].to_numpy(dtype=float) for c, frame in by_seed.items()}
        dd = cell[(1, 1)] - cell[(0, 1)] - cell[(1, 0)] + cell[(0, 0)]
        n = len(dd)
        estimate, sd = float(dd.mean()), float(dd.std(ddof=1))
        return _t_result(estimate, sd / math.sqrt(n), n - 1, margin, "paired", n, design.sequential and (design, n))
    means = {c: float(v[column].astype(float).mean()) for c, v in values.items()}
    counts = {c: len(v) for c, v in values.items()}
    dof = sum(counts.values()) - 4
    if dof < 1:
        return None
    squares = sum(float(((v[column].astype(float) - means[c]) ** 2).sum()) for c, v in values.items())
    pooled = squares / dof
    se = math.sqrt(pooled * sum(1 / n for n in counts.values()))
    estimate = means[(1, 1)] - means[(0, 1)] - means[(1, 0)] + means[(0, 0)]
    return _t_result(estimate, se, dof, margin, "two-way", 0, design.sequential and (design, min(counts.values())))


def _t_result(estimate: float, se: float, dof: float, margin: float | None, test: str, n_paired: int, look=None):
    """The t-test of the interaction, its interval and TOST; `look` (design, seeds): a sequential
    design's p at this look and its repeated confidence interval (sequential.py)."""
    if not se > 0:
        return None
    level = look[0].level(ALPHA, look[1], pivotal=test == "paired") if look else ALPHA
    crit = stats.t.ppf(1 - level / 2, dof)
    t = estimate / se
    p = float(2 * stats.t.sf(abs(t), dof))
    tost_p = math.nan
    if margin is not None:
        tost_p = float(max(stats.t.sf((estimate + margin) / se, dof), stats.t.cdf((estimate - margin) / se, dof)))
    if look:
        design, n = look
        p = design.p_value(p, n, pivotal=test == "paired")
        tost_p = design.one_sided_p_value(tost_p, n, pivotal=test == "paired")
    return estimate, estimate - crit * se, estimate + crit * se, p, tost_p, test, n_paired


def judge_interactions(table: pd.DataFrame, margins: Margins = NO_MARGINS) -> None:
    """Verdicts from the adjusted p-values (compare.judge adjusts them with the comparison table's)."""
    for key in METRIC_COLUMNS:
        verdicts = []
        margin = margins.for_key(key)
        for _, row in table.iterrows():
            verdict = row[f"{key}_interaction_verdict"]
            if verdict == timing.CONFOUNDED or not math.isfinite(row[f"{key}_interaction_p"]):
                verdicts.append(verdict)
            elif row[f"{key}_interaction_p_adjusted"] < ALPHA:
                verdicts.append(DEPENDS.format(axis=row["by_axis"]))
            elif margin is not None and row.get(f"{key}_interaction_tost_p_adjusted", math.nan) < ALPHA:
                verdicts.append(f"equivalent within ±{margin:g}{'%' if key == LOG_SPEED else ''}")
            else:
                verdicts.append(NO_EVIDENCE)
        table[f"{key}_interaction_verdict"] = verdicts


def interactions_markdown(table: pd.DataFrame) -> str:
    """The report.md section's table: one row per interaction, bpb, CORE and speed."""
    if table.empty:
        return ""
    has_core = table["core_interaction"].notna().any()
    header = ["depth", "effect of", "change", "by", "its change", "val bpb [95% CI]", "p / Holm p", "verdict"]
    if has_core:
        header += ["CORE [95% CI]", "p / Holm p (CORE)", "verdict (CORE)"]
    header += ["tok/s [95% CI]", "p / Holm p (tok/s)", "verdict (tok/s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    keys = ["val_bpb", *(["core"] if has_core else []), "tok_per_s"]
    for _, row in table.iterrows():
        cells = [str(row["depth"]), f"`{row['axis']}`", str(row["change"])]
        cells += [f"`{row['by_axis']}`", str(row["by_change"])]
        for key in keys:
            cells += _cells(row, key)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cells(row: pd.Series, key: str) -> list[str]:
    estimate = row[f"{key}_interaction"]
    verdict = row[f"{key}_interaction_verdict"] or "—"
    if not math.isfinite(estimate):
        return ["—", "—", verdict]
    unit, digits = ("%", 1) if key == LOG_SPEED else ("", 4)
    low, high = row[f"{key}_interaction_ci_low"], row[f"{key}_interaction_ci_high"]

    def signed(x: float) -> str:
        return f"{x:+.{digits}f}{unit}".replace("-", "−")

    p, adjusted = row[f"{key}_interaction_p"], row[f"{key}_interaction_p_adjusted"]
    test = row[f"{key}_interaction_test"]
    test = f"paired, {int(row[f'{key}_interaction_n_paired'])} seeds" if test == "paired" else test
    return [f"{signed(estimate)} [{signed(low)}, {signed(high)}]", f"{_p(p)} / {_p(adjusted)} ({test})", verdict]


def _p(p: float) -> str:
    return "—" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def interactions_legend(margins: Margins) -> str:
    margin = f" Equivalence margins: {margins.text()}." if margins.any else ""
    return (
        "Interaction = [Y(a1, b1) − Y(a0, b1)] − [Y(a1, b0) − Y(a0, b0)], the baseline's levels a0 and b0, every "
        "other axis at the baseline's value: how much the effect of the first axis's change moves when the second "
        "axis changes. Paired by seed on the seeds that ran all four cells (at least 2), else two-way ANOVA with "
        "one pooled spread. tok/s: the ratio of ratios − 1, tested on log tok/s. p-values are in the same Holm "
        f'family as the comparison table. "no evidence of interaction" is not evidence of none.{margin}'
    )


def write_interactions(table: pd.DataFrame, out_dir, columns: Sequence[str] | None = None) -> None:
    from pathlib import Path

    table.to_csv(Path(out_dir) / "interactions.csv", index=False, columns=columns)
