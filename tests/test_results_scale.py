"""The effect across scale (harness/results/scale.py) on synthetic ladders of known truth: an effect
constant across depths, one that shrinks, one that grows, one that reverses, checked against
independent computations (numpy, scipy, statsmodels), and the compute multiplier against a baseline
whose loss curve is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import optimize, stats
from statsmodels.stats.meta_analysis import combine_effects

from harness.results.scale import (
    GROWS,
    HOLDS,
    INCONCLUSIVE,
    LOG_LINEAR,
    OUTSIDE,
    POWER_LAW,
    REVERSES,
    SHRINKS,
    compute_multipliers,
    fit_loss,
    scale_figure,
    scale_markdown,
    scale_table,
    scale_trend,
    with_multipliers,
)

BASE, VARIANT = "mlp_lr.name=c_fc_2x", "mlp_lr.name=c_proj_2x"
DEPTHS = (2, 3, 4, 5)
FLOPS = {2: 4.4e11, 3: 2.3e12, 4: 8.9e12, 5: 2.8e13}
SEEDS = range(6)
# Per-seed noise shared by both variants at a depth (seeds pair up) and a little of each run's own.
RNG = np.random.default_rng(7)
SHARED = {(d, s): RNG.normal(0, 0.01) for d in DEPTHS for s in SEEDS}
OWN = {(d, s, v): RNG.normal(0, 0.002) for d in DEPTHS for s in SEEDS for v in (BASE, VARIANT)}


def ladder(effects: dict[int, float], base_loss=None, depths=DEPTHS, seeds=SEEDS, noise=True) -> pd.DataFrame:
    """A runs table: per depth and seed, the baseline and the variant (baseline + effect)."""
    base_loss = base_loss or (lambda c: 1.2 + 0.8 * (c / 1e11) ** -0.3)
    rows = []
    for depth in depths:
        for seed in seeds:
            for variant in (BASE, VARIANT):
                value = base_loss(FLOPS[depth]) + (effects[depth] if variant == VARIANT else 0.0)
                if noise:
                    value += SHARED[(depth, seed)] + OWN[(depth, seed, variant)]
                rows.append(
                    {
                        "run": f"d{depth}/{variant}/{seed}",
                        "variant": variant,
                        "depth": depth,
                        "seed": seed,
                        "status": "completed",
                        "final_val_bpb": value,
                        "flops": FLOPS[depth],
                    }
                )
    return pd.DataFrame(rows)


BASELINES = dict.fromkeys(DEPTHS, BASE)
CONSTANT = dict.fromkeys(DEPTHS, -0.01)
SHRINKING = {2: -0.03, 3: -0.02, 4: -0.01, 5: -0.002}
GROWING = {2: -0.002, 3: -0.01, 4: -0.02, 5: -0.03}
REVERSING = {2: -0.02, 3: -0.01, 4: 0.01, 5: 0.02}


def trend_of(effects, **kwargs) -> pd.Series:
    return scale_trend(scale_table(ladder(effects, **kwargs), BASELINES)).iloc[0]


def test_each_depths_difference_is_the_paired_mean_with_its_t_interval():
    runs = ladder(SHRINKING)
    table = scale_table(runs, BASELINES).set_index("depth")
    for depth in DEPTHS:
        at = runs[runs["depth"] == depth].pivot(index="seed", columns="variant", values="final_val_bpb")
        diffs = (at[VARIANT] - at[BASE]).to_numpy()
        half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
        row = table.loc[depth]
        assert row["delta_final_val_bpb"] == pytest.approx(diffs.mean(), abs=1e-12)
        assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
        assert row["delta_se"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(6))
        assert (row["n_seeds"], row["train_flops"], row["test"]) == (6, FLOPS[depth], "paired")


def knapp_hartung(table: pd.DataFrame, x: np.ndarray, coefficient: int) -> tuple[float, float, float, float]:
    """statsmodels' WLS of the depths' differences on x (weights 1 / SE^2) with the truncated
    Knapp-Hartung variance: (estimate, 95% low, 95% high, p) of one coefficient."""
    y, w = table["delta_final_val_bpb"].to_numpy(), 1 / table["delta_se"].to_numpy() ** 2
    estimated = sm.WLS(y, x, weights=w).fit()  # scale = residual dispersion Q_E / (k - p)
    known = sm.WLS(y, x, weights=w).fit(cov_type="fixed scale")  # scale = 1: the seeds' SEs taken as known
    se = known.bse[coefficient] * math.sqrt(max(1.0, estimated.scale))
    dof = len(y) - x.shape[1]
    value, half = estimated.params[coefficient], stats.t.ppf(0.975, dof) * se
    return value, value - half, value + half, 2 * stats.t.sf(abs(value) / se, dof)


@pytest.mark.parametrize("effects", [CONSTANT, SHRINKING, GROWING, REVERSING])
def test_the_trend_is_statsmodels_wls_with_the_knapp_hartung_interval(effects):
    table = scale_table(ladder(effects), BASELINES)
    trend = scale_trend(table).iloc[0]
    expected = knapp_hartung(table, sm.add_constant(np.log10(table["train_flops"].to_numpy())), coefficient=1)
    got = trend[["slope_per_decade", "slope_ci_low", "slope_ci_high", "slope_p"]].to_numpy(dtype=float)
    assert tuple(got) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("effects", [CONSTANT, REVERSING])
def test_heterogeneity_is_cochrans_q(effects):
    table = scale_table(ladder(effects), BASELINES)
    trend = scale_trend(table).iloc[0]
    meta = combine_effects(table["delta_final_val_bpb"].to_numpy(), table["delta_se"].to_numpy() ** 2)
    assert trend["heterogeneity_q"] == pytest.approx(meta.q, rel=1e-9)
    assert trend["heterogeneity_p"] == pytest.approx(stats.chi2.sf(meta.q, meta.df_resid), rel=1e-9)


@pytest.mark.parametrize("effects", [CONSTANT, REVERSING])
def test_the_pooled_effect_is_the_intercept_only_wls_with_the_knapp_hartung_interval(effects):
    table = scale_table(ladder(effects), BASELINES)
    trend = scale_trend(table).iloc[0]
    expected = knapp_hartung(table, np.ones((len(table), 1)), coefficient=0)  # intercept only: the mean
    got = trend[["pooled_delta", "pooled_ci_low", "pooled_ci_high", "pooled_p"]].to_numpy(dtype=float)
    assert tuple(got) == pytest.approx(expected, rel=1e-9)
    if effects is REVERSING:  # the depths disagree far beyond their seeds (Q >> k - 1): the interval widens
        assert trend["heterogeneity_q"] > len(table) - 1 and trend["pooled_ci_low"] < 0 < trend["pooled_ci_high"]


def test_two_depths_pool_without_a_trend_and_one_does_neither():
    two = scale_trend(scale_table(ladder(CONSTANT, depths=(2, 3)), BASELINES)).iloc[0]
    assert math.isnan(two["slope_per_decade"]) and math.isfinite(two["pooled_delta"])
    one = scale_trend(scale_table(ladder(CONSTANT, depths=(2,)), BASELINES)).iloc[0]
    assert math.isnan(one["pooled_delta"]) and math.isnan(one["pooled_ci_low"])


def test_a_constant_effect_holds_at_every_depth_and_is_homogeneous():
    trend = trend_of(CONSTANT)
    assert trend["scale_verdict"] == HOLDS
    assert trend["slope_ci_low"] < 0 < trend["slope_ci_high"] and trend["heterogeneity_p"] > 0.05


def test_an_effect_that_shrinks_grows_or_reverses_is_called_so():
    assert trend_of(SHRINKING)["scale_verdict"] == SHRINKS
    assert trend_of(SHRINKING)["slope_per_decade"] > 0  # toward 0 from below
    assert trend_of(GROWING)["scale_verdict"] == GROWS
    assert trend_of(REVERSING)["scale_verdict"] == REVERSES
    assert trend_of(REVERSING)["heterogeneity_p"] < 0.001


def test_an_effect_that_emerges_from_the_other_side_of_zero_grows():
    assert trend_of({2: 0.001, 3: -0.003, 4: -0.015, 5: -0.03})["scale_verdict"] == GROWS


def test_no_effect_anywhere_is_inconclusive():
    assert trend_of(dict.fromkeys(DEPTHS, 0.0))["scale_verdict"] == INCONCLUSIVE


def test_fewer_than_three_depths_fit_no_trend_and_say_so():
    runs = ladder(SHRINKING, depths=(2, 5))
    table = scale_table(runs, {2: BASE, 5: BASE})
    trend = scale_trend(table).iloc[0]
    assert trend["n_depths"] == 2 and math.isnan(trend["slope_per_decade"]) and math.isnan(trend["heterogeneity_p"])
    assert trend["scale_verdict"] == INCONCLUSIVE and "no trend (needs 3)" in trend["note"]


def test_a_depth_with_one_seed_has_no_interval_and_is_left_out_of_the_trend():
    runs = ladder(CONSTANT)
    runs = runs[~((runs["depth"] == 5) & (runs["seed"] > 0))]
    trend = scale_trend(scale_table(runs, BASELINES)).iloc[0]
    assert trend["n_depths"] == 3 and "1 depth(s) without an interval" in trend["note"]


def test_runs_that_did_not_complete_are_not_evidence():
    runs = ladder(CONSTANT)
    runs.loc[(runs["depth"] == 2) & (runs["seed"] == 0) & (runs["variant"] == VARIANT), "status"] = "diverged"
    row = scale_table(runs, BASELINES).set_index("depth").loc[2]
    assert (row["n_seeds"], row["n_baseline_seeds"]) == (5, 6)


# the compute multiplier ------------------------------------------------------------------------
def exact_loss(c):
    return 1.2 + 0.8 * (c / 1e11) ** -0.3


def shifted(multiplier_at: dict[int, float]) -> dict[int, float]:
    """Effects that make the variant's loss exactly the baseline's at k x its FLOPs."""
    return {d: exact_loss(k * FLOPS[d]) - exact_loss(FLOPS[d]) for d, k in multiplier_at.items()}


def seed_symmetric_ladder(effects, depths=DEPTHS):
    """Noise that cancels in each rung's mean (+e, -e pairs), so the means are the exact curve."""
    runs = ladder(effects, base_loss=exact_loss, depths=depths, noise=False)
    runs["final_val_bpb"] += np.where(runs["seed"] % 2 == 0, 1, -1) * 0.001 * (runs["seed"] // 2 + 1)
    return runs


def test_the_power_law_fit_recovers_a_known_curve_as_scipy_does():
    flops = np.array(list(FLOPS.values()))
    fit = fit_loss(flops, exact_loss(flops))
    independent, _ = optimize.curve_fit(
        lambda c, e, a, alpha: e + a * (c / flops[0]) ** -alpha, flops, exact_loss(flops), p0=(1.0, 1.0, 0.5)
    )
    assert fit.kind == POWER_LAW
    assert fit.params == pytest.approx(tuple(independent), rel=1e-4)
    assert fit.loss(flops) == pytest.approx(exact_loss(flops), abs=1e-8)


def test_a_loss_falling_without_saturation_is_fitted_with_its_floor_at_zero_not_below():
    # Four rungs falling log-linearly, as the CPU ladder's did: left unbounded, least squares puts the
    # "irreducible" bits per byte below 0, which no loss can reach.
    flops = np.array(list(FLOPS.values()))
    loss = 2.0 - 0.25 * np.log10(flops / flops[0]) + np.array([0.004, -0.006, 0.005, -0.002])
    unbounded, _ = optimize.curve_fit(
        lambda c, e, a, alpha: e + a * (c / flops[0]) ** -alpha, flops, loss, p0=(1.0, 1.0, 0.5), maxfev=20000
    )
    assert unbounded[0] < 0  # the case the bound is for
    fit = fit_loss(flops, loss)
    # With E held at 0 the model is A (C / C0)^-alpha: scipy's two-parameter fit is the bounded optimum.
    plain, _ = optimize.curve_fit(lambda c, a, alpha: a * (c / flops[0]) ** -alpha, flops, loss, p0=(2.0, 0.1))
    assert fit.kind == POWER_LAW
    assert fit.params[0] == pytest.approx(0.0, abs=1e-7)
    assert fit.params[1:] == pytest.approx(tuple(plain), rel=1e-4)
    runs = ladder({d: 0.0 for d in DEPTHS}, base_loss=lambda c: 2.0 - 0.25 * np.log10(c / flops[0]), noise=False)
    described = compute_multipliers(runs, BASELINES, replicates=20)[2]
    assert "E at its floor 0" in described


def test_the_multiplier_is_the_compute_the_baseline_needs_for_the_variants_loss():
    truth = {2: 2.0, 3: 3.0, 4: 1.5, 5: 0.5}
    runs = seed_symmetric_ladder(shifted(truth))
    table, fit, described = compute_multipliers(runs, BASELINES, replicates=200)
    assert fit.kind == POWER_LAW and described.startswith("saturating power law")
    table = table.set_index("depth")
    for depth in (2, 3, 4, 5):
        assert table.loc[depth, "compute_multiplier"] == pytest.approx(truth[depth], rel=1e-3), depth
        assert table.loc[depth, "compute_multiplier_replicates"] >= 180  # of 200: few refits fail
        assert (
            table.loc[depth, "compute_multiplier_ci_low"]
            <= truth[depth]
            <= table.loc[depth, "compute_multiplier_ci_high"]
        )


def test_a_loss_beyond_the_ladder_is_outside_the_fitted_range():
    # Better than the baseline at the top rung, worse than it at the bottom one: neither is on the fit.
    runs = seed_symmetric_ladder({2: 0.05, 3: 0.0, 4: 0.0, 5: -0.02})
    table = compute_multipliers(runs, BASELINES, replicates=50)[0].set_index("depth")
    for depth in (2, 5):
        assert (
            math.isnan(table.loc[depth, "compute_multiplier"])
            and table.loc[depth, "compute_multiplier_note"] == OUTSIDE
        )


def test_three_rungs_use_a_local_log_linear_fit():
    def line(c):
        return 2.0 - 0.1 * np.log10(c)

    runs = ladder(
        {2: line(FLOPS[2] * 3) - line(FLOPS[2]), 3: 0.0, 4: 0.0}, base_loss=line, depths=(2, 3, 4), noise=False
    )
    runs["final_val_bpb"] += np.where(runs["seed"] % 2 == 0, 0.001, -0.001)
    table, fit, described = compute_multipliers(runs, {2: BASE, 3: BASE, 4: BASE}, replicates=50)
    slope, intercept = np.polyfit(
        np.log10([FLOPS[2], FLOPS[3], FLOPS[4]]), line(np.array([FLOPS[d] for d in (2, 3, 4)])), 1
    )
    assert fit.kind == LOG_LINEAR and fit.params == pytest.approx((intercept, slope))
    assert "log-linear" in described and "fewer than 4 rungs" in described
    assert table.set_index("depth").loc[2, "compute_multiplier"] == pytest.approx(3.0, rel=1e-6)


def test_the_section_and_the_plot():
    runs = ladder(SHRINKING)
    scale = scale_table(runs, BASELINES)
    multipliers, _, described = compute_multipliers(runs, BASELINES, replicates=50)
    scale = with_multipliers(scale, multipliers)
    trend = scale_trend(scale)
    text = scale_markdown(scale, trend, described)
    assert f"**{SHRINKS}**" in text and "Knapp-Hartung" in text and described in text
    fig = scale_figure(scale, trend)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and len(ax.collections) >= 1  # the band
    assert scale_figure(scale[scale["depth"] == 2], trend) is None


# in the report ---------------------------------------------------------------------------------
def test_a_report_over_several_depths_writes_the_scale_files_and_sections(tmp_path, monkeypatch, capsys):
    from harness import report as report_cli
    from harness.results import render
    from harness.results.synthetic import write_sweep

    monkeypatch.setattr(render, "all_plots", lambda *args, **kwargs: [])  # the other plots are tested on their own
    sweep, out = tmp_path / "ladder", tmp_path / "out"
    write_sweep(
        sweep,
        models=("d12", "d16", "d20"),
        seeds=(0, 1, 2),
        grid={"rope": ("slice",), "mlp_lr": ("c_fc_2x", "c_proj_2x")},
    )
    assert report_cli.main([str(sweep), "--out", str(out), "--target-bpb", "1.2"]) == 0
    scale, trend = pd.read_csv(out / "scale.csv"), pd.read_csv(out / "scale_trend.csv")
    assert sorted(scale["depth"]) == [12, 16, 20] and set(scale["variant"]) == {"mlp_lr.name=c_proj_2x"}
    for column in (
        "delta_final_val_bpb",
        "delta_ci_low",
        "delta_ci_high",
        "n_seeds",
        "train_flops",
        "compute_multiplier",
    ):
        assert column in scale
    assert trend["scale_verdict"].iloc[0] in (HOLDS, GROWS, SHRINKS, REVERSES, INCONCLUSIVE)
    assert (out / "plots" / "scale_effect.png").exists() and (out / "target.csv").exists()
    comparison = pd.read_csv(out / "comparison.csv")
    assert {"time_to_target_ratio", "time_to_target_ratio_ci_low", "time_to_target_reached"} <= set(comparison)
    assert (comparison["time_to_target_bpb"] == 1.2).all()
    text = (out / "report.md").read_text()
    assert "## The effect across scale" in text and "## Time to target" in text and "given by --target-bpb" in text


def test_a_report_of_one_depth_has_no_scale_files(tmp_path, monkeypatch):
    from harness.results import render
    from harness.results.synthetic import write_sweep

    monkeypatch.setattr(render, "all_plots", lambda *args, **kwargs: [])
    write_sweep(tmp_path / "one", grid={"rope": ("slice",), "mlp_lr": ("c_fc_2x", "c_proj_2x")})
    render.build_report([tmp_path / "one"], tmp_path / "out")
    assert not (tmp_path / "out" / "scale.csv").exists() and (tmp_path / "out" / "target.csv").exists()
    assert "## The effect across scale" not in (tmp_path / "out" / "report.md").read_text()


def test_a_variant_equal_to_the_baseline_is_1x_even_where_the_baseline_is_off_its_fit():
    runs = seed_symmetric_ladder(dict.fromkeys(DEPTHS, 0.0))
    runs.loc[runs["depth"] == 3, "final_val_bpb"] += 0.02  # both variants above the fitted curve at d3
    table, fit, _ = compute_multipliers(runs, BASELINES, replicates=50)
    assert fit.loss(FLOPS[3]) < runs.loc[runs["depth"] == 3, "final_val_bpb"].mean()  # the rung is off the fit
    assert table.set_index("depth").loc[3, "compute_multiplier"] == pytest.approx(1.0, abs=1e-9)
