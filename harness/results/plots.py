"""Plots of a collected sweep, written as PNG and SVG.

- the difference to the baseline over training: per variant, val bpb minus the baseline's at each
  evaluation, paired by seed, the mean over shared seeds with its 95% t band.
- curves: train loss and val bpb against tokens, step, training time and FLOPs, each x axis drawn
  only when it is not one multiple of an axis already drawn (the same picture relabelled); one
  panel per depth, variants overlaid as the mean over seeds with a min-max band; runs that did not
  complete drawn dotted on their own. Train loss is an EMA (0.9, debiased, as the recipe logs it).
  The zoom starts halfway through the shortest variant, so the baseline is in it on the time axis.
- final val bpb per variant (every seed, the mean and its 95% interval) and beside it the paired
  difference to the baseline with its 95% interval (unpaired intervals overlap even when the
  paired difference is clear), one row per depth.
- scaling: final val bpb against depth and against training FLOPs, per variant (two depths or more).
- CORE per task: heat maps of centered accuracy, and of the difference to the baseline with its
  95% half-width in each cell, cells whose interval holds 0 faded (only when CORE was measured).
- throughput per variant: tok/s with seeds and interval on an axis fitted to the data, and the
  relative difference to the baseline with its interval (the report's speed statistic), MFU when measured.

- a hyperparameter search: the objective against each searched key, and the optimisation history.

The baseline comes first; variants differ by colour and marker (and line style in curves), unique
past ten variants; a one-seed variant is labelled "n=1" rather than drawn with a zero-length bar;
the p-values written beside the data are the Holm-adjusted ones the verdicts use; a Fieller
interval without finite bounds is drawn across the panel and labelled "unbounded"; an axis of a
quantity that cannot be negative starts at 0 or above.

Each function returns a matplotlib Figure, or None when the sweep has nothing to show, so tests
can count panels and lines. Figures use matplotlib's object API on the Agg canvas (no pyplot, no
display, no global state).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter
from scipy import stats

from harness.results.collect import COMPLETED, CORE_PREFIX, Collection
from harness.results.compare import speed_context_difference, speed_pairs
from harness.results.stats import NO_TEST, PAIRED, compare, mean_interval, ratio_compare

EMA_BETA = 0.9
# In the order a plot is kept when two draw the same picture (curve_axes): tokens before steps.
X_AXES = {
    "tokens": "training tokens",
    "step": "optimizer step",
    "time_s": "training time, evaluation excluded",
    "flops": "training compute (FLOPs)",
}
CURVE_METRICS = {
    "train_loss": "train loss (nats/token, EMA 0.9)",
    "val_bpb": "validation bits per byte",
}
LINESTYLES = ("-", "--", "-.", (0, (6, 2, 1, 2, 1, 2)))
# Twenty-two distinct markers; past them the colours (unique per variant) still tell variants apart.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "H", "d", "8", "1", "2", "3", "4", "+", "x", "|")
INCOMPLETE_STYLE = ":"
BASELINE_COLOR = "black"
PANEL_WIDTH, PANEL_HEIGHT, LEGEND_WIDTH = 5.2, 3.8, 3.4
MIN_WIDTH = 7.0  # inches: room for a two-line title above a single panel
MAX_COLUMNS = 4
# Curves with this few points per run (validation every N steps) get a marker at each point.
SPARSE_POINTS = 40
# A panel is ~800 pixels wide at DPI: a curve drawn with more points looks the same thinned (the EMA
# is taken over every point first), only slower to draw and larger as SVG.
MAX_PLOT_POINTS = 2000
DPI = 150


@dataclass(frozen=True)
class Style:
    color: str
    linestyle: object
    label: str
    linewidth: float
    marker: str = "o"


def ema(values: Sequence[float], beta: float = EMA_BETA) -> np.ndarray:
    """Debiased exponential moving average: the k-th output averages the first k inputs, weighted
    toward recent ones, without the pull toward zero of a plain EMA started at 0. A non-finite
    input is a gap (NaN out) and is skipped, so one NaN step cannot blank the rest of the curve."""
    out, smooth, seen = np.full(len(values), math.nan), 0.0, 0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            continue
        smooth, seen = beta * smooth + (1 - beta) * value, seen + 1
        out[i] = smooth / (1 - beta**seen)
    return out


def ordered_variants(variants, baselines: Mapping[int, str]) -> list[str]:
    """Variants in plotting order: the baselines first, then the others sorted."""
    baseline_set = set((baselines or {}).values())
    return sorted(set(variants), key=lambda v: (v not in baseline_set, v))


def _palette(n: int) -> list:
    """n distinct colours: tab10 up to ten, else n evenly spaced along a perceptual map (never repeating)."""
    if n <= len(colormaps["tab10"].colors):
        return list(colormaps["tab10"].colors)
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def variant_styles(collection: Collection, baselines: Mapping[int, str]) -> dict[str, Style]:
    """One colour and one marker per variant, the baseline first (black, thick); with two variant
    keys, colour by the key with more values and line style by the other, so a 4 x 2 grid reads as
    four colours in two styles. Past ten variants the colours come from a continuous map, so no two
    variants share a colour (nor a marker, up to 22)."""
    runs = collection.runs.drop_duplicates("variant").set_index("variant")
    order = ordered_variants(runs.index, baselines)
    runs = runs.loc[order].reset_index()
    keys = collection.variant_keys
    baseline_set = set(baselines.values())
    by_style = None
    if len(keys) == 2:
        colour_key, style_key = sorted(keys, key=lambda k: -runs[k].nunique())
        if runs[style_key].nunique() <= len(LINESTYLES):
            by_style = (colour_key, style_key)
    palette = _palette(runs[by_style[0]].nunique() if by_style else len(runs))
    styles = {}
    for i, (_, run) in enumerate(runs.iterrows()):
        label = " · ".join(_label_value(run[k]) for k in keys) if keys else str(run["variant"])
        if by_style:
            colour_values = list(dict.fromkeys(runs[by_style[0]]))
            style_values = list(dict.fromkeys(runs[by_style[1]]))
            color = palette[colour_values.index(run[by_style[0]]) % len(palette)]
            linestyle = LINESTYLES[style_values.index(run[by_style[1]])]
        else:
            color, linestyle = palette[i % len(palette)], LINESTYLES[0]
        is_baseline = run["variant"] in baseline_set
        if is_baseline and not by_style:
            color = BASELINE_COLOR
        label += " (baseline)" if is_baseline else ""
        # A marker of its own per variant: colours alone fail in greyscale and for colour-blind readers.
        styles[run["variant"]] = Style(color, linestyle, label, 2.4 if is_baseline else 1.4, MARKERS[i % len(MARKERS)])
    return styles


def _label_value(value) -> str:
    """A searched float reads as 4 significant digits (0.01234), not Optuna's 18."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return str(value)


def _legend_title(collection: Collection) -> str:
    return " · ".join(collection.variant_keys) or "variant"


def _figure(**kwargs) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global figure manager to leak into."""
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _panels(n: int, extra_width: float = LEGEND_WIDTH, height: float = PANEL_HEIGHT) -> tuple[Figure, list]:
    columns = min(n, 3)
    rows = math.ceil(n / columns)
    fig = _figure(figsize=(max(PANEL_WIDTH * columns + extra_width, MIN_WIDTH), height * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


# curves ------------------------------------------------------------------------------------
def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 180:
        return 1.0, "s"
    if seconds < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _series(by_run: Mapping[str, pd.DataFrame], run: str, metric: str, x: str) -> pd.DataFrame:
    """One run's metric as columns `x` and `value`, indexed by step; train loss smoothed."""
    if run not in by_run:
        return pd.DataFrame(columns=["x", "value"])
    rows = by_run[run].sort_values("step").drop_duplicates("step", keep="last")
    values = rows["value"].to_numpy()
    if metric == "train_loss":
        values = ema(values)
    return _thin(pd.DataFrame({"x": rows[x].to_numpy(), "value": values}, index=rows["step"].to_numpy()))


def _thin(series: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_PLOT_POINTS of a curve: the steps that are multiples of a power of two, and the
    last. Runs of one length keep the same steps, so their mean and band still line up."""
    if len(series) <= MAX_PLOT_POINTS:
        return series
    stride = 1 << math.ceil(math.log2(len(series) / MAX_PLOT_POINTS))
    keep = np.asarray(series.index) % stride == 0
    keep[-1] = True
    return series[keep]


def curve_figure(collection: Collection, metric: str, x: str, baselines: Mapping[int, str] | None = None):
    """`metric` against `x`, one column per depth: the whole run on top, the second half of training
    zoomed below (where variants separate). Per variant a mean line and a min-max band over seeds;
    runs that did not complete dotted on their own."""
    curves = collection.curves[collection.curves["metric"] == metric]
    if curves.empty or curves[x].isna().all():
        return None
    styles = variant_styles(collection, baselines or {})
    scale, unit = _time_unit(float(curves["time_s"].max())) if x == "time_s" else (1.0, "")
    by_run = dict(tuple(curves.groupby("run")))
    depths = collection.depths
    columns = min(len(depths), MAX_COLUMNS)
    block_rows = math.ceil(len(depths) / columns)
    fig = _figure(figsize=(PANEL_WIDTH * columns + LEGEND_WIDTH, PANEL_HEIGHT * 1.6 * block_rows))
    grid = fig.subplots(2 * block_rows, columns, squeeze=False, height_ratios=[1, 1.2] * block_rows)
    any_incomplete = False
    for i, depth in enumerate(depths):
        full, zoom = grid[2 * (i // columns), i % columns], grid[2 * (i // columns) + 1, i % columns]
        drawn = []
        runs = collection.runs[collection.runs["depth"] == depth]
        for variant, group in runs.groupby("variant", sort=True):
            for ax in (full, zoom):
                covered, incomplete = _draw_variant(ax, group, by_run, metric, x, scale, styles[variant])
                drawn += covered
                any_incomplete |= incomplete
        _set_limits(full, zoom, drawn)
        full.set_title(f"depth {depth}: whole run")
        zoom.set_title(f"depth {depth}: second half of training (zoom)")
        for ax in (full, zoom):
            ax.set_xlabel(f"{X_AXES[x]} ({unit})" if unit else X_AXES[x])
            ax.set_ylabel(CURVE_METRICS.get(metric, metric))
            ax.grid(alpha=0.3)
            if x == "tokens":
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    for ax in grid.ravel()[2 * len(depths) :]:
        ax.remove()
    _variant_legend(fig, collection, styles, any_incomplete, bands=True)
    fig.suptitle(f"{CURVE_METRICS.get(metric, metric).split(' (')[0]} vs {X_AXES[x].split(' (')[0]}")
    return fig


def _draw_variant(ax, group: pd.DataFrame, by_run, metric: str, x: str, scale: float, style: Style):
    """Mean and band of the variant's completed runs, dotted lines for the others. Returns the
    (x, low, high) arrays the completed runs cover, for fitting the axes, and whether a dotted
    line was drawn."""
    done = [_series(by_run, run, metric, x) for run in group.loc[group["status"] == COMPLETED, "run"]]
    done = [s for s in done if len(s)]
    marker = style.marker if done and max(len(s) for s in done) <= SPARSE_POINTS else None
    drawn = []
    if done:
        values = pd.concat([s["value"] for s in done], axis=1)
        xs = (pd.concat([s["x"] for s in done], axis=1).mean(axis=1) / scale).to_numpy()
        mean = values.mean(axis=1).to_numpy()
        low, high = values.min(axis=1).to_numpy(), values.max(axis=1).to_numpy()
        ax.plot(
            xs,
            mean,
            color=style.color,
            linestyle=style.linestyle,
            linewidth=style.linewidth,
            marker=marker,
            markersize=3,
        )
        if len(done) > 1:
            ax.fill_between(xs, low, high, color=style.color, alpha=0.15, linewidth=0)
        drawn.append((xs, low, high))
    incomplete = False
    for run in group.loc[group["status"] != COMPLETED, "run"]:
        rows = _series(by_run, run, metric, x)
        if len(rows):
            ax.plot(rows["x"] / scale, rows["value"], color=style.color, linestyle=INCOMPLETE_STYLE, linewidth=1.0)
            incomplete = True
    return drawn, incomplete


def _set_limits(full, zoom, drawn: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Both panels fit the completed runs only (a diverged run's blow-up cannot flatten the rest);
    the zoom starts halfway through the shortest variant's range, so every variant (the baseline
    included, when it finished sooner on the time axis) shows its second half. Steps, tokens, time,
    FLOPs, losses and bits per byte cannot be negative: neither can an axis."""
    finite = [(xs[ok], lo[ok], hi[ok]) for xs, lo, hi in drawn if (ok := np.isfinite(xs) & np.isfinite(lo)).any()]
    if not finite:
        return
    x_min = min(float(xs.min()) for xs, _, _ in finite)
    x_max = max(float(xs.max()) for xs, _, _ in finite)
    shortest = min(float(xs.max()) for xs, _, _ in finite)
    half = x_min + 0.5 * (shortest - x_min)
    for ax, start in ((full, x_min), (zoom, half)):
        inside = [(lo[xs >= start], hi[xs >= start]) for xs, lo, hi in finite]
        low = min((float(np.nanmin(lo)) for lo, _ in inside if len(lo)), default=math.nan)
        high = max((float(np.nanmax(hi)) for _, hi in inside if len(hi)), default=math.nan)
        if math.isfinite(low) and math.isfinite(high):
            margin = 0.06 * (high - low) or 0.01 * abs(high) or 0.01
            ax.set_ylim(max(low - margin, 0.0) if low >= 0 else low - margin, high + margin)
        pad = 0.02 * (x_max - start) or 0.5
        ax.set_xlim(max(start - pad, 0.0) if start >= 0 else start - pad, x_max + pad)


def _variant_legend(
    fig: Figure, collection: Collection, styles: Mapping[str, Style], incomplete: bool, bands: bool = False
) -> None:
    present = set(collection.runs["variant"])
    handles = [
        Line2D([], [], color=s.color, linestyle=s.linestyle, linewidth=s.linewidth, marker=s.marker, label=s.label)
        for variant, s in styles.items()
        if variant in present
    ]
    if bands:
        handles.append(Line2D([], [], color="grey", linewidth=1.4, label="mean over seeds"))
        handles.append(Patch(color="grey", alpha=0.25, label="min–max over seeds"))
    if incomplete:
        handles.append(Line2D([], [], color="grey", linestyle=INCOMPLETE_STYLE, label="run not completed"))
    fig.legend(
        handles=handles,
        loc="outside right upper",
        title=_legend_title(collection),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )


# difference to the baseline over training --------------------------------------------------
def _paired_difference(by_run, variant_runs: pd.DataFrame, base_runs: pd.DataFrame, metric: str, x: str):
    """Per evaluation step both sides logged: x, the mean over shared seeds of variant − baseline,
    and its 95% t half-width (NaN with one seed). None when no seed is shared."""
    base = {s: r for s, r in zip(base_runs["seed"], base_runs["run"], strict=True)}
    diffs, xs = [], []
    for seed, run in zip(variant_runs["seed"], variant_runs["run"], strict=True):
        if seed not in base:
            continue
        v, b = _series(by_run, run, metric, x), _series(by_run, base[seed], metric, x)
        joined = v.join(b, how="inner", lsuffix="_v", rsuffix="_b")
        if len(joined):
            diffs.append(joined["value_v"] - joined["value_b"])
            xs.append(joined["x_b"])
    if not diffs:
        return None
    table = pd.concat(diffs, axis=1).dropna()
    if table.empty:
        return None
    n = table.shape[1]
    mean = table.mean(axis=1).to_numpy()
    half = np.full(len(table), math.nan)
    if n > 1:
        half = stats.t.ppf(0.975, n - 1) * table.std(axis=1, ddof=1).to_numpy() / math.sqrt(n)
    x_values = pd.concat(xs, axis=1).loc[table.index].mean(axis=1).to_numpy()
    return x_values, mean, half, n


def difference_curve_figure(
    collection: Collection, baselines: Mapping[int, str] | None = None, metric: str = "val_bpb", x: str = "tokens"
):
    """Per depth, each variant's `metric` minus the baseline's over training, paired by seed (the
    same seed's runs share data order and initialisation, so their difference is mostly the effect),
    the mean over shared seeds with its 95% t band; a zero line is the baseline. None without a baseline."""
    baselines = baselines or {}
    curves = collection.curves[collection.curves["metric"] == metric]
    if curves.empty or not baselines:
        return None
    by_run = dict(tuple(curves.groupby("run")))
    done = collection.completed()
    styles = variant_styles(collection, baselines)
    drawn_depths = []
    per_depth = {}
    for depth in collection.depths:
        at_depth = done[done["depth"] == depth]
        reference = baselines.get(depth)
        base = at_depth[at_depth["variant"] == reference]
        lines = {}
        for variant in ordered_variants(at_depth["variant"].unique(), baselines):
            if variant == reference or base.empty:
                continue
            found = _paired_difference(by_run, at_depth[at_depth["variant"] == variant], base, metric, x)
            if found is not None:
                lines[variant] = found
        if lines:
            drawn_depths.append(depth)
            per_depth[depth] = lines
    if not drawn_depths:
        return None
    fig, axes = _panels(len(drawn_depths))
    for ax, depth in zip(axes, drawn_depths, strict=True):
        ax.axhline(0, color=BASELINE_COLOR, linewidth=1.6, label="baseline")
        for variant, (xs, mean, half, n) in per_depth[depth].items():
            style = styles[variant]
            marker = style.marker if len(xs) <= SPARSE_POINTS else None
            ax.plot(xs, mean, color=style.color, linestyle=style.linestyle, linewidth=style.linewidth,
                    marker=marker, markersize=3)  # fmt: skip
            if n > 1:
                ax.fill_between(xs, mean - half, mean + half, color=style.color, alpha=0.15, linewidth=0)
        ax.set_xlim(left=0)
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(f"Δ {CURVE_METRICS.get(metric, metric).split(' (')[0]} vs baseline")
        ax.set_title(f"depth {depth}: variant − baseline, paired by seed", fontsize=10)
        ax.grid(alpha=0.3)
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    handles = [Line2D([], [], color=BASELINE_COLOR, linewidth=1.6, label="baseline (0)")]
    handles += [
        Line2D([], [], color=st.color, linestyle=st.linestyle, linewidth=st.linewidth, marker=st.marker, label=st.label)
        for v, st in styles.items()
        if v not in baselines.values() and v in set(collection.runs["variant"])
    ]
    handles.append(Patch(color="grey", alpha=0.25, label="95% CI over shared seeds"))
    fig.legend(handles=handles, loc="outside right upper", title=_legend_title(collection), fontsize=8,
               title_fontsize=8, frameon=False)  # fmt: skip
    better = "< 0 is better" if metric in ("val_bpb", "train_loss") else "> 0 is better"
    fig.suptitle(
        f"difference to the baseline over training ({better})\nmean over the seeds shared with the baseline, 95% band",
        fontsize=10,
    )
    return fig


# hyperparameter searches -------------------------------------------------------------------
# A searched key spanning this factor or more gets a log axis: LRs are searched log-uniform
# (configs/hparams_search/), and a few trials of a 16x range easily span 4x.
LOG_SPAN = 4.0


def search_figures(collection: Collection, objective: str, direction: str = "minimize") -> list[Plot]:
    """For a search: the objective against each searched key (log axis where the key spans a factor
    of LOG_SPAN or more), and the optimisation history (each trial's objective in start order, and the
    best so far). Failed trials are left out of both; none: an empty list."""
    done = collection.completed()
    if objective not in done or done[objective].isna().all() or not collection.variant_keys:
        return []
    done = done[np.isfinite(done[objective].to_numpy(dtype=float))]
    keys = [k for k in collection.variant_keys if pd.api.types.is_numeric_dtype(done[k])]
    plots = []
    if keys:
        fig, axes = _panels(len(keys), extra_width=0.5)
        for ax, key in zip(axes, keys, strict=True):
            values = done[key].to_numpy(dtype=float)
            ax.scatter(values, done[objective], s=24, color="tab:blue", edgecolor="black", zorder=3)
            best = done[objective].idxmin() if direction == "minimize" else done[objective].idxmax()
            ax.scatter([done.at[best, key]], [done.at[best, objective]], marker="*", s=160, color="tab:orange",
                       edgecolor="black", zorder=4, label="best trial")  # fmt: skip
            if (values > 0).all() and values.max() / values.min() >= LOG_SPAN:
                ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(objective)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{objective} against each searched key ({direction})")
        plots.append(Plot("search_objective", "search: the objective against each searched key", fig))
    order = done.sort_values("started_at") if "started_at" in done and done["started_at"].notna().all() else done
    values = order[objective].to_numpy(dtype=float)
    best_so_far = np.minimum.accumulate(values) if direction == "minimize" else np.maximum.accumulate(values)
    fig, axes = _panels(1, extra_width=0.5)
    ax = axes[0]
    trials = np.arange(1, len(values) + 1)
    ax.scatter(trials, values, s=24, color="tab:blue", edgecolor="black", zorder=3, label="trial")
    ax.step(trials, best_so_far, where="post", color="tab:orange", linewidth=1.8, label="best so far")
    ax.set_xlabel("trial (in start order; failed trials left out)")
    ax.set_ylabel(objective)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"optimisation history: {objective} ({direction})")
    plots.append(Plot("search_history", "search: optimisation history", fig))
    return plots


# final val bpb per variant -----------------------------------------------------------------
def _variant_rows(ax, styles: Mapping[str, Style], variants: Sequence[str]) -> None:
    ax.set_yticks(range(len(variants)), [styles[v].label for v in variants], fontsize=8)
    ax.set_ylim(-0.6, len(variants) - 0.4)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.grid(axis="x", alpha=0.3)


def _one_seed_label(ax, x: float, y: float) -> None:
    """A one-seed variant has no interval: say so beside its point instead of drawing a zero-length bar."""
    ax.annotate("n=1", (x, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7, color="dimgrey")


def _seed_pairs(runs: pd.DataFrame, column: str) -> list[tuple[int, float]]:
    return [(s, float(v)) for s, v in zip(runs["seed"], runs[column], strict=True) if math.isfinite(v)]


def final_figure(
    collection: Collection,
    baselines: Mapping[int, str] | None = None,
    metric: str = "final_val_bpb",
    comparison: pd.DataFrame | None = None,
):
    """Per depth, two panels: every completed seed's final value as a dot with the mean and its 95%
    interval; and the difference to the baseline with the interval of `stats.compare` (paired on the
    shared seeds, as in the comparison table)."""
    done = collection.completed()
    if done.empty or done[metric].isna().all():
        return None
    baselines = baselines or {}
    styles = variant_styles(collection, baselines)
    depths = [d for d in collection.depths if done[done["depth"] == d][metric].notna().any()]
    variants = ordered_variants(done["variant"].unique(), baselines)
    with_delta = any(baselines.get(d) in set(done.loc[done["depth"] == d, "variant"]) for d in depths)
    height = 0.9 + 0.42 * len(variants)
    fig = _figure(figsize=(max(PANEL_WIDTH * (2 if with_delta else 1) + 2.6, MIN_WIDTH), height * len(depths)))
    grid = fig.subplots(len(depths), 2 if with_delta else 1, squeeze=False)
    for row, depth in enumerate(depths):
        at_depth = done[done["depth"] == depth]
        ax = grid[row, 0]
        for y, variant in enumerate(variants):
            values = at_depth[at_depth["variant"] == variant][metric].dropna()
            if values.empty:
                continue
            style = styles[variant]
            ax.scatter(
                values, np.full(len(values), y), s=16, color=style.color, alpha=0.5, marker=style.marker, zorder=3
            )
            interval = mean_interval(values)
            if interval.n > 1:
                ax.errorbar(interval.mean, y, xerr=interval.half_width, fmt="none", ecolor=style.color, capsize=3)
            else:
                _one_seed_label(ax, interval.mean, y)
            ax.scatter([interval.mean], [y], marker=style.marker, s=46, color=style.color, edgecolor="black", zorder=4)
        reference = at_depth.loc[at_depth["variant"] == baselines.get(depth), metric]
        if reference.notna().any():
            ax.axvline(reference.mean(), color="grey", linestyle=":", linewidth=1)
        _variant_rows(ax, styles, variants)
        ax.set_xlabel("final validation bits per byte (lower is better)")
        ax.set_title(f"depth {depth}: per seed, mean and 95% CI", fontsize=10)
        if with_delta:
            _difference_panel(grid[row, 1], at_depth, metric, baselines.get(depth), styles, variants, comparison)
            grid[row, 1].set_title(f"depth {depth}: difference to the baseline", fontsize=10)
            grid[row, 1].set_yticklabels([])
    fig.suptitle(
        f"final val bpb per variant ({_legend_title(collection)})\n"
        "left: dots = seeds, large marker = mean, bar = 95% CI · right: variant − baseline, paired by seed, 95% CI",
        fontsize=10,
    )
    return fig


def _difference_panel(
    ax,
    at_depth: pd.DataFrame,
    metric: str,
    reference,
    styles,
    variants: Sequence[str],
    comparison: pd.DataFrame | None = None,
) -> None:
    """Variant minus baseline per variant, with its interval and the test beside the panel."""
    base = at_depth[at_depth["variant"] == reference]
    ax.axvline(0, color="grey", linewidth=1)
    for y, variant in enumerate(variants):
        style = styles[variant]
        if variant == reference:
            ax.text(1.02, y, "baseline", va="center", fontsize=7.5, transform=ax.get_yaxis_transform())
            continue
        pairs = _seed_pairs(at_depth[at_depth["variant"] == variant], metric)
        if not pairs or base.empty:
            continue
        result = compare(pairs, _seed_pairs(base, metric))
        if math.isfinite(result.low):
            error = [[result.difference - result.low], [result.high - result.difference]]
            ax.errorbar(result.difference, y, xerr=error, fmt="none", ecolor=style.color, capsize=3, elinewidth=1.4)
        elif result.test == NO_TEST:
            _one_seed_label(ax, result.difference, y)
        ax.scatter([result.difference], [y], marker=style.marker, s=46, color=style.color, edgecolor="black", zorder=4)
        test = f"paired, {result.n_paired} seeds" if result.test == PAIRED else result.test
        text = f"{result.difference:+.4f}".replace("-", "−")
        # One test of many: the Holm-adjusted p is the one the comparison table's verdict uses.
        adjusted = math.nan
        if metric == "final_val_bpb":
            adjusted = _adjusted(comparison, int(at_depth["depth"].iloc[0]), variant, "val_bpb")
        if math.isfinite(adjusted):
            text += f" (Holm p={adjusted:.2g}, {test})"
        else:
            text += f" (raw p={result.p_value:.2g}, {test})" if math.isfinite(result.p_value) else " (n=1: not tested)"
        ax.text(1.02, y, text, va="center", fontsize=7.5, transform=ax.get_yaxis_transform())
    _variant_rows(ax, styles, variants)
    ax.set_xlabel("Δ final val bpb vs baseline (< 0 is better)")


# scaling -----------------------------------------------------------------------------------
def scaling_figure(collection: Collection, baselines: Mapping[int, str] | None = None):
    """Final val bpb against depth and against total training FLOPs; needs two depths or more."""
    done = collection.completed()
    if len(collection.depths) < 2 or done["final_val_bpb"].isna().all():
        return None
    styles = variant_styles(collection, baselines or {})
    fig, axes = _panels(2)
    variants = ordered_variants(done["variant"].unique(), baselines)
    for i, (variant, group) in enumerate(done.groupby("variant", sort=True)):
        style = styles[variant]
        points = []
        for depth, at_depth in group.groupby("depth"):
            interval = mean_interval(at_depth["final_val_bpb"])
            points.append((depth, at_depth["flops"].mean(), interval.mean, interval.half_width))
        depth, flops, mean, half = (np.array(v, dtype=float) for v in zip(*points, strict=True))
        # Variants share their x. The lines run through the true depths and FLOPs, so lines at one x
        # compare; only the error bars move a little sideways to stay apart (lines through shifted
        # points on a steep curve would show a variant a whole offset's slope above another).
        offset = (i - (len(variants) - 1) / 2) / max(len(variants), 1)
        for ax, xs, shifted in zip(
            axes, (depth, flops), (depth + 0.3 * offset, flops * 10 ** (0.015 * offset)), strict=True
        ):
            ax.plot(xs, mean, color=style.color, linestyle=style.linestyle, linewidth=style.linewidth)
            ax.errorbar(
                shifted,
                mean,
                yerr=np.nan_to_num(half),
                color=style.color,
                linestyle="none",
                marker=style.marker,
                markersize=4,
                capsize=3,
            )
    axes[0].set_xlabel("model depth (layers)")
    axes[1].set_xlabel("training compute (FLOPs, log scale)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("final validation bits per byte")
        ax.grid(alpha=0.3)
    _variant_legend(fig, collection, styles, incomplete=False)
    fig.suptitle("scaling: final val bpb (mean over seeds; bars = 95% CI, moved sideways to stay apart)")
    return fig


# CORE --------------------------------------------------------------------------------------
def core_figure(collection: Collection, baselines: Mapping[int, str] | None = None):
    """Per depth, heat maps over variants x (CORE, tasks): the mean centered accuracy, and beside it
    the difference to the baseline (when there is one), where variants actually differ.
    None when the sweep measured no CORE."""
    done = collection.completed()
    tasks = [t for t in collection.core_tasks if done[t].notna().any()]
    if "core" not in done or done["core"].isna().all():
        return None
    baselines = baselines or {}
    columns = ["core", *tasks]
    labels = ["CORE", *(t.removeprefix(CORE_PREFIX) for t in tasks)]
    styles = variant_styles(collection, baselines)
    depths = [d for d in collection.depths if done[done["depth"] == d]["core"].notna().any()]
    variants = ordered_variants(done["variant"].unique(), baselines)
    means = done.groupby(["depth", "variant"])[columns].mean()
    with_delta = any(baselines.get(d) in means.loc[d].index for d in depths)
    panels_per_depth = 2 if with_delta else 1
    fig = _figure(figsize=(2.6 + 0.5 * len(columns), len(depths) * panels_per_depth * (2.0 + 0.3 * len(variants))))
    axes = fig.subplots(len(depths) * panels_per_depth, 1, squeeze=False).ravel()
    row_labels = [styles[v].label for v in variants]
    for i, depth in enumerate(depths):
        table = means.loc[depth].reindex(variants)[columns].to_numpy(dtype=float)
        absolute_ax = axes[i * panels_per_depth]
        _heat_map(absolute_ax, table, labels, row_labels, absolute=True)
        absolute_ax.set_title(f"depth {depth}: centered accuracy, mean over seeds", fontsize=9)
        if with_delta:
            delta_ax, reference = axes[i * panels_per_depth + 1], baselines.get(depth)
            if reference in means.loc[depth].index:
                delta, half = _core_differences(done[done["depth"] == depth], variants, columns, reference)
                _heat_map(delta_ax, delta, labels, row_labels, absolute=False, spread=half)
                delta_ax.set_title(
                    f"depth {depth}: difference to the baseline ± 95% half-width, paired by seed\n"
                    "(blue = better; faded: the interval holds 0 or there is one seed)",
                    fontsize=9,
                )
            else:
                delta_ax.set_axis_off()
    fig.suptitle(f"CORE per task ({_legend_title(collection)})")
    return fig


def _core_differences(at_depth: pd.DataFrame, variants, columns, reference) -> tuple[np.ndarray, np.ndarray]:
    """Per variant and task: the difference to the baseline (`stats.compare`, paired on shared seeds)
    and its 95% half-width (NaN with one seed; the baseline's own row is 0 with no spread)."""
    base = at_depth[at_depth["variant"] == reference]
    delta = np.full((len(variants), len(columns)), math.nan)
    half = np.full_like(delta, math.nan)
    for i, variant in enumerate(variants):
        runs = at_depth[at_depth["variant"] == variant]
        for j, column in enumerate(columns):
            pairs, base_pairs = _seed_pairs(runs, column), _seed_pairs(base, column)
            if variant == reference:
                delta[i, j] = 0.0 if pairs else math.nan
            elif pairs and base_pairs:
                result = compare(pairs, base_pairs)
                delta[i, j], half[i, j] = result.difference, (result.high - result.low) / 2
    return delta, half


def _heat_map(
    ax, values: np.ndarray, columns: list[str], rows: list[str], absolute: bool, spread: np.ndarray | None = None
) -> None:
    """Annotated heat map. Absolute centered accuracy: sequential from 0 (diverging if some task
    is below chance); differences: diverging, symmetric around 0, each cell with its 95%
    half-width from `spread`, faded where the interval holds 0 (or is unknown)."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if absolute and low >= 0:
        norm, cmap, label = Normalize(0, max(high, 0.01)), "Blues", "centered accuracy (0 = chance, 1 = perfect)"
    else:
        bound = max(abs(low), abs(high), 1e-3)
        norm, cmap = Normalize(-bound, bound), "RdBu"
        label = "centered accuracy (0 = chance)" if absolute else "Δ centered accuracy vs baseline"
    image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm)
    dark = 0.6 if cmap == "Blues" else None
    for (i, j), value in np.ndenumerate(values):
        if math.isfinite(value):
            level = norm(value)
            white = level > dark if dark is not None else abs(level - 0.5) > 0.3
            text = f"{value:.2f}" if absolute else f"{value:+.3f}".replace("-", "−")
            faded = False
            if spread is not None:
                half = spread[i, j]
                text += f"\n±{half:.3f}" if math.isfinite(half) else ("\nn=1" if value != 0 else "")
                faded = not (math.isfinite(half) and abs(value) > half)
                white = white and not faded
            ax.text(j, i, text, ha="center", va="center", fontsize=5.5 if spread is not None else 6,
                    color="white" if white else "black", alpha=0.6 if faded else 1.0)  # fmt: skip
    if spread is not None:
        unclear = ~(np.isfinite(spread) & (np.abs(values) > np.nan_to_num(spread, nan=np.inf)))
        overlay = np.zeros((*values.shape, 4))
        overlay[..., :3] = 1.0
        overlay[..., 3] = np.where(unclear & np.isfinite(values), 0.65, 0.0)
        ax.imshow(overlay, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=55, ha="right", rotation_mode="anchor", fontsize=7.5)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.9, pad=0.01)


# throughput --------------------------------------------------------------------------------
def _adjusted(comparison: pd.DataFrame | None, depth: int, variant: str, key: str) -> float:
    """The Holm-adjusted p of the comparison table's row, the one its verdict uses (NaN if none)."""
    column = f"{key}_p_adjusted"
    if comparison is None or comparison.empty or column not in comparison:
        return math.nan
    row = comparison[(comparison["depth"] == depth) & (comparison["variant"] == variant)]
    return float(row[column].iloc[0]) if len(row) else math.nan


def throughput_figure(
    collection: Collection, baselines: Mapping[int, str] | None = None, comparison: pd.DataFrame | None = None
):
    """Per depth: tok/s per variant (seeds, mean, 95% CI) on an axis fitted to the data, and the
    relative difference to the baseline with Fieller's interval (`stats.ratio_compare`, as in the
    comparison table), the value and MFU in a column beside the panel."""
    done = collection.completed()
    if done.empty or done["tok_per_s"].isna().all():
        return None
    baselines = baselines or {}
    styles = variant_styles(collection, baselines)
    depths = [d for d in collection.depths if done[done["depth"] == d]["tok_per_s"].notna().any()]
    variants = ordered_variants(done["variant"].unique(), baselines)
    with_delta = any(baselines.get(d) in set(done.loc[done["depth"] == d, "variant"]) for d in depths)
    height = 0.9 + 0.42 * len(variants)
    fig = _figure(figsize=(max(PANEL_WIDTH * (2 if with_delta else 1) + 3.4, MIN_WIDTH), height * len(depths)))
    grid = fig.subplots(len(depths), 2 if with_delta else 1, squeeze=False)
    for row, depth in enumerate(depths):
        at_depth = done[done["depth"] == depth]
        ax = grid[row, 0]
        for y, variant in enumerate(variants):
            runs = at_depth[at_depth["variant"] == variant]
            interval = mean_interval(runs["tok_per_s"])
            if interval.n == 0:
                continue
            style = styles[variant]
            ax.scatter(runs["tok_per_s"], np.full(len(runs), y), s=16, color=style.color, alpha=0.5,
                       marker=style.marker, zorder=3)  # fmt: skip
            if interval.n > 1:
                ax.errorbar(interval.mean, y, xerr=interval.half_width, fmt="none", ecolor=style.color, capsize=3)
            else:
                _one_seed_label(ax, interval.mean, y)
            ax.scatter([interval.mean], [y], marker=style.marker, s=46, color=style.color, edgecolor="black", zorder=4)
        _variant_rows(ax, styles, variants)
        ax.margins(x=0.15)  # fitted to the data, not from 0: a 3% difference must be visible
        ax.set_xlim(left=max(ax.get_xlim()[0], 0.0))  # but never below 0 tok/s
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel("training throughput (tokens/s, evaluation excluded)")
        ax.set_title(f"depth {depth}: per seed, mean and 95% CI", fontsize=10)
        text_ax = ax
        if with_delta:
            text_ax = grid[row, 1]
            _speed_panel(text_ax, at_depth, baselines.get(depth), styles, variants)
            text_ax.set_title(f"depth {depth}: relative to the baseline", fontsize=10)
            text_ax.set_yticklabels([])
        for y, variant in enumerate(variants):
            runs = at_depth[at_depth["variant"] == variant]
            base = at_depth[at_depth["variant"] == baselines.get(depth)]
            text = _throughput_text(runs, base, variant, baselines, _adjusted(comparison, depth, variant, "tok_per_s"))
            # In a column right of the panel: never on top of the markers or whiskers.
            text_ax.text(1.02, y, text, va="center", ha="left", fontsize=7.5, transform=text_ax.get_yaxis_transform())
    fig.suptitle(
        f"throughput per variant ({_legend_title(collection)})\n"
        "left: dots = seeds, large marker = mean, bar = 95% CI · right: variant / baseline − 1, 95% CI (Fieller)",
        fontsize=10,
    )
    return fig


def _speed_panel(ax, at_depth: pd.DataFrame, reference, styles, variants: Sequence[str]) -> None:
    base = at_depth[at_depth["variant"] == reference]
    ax.axvline(0, color="grey", linewidth=1)
    for y, variant in enumerate(variants):
        runs = at_depth[at_depth["variant"] == variant]
        if variant == reference or base.empty or runs.empty or speed_context_difference(pd.concat([runs, base])):
            continue
        pairs, base_pairs, timing = speed_pairs(runs, base)
        if timing.get("confounded"):  # not tested in the table either: no interval to draw
            continue
        result = ratio_compare(pairs, base_pairs)
        style = styles[variant]
        if not math.isfinite(result.delta_pct):
            continue
        if math.isfinite(result.low_pct) and math.isfinite(result.high_pct):
            error = [[result.delta_pct - result.low_pct], [result.high_pct - result.delta_pct]]
            ax.errorbar(result.delta_pct, y, xerr=error, fmt="none", ecolor=style.color, capsize=3, elinewidth=1.4)
        elif math.isinf(result.low_pct) or math.isinf(result.high_pct):
            _unbounded(ax, result.delta_pct, y, style.color)
        elif result.test == NO_TEST:
            _one_seed_label(ax, result.delta_pct, y)
        ax.scatter([result.delta_pct], [y], marker=style.marker, s=46, color=style.color, edgecolor="black", zorder=4)
    _variant_rows(ax, styles, variants)
    ax.margins(x=0.15)
    ax.xaxis.set_major_formatter(PercentFormatter(decimals=1))
    ax.set_xlabel("Δ tok/s vs baseline (> 0 is faster)")


def _unbounded(ax, x: float, y: float, color) -> None:
    """Fieller's interval with no finite bounds (the baseline's mean not distinguishable from 0): a
    line across the whole panel with arrows at both ends, labelled, instead of two made-up numbers."""
    ax.annotate("", xy=(1.0, y), xytext=(0.0, y), xycoords=("axes fraction", "data"),
                arrowprops={"arrowstyle": "<->", "color": color, "linewidth": 1.2})  # fmt: skip
    ax.annotate("unbounded", (x, y), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=7, color=color)


def _throughput_text(
    runs: pd.DataFrame,
    base: pd.DataFrame,
    variant: str,
    baselines: Mapping[int, str],
    adjusted_p: float = math.nan,
) -> str:
    mean, mfu = runs["tok_per_s"].mean(), runs["mfu"].mean()
    text = f"{mean:,.0f} tok/s" if math.isfinite(mean) else "—"
    if variant in baselines.values():
        text += " (baseline)"
    elif len(base) and len(runs):
        differs = speed_context_difference(pd.concat([runs, base]))
        if differs:
            text += f" (not compared: {differs.split(' (')[0]})"
        elif speed_pairs(runs, base)[2].get("confounded"):
            text += " (confounded with time: harness.bench ab)"
        else:
            result = ratio_compare(*speed_pairs(runs, base)[:2])
            text += f" ({result.delta_pct:+.1f}% vs baseline".replace("-", "−")
            if math.isfinite(adjusted_p):  # the p the table's speed verdict uses
                text += f", Holm p={adjusted_p:.2g})"
            else:
                text += f", raw p={result.p_value:.2g})" if math.isfinite(result.p_value) else ", n=1)"
    return text + (f", MFU {mfu:.1%}" if math.isfinite(mfu) else "")


# writing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plot:
    stem: str
    title: str
    figure: Figure


def same_picture(collection: Collection, x: str, other: str) -> bool:
    """Whether curves against `x` are the curves against `other` with the axis relabelled: `x` is
    one common multiple of `other` at every point of every run (tokens = steps x batch with one batch,
    FLOPs = tokens x FLOPs per token at one depth)."""
    columns = list(dict.fromkeys(["run", "step", x, other]))
    curves = collection.curves[columns].dropna().drop_duplicates(["run", "step"])
    curves = curves[curves[other] != 0]
    if curves.empty:
        return False
    ratio = (curves[x] / curves[other]).to_numpy(dtype=float)
    return bool(np.allclose(ratio, ratio[0], rtol=1e-9, atol=0))


def curve_axes(collection: Collection) -> list[str]:
    """The x axes worth a plot, in X_AXES order: one left out when it draws the same picture as one kept."""
    kept: list[str] = []
    for x in X_AXES:
        if not any(same_picture(collection, x, k) for k in kept):
            kept.append(x)
    return kept


def all_plots(
    collection: Collection,
    baselines: Mapping[int, str] | None = None,
    comparison: pd.DataFrame | None = None,
    search: tuple[str, str] | None = None,
) -> list[Plot]:
    """Every plot the sweep supports, in report order; those with nothing to show are skipped, and so
    is a curve against an x axis that only relabels another's (see `curve_axes`). `search`: the
    objective and its direction, for a hyperparameter search's own plots."""
    plots = []
    if search is not None:
        plots += search_figures(collection, *search)
    plots.append(
        Plot(
            "val_bpb_difference",
            "val bpb: difference to the baseline over training",
            difference_curve_figure(collection, baselines),
        )
    )
    axes = curve_axes(collection)
    for metric in CURVE_METRICS:
        for x in axes:
            fig = curve_figure(collection, metric, x, baselines)
            title = f"{CURVE_METRICS[metric].split(' (')[0]} vs {X_AXES[x].split(' (')[0]}"
            plots.append(Plot(f"{metric}_vs_{x.removesuffix('_s')}", title, fig))
    final = final_figure(collection, baselines, comparison=comparison)
    plots.append(Plot("final_val_bpb", "final val bpb per variant", final))
    plots.append(Plot("scaling", "scaling: final val bpb vs depth and compute", scaling_figure(collection, baselines)))
    plots.append(Plot("core_tasks", "CORE per task", core_figure(collection, baselines)))
    plots.append(Plot("throughput", "throughput per variant", throughput_figure(collection, baselines, comparison)))
    return [p for p in plots if p.figure is not None]


def save_figure(fig: Figure, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=DPI)
    # The PNG's draw fixed the layout; keep it for the SVG rather than solving it again.
    fig.set_layout_engine("none")
    with rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, searchable, faster
        fig.savefig(paths[1])
    return paths
