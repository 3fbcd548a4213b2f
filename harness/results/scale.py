"""The effect across scale: does a variant's difference to the baseline hold, grow, shrink or reverse
as the model grows, and how much baseline compute is it worth?

Pure functions on the `runs` table (collect.py) and the baseline variant at each depth:
- `scale_table`: per variant and depth, the difference of final val bpb to that depth's baseline with
  its 95% interval (paired by seed where two or more seeds are shared, Welch otherwise: stats.compare),
  its standard error, the seeds and the training FLOPs (the depth's position on the ladder).
- `scale_trend`: per variant, the trend of that difference against log10 training FLOPs. A
  meta-regression: weighted least squares with each depth weighted by 1 / SE^2 (the depths' seed
  counts and spreads differ, so a noisy depth should count less), with the Knapp-Hartung interval:
  the slope's variance is scaled by the residual dispersion max(1, Q_E / (k - 2)) and tested with
  t on k - 2 degrees of freedom. A mixed model over seeds and depths would estimate the same slope
  from 3-4 depths but lean on a between-depth variance it cannot estimate from so few; this form
  never claims less uncertainty than the seeds give, and widens when the depths scatter more than
  their seeds explain. Heterogeneity: Cochran's Q of the depths around their weighted mean (chi2,
  k - 1 degrees of freedom): does the difference change across depths at all. Pooled: the same
  weighted mean with its Knapp-Hartung interval (t on k - 1 degrees of freedom), `pooled_delta`: is
  there an effect at these sizes on average (reported beside the verdict, not part of it).
- `scale_verdict`, from the per-depth intervals and the trend (alpha 0.05, no adjustment across
  variants), first that applies:
  `reverses`: one depth's interval is entirely below 0 and another's entirely above;
  `grows with scale`: the slope is significant and the fitted difference at the largest rung is
  farther from 0 than at the smallest (an effect that emerges with size, even from the other side of 0);
  `shrinks with scale`: the slope is significant and the fitted difference at the largest rung is nearer 0;
  `holds at every depth`: every depth's interval excludes 0 on the same side (and no significant slope);
  `inconclusive`: anything else, and every variant with fewer than 3 depths (no trend is fitted).
- `compute_multipliers`: the baseline's final val bpb against training FLOPs over the ladder, fitted
  as a saturating power law L(C) = E + A (C / C0)^-alpha (scipy curve_fit, 0 <= E <= the best rung's
  loss: bits per byte cannot be negative) with 4 rungs or more, or as a
  local log-linear L = a + b log10 C with 2-3 rungs (or when the power law does not converge); per
  variant and rung, `compute_multiplier` = C* / C, where L(C*) = L(C) + delta, the fitted loss at the
  rung plus the variant's mean difference to the baseline there: how many times the rung's FLOPs the
  baseline would need to match the variant (above 1: the variant is better; a variant equal to the
  baseline is exactly 1 whatever the fit's residual at that rung). A loss outside what the fit spans
  over the ladder's FLOPs is `outside the fitted range`, never extrapolated.
  Its 95% interval is a percentile bootstrap: seeds resampled with replacement within each rung (the
  same draw for every variant, keeping the pairing), the baseline refitted, the multiplier recomputed;
  a replicate whose loss falls outside its fit counts as beyond the range's edge (0 or infinity); one
  whose refit fails or changes kind is left out (`compute_multiplier_replicates` counts those kept).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from harness.results.collect import COMPLETED
from harness.results.stats import ALPHA, PAIRED, compare, shared_seeds

MIN_TREND_DEPTHS = 3
MIN_POWER_LAW_RUNGS = 4
HOLDS, GROWS, SHRINKS, REVERSES, INCONCLUSIVE = (
    "holds at every depth",
    "grows with scale",
    "shrinks with scale",
    "reverses",
    "inconclusive",
)
VERDICTS = (HOLDS, GROWS, SHRINKS, REVERSES, INCONCLUSIVE)
POWER_LAW, LOG_LINEAR = "power law", "log-linear"
OUTSIDE = "outside the fitted range"
BOOTSTRAP_REPLICATES = 1000
SCALE_COLUMNS = (
    "variant",
    "depth",
    "delta_final_val_bpb",
    "delta_ci_low",
    "delta_ci_high",
    "delta_se",
    "test",
    "n_seeds",
    "n_baseline_seeds",
    "train_flops",
)


def usable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Completed runs with a finite final val bpb: the unit of evidence everywhere in this module."""
    done = runs[runs["status"] == COMPLETED]
    return done[np.isfinite(done["final_val_bpb"].to_numpy(dtype=float))]


def _pairs(runs: pd.DataFrame) -> list[tuple[int, float]]:
    return list(zip(runs["seed"], runs["final_val_bpb"].astype(float), strict=True))


def _standard_error(variant: list[tuple[int, float]], baseline: list[tuple[int, float]], test: str) -> float:
    """The standard error behind stats.compare's interval: of the mean per-seed difference when paired,
    Welch's sqrt(s1^2 / n1 + s2^2 / n2) otherwise."""
    if test == PAIRED:
        shared = shared_seeds(variant, baseline)
        v, b = dict(variant), dict(baseline)
        diffs = np.array([v[s] - b[s] for s in shared])
        return float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    v_values, b_values = np.array([x for _, x in variant]), np.array([x for _, x in baseline])
    if len(v_values) < 2 or len(b_values) < 2:
        return math.nan
    return float(math.sqrt(v_values.var(ddof=1) / len(v_values) + b_values.var(ddof=1) / len(b_values)))


# the difference at each depth ----------------------------------------------------------------
def scale_table(runs: pd.DataFrame, baselines: Mapping[int, str]) -> pd.DataFrame:
    """Per (variant, depth) with a baseline at that depth: the difference of final val bpb."""
    done = usable_runs(runs)
    rows = []
    for depth in sorted(baselines):
        at_depth = done[done["depth"] == depth]
        base = at_depth[at_depth["variant"] == baselines[depth]]
        for variant, group in sorted(at_depth.groupby("variant"), key=lambda item: item[0]):
            if variant == baselines[depth]:
                continue
            result = compare(_pairs(group), _pairs(base))
            se = _standard_error(_pairs(group), _pairs(base), result.test) if math.isfinite(result.low) else math.nan
            rows.append(
                {
                    "variant": variant,
                    "depth": int(depth),
                    "delta_final_val_bpb": result.difference,
                    "delta_ci_low": result.low,
                    "delta_ci_high": result.high,
                    "delta_se": se,
                    "test": result.test,
                    "n_seeds": len(group),
                    "n_baseline_seeds": len(base),
                    "train_flops": float(group["flops"].astype(float).mean()),
                }
            )
    return pd.DataFrame(rows, columns=list(SCALE_COLUMNS))


# the trend -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trend:
    """The weighted fit of delta = intercept + slope x log10(FLOPs), with its covariance and dof."""

    intercept: float
    slope: float
    covariance: np.ndarray  # 2 x 2, Knapp-Hartung scaled
    dof: int

    def band(self, log_flops: np.ndarray, confidence: float = 1 - ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fitted line and its pointwise confidence band at these log10 FLOPs."""
        design = np.column_stack([np.ones_like(log_flops), log_flops])
        fitted = design @ np.array([self.intercept, self.slope])
        se = np.sqrt(np.einsum("ij,jk,ik->i", design, self.covariance, design))
        half = stats.t.ppf(0.5 + confidence / 2, self.dof) * se
        return fitted, fitted - half, fitted + half


def fit_trend(log_flops: np.ndarray, delta: np.ndarray, se: np.ndarray) -> Trend:
    """Inverse-variance weighted least squares with the Knapp-Hartung (truncated at 1) covariance."""
    weights = 1.0 / se**2
    design = np.column_stack([np.ones_like(log_flops), log_flops])
    information = design.T @ (weights[:, None] * design)
    unscaled = np.linalg.inv(information)
    beta = unscaled @ design.T @ (weights * delta)
    dof = len(delta) - 2
    residual_q = float(np.sum(weights * (delta - design @ beta) ** 2))
    dispersion = max(1.0, residual_q / dof)
    return Trend(float(beta[0]), float(beta[1]), unscaled * dispersion, dof)


def inverse_variance_mean(delta: np.ndarray, se: np.ndarray) -> tuple[float, np.ndarray]:
    """The depths' mean difference weighted by 1 / SE^2, and those weights."""
    weights = 1.0 / se**2
    return float(np.sum(weights * delta) / np.sum(weights)), weights


def cochran_q(delta: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Cochran's Q of the depths around their inverse-variance weighted mean, and its chi2 p-value."""
    pooled, weights = inverse_variance_mean(delta, se)
    q = float(np.sum(weights * (delta - pooled) ** 2))
    return q, float(stats.chi2.sf(q, len(delta) - 1))


def pooled_effect(delta: np.ndarray, se: np.ndarray) -> dict[str, float]:
    """The depths' inverse-variance weighted mean difference (`pooled_delta`) with the Knapp-Hartung
    interval and p: variance widened by max(1, Q / (k - 1)), t on k - 1 degrees of freedom. It asks
    "is there an effect at these sizes, on average", which a few seeds per depth may not settle depth by
    depth; it says nothing about a trend. NaN with fewer than 2 depths."""
    names = ("pooled_delta", "pooled_ci_low", "pooled_ci_high", "pooled_p")
    if len(delta) < 2:
        return dict.fromkeys(names, math.nan)
    pooled, weights = inverse_variance_mean(delta, se)
    q, _ = cochran_q(delta, se)
    dof = len(delta) - 1
    pooled_se = math.sqrt(max(1.0, q / dof) / np.sum(weights))
    half = stats.t.ppf(1 - ALPHA / 2, dof) * pooled_se
    p = float(2 * stats.t.sf(abs(pooled) / pooled_se, dof))
    return dict(zip(names, (pooled, pooled - half, pooled + half, p), strict=True))


def scale_trend(scale: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the slope per decade of training FLOPs with its interval and p, heterogeneity, verdict."""
    rows = []
    for variant, group in scale.groupby("variant", sort=True):
        rows.append({"variant": variant, **_variant_trend(group.sort_values("train_flops"))})
    columns = [
        "variant",
        "n_depths",
        "slope_per_decade",
        "slope_ci_low",
        "slope_ci_high",
        "slope_p",
        "heterogeneity_q",
        "heterogeneity_p",
        "pooled_delta",
        "pooled_ci_low",
        "pooled_ci_high",
        "pooled_p",
        "scale_verdict",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns)


def _variant_trend(group: pd.DataFrame) -> dict:
    usable = group[np.isfinite(group["delta_se"].to_numpy(dtype=float)) & (group["delta_se"] > 0)]
    usable = usable[np.isfinite(usable["train_flops"].to_numpy(dtype=float)) & (usable["train_flops"] > 0)]
    values = dict.fromkeys(
        ("slope_per_decade", "slope_ci_low", "slope_ci_high", "slope_p", "heterogeneity_q", "heterogeneity_p"),
        math.nan,
    )
    values.update(n_depths=len(usable), scale_verdict=INCONCLUSIVE, note="")
    values.update(
        pooled_effect(usable["delta_final_val_bpb"].to_numpy(dtype=float), usable["delta_se"].to_numpy(dtype=float))
    )
    left_out = len(group) - len(usable)
    if left_out:
        values["note"] = f"{left_out} depth(s) without an interval (one seed, or no spread) left out"
    if len(usable) < MIN_TREND_DEPTHS:
        values["note"] = "; ".join(
            filter(
                None, [values["note"], f"{len(usable)} depth(s) with an interval: no trend (needs {MIN_TREND_DEPTHS})"]
            )
        )
        return values
    log_flops = np.log10(usable["train_flops"].to_numpy(dtype=float))
    delta, se = usable["delta_final_val_bpb"].to_numpy(dtype=float), usable["delta_se"].to_numpy(dtype=float)
    trend = fit_trend(log_flops, delta, se)
    slope_se = math.sqrt(trend.covariance[1, 1])
    half = stats.t.ppf(1 - ALPHA / 2, trend.dof) * slope_se
    q, q_p = cochran_q(delta, se)
    values.update(
        slope_per_decade=trend.slope,
        slope_ci_low=trend.slope - half,
        slope_ci_high=trend.slope + half,
        slope_p=float(2 * stats.t.sf(abs(trend.slope) / slope_se, trend.dof)),
        heterogeneity_q=q,
        heterogeneity_p=q_p,
    )
    ends = trend.intercept + trend.slope * np.array([log_flops.min(), log_flops.max()])
    values["scale_verdict"] = judge_scale(
        usable["delta_ci_low"].to_numpy(dtype=float),
        usable["delta_ci_high"].to_numpy(dtype=float),
        values["slope_p"],
        ends,
    )
    return values


def judge_scale(ci_low: np.ndarray, ci_high: np.ndarray, slope_p: float, fitted_ends: np.ndarray) -> str:
    """The verdict from the per-depth intervals, the slope's p and the fitted difference at the smallest
    and the largest rung (the definitions are in the module docstring)."""
    if (ci_high < 0).any() and (ci_low > 0).any():
        return REVERSES
    if slope_p < ALPHA:
        small, large = fitted_ends
        return GROWS if abs(large) > abs(small) else SHRINKS
    if (ci_high < 0).all() or (ci_low > 0).all():
        return HOLDS
    return INCONCLUSIVE


# the compute-equivalent gain -------------------------------------------------------------------
@dataclass(frozen=True)
class LossFit:
    """The baseline's final val bpb as a function of training FLOPs, invertible inside the ladder."""

    kind: str  # POWER_LAW or LOG_LINEAR
    params: tuple[float, ...]  # (E, A, alpha) with C0, or (a, b) on log10 C
    flops_low: float
    flops_high: float
    reference_flops: float = 1.0  # C0 of the power law

    def loss(self, flops: np.ndarray | float) -> np.ndarray:
        flops = np.asarray(flops, dtype=float)
        if self.kind == POWER_LAW:
            e, a, alpha = self.params
            return e + a * (flops / self.reference_flops) ** -alpha
        a, b = self.params
        return a + b * np.log10(flops)

    @property
    def loss_range(self) -> tuple[float, float]:
        """(lowest, highest) loss the fit takes over the ladder's FLOPs."""
        ends = self.loss(np.array([self.flops_low, self.flops_high]))
        return float(ends.min()), float(ends.max())

    @property
    def falls(self) -> bool:
        """The fit's loss decreases with compute (otherwise no multiplier is defined)."""
        return bool(self.loss(self.flops_high) < self.loss(self.flops_low))

    def flops_for(self, loss: float) -> float:
        """C with loss(C) = loss, NaN outside the fitted range (never extrapolated)."""
        low, high = self.loss_range
        if not (self.falls and low <= loss <= high):
            return math.nan
        if self.kind == POWER_LAW:
            e, a, alpha = self.params
            return float(self.reference_flops * ((loss - e) / a) ** (-1 / alpha))
        a, b = self.params
        return float(10 ** ((loss - a) / b))


def fit_loss(flops: np.ndarray, loss: np.ndarray, start: tuple[float, ...] | None = None) -> LossFit | None:
    """The baseline's loss against compute: a saturating power law with 4 rungs or more (falling back to
    log-linear when it does not converge), log-linear with 2-3; None with fewer than 2 rungs."""
    order = np.argsort(flops)
    flops, loss = np.asarray(flops, dtype=float)[order], np.asarray(loss, dtype=float)[order]
    if len(flops) < 2:
        return None
    if len(flops) >= MIN_POWER_LAW_RUNGS:
        fit = _fit_power_law(flops, loss, start)
        if fit is not None:
            return fit
    b, a = np.polyfit(np.log10(flops), loss, 1)
    return LossFit(LOG_LINEAR, (float(a), float(b)), float(flops[0]), float(flops[-1]))


def _fit_power_law(flops: np.ndarray, loss: np.ndarray, start: tuple[float, ...] | None) -> LossFit | None:
    reference = float(flops[0])

    def model(c, e, a, alpha):
        return e + a * (c / reference) ** -alpha

    # E in [0, best loss seen]: the fit saturates under the data, and bits per byte cannot go below 0
    # (unbounded, 4 rungs that fall about log-linearly put E far below 0, as a d2-d5 CPU ladder did:
    # E = -2.57); A > 0 (loss falls with compute); alpha in (0, 5]. The start is the point fit's
    # parameters in the bootstrap, moved inside the bounds.
    best, spread = float(loss.min()), max(float(loss.max() - loss.min()), 1e-6)
    bounds = ([0.0, 0.0, 1e-4], [best, np.inf, 5.0])
    e0, a0, alpha0 = start or (best - spread, 2 * spread, 0.5)
    p0 = (min(max(e0, 0.0), best - 1e-3 * spread), max(a0, 1e-9), min(max(alpha0, 2e-4), 5.0 - 1e-9))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(model, flops, loss, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    return LossFit(POWER_LAW, tuple(float(p) for p in params), float(flops[0]), float(flops[-1]), reference)


def _rung_means(done: pd.DataFrame, baselines: Mapping[int, str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    depths = [d for d in sorted(baselines) if ((done["depth"] == d) & (done["variant"] == baselines[d])).any()]
    base = [done[(done["depth"] == d) & (done["variant"] == baselines[d])] for d in depths]
    flops = np.array([float(b["flops"].astype(float).mean()) for b in base])
    loss = np.array([float(b["final_val_bpb"].astype(float).mean()) for b in base])
    return flops, loss, depths


def compute_multipliers(
    runs: pd.DataFrame, baselines: Mapping[int, str], replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0
) -> tuple[pd.DataFrame, LossFit | None, str]:
    """Per (variant, depth): compute_multiplier with its bootstrap interval and a note. Also returns the
    baseline's fit and a sentence saying which fit was used."""
    done = usable_runs(runs)
    flops, loss, depths = _rung_means(done, baselines)
    valid = np.isfinite(flops) & (flops > 0) & np.isfinite(loss)
    fit = fit_loss(flops[valid], loss[valid])
    columns = ["variant", "depth", "compute_multiplier", "compute_multiplier_ci_low", "compute_multiplier_ci_high"]
    columns += ["compute_multiplier_note", "compute_multiplier_replicates"]
    if fit is None:
        return pd.DataFrame(columns=columns), None, "fewer than 2 rungs with a baseline: no fit, no multiplier"
    description = _describe_fit(fit, int(valid.sum()), len(flops))
    cells = [
        (variant, depth, group)
        for depth in depths
        for variant, group in sorted(done[done["depth"] == depth].groupby("variant"), key=lambda item: item[0])
        if variant != baselines[depth]
    ]
    point = [
        _multiplier(fit, group, done[(done["depth"] == depth) & (done["variant"] == baselines[depth])])
        for _, depth, group in cells
    ]
    draws = _bootstrap(done, baselines, depths, cells, fit, replicates, seed)
    rows = []
    for (variant, depth, _), (value, note), samples in zip(cells, point, draws, strict=True):
        low, high = (
            (
                float(np.quantile(samples, 0.025, method="inverted_cdf")),
                float(np.quantile(samples, 0.975, method="inverted_cdf")),
            )
            if len(samples) and math.isfinite(value)
            else (math.nan, math.nan)
        )
        rows.append([variant, int(depth), value, low, high, note, len(samples)])
    return pd.DataFrame(rows, columns=columns), fit, description


def _describe_fit(fit: LossFit, rungs: int, rung_total: int) -> str:
    if fit.kind == POWER_LAW:
        e, a, alpha = fit.params
        text = (
            f"saturating power law L(C) = {e:.4f} + {a:.4f} (C / {fit.reference_flops:.3g})^-{alpha:.3f} "
            f"over the baseline's {rungs} rungs (scipy curve_fit, E bounded to [0, the best rung's loss])"
        )
        if e <= 1e-6:
            text += "; E at its floor 0: the rungs show no saturation, so the fit is a plain power law"
    else:
        a, b = fit.params
        reason = "fewer than 4 rungs" if rungs < MIN_POWER_LAW_RUNGS else "the power law did not converge"
        text = f"local log-linear L(C) = {a:.4f} {b:+.4f} log10 C over the baseline's {rungs} rungs ({reason})"
    if rung_total > rungs:
        text += f"; {rung_total - rungs} rung(s) without FLOPs left out"
    return text


def anchored_target(fit: LossFit, flops: float, variant_loss: float, baseline_loss: float) -> float:
    """The loss the baseline's curve must reach: its fitted value at this rung plus the variant's
    difference to the baseline there. Anchoring the difference on the curve (rather than inverting the
    variant's raw loss) makes a variant equal to the baseline exactly 1x, whatever the fit's residual."""
    return float(fit.loss(flops)) + (variant_loss - baseline_loss)


def _multiplier(fit: LossFit, group: pd.DataFrame, base: pd.DataFrame) -> tuple[float, str]:
    if not fit.falls:
        return math.nan, "the baseline's fitted loss does not fall with compute: no multiplier"
    flops = float(group["flops"].astype(float).mean())
    target = anchored_target(
        fit,
        flops,
        float(group["final_val_bpb"].astype(float).mean()),
        float(base["final_val_bpb"].astype(float).mean()),
    )
    needed = fit.flops_for(target)
    if not math.isfinite(needed):
        return math.nan, OUTSIDE
    return needed / flops, ""


def _bootstrap(done, baselines, depths, cells, fit: LossFit, replicates: int, seed: int) -> list[np.ndarray]:
    """Per cell, the multiplier of each replicate (inf / 0 beyond the range's better / worse edge)."""
    rng = np.random.default_rng(seed)
    by_depth = {d: done[done["depth"] == d] for d in depths}
    seeds = {d: np.array(sorted(by_depth[d]["seed"].unique())) for d in depths}
    value_of = {
        d: {(v, s): x for v, s, x in zip(g["variant"], g["seed"], g["final_val_bpb"].astype(float), strict=True)}
        for d, g in by_depth.items()
    }
    flops_of = {
        (d, v): float(g["flops"].astype(float).mean()) for d, g in by_depth.items() for v, g in g.groupby("variant")
    }
    samples: list[list[float]] = [[] for _ in cells]
    for _ in range(replicates):
        drawn = {d: rng.choice(seeds[d], size=len(seeds[d]), replace=True) for d in depths}

        def mean(depth, variant, drawn=drawn):
            values = [value_of[depth][(variant, s)] for s in drawn[depth] if (variant, s) in value_of[depth]]
            return float(np.mean(values)) if values else math.nan

        base_loss = np.array([mean(d, baselines[d]) for d in depths])
        base_flops = np.array([flops_of[(d, baselines[d])] for d in depths])
        keep = np.isfinite(base_loss) & np.isfinite(base_flops) & (base_flops > 0)
        replicate = fit_loss(base_flops[keep], base_loss[keep], fit.params if fit.kind == POWER_LAW else None)
        if replicate is None or replicate.kind != fit.kind or not replicate.falls:
            continue
        low, high = replicate.loss_range
        for i, (variant, depth, _) in enumerate(cells):
            flops = flops_of[(depth, variant)]
            loss = anchored_target(replicate, flops, mean(depth, variant), mean(depth, baselines[depth]))
            if not math.isfinite(loss):
                continue
            if loss < low:
                samples[i].append(math.inf)
            elif loss > high:
                samples[i].append(0.0)
            else:
                samples[i].append(replicate.flops_for(loss) / flops)
    return [np.array(s) for s in samples]


def with_multipliers(scale: pd.DataFrame, multipliers: pd.DataFrame) -> pd.DataFrame:
    """scale.csv: the per-depth differences with the compute multiplier columns beside them."""
    if multipliers.empty:
        extra = ["compute_multiplier", "compute_multiplier_ci_low", "compute_multiplier_ci_high"]
        return scale.assign(**{c: math.nan for c in extra}, compute_multiplier_note="", compute_multiplier_replicates=0)
    return scale.merge(multipliers, on=["variant", "depth"], how="left")


# the report's section and plot -----------------------------------------------------------------
def scale_markdown(scale: pd.DataFrame, trend: pd.DataFrame, fit_description: str) -> str:
    """report.md's "The effect across scale" section: the per-depth table, the trend table, the method."""
    lines = [
        "Δ = variant − baseline final val bpb at each depth (lower is better), 95% interval over seeds "
        "(paired by seed where two or more are shared, Welch otherwise); compute multiplier: how many times "
        "this rung's training FLOPs the baseline would need to reach the variant's loss (above 1: the variant "
        "is better), 95% bootstrap interval over seeds.",
        "",
        "| variant | depth | training FLOPs | seeds | Δ val bpb [95% CI] | compute multiplier [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for row in scale.sort_values(["variant", "train_flops"]).itertuples():
        lines.append(
            f"| {row.variant} | {row.depth} | {_flops(row.train_flops)} | {row.n_seeds} | "
            f"{_delta_cell(row.delta_final_val_bpb, row.delta_ci_low, row.delta_ci_high)} | {_multiplier_cell(row)} |"
        )
    lines += [
        "",
        "| variant | depths | slope per decade of FLOPs [95% CI] | slope p | heterogeneity p | "
        "pooled Δ over depths [95% CI] | pooled p | verdict | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in trend.itertuples():
        slope = _delta_cell(row.slope_per_decade, row.slope_ci_low, row.slope_ci_high)
        pooled = _delta_cell(row.pooled_delta, row.pooled_ci_low, row.pooled_ci_high)
        lines.append(
            f"| {row.variant} | {row.n_depths} | {slope} | {_p(row.slope_p)} | {_p(row.heterogeneity_p)} | "
            f"{pooled} | {_p(row.pooled_p)} | **{row.scale_verdict}** | {row.note} |"
        )
    lines += [
        "",
        "Trend: Δ against log10 training FLOPs, weighted least squares with weights 1 / SE² (a noisier depth "
        "counts less), Knapp-Hartung interval (t on depths − 2 degrees of freedom, the variance widened when the "
        "depths scatter more than their seeds explain); with 3-4 depths it is wide on purpose. Heterogeneity: "
        "Cochran's Q of the depths around their weighted mean (does Δ change across depths at all). Pooled Δ: "
        "that weighted mean with a Knapp-Hartung interval (t on depths − 1 degrees of freedom): is there an "
        "effect at these sizes on average, which a few seeds per depth may not settle depth by depth; it does "
        "not enter the verdict and says nothing about a trend. Verdicts, "
        f"α = {ALPHA} without adjustment across variants, first that applies: *{REVERSES}* (one depth's interval "
        f"below 0, another's above); *{GROWS}* / *{SHRINKS}* (significant slope, the fitted |Δ| at the largest rung "
        f"larger / smaller than at the smallest); *{HOLDS}* (every depth's interval on the same side of "
        f"0); *{INCONCLUSIVE}* otherwise, and with fewer than {MIN_TREND_DEPTHS} depths (no trend is fitted).",
        "",
        f"Compute multiplier: the baseline's final val bpb against training FLOPs, {fit_description}. A loss the "
        f"fit does not reach inside the ladder's FLOPs is *{OUTSIDE}*: never extrapolated.",
        "",
        "Every number: [scale.csv](scale.csv) (per variant and depth) and [scale_trend.csv](scale_trend.csv) "
        "(per variant).",
    ]
    return "\n".join(lines)


def _flops(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "—"


def _signed(value: float) -> str:
    return f"{value:+.4f}".replace("-", "−")


def _delta_cell(value: float, low: float, high: float) -> str:
    if not math.isfinite(value):
        return "—"
    interval = f" [{_signed(low)}, {_signed(high)}]" if math.isfinite(low) else " (no interval)"
    return _signed(value) + interval


def _multiplier_cell(row) -> str:
    if not math.isfinite(row.compute_multiplier):
        return row.compute_multiplier_note or "—"
    low, high = row.compute_multiplier_ci_low, row.compute_multiplier_ci_high
    interval = f" [{low:.3g}, {high:.3g}]" if math.isfinite(low) or math.isinf(high) else ""
    return f"{row.compute_multiplier:.3g}x{interval}"


def _p(p: float) -> str:
    return "—" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def scale_figure(scale: pd.DataFrame, trend: pd.DataFrame):
    """Δ against training FLOPs (log x), one panel per variant: each depth's 95% interval and the
    fitted trend with its 95% band. None with fewer than two depths."""
    from harness.results.plots import _panels

    if scale.empty or scale["depth"].nunique() < 2:
        return None
    variants = sorted(scale["variant"].unique())
    fig, axes = _panels(len(variants), extra_width=0.0)
    for ax, variant in zip(axes, variants, strict=True):
        rows = scale[scale["variant"] == variant].sort_values("train_flops")
        flops = rows["train_flops"].to_numpy(dtype=float)
        delta = rows["delta_final_val_bpb"].to_numpy(dtype=float)
        low, high = rows["delta_ci_low"].to_numpy(dtype=float), rows["delta_ci_high"].to_numpy(dtype=float)
        errors = np.nan_to_num(np.vstack([delta - low, high - delta]))
        ax.errorbar(flops, delta, yerr=errors, marker="o", linestyle="none", capsize=3, color="C0", label="Δ, 95% CI")
        for x, y, depth in zip(flops, delta, rows["depth"], strict=True):
            ax.annotate(f"d{depth}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        usable = rows[np.isfinite(rows["delta_se"].to_numpy(dtype=float)) & (rows["delta_se"] > 0)]
        verdict = trend.loc[trend["variant"] == variant, "scale_verdict"]
        if len(usable) >= MIN_TREND_DEPTHS:
            log_flops = np.log10(usable["train_flops"].to_numpy(dtype=float))
            fitted = fit_trend(
                log_flops,
                usable["delta_final_val_bpb"].to_numpy(dtype=float),
                usable["delta_se"].to_numpy(dtype=float),
            )
            grid = np.linspace(log_flops.min(), log_flops.max(), 50)
            line, band_low, band_high = fitted.band(grid)
            ax.plot(10**grid, line, color="C1", label="weighted trend")
            ax.fill_between(10**grid, band_low, band_high, color="C1", alpha=0.2, label="95% band")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training compute (FLOPs, log scale)")
        ax.set_ylabel("Δ final val bpb vs baseline")
        ax.set_title(f"{variant}\n{verdict.iloc[0] if len(verdict) else ''}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("the effect across scale: Δ final val bpb (lower is better) against training compute")
    return fig


@dataclass(frozen=True)
class ScaleReport:
    """What a report of a sweep over several depths gains: scale.csv, scale_trend.csv, a plot, a section."""

    scale: pd.DataFrame
    trend: pd.DataFrame
    fit_description: str
    figure: object | None

    @property
    def markdown(self) -> str:
        return scale_markdown(self.scale, self.trend, self.fit_description)


def effect_across_scale(runs: pd.DataFrame, baselines: Mapping[int, str]) -> ScaleReport | None:
    """Everything the report needs for the effect across scale; None when the sweep has one depth."""
    if len(baselines) < 2:
        return None
    scale = scale_table(runs, baselines)
    multipliers, _, description = compute_multipliers(runs, baselines)
    scale = with_multipliers(scale, multipliers)
    trend = scale_trend(scale)
    return ScaleReport(scale, trend, description, scale_figure(scale, trend))
