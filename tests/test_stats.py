"""Statistics over seeds: intervals, paired/Welch tests and power, against independent references."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from harness.results.stats import (
    NO_TEST,
    PAIRED,
    WELCH,
    compare,
    design_min_detectable,
    mean_interval,
    min_detectable_difference,
    pooled_sd,
    seeds_needed,
)


def test_mean_interval_matches_the_t_formula_by_hand():
    values = [1.0, 2.0, 4.0]
    mean = 7 / 3
    sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)
    t_975_df2 = 4.302652729911275  # two-sided 95% quantile of t with 2 degrees of freedom (tables)
    interval = mean_interval(values)
    assert interval.n == 3
    assert interval.mean == pytest.approx(mean)
    assert interval.sd == pytest.approx(sd)
    assert interval.low == pytest.approx(mean - t_975_df2 * sd / math.sqrt(3))
    assert interval.high == pytest.approx(mean + t_975_df2 * sd / math.sqrt(3))


def test_one_value_has_no_interval_and_nan_is_ignored():
    interval = mean_interval([1.5, float("nan")])
    assert interval.n == 1 and interval.mean == 1.5
    assert math.isnan(interval.low) and math.isnan(interval.high)


def test_paired_when_the_seeds_match_regardless_of_order():
    variant = [(2, 2.5), (0, 1.0), (1, 1.5)]
    baseline = [(0, 0.8), (1, 1.6), (2, 2.0)]
    diffs = np.array([0.2, -0.1, 0.5])  # per seed: 1.0-0.8, 1.5-1.6, 2.5-2.0
    se = diffs.std(ddof=1) / math.sqrt(3)
    t_stat = diffs.mean() / se
    result = compare(variant, baseline)
    assert result.test == PAIRED
    assert result.difference == pytest.approx(0.2)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t_stat), 2))
    assert result.p_value == pytest.approx(stats.ttest_rel([1.0, 1.5, 2.5], [0.8, 1.6, 2.0]).pvalue)
    half = stats.t.ppf(0.975, 2) * se
    assert (result.low, result.high) == pytest.approx((0.2 - half, 0.2 + half))
    assert not result.significant()


def test_welch_when_the_seeds_differ():
    variant = [(0, 1.0), (1, 1.2), (2, 1.1)]
    baseline = [(3, 0.9), (4, 0.95)]
    a, b = np.array([1.0, 1.2, 1.1]), np.array([0.9, 0.95])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 2
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)  # Welch-Satterthwaite
    t_stat = (a.mean() - b.mean()) / math.sqrt(va + vb)
    result = compare(variant, baseline)
    assert result.test == WELCH
    assert result.difference == pytest.approx(a.mean() - b.mean())
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t_stat), dof))
    assert result.p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert result.high - result.low == pytest.approx(2 * half)


def test_pairing_needs_exactly_the_same_seeds():
    assert compare([(0, 1.0), (1, 1.1)], [(0, 0.9), (1, 1.05)]).test == PAIRED
    assert compare([(0, 1.0), (1, 1.1), (2, 1.2)], [(0, 0.9), (1, 1.0)]).test == WELCH
    assert compare([(0, 1.0), (0, 1.1)], [(0, 0.9), (1, 1.0)]).test == WELCH  # a seed twice
    assert compare([(0, 1.0), (1, math.nan)], [(0, 0.9), (1, 1.0)]).test == NO_TEST  # one usable value


def test_one_seed_is_never_significant():
    result = compare([(0, 5.0)], [(0, 1.0), (1, 1.01), (2, 0.99)])
    assert result.test == NO_TEST
    assert result.difference == pytest.approx(4.0)
    assert math.isnan(result.p_value) and math.isnan(result.low)
    assert not result.significant()


def test_identical_runs_have_zero_difference_and_no_significance():
    result = compare([(0, 1.0), (1, 2.0)], [(0, 1.0), (1, 2.0)])
    assert result.test == PAIRED and result.difference == 0 and result.p_value == 1.0
    assert not result.significant()


def _power_by_integration(delta: float, se: float, dof: int, alpha: float = 0.05) -> float:
    """P(|Z + delta/se| > c sqrt(V/dof)), V ~ chi2(dof): the t-test's power, without the noncentral t."""
    crit = stats.t.ppf(1 - alpha / 2, dof)
    nc = delta / se

    def integrand(v):
        threshold = crit * math.sqrt(v / dof)
        return (stats.norm.sf(threshold - nc) + stats.norm.cdf(-threshold - nc)) * stats.chi2.pdf(v, dof)

    return integrate.quad(integrand, 0, np.inf, limit=200)[0]


@pytest.mark.parametrize("dof", [1, 2, 5, 30])
def test_min_detectable_difference_has_80_percent_power(dof):
    se = 0.003
    mdd = min_detectable_difference(se, dof)
    assert _power_by_integration(mdd, se, dof) == pytest.approx(0.8, abs=1e-4)


def test_min_detectable_difference_approaches_the_normal_formula():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 2.8016
    assert min_detectable_difference(1.0, 100_000) == pytest.approx(z, rel=1e-3)
    assert math.isnan(min_detectable_difference(float("nan"), 3))


def test_seeds_needed_matches_the_classic_tables():
    # Cohen's tables / G*Power, alpha 0.05 two-sided, power 0.8: d = 1 needs 17 per group, d = 0.5 needs 64;
    # a paired (one-sample) test with d_z = 1 needs 10 pairs, d_z = 0.5 needs 34.
    assert seeds_needed(1.0, 1.0, paired=False) == 17
    assert seeds_needed(0.5, 1.0, paired=False) == 64
    assert seeds_needed(0.002, 0.002, paired=True) == 10
    assert seeds_needed(0.5, 1.0, paired=True) == 34
    assert seeds_needed(0.1, float("nan"), paired=True) is None


def test_seeds_needed_is_the_smallest_sufficient_count():
    n = seeds_needed(0.002, 0.0015, paired=True)
    assert design_min_detectable(0.0015, n, paired=True) <= 0.002 < design_min_detectable(0.0015, n - 1, paired=True)


def test_pooled_sd_weights_by_degrees_of_freedom():
    groups = [[1.0, 2.0, 3.0], [10.0, 12.0], [7.0]]
    sd, dof = pooled_sd(groups)
    assert dof == 3
    assert sd == pytest.approx(math.sqrt((2.0 + 2.0) / 3))  # sums of squares 2 and 2 over 2 + 1 dof
