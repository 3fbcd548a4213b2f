"""Statistics over seeds: intervals, a test against the baseline, and what a sweep could detect.

Every claim the report makes about a variant goes through here. The unit of evidence is one
seed's final number; a variant with one seed has no spread, so it gets no interval and no test.
Against the baseline, seeds are paired on the seeds both sides ran (the data order and
initialisation then match, and the seed-to-seed noise cancels in the difference), as long as
at least two are shared; otherwise Welch's unequal-variance t-test is used on every value.

Speed is compared as a ratio: `ratio_compare` gives the relative difference of the mean
(variant / baseline - 1) with Fieller's interval, which is exactly the set of ratios rho that
the same t-test (paired, or Welch) does not reject for "mean(variant) = rho * mean(baseline)".
Its p-value at rho = 1 is therefore the ordinary t-test of the raw difference, and the interval
excludes 0% exactly when that test rejects, which a log-ratio or delta-method interval only
approximates. Welch's degrees of freedom depend on rho, so that inversion is solved numerically.

Multiplicity: `holm` adjusts a family of p-values (Holm's step-down, which controls the
family-wise error rate under any dependence); the report adjusts every test of its table together.

Power: the smallest true difference the same design would detect with probability `POWER` at
level `ALPHA` (two-sided), from the noncentral t distribution with the observed spread. It is
what keeps "not significant" from being read as "no difference".
"""

from __future__ import annotations

import math
from collections import Counter
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
    n_paired: int = 0  # seeds the paired test used (shared by both sides); 0 for Welch or no test
    se: float = math.nan  # the difference's standard error and its degrees of freedom: what power needs
    dof: float = math.nan

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
    if design_min_detectable(sd, limit, paired, alpha, power) > difference:
        return None
    # The detectable difference falls as seeds are added (smaller standard error, more degrees of
    # freedom): bisect for the first count that reaches `difference`.
    low, high = 1, limit  # low never suffices (or is below 2), high does
    while high - low > 1:
        middle = (low + high) // 2
        if middle >= 2 and design_min_detectable(sd, middle, paired, alpha, power) <= difference:
            high = middle
        else:
            low = middle
    return high


def design_min_detectable(sd: float, seeds: int, paired: bool, alpha: float = ALPHA, power: float = POWER) -> float:
    """The detectable difference of a design with `seeds` per variant (see `seeds_needed` for `sd`)."""
    if seeds < 2:
        return math.nan
    if paired:
        return min_detectable_difference(sd / math.sqrt(seeds), seeds - 1, alpha, power)
    return min_detectable_difference(sd * math.sqrt(2 / seeds), 2 * seeds - 2, alpha, power)


def shared_seeds(variant: Sequence[tuple[int, float]], baseline: Sequence[tuple[int, float]]) -> list[int]:
    """Seeds that occur exactly once on each side, sorted: the ones a paired test can match up."""
    v_counts, b_counts = Counter(s for s, _ in variant), Counter(s for s, _ in baseline)
    return sorted(s for s, n in v_counts.items() if n == 1 and b_counts.get(s) == 1)


def _finite_pairs(pairs: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(s, float(v)) for s, v in pairs if math.isfinite(v)]


def compare(
    variant: Sequence[tuple[int, float]], baseline: Sequence[tuple[int, float]], alpha: float = ALPHA
) -> Comparison:
    """Compare (seed, value) pairs of a variant with the baseline's (non-finite values dropped).

    Paired t-test on the seeds both sides ran, when at least two are shared (the others are left
    out of the test; `n_paired` says how many were used); Welch's t-test on every value when
    fewer are shared and each side has two values or more; otherwise only the difference of means.
    """
    variant, baseline = _finite_pairs(variant), _finite_pairs(baseline)
    n_v, n_b = len(variant), len(baseline)
    shared = shared_seeds(variant, baseline)
    if len(shared) >= 2:
        v_by_seed, b_by_seed = dict(variant), dict(baseline)
        diffs = np.array([v_by_seed[s] - b_by_seed[s] for s in shared])
        return _paired(diffs, n_v, n_b, alpha)
    v_values = np.array([v for _, v in variant])
    b_values = np.array([v for _, v in baseline])
    difference = float(v_values.mean() - b_values.mean()) if n_v and n_b else math.nan
    if n_v >= 2 and n_b >= 2:
        return _welch(v_values, b_values, difference, alpha)
    return Comparison(NO_TEST, n_v, n_b, difference, math.nan, math.nan, math.nan, math.nan)


def _paired(diffs: np.ndarray, n_variant: int, n_baseline: int, alpha: float) -> Comparison:
    n = len(diffs)
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        # Every seed gave exactly the same difference (e.g. bitwise-identical runs): no noise to test against.
        p = 1.0 if mean == 0 else 0.0
        return Comparison(PAIRED, n_variant, n_baseline, mean, mean, mean, p, 0.0, n, 0.0, n - 1)
    result = stats.ttest_1samp(diffs, 0.0)
    ci = result.confidence_interval(1 - alpha)
    mdd = min_detectable_difference(se, n - 1, alpha)
    p = float(result.pvalue)
    return Comparison(PAIRED, n_variant, n_baseline, mean, float(ci.low), float(ci.high), p, mdd, n, se, n - 1)


def _welch(variant: np.ndarray, baseline: np.ndarray, difference: float, alpha: float) -> Comparison:
    var_v, var_b = variant.var(ddof=1) / len(variant), baseline.var(ddof=1) / len(baseline)
    se = math.sqrt(var_v + var_b)
    if se == 0:
        p = 1.0 if difference == 0 else 0.0
        return Comparison(WELCH, len(variant), len(baseline), difference, difference, difference, p, 0.0, 0, 0.0)
    result = stats.ttest_ind(variant, baseline, equal_var=False)
    ci = result.confidence_interval(1 - alpha)
    dof = float(result.df)
    mdd = min_detectable_difference(se, dof, alpha)
    p = float(result.pvalue)
    return Comparison(WELCH, len(variant), len(baseline), difference, float(ci.low), float(ci.high), p, mdd, 0, se, dof)


# ratios (speed) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatioComparison:
    """variant / baseline - 1 of the means, in percent, with Fieller's interval and the t-test's p."""

    test: str
    n_variant: int
    n_baseline: int
    n_paired: int
    delta_pct: float
    low_pct: float
    high_pct: float
    p_value: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.test != NO_TEST and self.p_value < alpha


def ratio_compare(
    variant: Sequence[tuple[int, float]], baseline: Sequence[tuple[int, float]], alpha: float = ALPHA
) -> RatioComparison:
    """Relative difference of the variant's mean to the baseline's, paired on shared seeds as
    `compare` is (at least two shared), else Welch. The interval is Fieller's: every ratio rho for
    which the t-test of mean(variant) - rho * mean(baseline) = 0 has p >= alpha. A bound is
    infinite when the baseline's own mean is not distinguishable from 0 (never for throughput)."""
    variant, baseline = _finite_pairs(variant), _finite_pairs(baseline)
    n_v, n_b = len(variant), len(baseline)
    shared = shared_seeds(variant, baseline)
    if len(shared) >= 2:
        v_by_seed, b_by_seed = dict(variant), dict(baseline)
        v = np.array([v_by_seed[s] for s in shared])
        b = np.array([b_by_seed[s] for s in shared])
        return _paired_ratio(v, b, n_v, n_b, alpha)
    v, b = np.array([x for _, x in variant]), np.array([x for _, x in baseline])
    estimate = 100 * (v.mean() / b.mean() - 1) if n_v and n_b and b.mean() != 0 else math.nan
    if n_v >= 2 and n_b >= 2:
        return _welch_ratio(v, b, alpha)
    return RatioComparison(NO_TEST, n_v, n_b, 0, float(estimate), math.nan, math.nan, math.nan)


def _paired_ratio(v: np.ndarray, b: np.ndarray, n_v: int, n_b: int, alpha: float) -> RatioComparison:
    n = len(v)
    rho = float(v.mean() / b.mean())
    cov = np.cov(v, b, ddof=1)  # [[S_vv, S_vb], [S_vb, S_bb]]

    def t_of(r: float) -> float:
        variance = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / n
        return (v.mean() - r * b.mean()) / math.sqrt(variance) if variance > 0 else math.inf

    if np.ptp(v - b) == 0 and np.ptp(v - rho * b) == 0:  # no noise at all (identical measurements)
        p = 1.0 if rho == 1 else 0.0
        return RatioComparison(PAIRED, n_v, n_b, n, 100 * (rho - 1), 100 * (rho - 1), 100 * (rho - 1), p)
    p = float(stats.ttest_rel(v, b).pvalue)
    if not _denominator_significant(b.mean(), cov[1, 1] / n, n - 1, alpha):
        return RatioComparison(PAIRED, n_v, n_b, n, 100 * (rho - 1), -math.inf, math.inf, p)
    low, high = _fieller_bounds(rho, t_of, lambda _: n - 1, alpha)
    return RatioComparison(PAIRED, n_v, n_b, n, 100 * (rho - 1), 100 * (low - 1), 100 * (high - 1), p)


def _welch_ratio(v: np.ndarray, b: np.ndarray, alpha: float) -> RatioComparison:
    rho = float(v.mean() / b.mean())
    var_v, var_b = v.var(ddof=1) / len(v), b.var(ddof=1) / len(b)

    def t_of(r: float) -> float:
        variance = var_v + r * r * var_b
        return (v.mean() - r * b.mean()) / math.sqrt(variance) if variance > 0 else math.inf

    def dof_of(r: float) -> float:  # Welch-Satterthwaite for the variances var_v and r^2 var_b
        a, c = var_v, r * r * var_b
        return (a + c) ** 2 / (a * a / (len(v) - 1) + c * c / (len(b) - 1))

    if var_v + var_b == 0:
        p = 1.0 if rho == 1 else 0.0
        return RatioComparison(WELCH, len(v), len(b), 0, 100 * (rho - 1), 100 * (rho - 1), 100 * (rho - 1), p)
    p = float(stats.ttest_ind(v, b, equal_var=False).pvalue)
    # As r grows, the Welch dof tends to the baseline's own, len(b) - 1.
    if not _denominator_significant(b.mean(), var_b, len(b) - 1, alpha):
        return RatioComparison(WELCH, len(v), len(b), 0, 100 * (rho - 1), -math.inf, math.inf, p)
    low, high = _fieller_bounds(rho, t_of, dof_of, alpha)
    return RatioComparison(WELCH, len(v), len(b), 0, 100 * (rho - 1), 100 * (low - 1), 100 * (high - 1), p)


def _denominator_significant(mean: float, variance_of_mean: float, dof: float, alpha: float) -> bool:
    """Fieller's set is a bounded interval exactly when the denominator's mean is itself
    distinguishable from 0 (its t exceeds the critical value); otherwise it is unbounded (the whole
    line, or all but an interval), and reporting two finite numbers for it would be wrong."""
    if variance_of_mean <= 0:
        return mean != 0
    return mean * mean / variance_of_mean > stats.t.ppf(1 - alpha / 2, dof) ** 2


def _fieller_bounds(estimate: float, t_of, dof_of, alpha: float) -> tuple[float, float]:
    """Where |t(rho)| reaches the two-sided critical value on each side of the estimate (|t| = 0
    there). Searched outward in doubling steps; +-inf when it never does within 1e6 x the estimate."""

    def excess(r: float) -> float:
        return abs(t_of(r)) - stats.t.ppf(1 - alpha / 2, dof_of(r))

    bounds = []
    for direction in (-1.0, 1.0):
        step = 1e-3 * max(abs(estimate), 1e-12)
        inner, outer = estimate, estimate + direction * step
        while excess(outer) < 0:
            if step > 1e6 * max(abs(estimate), 1e-12):
                outer = math.nan
                break
            inner, step = outer, 2 * step
            outer = estimate + direction * step
        if math.isnan(outer):
            bounds.append(direction * math.inf)
        else:
            bounds.append(float(optimize.brentq(excess, min(inner, outer), max(inner, outer), xtol=1e-14, rtol=1e-12)))
    return bounds[0], bounds[1]


# multiplicity --------------------------------------------------------------------------------
def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values; NaN entries are not tests and stay NaN.
    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = len(tested)
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
