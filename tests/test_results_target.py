"""Time, tokens and FLOPs to a target val bpb (harness/results/target.py): a hand-built curve with a
known crossing, censoring, the ratio against the baseline against a hand computation (scipy), and
runs whose time is not comparable."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.results.target import (
    crossing,
    default_targets,
    target_comparison,
    time_to_target,
    with_time_to_target,
)

BASE, VARIANT = "mlp_lr.name=c_fc_2x", "mlp_lr.name=c_proj_2x"
TOKENS_PER_STEP, FLOPS_PER_TOKEN = 4096, 1e6


def evaluations(values, seconds_per_step, every=10):
    """One evaluation every `every` steps; time excludes evaluation, so it is steps x seconds per step."""
    steps = np.arange(len(values)) * every
    return pd.DataFrame(
        {
            "step": steps,
            "tokens": steps * TOKENS_PER_STEP,
            "flops": steps * TOKENS_PER_STEP * FLOPS_PER_TOKEN,
            "time_s": steps * seconds_per_step,
            "metric": "val_bpb",
            "value": values,
        }
    )


def test_the_crossing_is_interpolated_between_the_evaluations_around_it():
    # 3.0 at step 0, 2.0 at 10, 1.0 at 20: 1.5 is crossed halfway between steps 10 and 20 (step 15).
    points = evaluations([3.0, 2.0, 1.0, 0.9], seconds_per_step=0.5)
    found = crossing(points, 1.5)
    assert found == pytest.approx({"time_s": 7.5, "tokens": 15 * 4096, "flops": 15 * 4096 * 1e6})
    assert crossing(points, 2.0)["time_s"] == 5.0  # reached exactly at an evaluation
    assert crossing(points, 3.5)["time_s"] == 0.0  # already there at the first evaluation
    assert crossing(points, 0.5) is None  # never


def test_the_first_crossing_counts_even_if_the_curve_rises_again():
    points = evaluations([3.0, 1.0, 2.0, 0.5], seconds_per_step=1.0)
    assert crossing(points, 1.5)["time_s"] == pytest.approx(10 * 0.75)


def sweep(base_final, variant_final, base_speed=1.0, variant_speed=1.0, seeds=range(4)):
    """Runs and curves: every run falls linearly from 3.0 at step 0 to its final value at step 100."""
    runs, curves = [], []
    for seed in seeds:
        for variant, finals, speed in ((BASE, base_final, base_speed), (VARIANT, variant_final, variant_speed)):
            name = f"{variant}/{seed}"
            final = finals[seed]
            values = np.linspace(3.0, final, 11)
            frame = evaluations(values, seconds_per_step=speed * (1 + 0.05 * seed))
            curves.append(frame.assign(run=name))
            runs.append(
                {
                    "run": name,
                    "variant": variant,
                    "depth": 4,
                    "seed": seed,
                    "status": "completed",
                    "final_val_bpb": final,
                    "device": "cpu",
                }
            )
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


def test_the_default_target_is_the_baselines_mean_final_val_bpb():
    runs, _ = sweep([1.0, 1.1, 1.2, 1.3], [1.0] * 4)
    assert default_targets(runs, {4: BASE}) == {4: pytest.approx(1.15)}


def test_the_ratio_is_the_geometric_mean_of_per_seed_ratios_with_a_paired_t_interval():
    # Everyone reaches 1.5; the variant gets there in fewer steps (lower final) and runs 10% faster per step.
    runs, curves = sweep([1.2, 1.25, 1.22, 1.3], [1.0, 1.1, 1.05, 1.02], variant_speed=0.9)
    per_run = time_to_target(runs, curves, {4: 1.5})
    assert per_run["reached"].all()
    table = target_comparison(per_run, runs, {4: BASE}).set_index("variant")

    def hand_time(final, seed, speed):  # linear from 3.0 at step 0 to `final` at step 100
        return 100 * (3.0 - 1.5) / (3.0 - final) * speed * (1 + 0.05 * seed)

    base = [hand_time(f, s, 1.0) for s, f in enumerate([1.2, 1.25, 1.22, 1.3])]
    variant = [hand_time(f, s, 0.9) for s, f in enumerate([1.0, 1.1, 1.05, 1.02])]
    logs = np.log(variant) - np.log(base)
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    row = table.loc[VARIANT]
    assert per_run.set_index("run").loc[f"{BASE}/0", "time_to_target_s"] == pytest.approx(base[0])
    assert row["time_to_target_ratio"] == pytest.approx(math.exp(logs.mean()))
    assert (row["time_to_target_ratio_ci_low"], row["time_to_target_ratio_ci_high"]) == pytest.approx(
        (math.exp(logs.mean() - half), math.exp(logs.mean() + half))
    )
    assert (row["time_to_target_reached"], row["time_to_target_censored"], row["time_to_target_note"]) == (4, 0, "")
    assert table.loc[BASE, "time_to_target_reached"] == 4 and math.isnan(table.loc[BASE, "time_to_target_ratio"])


def test_a_run_that_never_reaches_the_target_is_censored_at_its_training_end_and_counted():
    runs, curves = sweep([1.2, 1.25, 1.22, 1.3], [1.0, 1.6, 1.05, 1.7])  # variant seeds 1 and 3 stop above 1.5
    per_run = time_to_target(runs, curves, {4: 1.5}).set_index("run")
    censored = per_run.loc[f"{VARIANT}/1"]
    assert not censored["reached"] and math.isnan(censored["time_to_target_s"])
    assert censored["restricted_time_s"] == pytest.approx(100 * 1.05)  # its whole training time
    row = target_comparison(per_run.reset_index(), runs, {4: BASE}).set_index("variant").loc[VARIANT]
    assert (row["time_to_target_reached"], row["time_to_target_censored"]) == (2, 2)
    assert (
        "censored" in row["time_to_target_note"]
        and "2 of 4 variant runs, 0 of 4 baseline runs" in row["time_to_target_note"]
    )
    # The censored seeds enter at their training end: the ratio uses min(time, training end) per seed.
    ends = per_run["restricted_time_s"]
    logs = [math.log(ends[f"{VARIANT}/{s}"] / ends[f"{BASE}/{s}"]) for s in range(4)]
    assert row["time_to_target_ratio"] == pytest.approx(math.exp(np.mean(logs)))


def test_time_is_not_compared_across_devices_and_separate_windows_are_said():
    runs, curves = sweep([1.2] * 4, [1.0] * 4)
    runs.loc[runs["variant"] == VARIANT, "device"] = "cuda"
    row = target_comparison(time_to_target(runs, curves, {4: 1.5}), runs, {4: BASE}).set_index("variant").loc[VARIANT]
    assert math.isnan(row["time_to_target_ratio"]) and row["time_to_target_note"].startswith("not compared: device")
    runs["device"] = "cpu"
    runs["started_at"] = np.where(runs["variant"] == BASE, "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z")
    runs["ended_at"] = np.where(runs["variant"] == BASE, "2026-01-01T01:00:00Z", "2026-01-01T03:00:00Z")
    row = target_comparison(time_to_target(runs, curves, {4: 1.5}), runs, {4: BASE}).set_index("variant").loc[VARIANT]
    assert math.isfinite(row["time_to_target_ratio"]) and row["time_to_target_confounded"]
    assert (
        "time to target (as for speed): this variant's runs and the baseline's ran in separate time windows"
        in (row["time_to_target_note"])
    )
    # Interleaved (each seed's two runs side by side): not confounded, paired by seed.
    starts = [f"2026-01-01T0{s}:00:00Z" for s in runs["seed"]]
    runs["started_at"], runs["ended_at"] = starts, [t.replace(":00:00Z", ":50:00Z") for t in starts]
    row = target_comparison(time_to_target(runs, curves, {4: 1.5}), runs, {4: BASE}).set_index("variant").loc[VARIANT]
    assert not row["time_to_target_confounded"] and row["time_to_target_note"] == ""


def test_the_columns_join_the_comparison_table():
    runs, curves = sweep([1.2] * 4, [1.0] * 4)
    comparison = pd.DataFrame({"depth": [4, 4], "variant": [BASE, VARIANT], "n_seeds": [4, 4]})
    merged = with_time_to_target(comparison, target_comparison(time_to_target(runs, curves, {4: 1.5}), runs, {4: BASE}))
    assert list(merged["time_to_target_reached"]) == [4, 4] and len(merged) == 2
    assert merged["time_to_target_ratio"].iloc[1] < 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_target_that_is_not_a_val_bpb_is_one_error_line(tmp_path, capsys, value):
    from harness import report as report_cli

    assert report_cli.main([str(tmp_path), "--out", str(tmp_path / "out"), "--target-bpb", value]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: --target-bpb={float(value)} must be a positive number (a val bpb)"
    )
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_seeds_whose_runs_did_not_share_a_time_window_are_not_paired():
    runs, curves = sweep([1.2, 1.25, 1.22, 1.3], [1.0, 1.1, 1.05, 1.02], variant_speed=0.9)
    hour = np.where(runs["variant"] == BASE, runs["seed"], 3 - runs["seed"])  # mixed order, never side by side
    runs["started_at"] = [f"2026-01-01T0{h}:00:00Z" for h in hour]
    runs["ended_at"] = [f"2026-01-01T0{h}:50:00Z" for h in hour]
    per_run = time_to_target(runs, curves, {4: 1.5})
    row = target_comparison(per_run, runs, {4: BASE}).set_index("variant").loc[VARIANT]
    logs = {v: np.log(per_run.loc[per_run["variant"] == v, "restricted_time_s"].to_numpy()) for v in (BASE, VARIANT)}
    welch = stats.ttest_ind(logs[VARIANT], logs[BASE], equal_var=False).confidence_interval(0.95)
    assert not row["time_to_target_confounded"]
    assert (row["time_to_target_ratio_ci_low"], row["time_to_target_ratio_ci_high"]) == pytest.approx(
        (math.exp(welch.low), math.exp(welch.high))
    )
