"""Comparison tables: per depth and variant against the baseline, with hand-checked statistics."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.errors import ConfigError
from harness.results.collect import collect_dirs
from harness.results.compare import comparison_markdown, comparison_table, parse_baseline, spread_table
from harness.results.rundir import RunDir

BASELINE = {"rope.split": "slice", "mlp_lr.name": "c_fc_2x"}


def write_run(
    root, rope, mlp, seed, final, core=None, status="completed", tok_per_s=1000.0, depth=12, device="cpu", batch=16
):
    run = RunDir(root / f"d{depth},mlp_lr={mlp},rope={rope},seed={seed}")
    config = {"seed": seed, "model": {"depth": depth}, "rope": {"split": rope}, "mlp_lr": {"name": mlp}}
    run.write_config({**config, "train": {"device_batch_size": batch, "total_batch_tokens": 2048}})
    run.append_metrics({"step": 0, "tokens": 0, "flops": 0, "time_s": 0.0, "val_bpb": 3.0})
    summary = {"status": status, "final_val_bpb": final if status == "completed" else None, "tok_per_s": tok_per_s}
    summary.update(device=device, world_size=1)
    if core is not None:
        summary["core"] = core
    run.write_summary(summary)
    return run


BASE_TOK = {0: 1000.0, 1: 990.0, 2: 1012.0}
CHUNK_TOK = {0: 1031.0, 1: 1019.0, 2: 1043.0}  # about 3% faster, seed by seed


@pytest.fixture()
def sweep(tmp_path):
    base = {0: 0.850, 1: 0.856, 2: 0.853}
    for seed, value in base.items():
        write_run(tmp_path, "slice", "c_fc_2x", seed, value, core=0.20 + seed / 100, tok_per_s=BASE_TOK[seed])
    for seed, value in {0: 0.852, 1: 0.860, 2: 0.856}.items():  # same seeds: paired
        write_run(tmp_path, "chunk", "c_fc_2x", seed, value, core=0.21 + seed / 100, tok_per_s=CHUNK_TOK[seed])
    for seed, value in {0: 0.861, 5: 0.866, 6: 0.864}.items():  # one seed shared with the baseline: Welch
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
    assert chunk["tok_per_s_mean"] == pytest.approx(np.mean(list(CHUNK_TOK.values())))


def test_different_seeds_use_welch(sweep):
    table, _ = rows(sweep)
    none = table.loc["rope.split=slice mlp_lr.name=none"]
    reference = stats.ttest_ind([0.861, 0.866, 0.864], [0.850, 0.856, 0.853], equal_var=False)
    assert none["val_bpb_test"] == "welch"
    assert none["val_bpb_p"] == pytest.approx(reference.pvalue)
    assert none["val_bpb_verdict"] == ("worse" if none["val_bpb_p_adjusted"] < 0.05 else "not significant")
    assert "1 seed(s) shared with the baseline: Welch" in none["note"]


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
    # seeds {0, 1} against the baseline's {0, 1, 2}: paired on the two shared
    assert partial["val_bpb_test"] == "paired" and partial["val_bpb_n_paired"] == 2
    reference = stats.ttest_rel([0.870, 0.871], [0.850, 0.856])
    assert partial["val_bpb_p"] == pytest.approx(reference.pvalue)
    assert "paired on the 2 seeds shared with the baseline (0,1)" in partial["note"]


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
    # chunk/c_fc_2x on seeds 0, 1, 2 and chunk/none on 0, 1; slice/none shares one seed only.
    diffs = [np.array([0.002, 0.004, 0.003]), np.array([0.870 - 0.850, 0.871 - 0.856])]
    ss = sum(((d - d.mean()) ** 2).sum() for d in diffs)
    assert spread.loc["val_bpb", "paired_sd"] == pytest.approx(math.sqrt(ss / (2 + 1)))
    assert spread.loc["val_bpb", "seeds"] == 3


# speed ------------------------------------------------------------------------------------------
def test_speed_is_compared_like_quality_paired_by_seed(sweep):
    table, _ = rows(sweep)
    chunk = table.loc["rope.split=chunk mlp_lr.name=c_fc_2x"]
    v, b = np.array(list(CHUNK_TOK.values())), np.array(list(BASE_TOK.values()))
    assert chunk["tok_per_s_test"] == "paired" and chunk["tok_per_s_n_paired"] == 3
    assert chunk["tok_per_s_delta_pct"] == pytest.approx(100 * (v.mean() / b.mean() - 1))
    assert chunk["tok_per_s_p"] == pytest.approx(stats.ttest_rel(v, b).pvalue)
    # Fieller's bounds: where scipy's paired test of v against rho * b has p = 0.05.
    for bound in ("tok_per_s_delta_pct_ci_low", "tok_per_s_delta_pct_ci_high"):
        rho = 1 + chunk[bound] / 100
        assert stats.ttest_rel(v, rho * b).pvalue == pytest.approx(0.05, abs=1e-8)
    assert chunk["tok_per_s_verdict"] == ("faster" if chunk["tok_per_s_p_adjusted"] < 0.05 else "not significant")
    base = table.loc["rope.split=slice mlp_lr.name=c_fc_2x"]
    assert base["tok_per_s_verdict"] == "baseline" and math.isnan(base["tok_per_s_p"])


def test_a_clear_speed_difference_is_called_faster_beside_a_not_significant_quality(tmp_path):
    for seed in range(4):
        write_run(tmp_path, "slice", "c_fc_2x", seed, 0.85 + seed / 1000, tok_per_s=1000.0 + 7 * seed)
        write_run(tmp_path, "chunk", "c_fc_2x", seed, 0.85 + seed / 1000 + (-1) ** seed * 1e-4,
                  tok_per_s=(1000.0 + 7 * seed) * 1.03 + (-1) ** seed)  # fmt: skip
    collection = collect_dirs(tmp_path)
    table, notes = comparison_table(collection, parse_baseline(BASELINE))
    chunk = table.set_index("variant").loc["rope.split=chunk"]
    assert chunk["val_bpb_verdict"] == "not significant"
    assert chunk["tok_per_s_verdict"] == "faster" and chunk["tok_per_s_delta_pct_ci_low"] > 0
    markdown = comparison_markdown(table, collection.variant_keys, notes)
    line = next(line for line in markdown.splitlines() if line.startswith("| chunk"))
    assert line.rstrip(" |").endswith("| not significant | faster")  # quality, then speed
    assert "+3.0% [" in line


def test_a_speed_test_between_runs_in_separate_time_windows_says_so(tmp_path):
    """A sequential sweep runs a variant's seeds after the baseline's: load on the machine can change
    between the two windows. Overlapping windows (runs side by side on a cluster) need no note."""

    def timed(run, start_min, end_min):
        summary = run.read_summary()
        stamp = "2026-12-02T10:{:02d}:00+00:00".format
        run.write_summary({**summary, "started_at": stamp(start_min), "ended_at": stamp(end_min)})

    for seed in range(3):
        timed(write_run(tmp_path, "slice", "c_fc_2x", seed, 0.85, tok_per_s=1000.0 + seed), 5 * seed, 5 * seed + 4)
        timed(write_run(tmp_path, "chunk", "c_fc_2x", seed, 0.85, tok_per_s=990.0 + seed), 20 + 5 * seed, 24 + 5 * seed)
        timed(write_run(tmp_path, "slice", "none", seed, 0.86, tok_per_s=995.0 - seed), 5 * seed + 1, 5 * seed + 3)
    table, _ = comparison_table(collect_dirs(tmp_path), parse_baseline(BASELINE))
    notes = table.set_index("variant")["note"]
    assert notes["rope.split=chunk mlp_lr.name=c_fc_2x"] == (
        "speed: this variant's runs and the baseline's ran in separate time windows, so a change in machine load "
        "between them is not cancelled (harness.bench ab interleaves)"
    )
    assert notes["rope.split=slice mlp_lr.name=none"] == ""


def test_runs_on_another_device_or_batch_are_not_compared_for_speed(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "slice", "c_fc_2x", seed, 0.85, tok_per_s=1000.0 + seed)
        write_run(tmp_path, "chunk", "c_fc_2x", seed, 0.85, tok_per_s=2000.0 + seed, device="NVIDIA H100")
        write_run(tmp_path, "slice", "none", seed, 0.86, tok_per_s=900.0 + seed, batch=8)
    # A run that did not record its device (an older summary) is unknown, not different.
    old = write_run(tmp_path, "chunk", "none", 0, 0.86, tok_per_s=990.0)
    old.write_summary({"status": "completed", "final_val_bpb": 0.86, "tok_per_s": 990.0})
    write_run(tmp_path, "chunk", "none", 1, 0.86, tok_per_s=991.0)
    table, _ = comparison_table(collect_dirs(tmp_path), parse_baseline(BASELINE))
    table = table.set_index(["rope.split", "mlp_lr.name"])  # the batch size is an axis of its own here
    assert table.loc[("chunk", "c_fc_2x"), "tok_per_s_verdict"] == "not compared: device differs (NVIDIA H100 / cpu)"
    assert math.isnan(table.loc[("chunk", "c_fc_2x"), "tok_per_s_p"])
    assert table.loc[("slice", "none"), "tok_per_s_verdict"] == "not compared: device batch size differs (16 / 8)"
    assert table.loc[("chunk", "none"), "tok_per_s_test"] == "paired"


# multiplicity -----------------------------------------------------------------------------------
def test_every_p_value_of_the_table_is_holm_adjusted_together(sweep):
    from statsmodels.stats.multitest import multipletests

    collection = collect_dirs(sweep)
    table, notes = comparison_table(collection, parse_baseline(BASELINE))
    columns = ["val_bpb_p", "core_p", "tok_per_s_p"]
    raw = table[columns].to_numpy(dtype=float).ravel()
    finite = np.isfinite(raw)
    expected = multipletests(raw[finite], method="holm")[1]
    adjusted = table[[f"{c}_adjusted" for c in columns]].to_numpy(dtype=float).ravel()
    np.testing.assert_allclose(adjusted[finite], expected, rtol=1e-12)
    assert np.isnan(adjusted[~finite]).all()
    for _, row in table[table["val_bpb_test"].isin(["paired", "welch"])].iterrows():
        significant = row["val_bpb_p_adjusted"] < 0.05
        assert (row["val_bpb_verdict"] in ("better", "worse")) == significant
    legend = comparison_markdown(table, collection.variant_keys, notes).splitlines()[-1]
    n_bpb, n_core, n_speed = (int(np.isfinite(table[c]).sum()) for c in columns)
    assert f"adjusted over all {n_bpb + n_core + n_speed} tests of this table" in legend
    assert f"(val bpb {n_bpb}, CORE {n_core}, speed {n_speed})" in legend


# duplicates, NaN and unreadable runs -------------------------------------------------------------
def test_a_run_passed_twice_or_copied_is_counted_once(sweep, tmp_path_factory):
    import shutil

    once, _ = rows(sweep)
    copy = tmp_path_factory.mktemp("elsewhere") / sweep.name  # a second sweep folder with the same name
    shutil.copytree(sweep, copy)
    run = sweep / "d12,mlp_lr=c_fc_2x,rope=chunk,seed=0"
    collection = collect_dirs(sweep, run, sweep, copy)
    table, notes = comparison_table(collection, parse_baseline(BASELINE))
    assert len(collection.runs) == 13 and collection.runs["run"].is_unique
    pd.testing.assert_frame_equal(table.set_index("variant"), once, check_like=True)
    assert sum("folders hold the same run" in n for n in notes) == 13


def test_a_completed_run_with_a_nan_final_value_is_left_out_with_a_note(sweep):
    write_run(sweep, "slice", "c_fc_2x", 3, float("nan"))
    table, _ = rows(sweep)
    base = table.loc["rope.split=slice mlp_lr.name=c_fc_2x"]
    assert base["n_seeds"] == 3 and base["seeds"] == "0,1,2"
    assert "NaN final val bpb, left out: seed 3" in base["note"]
    assert table.loc["rope.split=chunk mlp_lr.name=c_fc_2x", "val_bpb_n_paired"] == 3


def test_an_unreadable_summary_or_config_is_marked_and_the_report_still_builds(sweep):
    run = write_run(sweep, "slice", "c_fc_2x", 7, 0.85)
    run.summary_path.write_text(run.summary_path.read_text()[:20])  # truncated
    cut = write_run(sweep, "chunk", "none", 8, 0.85)
    cut.config_path.write_text(cut.config_path.read_text()[:30])
    collection = collect_dirs(sweep)
    runs = collection.runs.set_index("run")
    summary_row, config_row = runs.loc[f"{sweep.name}/{run.path.name}"], runs.loc[f"{sweep.name}/{cut.path.name}"]
    assert summary_row["status"] == "unreadable" and "summary.json unreadable" in summary_row["note"]
    assert config_row["status"] == "unreadable" and "config.yaml unreadable" in config_row["note"]
    table, notes = comparison_table(collection, parse_baseline(BASELINE))
    base = table.set_index("variant").loc["rope.split=slice mlp_lr.name=c_fc_2x"]
    assert base["n_seeds"] == 3 and base["not_completed"] == "1 unreadable"
    assert any("summary.json unreadable" in n for n in notes)
    assert any("its variant is unknown" in n and "config.yaml unreadable" in n for n in notes)
    assert collection.axes == ["rope.split", "mlp_lr.name"]  # the cut config adds no axes
