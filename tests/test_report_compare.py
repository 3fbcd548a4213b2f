"""Comparison tables: per depth and variant against the baseline, with hand-checked statistics."""

import math

import numpy as np
import pytest
from scipy import stats

from harness.errors import ConfigError
from harness.results.collect import collect_dirs
from harness.results.compare import comparison_markdown, comparison_table, parse_baseline, spread_table
from harness.results.rundir import RunDir

BASELINE = {"rope.split": "slice", "mlp_lr.name": "c_fc_2x"}


def write_run(root, rope, mlp, seed, final, core=None, status="completed", tok_per_s=1000.0, depth=12):
    run = RunDir(root / f"d{depth},mlp_lr={mlp},rope={rope},seed={seed}")
    run.write_config({"seed": seed, "model": {"depth": depth}, "rope": {"split": rope}, "mlp_lr": {"name": mlp}})
    run.append_metrics({"step": 0, "tokens": 0, "flops": 0, "time_s": 0.0, "val_bpb": 3.0})
    summary = {"status": status, "final_val_bpb": final if status == "completed" else None, "tok_per_s": tok_per_s}
    if core is not None:
        summary["core"] = core
    run.write_summary(summary)


@pytest.fixture()
def sweep(tmp_path):
    base = {0: 0.850, 1: 0.856, 2: 0.853}
    for seed, value in base.items():
        write_run(tmp_path, "slice", "c_fc_2x", seed, value, core=0.20 + seed / 100)
    for seed, value in {0: 0.852, 1: 0.860, 2: 0.856}.items():  # same seeds: paired
        write_run(tmp_path, "chunk", "c_fc_2x", seed, value, core=0.21 + seed / 100, tok_per_s=1100.0)
    for seed, value in {0: 0.861, 1: 0.866, 5: 0.864}.items():  # seed 5 not in the baseline: Welch
        write_run(tmp_path, "slice", "none", seed, value)
    write_run(tmp_path, "slice", "c_proj_2x", 0, 0.851)  # one seed
    write_run(tmp_path, "chunk", "none", 0, 0.870)
    write_run(tmp_path, "chunk", "none", 1, 0.871)
    write_run(tmp_path, "chunk", "none", 2, float("nan"), status="diverged")
    return tmp_path


def rows(sweep, baseline=BASELINE):
    table, notes = comparison_table(collect_dirs(sweep), parse_baseline(baseline))
    return table.set_index("variant"), notes


def test_means_and_intervals_match_the_t_formula(sweep):
    table, _ = rows(sweep)
    base = table.loc["rope.split=slice mlp_lr.name=c_fc_2x"]
    values = np.array([0.850, 0.856, 0.853])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert base["is_baseline"] and base["n_seeds"] == 3 and base["seeds"] == "0,1,2"
    assert base["val_bpb_mean"] == pytest.approx(values.mean())
    assert (base["val_bpb_ci_low"], base["val_bpb_ci_high"]) == pytest.approx(
        (values.mean() - half, values.mean() + half)
    )
    assert base["core_mean"] == pytest.approx(0.21)
    assert base["val_bpb_verdict"] == "baseline" and math.isnan(base["val_bpb_delta"])


def test_same_seeds_are_paired(sweep):
    table, _ = rows(sweep)
    chunk = table.loc["rope.split=chunk mlp_lr.name=c_fc_2x"]
    diffs = np.array([0.852 - 0.850, 0.860 - 0.856, 0.856 - 0.853])
    t_stat = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(3))
    assert chunk["val_bpb_test"] == "paired"
    assert chunk["val_bpb_delta"] == pytest.approx(diffs.mean())
    assert chunk["val_bpb_p"] == pytest.approx(2 * stats.t.sf(abs(t_stat), 2))
    assert chunk["core_test"] == "paired" and chunk["core_delta"] == pytest.approx(0.01)
    assert chunk["tok_per_s_mean"] == 1100.0


def test_different_seeds_use_welch(sweep):
    table, _ = rows(sweep)
    none = table.loc["rope.split=slice mlp_lr.name=none"]
    reference = stats.ttest_ind([0.861, 0.866, 0.864], [0.850, 0.856, 0.853], equal_var=False)
    assert none["val_bpb_test"] == "welch"
    assert none["val_bpb_p"] == pytest.approx(reference.pvalue)
    assert none["val_bpb_verdict"] == ("worse" if reference.pvalue < 0.05 else "not significant")


def test_one_seed_has_no_interval_and_is_not_tested(sweep):
    table, _ = rows(sweep)
    single = table.loc["rope.split=slice mlp_lr.name=c_proj_2x"]
    assert single["n_seeds"] == 1 and math.isnan(single["val_bpb_ci_low"])
    assert single["val_bpb_verdict"] == "one seed: not tested" and math.isnan(single["val_bpb_p"])
    assert single["val_bpb_delta"] == pytest.approx(0.851 - np.mean([0.850, 0.856, 0.853]))


def test_runs_that_did_not_complete_are_counted_not_used(sweep):
    table, _ = rows(sweep)
    partial = table.loc["rope.split=chunk mlp_lr.name=none"]
    assert partial["n_seeds"] == 2 and partial["not_completed"] == "1 diverged"
    assert partial["val_bpb_mean"] == pytest.approx(0.8705)
    assert partial["val_bpb_test"] == "welch"  # seeds {0, 1} against the baseline's {0, 1, 2}


def test_markdown_is_a_pasteable_table(sweep):
    collection = collect_dirs(sweep)
    table, notes = comparison_table(collection, parse_baseline(BASELINE))
    markdown = comparison_markdown(table, collection.variant_keys, notes)
    assert "#### depth 12 (baseline: `rope.split=slice mlp_lr.name=c_fc_2x`)" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| rope.split"))
    assert "CORE (95% CI)" in header and "not completed" in header
    assert "| **slice** | **c_fc_2x** | 3 |" in markdown
    assert "1 (one: no interval)" in markdown and "one seed: not tested" in markdown
    assert "1 diverged" in markdown
    body = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len({line.count("|") for line in body}) == 1  # every row has the header's columns


def test_baseline_is_configurable_and_checked(sweep):
    table, _ = rows(sweep, ["rope.split=chunk", "mlp_lr.name=c_fc_2x"])
    assert table.loc["rope.split=chunk mlp_lr.name=c_fc_2x", "is_baseline"]
    assert table.loc["rope.split=slice mlp_lr.name=c_fc_2x", "val_bpb_test"] == "paired"
    with pytest.raises(ConfigError, match="'optim.lr' is not a config key"):
        rows(sweep, ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_baseline(["slice"])
    table, notes = rows(sweep, ["rope.split=slice"])
    assert "matches 3 variants" in notes[0]
    assert not table["is_baseline"].any() and table["val_bpb_p"].isna().all()


def test_spread_pools_within_variant_and_paired_differences(sweep):
    collection = collect_dirs(sweep)
    table, _ = comparison_table(collection, parse_baseline(BASELINE))
    spread = spread_table(collection, table).set_index("metric")
    groups = [[0.850, 0.856, 0.853], [0.852, 0.860, 0.856], [0.861, 0.866, 0.864], [0.870, 0.871]]
    ss = sum(((np.array(g) - np.mean(g)) ** 2).sum() for g in groups)
    assert spread.loc["val_bpb", "sd"] == pytest.approx(math.sqrt(ss / (2 + 2 + 2 + 1)))
    diffs = np.array([0.002, 0.004, 0.003])  # only the chunk/c_fc_2x variant ran the baseline's seeds
    assert spread.loc["val_bpb", "paired_sd"] == pytest.approx(diffs.std(ddof=1))
    assert spread.loc["val_bpb", "seeds"] == 3
