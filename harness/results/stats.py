"""Statistics over seeds: intervals, a test against the baseline, and what a sweep could detect.

Every claim the report makes about a variant goes through here. The unit of evidence is one
seed's final number; a variant with one seed has no spread, so it gets no interval and no test.
Against the baseline, seeds are paired when both sides ran exactly the same seeds (the data
order and initialisation then match, and the seed-to-seed noise cancels in the difference);
otherwise Welch's unequal-variance t-test is used.

Power: the smallest true difference the same design would detect with probability `POWER` at
level `ALPHA` (two-sided), from the noncentral t distribution with the observed spread. It is
what keeps "not significant" from being read as "no difference".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 1 - ALPHA

PAIRED, WELCH, NO_TEST = "paired", "welch", "none"


@dataclass(frozen=True)
class Interval:
    """Mean and its two-sided t interval; low/high are NaN with fewer than two values."""

    mean: float
    low: float
    high: float
    n: int
    sd: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Comparison:
    """variant minus baseline: the difference of means, its interval, p-value and detectable size."""

    test: str
    n_variant: int
    n_baseline: int
    difference: float
    low: float
    high: float
    p_value: float
    min_detectable: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.test != NO_TEST and self.p_value < alpha


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean with a t interval (n - 1 degrees of freedom) over the finite values."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Within-group standard deviation pooled over groups (weights n - 1) and its degrees of freedom."""
    sum_squares, dof = 0.0, 0
    for group in groups:
        x = _finite(group)
        if len(x) >= 2:
            sum_squares += float(((x - x.mean()) ** 2).sum())
            dof += len(x) - 1
    return (math.sqrt(sum_squares / dof) if dof else math.nan), dof


def t_test_power(difference: float, se: float, dof: float, alpha: float = ALPHA) -> float:
    """Probability that a two-sided t-test with standard error `se` rejects when the truth is `difference`."""
    crit = stats.t.ppf(1 - alpha / 2, dof)
    noncentrality = abs(difference) / se
    far_tail = stats.nct.cdf(-crit, dof, noncentrality)
    # The far tail is below alpha / 2 and shrinks with the noncentrality; scipy returns NaN once it underflows.
    return float(stats.nct.sf(crit, dof, noncentrality) + (far_tail if math.isfinite(far_tail) else 0.0))


def min_detectable_difference(se: float, dof: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |true difference| a two-sided t-test (standard error `se`, `dof` degrees of freedom)
    rejects with probability `power`. NaN when the spread is unknown."""
    if not (math.isfinite(se) and math.isfinite(dof)) or dof <= 0:
        return math.nan
    if se == 0:
        return 0.0

    def shortfall(noncentrality: float) -> float:
        return t_test_power(noncentrality, 1.0, dof, alpha) - power

    upper = stats.t.ppf(1 - alpha / 2, dof) + stats.norm.ppf(power) + 1.0
    while shortfall(upper) < 0:
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-10)) * se


def seeds_needed(
    difference: float, sd: float, paired: bool, alpha: float = ALPHA, power: float = POWER, limit: int = 10_000
) -> int | None:
    """Seeds per variant for a t-test to detect `difference` with probability `power`.

    Paired: `sd` is the spread of the per-seed differences, n - 1 degrees of freedom.
    Unpaired: `sd` is the within-variant spread, both arms of n seeds, 2n - 2 degrees of freedom.
    None when the spread is unknown or more than `limit` seeds would be needed.
    """
    if not (math.isfinite(sd) and difference > 0):
        return None
    for n in range(2, limit + 1):
        if design_min_detectable(sd, n, paired, alpha, power) <= difference:
            return n
    return None


def design_min_detectable(sd: float, seeds: int, paired: bool, alpha: float = ALPHA, power: float = POWER) -> float:
    """The detectable difference of a design with `seeds` per variant (see `seeds_needed` for `sd`)."""
    if seeds < 2:
        return math.nan
    if paired:
        return min_detectable_difference(sd / math.sqrt(seeds), seeds - 1, alpha, power)
    return min_detectable_difference(sd * math.sqrt(2 / seeds), 2 * seeds - 2, alpha, power)


def compare(
    variant: Sequence[tuple[int, float]], baseline: Sequence[tuple[int, float]], alpha: float = ALPHA
) -> Comparison:
    """Compare (seed, value) pairs of a variant with the baseline's.

    Paired t-test when both sides hold the same set of distinct seeds (at least two); Welch's
    t-test when each side has at least two values; otherwise only the difference of means.
    """
    variant = [(s, v) for s, v in variant if math.isfinite(v)]
    baseline = [(s, v) for s, v in baseline if math.isfinite(v)]
    v_seeds, b_seeds = [s for s, _ in variant], [s for s, _ in baseline]
    n_v, n_b = len(variant), len(baseline)
    same_seeds = len(set(v_seeds)) == n_v and len(set(b_seeds)) == n_b and set(v_seeds) == set(b_seeds)
    if same_seeds and n_v >= 2:
        by_seed = dict(baseline)
        diffs = np.array([v - by_seed[s] for s, v in variant])
        return _paired(diffs, n_b, alpha)
    v_values = np.array([v for _, v in variant])
    b_values = np.array([v for _, v in baseline])
    difference = float(v_values.mean() - b_values.mean()) if n_v and n_b else math.nan
    if n_v >= 2 and n_b >= 2:
        return _welch(v_values, b_values, difference, alpha)
    return Comparison(NO_TEST, n_v, n_b, difference, math.nan, math.nan, math.nan, math.nan)


def _paired(diffs: np.ndarray, n_baseline: int, alpha: float) -> Comparison:
    n = len(diffs)
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        # Every seed gave exactly the same difference (e.g. bitwise-identical runs): no noise to test against.
        return Comparison(PAIRED, n, n_baseline, mean, mean, mean, 1.0 if mean == 0 else 0.0, 0.0)
    result = stats.ttest_1samp(diffs, 0.0)
    ci = result.confidence_interval(1 - alpha)
    mdd = min_detectable_difference(se, n - 1, alpha)
    return Comparison(PAIRED, n, n_baseline, mean, float(ci.low), float(ci.high), float(result.pvalue), mdd)


def _welch(variant: np.ndarray, baseline: np.ndarray, difference: float, alpha: float) -> Comparison:
    var_v, var_b = variant.var(ddof=1) / len(variant), baseline.var(ddof=1) / len(baseline)
    se = math.sqrt(var_v + var_b)
    if se == 0:
        p = 1.0 if difference == 0 else 0.0
        return Comparison(WELCH, len(variant), len(baseline), difference, difference, difference, p, 0.0)
    result = stats.ttest_ind(variant, baseline, equal_var=False)
    ci = result.confidence_interval(1 - alpha)
    mdd = min_detectable_difference(se, float(result.df), alpha)
    return Comparison(
        WELCH, len(variant), len(baseline), difference, float(ci.low), float(ci.high), float(result.pvalue), mdd
    )
