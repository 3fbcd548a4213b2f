"""Plots of a collected sweep, written as PNG and SVG.

- curves: train loss and val bpb against step, tokens, training time and FLOPs; one panel per
  depth, variants overlaid as the mean over seeds with a min-max band; runs that did not
  complete drawn dotted on their own. Train loss is an EMA (0.9, debiased, as the recipe logs it).
- final val bpb per variant (every seed, the mean and its 95% interval), one panel per depth.
- scaling: final val bpb against depth and against training FLOPs, per variant (two depths or more).
- CORE per task: a heat map of centered accuracy, variants by tasks (only when CORE was measured).
- throughput per variant: tok/s with seeds and interval, MFU when measured.

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
from matplotlib.ticker import EngFormatter, MaxNLocator

from harness.results.collect import COMPLETED, CORE_PREFIX, Collection
from harness.results.stats import mean_interval

EMA_BETA = 0.9
X_AXES = {
    "step": "optimizer step",
    "tokens": "training tokens",
    "time_s": "training time, evaluation excluded",
    "flops": "training compute (FLOPs)",
}
CURVE_METRICS = {
    "train_loss": "train loss (nats/token, EMA 0.9)",
    "val_bpb": "validation bits per byte",
}
LINESTYLES = ("-", "--", "-.", (0, (6, 2, 1, 2, 1, 2)))
INCOMPLETE_STYLE = ":"
BASELINE_COLOR = "black"
PANEL_WIDTH, PANEL_HEIGHT, LEGEND_WIDTH = 5.2, 3.8, 3.4
MIN_WIDTH = 7.0  # inches: room for a two-line title above a single panel
MAX_COLUMNS = 4
# Curves with this few points per run (validation every N steps) get a marker at each point.
SPARSE_POINTS = 40
DPI = 150


@dataclass(frozen=True)
class Style:
    color: str
    linestyle: object
    label: str
    linewidth: float


def ema(values: Sequence[float], beta: float = EMA_BETA) -> np.ndarray:
    """Debiased exponential moving average: the k-th output averages the first k inputs, weighted
    toward recent ones, without the pull toward zero of a plain EMA started at 0."""
    out, smooth = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        smooth = beta * smooth + (1 - beta) * value
        out[i] = smooth / (1 - beta ** (i + 1))
    return out


def variant_styles(collection: Collection, baselines: Mapping[int, str]) -> dict[str, Style]:
    """One colour per variant; with two variant keys, colour by the key with more values and
    line style by the other, so a 4 x 2 grid reads as four colours in two styles."""
    runs = collection.runs.drop_duplicates("variant").sort_values("variant")
    keys = collection.variant_keys
    baseline_set = set(baselines.values())
    palette = colormaps["tab10"].colors
    by_style = None
    if len(keys) == 2:
        colour_key, style_key = sorted(keys, key=lambda k: -runs[k].nunique())
        if runs[style_key].nunique() <= len(LINESTYLES):
            by_style = (colour_key, style_key)
    styles = {}
    for i, (_, run) in enumerate(runs.iterrows()):
        label = " · ".join(str(run[k]) for k in keys) if keys else str(run["variant"])
        if by_style:
            colour_values = list(dict.fromkeys(runs[by_style[0]]))
            style_values = list(dict.fromkeys(runs[by_style[1]]))
            color = palette[colour_values.index(run[by_style[0]]) % len(palette)]
            linestyle = LINESTYLES[style_values.index(run[by_style[1]])]
        else:  # past ten variants the colours repeat, in another line style
            color, linestyle = palette[i % len(palette)], LINESTYLES[(i // len(palette)) % len(LINESTYLES)]
        is_baseline = run["variant"] in baseline_set
        if is_baseline and not by_style:
            color = BASELINE_COLOR
        styles[run["variant"]] = Style(
            color, linestyle, label + (" (baseline)" if is_baseline else ""), 2.4 if is_baseline else 1.4
        )
    return styles


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
    return pd.DataFrame({"x": rows[x].to_numpy(), "value": values}, index=rows["step"].to_numpy())


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
    marker = "o" if done and max(len(s) for s in done) <= SPARSE_POINTS else None
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
    the zoom shows the second half of the x range."""
    finite = [(xs[ok], lo[ok], hi[ok]) for xs, lo, hi in drawn if (ok := np.isfinite(xs) & np.isfinite(lo)).any()]
    if not finite:
        return
    x_min = min(float(xs.min()) for xs, _, _ in finite)
    x_max = max(float(xs.max()) for xs, _, _ in finite)
    half = x_min + 0.5 * (x_max - x_min)
    for ax, start in ((full, x_min), (zoom, half)):
        inside = [(lo[xs >= start], hi[xs >= start]) for xs, lo, hi in finite]
        low = min((float(np.nanmin(lo)) for lo, _ in inside if len(lo)), default=math.nan)
        high = max((float(np.nanmax(hi)) for _, hi in inside if len(hi)), default=math.nan)
        if math.isfinite(low) and math.isfinite(high):
            margin = 0.06 * (high - low) or 0.01 * abs(high) or 0.01
            ax.set_ylim(low - margin, high + margin)
        pad = 0.02 * (x_max - start) or 0.5
        ax.set_xlim(start - pad, x_max + pad)


def _variant_legend(
    fig: Figure, collection: Collection, styles: Mapping[str, Style], incomplete: bool, bands: bool = False
) -> None:
    present = set(collection.runs["variant"])
    handles = [
        Line2D([], [], color=s.color, linestyle=s.linestyle, linewidth=s.linewidth, label=s.label)
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


# final val bpb per variant -----------------------------------------------------------------
def final_figure(collection: Collection, baselines: Mapping[int, str] | None = None, metric: str = "final_val_bpb"):
    """Per depth: every completed seed's final value as a dot, the mean and its 95% interval."""
    done = collection.completed()
    if done.empty or done[metric].isna().all():
        return None
    styles = variant_styles(collection, baselines or {})
    depths = [d for d in collection.depths if done[done["depth"] == d][metric].notna().any()]
    variants = sorted(done["variant"].unique())
    fig, axes = _panels(len(depths), extra_width=0.0, height=0.9 + 0.42 * len(variants))
    for ax, depth in zip(axes, depths, strict=True):
        at_depth = done[done["depth"] == depth]
        for y, variant in enumerate(variants):
            values = at_depth[at_depth["variant"] == variant][metric].dropna()
            if values.empty:
                continue
            color = styles[variant].color
            ax.scatter(values, np.full(len(values), y), s=18, color=color, alpha=0.6, zorder=3)
            interval = mean_interval(values)
            if interval.n > 1:
                ax.errorbar(
                    interval.mean, y, xerr=interval.half_width, fmt="none", ecolor=color, capsize=3, elinewidth=1.2
                )
            ax.scatter([interval.mean], [y], marker="D", s=36, color=color, zorder=4)
        reference = at_depth.loc[at_depth["variant"] == (baselines or {}).get(depth), metric]
        if reference.notna().any():
            ax.axvline(reference.mean(), color="grey", linestyle=":", linewidth=1)
        ax.set_yticks(range(len(variants)), [styles[v].label for v in variants], fontsize=8)
        ax.set_ylim(-0.6, len(variants) - 0.4)
        ax.invert_yaxis()
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel("final validation bits per byte (lower is better)")
        ax.set_title(f"depth {depth}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"final val bpb per variant ({_legend_title(collection)})\n"
        "dots: seeds · diamond: mean · bar: 95% CI · dotted line: baseline mean",
        fontsize=10,
    )
    return fig


# scaling -----------------------------------------------------------------------------------
def scaling_figure(collection: Collection, baselines: Mapping[int, str] | None = None):
    """Final val bpb against depth and against total training FLOPs; needs two depths or more."""
    done = collection.completed()
    if len(collection.depths) < 2 or done["final_val_bpb"].isna().all():
        return None
    styles = variant_styles(collection, baselines or {})
    fig, axes = _panels(2)
    variants = sorted(done["variant"].unique())
    for i, (variant, group) in enumerate(done.groupby("variant", sort=True)):
        style = styles[variant]
        points = []
        for depth, at_depth in group.groupby("depth"):
            interval = mean_interval(at_depth["final_val_bpb"])
            points.append((depth, at_depth["flops"].mean(), interval.mean, interval.half_width))
        depth, flops, mean, half = (np.array(v, dtype=float) for v in zip(*points, strict=True))
        # Variants share their x; a small sideways offset keeps their error bars apart.
        offset = (i - (len(variants) - 1) / 2) / max(len(variants), 1)
        for ax, xs in zip(axes, (depth + 0.6 * offset, flops * 10 ** (0.03 * offset)), strict=True):
            ax.errorbar(
                xs,
                mean,
                yerr=np.nan_to_num(half),
                color=style.color,
                linestyle=style.linestyle,
                linewidth=style.linewidth,
                marker="o",
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
    fig.suptitle("scaling: final val bpb (mean over seeds, bars = 95% CI, variants offset sideways)")
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
    variants = sorted(done["variant"].unique())
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
                delta = table - means.loc[depth].loc[reference, columns].to_numpy(dtype=float)
                _heat_map(delta_ax, delta, labels, row_labels, absolute=False)
                delta_ax.set_title(f"depth {depth}: difference to the baseline (blue = better)", fontsize=9)
            else:
                delta_ax.set_axis_off()
    fig.suptitle(f"CORE per task ({_legend_title(collection)})")
    return fig


def _heat_map(ax, values: np.ndarray, columns: list[str], rows: list[str], absolute: bool) -> None:
    """Annotated heat map. Absolute centered accuracy: sequential from 0 (diverging if some task
    is below chance); differences: diverging, symmetric around 0."""
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
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if white else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=55, ha="right", rotation_mode="anchor", fontsize=7.5)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.figure.colorbar(image, ax=ax, label=label, shrink=0.9, pad=0.01)


# throughput --------------------------------------------------------------------------------
def throughput_figure(collection: Collection, baselines: Mapping[int, str] | None = None):
    """Training tok/s per variant: a bar at the mean, the seeds as dots, the 95% interval; MFU when known."""
    done = collection.completed()
    if done.empty or done["tok_per_s"].isna().all():
        return None
    styles = variant_styles(collection, baselines or {})
    depths = [d for d in collection.depths if done[done["depth"] == d]["tok_per_s"].notna().any()]
    variants = sorted(done["variant"].unique())
    baselines = baselines or {}
    fig, axes = _panels(len(depths), extra_width=0.0, height=0.9 + 0.42 * len(variants))
    for ax, depth in zip(axes, depths, strict=True):
        at_depth = done[done["depth"] == depth]
        intervals = {v: mean_interval(at_depth.loc[at_depth["variant"] == v, "tok_per_s"]) for v in variants}
        reference = intervals.get(baselines.get(depth))
        right = max(np.nanmax([i.high, i.mean]) for i in intervals.values() if i.n) * 1.03
        for y, variant in enumerate(variants):
            runs, interval = at_depth[at_depth["variant"] == variant], intervals[variant]
            if interval.n == 0:
                continue
            color = styles[variant].color
            ax.barh(y, interval.mean, color=color, alpha=0.35, height=0.6)
            ax.scatter(runs["tok_per_s"], np.full(len(runs), y), s=14, color=color, zorder=3)
            if interval.n > 1:
                ax.errorbar(interval.mean, y, xerr=interval.half_width, fmt="none", ecolor="black", capsize=3)
            text = _throughput_text(interval.mean, reference, runs["mfu"].mean())
            # In a column right of the panel: never on top of the bars, dots or whiskers.
            ax.text(1.02, y, text, va="center", ha="left", fontsize=7.5, transform=ax.get_yaxis_transform())
        ax.set_xlim(0, right * 1.04)
        ax.set_yticks(range(len(variants)), [styles[v].label for v in variants], fontsize=8)
        ax.set_ylim(-0.6, len(variants) - 0.4)
        ax.invert_yaxis()
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel("training throughput (tokens/s, evaluation excluded)")
        ax.set_title(f"depth {depth}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"throughput per variant ({_legend_title(collection)})\nbar: mean · dots: seeds · whisker: 95% CI",
        fontsize=10,
    )
    return fig


def _throughput_text(mean: float, reference, mfu: float) -> str:
    text = f"{mean:,.0f} tok/s"
    if reference is not None and reference.n and mean != reference.mean:
        text += f" ({mean / reference.mean - 1:+.1%} vs baseline)".replace("-", "−")
    return text + (f", MFU {mfu:.1%}" if math.isfinite(mfu) else "")


# writing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plot:
    stem: str
    title: str
    figure: Figure


def all_plots(collection: Collection, baselines: Mapping[int, str] | None = None) -> list[Plot]:
    """Every plot the sweep supports, in report order; those with nothing to show are skipped."""
    plots = []
    for metric in CURVE_METRICS:
        for x in X_AXES:
            fig = curve_figure(collection, metric, x, baselines)
            title = f"{CURVE_METRICS[metric].split(' (')[0]} vs {X_AXES[x].split(' (')[0]}"
            plots.append(Plot(f"{metric}_vs_{x.removesuffix('_s')}", title, fig))
    plots.append(Plot("final_val_bpb", "final val bpb per variant", final_figure(collection, baselines)))
    plots.append(Plot("scaling", "scaling: final val bpb vs depth and compute", scaling_figure(collection, baselines)))
    plots.append(Plot("core_tasks", "CORE per task", core_figure(collection, baselines)))
    plots.append(Plot("throughput", "throughput per variant", throughput_figure(collection, baselines)))
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
