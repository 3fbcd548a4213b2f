"""Verdicts a statistician would sign (issue 23): power at the verdict's level, equivalence (TOST),
speed confounded with time, sequential looks and interactions, each against an independent
reference (statsmodels, scipy, hand computation) or a simulation of known truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.results.collect import collect_dirs
from harness.results.compare import comparison_table, parse_baseline
from harness.results.equivalence import Margins, parse_margins
from harness.results.rundir import RunDir
from harness.results.sequential import Design, design_from_configs
from harness.results.stats import holm

BASELINE = {"rope.split": "slice", "mlp_lr.name": "c_fc_2x"}
MARGINS = Margins(bpb=0.01, core=0.02, speed=5.0)


def write_run(root, rope, mlp, seed, final, core=None, tok_per_s=1000.0, times=None, stats_cfg=None):
    run = RunDir(root / f"mlp_lr={mlp},rope={rope},seed={seed}")
    config = {"seed": seed, "data": {"seed": seed}, "model": {"depth": 12}, "rope": {"split": rope}}
    config.update(mlp_lr={"name": mlp}, train={"device_batch_size": 16, "total_batch_tokens": 2048})
    if stats_cfg is not None:
        config["stats"] = stats_cfg
    run.write_config(config)
    run.append_metrics({"step": 0, "tokens": 0, "flops": 0, "time_s": 0.0, "val_bpb": 3.0})
    summary = {"status": "completed", "final_val_bpb": final, "tok_per_s": tok_per_s, "device": "cpu"}
    summary["world_size"] = 1
    if core is not None:
        summary["core"] = core
    if times is not None:
        stamp = "2026-12-02T10:{:02d}:00+00:00".format
        summary.update(started_at=stamp(times[0]), ended_at=stamp(times[1]))
    run.write_summary(summary)
    return run


# a 2x2 sweep, six seeds, paired: chunk is 0.0002 worse under c_fc_2x and 0.0062 worse under none
BASE = np.array([0.850, 0.856, 0.853, 0.849, 0.855, 0.851])
CELL_EFFECTS = {("slice", "c_fc_2x"): 0.0, ("chunk", "c_fc_2x"): 0.0002, ("slice", "none"): 0.004,
                ("chunk", "none"): 0.0102}  # fmt: skip
NOISE = {
    ("slice", "c_fc_2x"): [0, 0, 0, 0, 0, 0],
    ("chunk", "c_fc_2x"): [0.0004, -0.0003, 0.0001, -0.0002, 0.0003, -0.0001],
    ("slice", "none"): [-0.0002, 0.0005, -0.0004, 0.0001, 0.0002, -0.0003],
    ("chunk", "none"): [0.0003, -0.0001, 0.0006, -0.0005, 0.0000, 0.0002],
}
SPEED = {
    ("slice", "c_fc_2x"): 1000.0,
    ("chunk", "c_fc_2x"): 1002.0,
    ("slice", "none"): 998.0,
    ("chunk", "none"): 1001.0,
}
# Not exactly proportional to the baseline's, which would leave Fieller's interval without noise.
JITTER = {cell: np.random.default_rng(i).normal(0, 2.0, 6) for i, cell in enumerate(SPEED)}


def cell_value(cell, seed):
    return BASE[seed] + CELL_EFFECTS[cell] + NOISE[cell][seed]


@pytest.fixture()
def grid(tmp_path):
    for cell in CELL_EFFECTS:
        for seed in range(6):
            speed = SPEED[cell] * (1 + 0.003 * ((seed * 7 + len(cell[1])) % 5 - 2)) + JITTER[cell][seed]
            core = 0.2 + 0.01 * seed - 2 * (cell_value(cell, seed) - BASE[seed])
            write_run(tmp_path, *cell, seed, cell_value(cell, seed), core=core, tok_per_s=speed)
    return tmp_path


def _table(root, margins=None, design=None):
    margins, design = margins or Margins(), design or Design()
    table, notes = comparison_table(collect_dirs(root), parse_baseline(BASELINE), margins=margins, design=design)
    if "mlp_lr.name" not in table:  # a sweep of rope alone, at the baseline's mlp_lr
        table["mlp_lr.name"] = "c_fc_2x"
    return table.set_index(["rope.split", "mlp_lr.name"]), notes


def _values(cell, column="final_val_bpb"):
    return np.array([cell_value(cell, s) for s in range(6)])


# item 2: power at the level the verdicts use ---------------------------------------------
def test_detectable_difference_is_at_holms_first_step_as_statsmodels_computes_it(grid):
    from statsmodels.stats.power import TTestPower

    table, _ = _table(grid)
    m = int(np.isfinite(table[["val_bpb_p", "core_p", "tok_per_s_p"]].to_numpy(dtype=float)).sum())
    assert (table["mdd_alpha"] == 0.05 / m).all() and (table["holm_tests"] == m).all()
    row = table.loc[("chunk", "none")]
    diffs = _values(("chunk", "none")) - _values(("slice", "c_fc_2x"))
    effect = TTestPower().solve_power(nobs=6, alpha=0.05 / m, power=0.8, alternative="two-sided")
    assert row["val_bpb_mdd"] == pytest.approx(effect * diffs.std(ddof=1), rel=1e-4)
    # The legend says which level.
    from harness.results.compare import comparison_markdown

    collection = collect_dirs(grid)
    full, notes = comparison_table(collection, parse_baseline(BASELINE))
    legend = comparison_markdown(full, collection.variant_keys, notes).splitlines()[-1]
    assert f"80% power at α = 0.05/{m} = {0.05 / m:.2g} (Holm's first step over the {m} tests)" in legend


def test_the_verdicts_find_a_difference_the_size_of_the_detectable_one_at_least_80_percent_of_the_time():
    """Simulated sweeps of m = 9 paired comparisons, one with a true difference equal to detectable Δ
    at Holm's first step: the Holm-adjusted verdict finds it >= 80% of the time (2,000 sweeps)."""
    from harness.results.stats import min_detectable_difference

    rng = np.random.default_rng(5)
    n, m, sd, sweeps = 8, 9, 1.0, 2000
    delta = min_detectable_difference(sd / math.sqrt(n), n - 1, 0.05 / m)
    diffs = rng.normal(0, sd, (sweeps, m, n))
    diffs[:, 0, :] += delta
    p = 2 * stats.t.sf(np.abs(diffs.mean(2) / (diffs.std(2, ddof=1) / math.sqrt(n))), n - 1)
    found = np.mean([holm(row)[0] < 0.05 for row in p])
    unadjusted_delta = min_detectable_difference(sd / math.sqrt(n), n - 1, 0.05)
    diffs[:, 0, :] += unadjusted_delta - delta  # the old label's Δ: the verdict misses it far more often
    p_old = 2 * stats.t.sf(np.abs(diffs.mean(2) / (diffs.std(2, ddof=1) / math.sqrt(n))), n - 1)
    found_old = np.mean([holm(row)[0] < 0.05 for row in p_old])
    assert found >= 0.79 and found_old < 0.6


# item 3: the plan, per comparison, with the spread's uncertainty --------------------------
def test_plan_sizes_each_comparison_from_its_own_spread_with_chi_square_bounds(grid, capsys):
    from statsmodels.stats.power import TTestPower

    from harness import plan

    rows = plan.seeds_table([grid], None, 0.0004, None, tests=6)
    row = next(
        r for r in rows if r["comparison"].startswith("rope.split=slice mlp_lr.name=none") and r["metric"] == "val_bpb"
    )
    diffs = _values(("slice", "none")) - _values(("slice", "c_fc_2x"))
    sd, dof = diffs.std(ddof=1), 5
    assert row["paired_sd"] == pytest.approx(sd)

    def by_statsmodels(spread):
        """The smallest n >= 2 whose power, as statsmodels computes it, reaches 80%."""
        effect = 0.0004 / spread
        return next(n for n in range(2, 100_000) if TTestPower().power(effect, n, 0.05 / 6) >= 0.8)

    assert row["seeds_paired"] == by_statsmodels(sd)
    assert row["seeds_paired_upper80"] == by_statsmodels(sd * math.sqrt(dof / stats.chi2.ppf(0.2, dof)))
    assert row["seeds_paired_low"] == by_statsmodels(sd * math.sqrt(dof / stats.chi2.ppf(0.975, dof)))
    assert row["seeds_paired_high"] == by_statsmodels(sd * math.sqrt(dof / stats.chi2.ppf(0.025, dof)))
    other = next(
        r for r in rows if r["comparison"].startswith("rope.split=chunk mlp_lr.name=none") and r["metric"] == "val_bpb"
    )
    assert other["paired_sd"] != pytest.approx(row["paired_sd"])  # not pooled
    code = plan.main(
        ["experiment=smoke", "rope=slice", "mlp_lr=c_fc_2x", "--spread-from", str(grid), "--detect", "0.002"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "plausible)" in out and "Holm's first step over the" in out


# item 4: equivalence ----------------------------------------------------------------------
def test_paired_tost_matches_statsmodels_and_gives_the_equivalence_verdict(grid):
    from statsmodels.stats.weightstats import ttost_paired

    table, _ = _table(grid, MARGINS)
    chunk = table.loc[("chunk", "c_fc_2x")]
    v, b = _values(("chunk", "c_fc_2x")), _values(("slice", "c_fc_2x"))
    assert chunk["val_bpb_tost_p"] == pytest.approx(ttost_paired(v, b, -0.01, 0.01)[0], rel=1e-9)
    assert chunk["val_bpb_tost_p_adjusted"] < 0.05 and chunk["val_bpb_p_adjusted"] >= 0.05
    assert chunk["val_bpb_verdict"] == "equivalent within ±0.01"
    # Without a margin the same null stays "not significant", and no TOST is computed.
    plain, _ = _table(grid)
    assert plain.loc[("chunk", "c_fc_2x"), "val_bpb_verdict"] == "not significant"
    assert plain["val_bpb_tost_p"].isna().all()


def test_welch_tost_matches_statsmodels(tmp_path):
    from statsmodels.stats.weightstats import ttost_ind

    base, other = [0.850, 0.856, 0.853, 0.851], [0.852, 0.855, 0.857]
    for seed, value in enumerate(base):
        write_run(tmp_path, "slice", "c_fc_2x", seed, value)
    for seed, value in zip((10, 11, 12), other, strict=True):
        write_run(tmp_path, "chunk", "c_fc_2x", seed, value)
    table, _ = _table(tmp_path, Margins(bpb=0.008))
    row = table.loc[("chunk", "c_fc_2x")]
    assert row["val_bpb_test"] == "welch"
    expected = ttost_ind(np.array(other), np.array(base), -0.008, 0.008, usevar="unequal")[0]
    assert row["val_bpb_tost_p"] == pytest.approx(expected, rel=1e-9)


def test_speed_tost_tests_the_ratio_against_one_plus_minus_the_margin(grid):
    from statsmodels.stats.weightstats import ttost_paired

    table, _ = _table(grid, MARGINS)
    runs = collect_dirs(grid).runs.sort_values("seed")
    v = runs[runs["variant"] == "rope.split=chunk mlp_lr.name=c_fc_2x"]["tok_per_s"].to_numpy()
    b = runs[runs["variant"] == "rope.split=slice mlp_lr.name=c_fc_2x"]["tok_per_s"].to_numpy()
    # rho > 0.95: v - 0.95 b > 0; rho < 1.05: v - 1.05 b < 0; each one side of a statsmodels TOST.
    lower = ttost_paired(v, 0.95 * b, 0.0, 1e9)[1][1]
    upper = ttost_paired(v, 1.05 * b, -1e9, 0.0)[2][1]
    assert table.loc[("chunk", "c_fc_2x"), "tok_per_s_tost_p"] == pytest.approx(max(lower, upper), rel=1e-9)


def test_equivalence_p_values_are_in_the_holm_family(grid):
    from statsmodels.stats.multitest import multipletests

    table, _ = _table(grid, MARGINS)
    columns = [f"{k}_{s}" for k in ("val_bpb", "core", "tok_per_s") for s in ("p", "tost_p")]
    raw = table[columns].to_numpy(dtype=float).ravel()
    finite = np.isfinite(raw)
    adjusted = table[[f"{c}_adjusted" for c in columns]].to_numpy(dtype=float).ravel()
    np.testing.assert_allclose(adjusted[finite], multipletests(raw[finite], method="holm")[1], rtol=1e-12)


def test_equivalence_margin_values_are_checked():
    from harness.errors import ConfigError

    assert parse_margins(None) == Margins()
    assert parse_margins([]) == Margins(bpb=0.002, core=0.005, speed=1.0)
    assert parse_margins(["bpb=0.001"]) == Margins(bpb=0.001, core=0.005, speed=1.0)
    for bad in (["bpb"], ["loss=0.1"], ["bpb=-1"], ["speed=fast"]):
        with pytest.raises(ConfigError, match="--equivalence-margin"):
            parse_margins(bad)


def test_the_report_command_refuses_a_bad_margin_with_one_line(grid, capsys, tmp_path_factory):
    from harness import report

    out = tmp_path_factory.mktemp("out")
    assert report.main([str(grid), "--out", str(out / "r"), "--equivalence-margin", "bpb=zero"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --equivalence-margin bpb='zero'")
    assert not (out / "r").exists()


# item 5: speed confounded with time -------------------------------------------------------
def _launch(scenario: int, arms: int, seeds: int, rng) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Job order, start and end times: 0 arm after arm, 1 seed after seed, 2 random order (one at a
    time), 3 arm after arm on two workers, 4 seed after seed on two workers (a seed's runs side by
    side), 5 a cluster that starts every run within a few seconds, arm after arm, each for an hour."""
    by_arm = [(a, s) for a in range(arms) for s in range(seeds)]
    by_seed = [(a, s) for s in range(seeds) for a in range(arms)]
    jobs = [by_arm, by_seed, [by_arm[i] for i in rng.permutation(len(by_arm))], by_arm, by_seed, by_arm][scenario]
    if scenario == 5:
        start = np.arange(len(jobs)) * 2.0
        return jobs, start, start + 3600.0
    workers = 2 if scenario >= 3 else 1
    start = np.array([p // workers for p in range(len(jobs))], dtype=float) * 600
    return jobs, start, start + 600.0


def _p_paired(x, y):
    d = x - y
    return 2 * stats.t.sf(abs(d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))), len(d) - 1)


def _p_welch(x, y):
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return 2 * stats.t.sf(abs((x.mean() - y.mean()) / math.sqrt(vx + vy)), dof)


def _false_speed_verdicts(rule: str, sweeps: int = 1000, arms: int = 4, seeds: int = 4) -> float:
    """Null sweeps (no config changes speed) whose tok/s drifts with time by up to ±30% over the sweep
    (so with launch order), 1% noise, six launch orders in turn; Holm over each sweep's speed tests. The share of
    comparisons called faster or slower."""
    from harness.results import timing

    rng = np.random.default_rng(23)
    false = comparisons = 0
    for i in range(sweeps):
        jobs, start, end = _launch(i % 6, arms, seeds, rng)
        middle = (start + end) / 2 - start.min()  # a run's tok/s: the machine's state over its window
        drift = 1 + rng.uniform(-0.3, 0.3) * middle / (end.max() - start.min())
        speed = 1000 * drift * (1 + rng.normal(0, 0.01, len(jobs)))
        arm, seed = np.array([a for a, _ in jobs]), np.array([s for _, s in jobs])
        p_values = []
        for k in range(1, arms):
            v, b = np.flatnonzero(arm == k), np.flatnonzero(arm == 0)
            v, b = v[np.argsort(seed[v])], b[np.argsort(seed[b])]
            comparisons += 1
            if rule == "by seed":  # the rule before: pair by seed, whatever the times
                design = timing.PAIRED
            else:
                design, _, _ = timing.speed_design((seed[v], start[v], end[v]), (seed[b], start[b], end[b]))
            if design == timing.CONFOUNDED:
                continue
            test = _p_paired if design == timing.PAIRED else _p_welch
            p_values.append(test(speed[v], speed[b]))
        if p_values:
            false += int((holm(p_values) < 0.05).sum())
    return false / comparisons


def test_speed_drifting_with_launch_order_gives_at_most_5_percent_false_speed_verdicts():
    assert _false_speed_verdicts("timing") <= 0.05
    assert _false_speed_verdicts("by seed") > 0.3  # the simulation can fail: pairing alone is fooled


def test_runs_that_did_not_interleave_get_a_confounded_speed_verdict(tmp_path):
    """Overlapping windows (the baseline's last run still going) but no mixing: confounded, no word."""
    for seed in range(3):
        write_run(tmp_path, "slice", "c_fc_2x", seed, 0.85, tok_per_s=1000.0 + seed, times=(3 * seed, 3 * seed + 4))
        write_run(tmp_path, "chunk", "c_fc_2x", seed, 0.85, tok_per_s=900.0 + seed, times=(8 + 3 * seed, 12 + 3 * seed))
    table, _ = _table(tmp_path)
    row = table.loc[("chunk", "c_fc_2x")]
    assert row["tok_per_s_verdict"] == "confounded" and math.isnan(row["tok_per_s_p"])
    assert "harness.bench ab" in row["note"] and "confounded with time" in row["note"]


def test_speed_pairs_by_seed_only_when_the_pair_shared_a_time_window(tmp_path):
    """Mixed start order, each seed's runs far apart in time: Welch on every run (pairing by seed
    gains nothing there); the same runs side by side: paired."""
    for apart, root in ((True, tmp_path / "apart"), (False, tmp_path / "together")):
        for seed in range(4):
            b_start = 10 * seed
            v_start = 10 * ((seed + 2) % 4) + 1 if apart else b_start
            write_run(root, "slice", "c_fc_2x", seed, 0.85, tok_per_s=1000.0 + 5 * seed, times=(b_start, b_start + 4))
            write_run(root, "chunk", "c_fc_2x", seed, 0.85, tok_per_s=1003.0 - 4 * seed, times=(v_start, v_start + 4))
    apart, _ = _table(tmp_path / "apart")
    together, _ = _table(tmp_path / "together")
    v = np.array([1003.0 - 4 * s for s in range(4)])
    b = np.array([1000.0 + 5 * s for s in range(4)])
    assert apart.loc[("chunk", "c_fc_2x"), "tok_per_s_test"] == "welch"
    assert apart.loc[("chunk", "c_fc_2x"), "tok_per_s_p"] == pytest.approx(
        stats.ttest_ind(v, b, equal_var=False).pvalue
    )
    assert together.loc[("chunk", "c_fc_2x"), "tok_per_s_test"] == "paired"
    assert together.loc[("chunk", "c_fc_2x"), "tok_per_s_p"] == pytest.approx(stats.ttest_rel(v, b).pvalue)


# item 6: sequential looks -----------------------------------------------------------------
def test_looking_after_every_seed_from_3_to_12_keeps_the_false_positive_rate_at_alpha():
    """4,000 null sequences of 12 per-seed differences, looked at after 3, 4, ..., 12 seeds with the
    p-value scipy's paired t-test gives: the design's p-values reject at some look in at most 5% of
    them (up to simulation error), while the plain p-values reject in far more."""
    design = Design(tuple(range(3, 13)))
    rng = np.random.default_rng(6)
    sims = 4000
    diffs = rng.normal(0.0, 0.003, (sims, 12))
    rejected = np.zeros(sims, dtype=bool)
    naive = np.zeros(sims, dtype=bool)
    for n in range(3, 13):
        p = stats.ttest_1samp(diffs[:, :n], 0.0, axis=1).pvalue
        rejected |= np.array([design.p_value(x, n, pivotal=True) for x in p]) < 0.05
        naive |= p < 0.05
    se = math.sqrt(0.05 * 0.95 / sims)
    assert rejected.mean() <= 0.05 + 2 * se
    assert naive.mean() > 0.15


def test_the_report_uses_the_design_the_runs_declared(tmp_path):
    """stats.sequential in the runs' configs: each p is the design's p at this look (6 seeds), its
    interval the repeated confidence interval at the design's nominal level."""
    declared = {"sequential": True, "looks": [3, 4, 5, 6, 7, 8]}
    for cell in (("slice", "c_fc_2x"), ("chunk", "c_fc_2x")):
        for seed in range(6):
            write_run(tmp_path, *cell, seed, cell_value(cell, seed), stats_cfg=declared)
    collection = collect_dirs(tmp_path)
    design, notes = design_from_configs(collection.configs.values())
    assert design.looks == (3, 4, 5, 6, 7, 8) and not notes
    assert "stats.looks" not in collection.axes and "stats.sequential" not in collection.axes
    table, _ = comparison_table(collection, parse_baseline(BASELINE), design=design)
    row = table.set_index("variant").loc["rope.split=chunk"]
    diffs = _values(("chunk", "c_fc_2x")) - _values(("slice", "c_fc_2x"))
    nominal = stats.ttest_1samp(diffs, 0.0)
    assert row["val_bpb_p"] == pytest.approx(design.p_value(nominal.pvalue, 6, pivotal=True))
    assert row["val_bpb_p"] > nominal.pvalue
    level = design.level(0.05, 6, pivotal=True)
    ci = nominal.confidence_interval(1 - level)
    assert (row["val_bpb_delta_ci_low"], row["val_bpb_delta_ci_high"]) == pytest.approx((ci.low, ci.high))


def test_stats_keys_do_not_name_or_change_a_run():
    from harness.cli import compose
    from harness.run.decision import config_differences
    from harness.run.spec import resolved_config

    plain = compose(["experiment=smoke", "seed=1"], with_hydra=True)
    declared = compose(["experiment=smoke", "seed=1", "stats.sequential=true", "stats.looks=[3,6]"], with_hydra=True)
    assert declared.hydra.run.dir == plain.hydra.run.dir == "runs/smoke/seed=1"
    assert (
        config_differences(
            resolved_config(compose(["seed=1"])), resolved_config(compose(["seed=1", "stats.sequential=true"]))
        )
        == []
    )


# item 7: interactions ---------------------------------------------------------------------
def test_interaction_is_the_difference_of_differences_paired_by_seed_as_ols_has_it(grid):
    import statsmodels.formula.api as smf

    from harness.results.interactions import interaction_table

    collection = collect_dirs(grid)
    table, _ = comparison_table(collection, parse_baseline(BASELINE))
    baselines = {12: table.loc[table["is_baseline"], "variant"].iloc[0]}
    inter = interaction_table(collection, baselines)
    assert len(inter) == 1
    row = inter.iloc[0]
    assert (row["axis"], row["by_axis"]) == ("rope.split", "mlp_lr.name")
    by_hand = np.mean(
        [
            cell_value(("chunk", "none"), s) - cell_value(("slice", "none"), s)
            - (cell_value(("chunk", "c_fc_2x"), s) - cell_value(("slice", "c_fc_2x"), s))
            for s in range(6)
        ]
    )  # fmt: skip
    assert row["val_bpb_interaction"] == pytest.approx(by_hand, abs=1e-12)
    frame = pd.DataFrame(
        [
            {"y": cell_value((r, m), s), "chunk": int(r == "chunk"), "none": int(m == "none"), "seed": s}
            for (r, m) in CELL_EFFECTS
            for s in range(6)
        ]
    )
    fit = smf.ols("y ~ C(seed) * chunk + C(seed) * none + chunk:none", frame).fit()
    assert row["val_bpb_interaction"] == pytest.approx(fit.params["chunk:none"], abs=1e-12)
    assert row["val_bpb_interaction_p"] == pytest.approx(fit.pvalues["chunk:none"], rel=1e-6)
    low, high = fit.conf_int().loc["chunk:none"]
    assert (row["val_bpb_interaction_ci_low"], row["val_bpb_interaction_ci_high"]) == pytest.approx((low, high))
    assert row["val_bpb_interaction_test"] == "paired" and row["val_bpb_interaction_n_paired"] == 6


def test_unpaired_interaction_matches_two_way_ols(tmp_path):
    import statsmodels.formula.api as smf

    from harness.results.interactions import interaction_table

    rng = np.random.default_rng(3)
    rows = []
    for i, cell in enumerate(CELL_EFFECTS):
        for j in range(3 + i % 2):
            value = 0.85 + CELL_EFFECTS[cell] + rng.normal(0, 0.001)
            write_run(tmp_path, *cell, 10 * i + j, value)  # no seed shared by all four cells
            rows.append({"y": value, "chunk": int(cell[0] == "chunk"), "none": int(cell[1] == "none")})
    collection = collect_dirs(tmp_path)
    table, _ = comparison_table(collection, parse_baseline(BASELINE))
    inter = interaction_table(collection, {12: table.loc[table["is_baseline"], "variant"].iloc[0]})
    fit = smf.ols("y ~ chunk * none", pd.DataFrame(rows)).fit()
    row = inter.iloc[0]
    assert row["val_bpb_interaction_test"] == "two-way"
    assert row["val_bpb_interaction"] == pytest.approx(fit.params["chunk:none"], abs=1e-12)
    assert row["val_bpb_interaction_p"] == pytest.approx(fit.pvalues["chunk:none"], rel=1e-6)


def test_the_report_writes_interactions_in_one_holm_family_with_the_comparisons(grid, tmp_path_factory):
    from statsmodels.stats.multitest import multipletests

    from harness.results.render import build_report

    out = tmp_path_factory.mktemp("report")
    build_report([grid], out, BASELINE, margins=MARGINS)
    comparison = pd.read_csv(out / "comparison.csv")
    inter = pd.read_csv(out / "interactions.csv")
    for key in ("val_bpb", "core", "tok_per_s"):
        for suffix in ("", "_ci_low", "_ci_high", "_p", "_p_adjusted"):
            assert f"{key}_interaction{suffix}" in inter
    pieces = [(comparison, [f"{k}_{s}" for k in ("val_bpb", "core", "tok_per_s") for s in ("p", "tost_p")])]
    pieces.append((inter, [f"{k}_interaction_{s}" for k in ("val_bpb", "core", "tok_per_s") for s in ("p", "tost_p")]))
    raw = np.concatenate([f[c].to_numpy(dtype=float).ravel() for f, c in pieces])
    adjusted = np.concatenate([f[[f"{x}_adjusted" for x in c]].to_numpy(dtype=float).ravel() for f, c in pieces])
    finite = np.isfinite(raw)
    np.testing.assert_allclose(adjusted[finite], multipletests(raw[finite], method="holm")[1], rtol=1e-12)
    assert inter.loc[0, "val_bpb_interaction_p_adjusted"] < 0.05
    assert inter.loc[0, "val_bpb_interaction_verdict"] == "depends on mlp_lr.name"
    text = (out / "report.md").read_text()
    assert "## Interactions" in text and "depends on mlp_lr.name" in text
    assert "Noise the seeds varied: initialisation and data order (data.seed follows seed)." in text
    assert "Equivalence margins: bpb ±0.01, CORE ±0.02, speed ±5%" in text


def test_sequential_power_at_one_look_is_statsmodels_power_and_the_plan_prints_rounds(grid, capsys):
    """power_by_look simulates the design; with a single look it is the plain t-test's power."""
    from statsmodels.stats.power import TTestPower

    from harness import plan
    from harness.results.sequential import power_by_look

    (simulated,) = power_by_look(1.1, (8,), 0.01, simulations=40_000)
    assert simulated == pytest.approx(TTestPower().power(1.1, 8, 0.01), abs=0.01)
    several = power_by_look(1.1, (3, 6, 9), 0.01)
    assert several == sorted(several)  # the chance of having stopped only grows with the looks
    overrides = ["experiment=smoke", "rope=slice", "stats.sequential=true", "stats.looks=[3,6,9]"]
    assert plan.main([*overrides, "--spread-from", str(grid), "--detect", "0.004"]) == 0
    out = capsys.readouterr().out
    assert "| by 3 seeds | by 6 seeds | by 9 seeds | 80% reached at |" in out


def test_runs_launched_together_on_a_cluster_are_not_confounded(tmp_path):
    """Arm after arm, but every run started within two minutes and ran for an hour: side by side."""
    for seed in range(3):
        write_run(tmp_path, "slice", "c_fc_2x", seed, 0.85, tok_per_s=1000.0 + seed, times=(seed, 59))
        write_run(tmp_path, "chunk", "c_fc_2x", seed, 0.85, tok_per_s=990.0 - seed, times=(3 + seed, 59))
    row = _table(tmp_path)[0].loc[("chunk", "c_fc_2x")]
    assert row["tok_per_s_verdict"] != "confounded" and row["tok_per_s_test"] == "paired"


def test_a_smoke_report_shows_the_new_columns_and_the_noise_sources(tmp_path):
    """What a fresh clone's `make demo` report carries: the columns exist (NaN without a margin)."""
    from harness.results.callback import ReportCallback
    from harness.results.render import build_report
    from harness.results.synthetic import write_sweep

    write_sweep(tmp_path / "smoke", seeds=(0, 1))
    build_report([tmp_path / "smoke"], tmp_path / "out")
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv")
    for column in ("val_bpb_tost_p", "val_bpb_tost_p_adjusted", "core_tost_p", "tok_per_s_tost_p", "mdd_alpha"):
        assert column in comparison
    assert (tmp_path / "out" / "interactions.csv").exists()  # rope x mlp_lr
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Noise the seeds varied: initialisation and data order (data.seed follows seed)." in text
    assert ReportCallback(equivalence_margin=["bpb=0.01"]).margins == Margins(bpb=0.01, core=0.005, speed=1.0)
    assert ReportCallback().margins == Margins()
