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
    holm,
    mean_interval,
    min_detectable_difference,
    pooled_sd,
    ratio_compare,
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


def test_pairing_uses_the_shared_seeds_and_needs_two():
    assert compare([(0, 1.0), (1, 1.1)], [(0, 0.9), (1, 1.05)]).test == PAIRED
    assert compare([(0, 1.0), (2, 1.2)], [(0, 0.9), (1, 1.0)]).test == WELCH  # one shared seed
    assert compare([(0, 1.0), (0, 1.1)], [(0, 0.9), (1, 1.0)]).test == WELCH  # a seed twice is not a pair
    assert compare([(0, 1.0), (1, math.nan)], [(0, 0.9), (1, 1.0)]).test == NO_TEST  # one usable value


def test_a_missing_seed_keeps_the_paired_test_on_the_rest():
    # The variant lacks seed 3; the baseline lacks seed 4. Pairs: seeds 0, 1, 2.
    variant = [(0, 1.00), (1, 1.12), (2, 0.95), (4, 1.30)]
    baseline = [(0, 0.98), (1, 1.09), (2, 0.94), (3, 0.90)]
    result = compare(variant, baseline)
    reference = stats.ttest_rel([1.00, 1.12, 0.95], [0.98, 1.09, 0.94])
    assert result.test == PAIRED and result.n_paired == 3
    assert (result.n_variant, result.n_baseline) == (4, 4)
    assert result.difference == pytest.approx(np.mean([0.02, 0.03, 0.01]))
    assert result.p_value == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((ci.low, ci.high))


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


# speed: the ratio of means with Fieller's interval ------------------------------------------------
V = [1031.0, 1012.0, 1046.0, 1020.0, 1039.0]
B = [1000.0, 990.0, 1011.0, 1002.0, 1004.0]


def _fieller_paired_by_hand(v, b, alpha=0.05):
    """Closed form: the rho with (mean_v - rho mean_b)^2 <= t^2 Var(v - rho b) / n, a quadratic in rho."""
    v, b = np.array(v), np.array(b)
    n = len(v)
    t = stats.t.ppf(1 - alpha / 2, n - 1)
    svv, sbb = v.var(ddof=1), b.var(ddof=1)
    svb = ((v - v.mean()) * (b - b.mean())).sum() / (n - 1)
    qa = b.mean() ** 2 - t * t * sbb / n
    qb = v.mean() * b.mean() - t * t * svb / n
    qc = v.mean() ** 2 - t * t * svv / n
    root = math.sqrt(qb * qb - qa * qc)
    return (qb - root) / qa, (qb + root) / qa


def test_paired_speed_ratio_is_fieller_by_hand_and_inverts_scipys_paired_test():
    result = ratio_compare(list(enumerate(V)), list(enumerate(B)))
    assert result.test == PAIRED and result.n_paired == 5
    assert result.delta_pct == pytest.approx(100 * (np.mean(V) / np.mean(B) - 1))
    assert result.p_value == pytest.approx(stats.ttest_rel(V, B).pvalue)  # the plain test of v - b
    low, high = _fieller_paired_by_hand(V, B)
    assert (result.low_pct, result.high_pct) == pytest.approx((100 * (low - 1), 100 * (high - 1)), rel=1e-9)
    # At each bound, scipy's paired test of v against rho * b sits exactly at alpha.
    for bound in (result.low_pct, result.high_pct):
        rho = 1 + bound / 100
        assert stats.ttest_rel(V, rho * np.array(B)).pvalue == pytest.approx(0.05, abs=1e-9)
    assert result.low_pct > 0 and result.significant()


def test_welch_speed_ratio_inverts_scipys_welch_test():
    result = ratio_compare(list(zip(range(5), V, strict=True)), list(zip(range(10, 15), B, strict=True)))
    assert result.test == WELCH and result.n_paired == 0
    assert result.p_value == pytest.approx(stats.ttest_ind(V, B, equal_var=False).pvalue)
    for bound in (result.low_pct, result.high_pct):
        rho = 1 + bound / 100
        assert stats.ttest_ind(V, rho * np.array(B), equal_var=False).pvalue == pytest.approx(0.05, abs=1e-9)
    assert result.low_pct < result.delta_pct < result.high_pct


def test_speed_ratio_interval_holds_zero_exactly_when_p_is_above_alpha():
    rng = np.random.default_rng(0)
    for _ in range(200):
        b = rng.normal(1000, 20, 4)
        v = b * (1 + rng.normal(0.01, 0.02, 4))
        result = ratio_compare(list(enumerate(v)), list(enumerate(b)))
        assert (result.low_pct <= 0 <= result.high_pct) == (result.p_value >= 0.05)


def test_speed_ratio_with_one_seed_is_not_tested():
    result = ratio_compare([(0, 1100.0)], [(0, 1000.0), (1, 1010.0)])
    assert result.test == NO_TEST and math.isnan(result.p_value) and math.isnan(result.low_pct)
    assert result.delta_pct == pytest.approx(100 * (1100 / 1005 - 1))


# multiplicity ------------------------------------------------------------------------------------
def test_holm_matches_statsmodels_and_keeps_nan_out_of_the_family():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, math.nan, 0.03, 0.005, 0.5, math.nan, 0.0001, 0.02])
    finite = np.isfinite(p)
    expected = multipletests(p[finite], method="holm")[1]
    adjusted = holm(p)
    assert np.isnan(adjusted[~finite]).all()
    np.testing.assert_allclose(adjusted[finite], expected, rtol=1e-12)


def test_holm_by_hand():
    # m = 3: sorted 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> held at 0.06 (monotone).
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]


def test_fieller_is_unbounded_exactly_when_the_baseline_mean_is_not_distinguishable_from_zero():
    """Issue 27: not `[−129%, +74377%]`. scipy's one-sample test of the paired baseline values
    against 0 decides, independently of the code, whether the interval may have finite bounds."""
    import math

    from scipy import stats as scipy_stats

    from harness.results.stats import ratio_compare

    variant = [(0, 1000.0), (1, 1010.0), (2, 1020.0)]
    for baseline_values in ([-9.0, 1.0, 11.0], [900.0, 905.0, 915.0]):
        result = ratio_compare(variant, list(enumerate(baseline_values)))
        unbounded = scipy_stats.ttest_1samp(baseline_values, 0).pvalue >= 0.05
        assert math.isinf(result.low_pct) == math.isinf(result.high_pct) == unbounded
