"""The report's baseline follows the sweep: --baseline, else the runs' declared `stats.baseline`, else
each swept axis at its composed default (or its first value in sorted order); report.md says which
rule chose it, and every other variant gets a Δ."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import compose
from harness.results.render import build_report
from harness.results.synthetic import run_config, write_run, write_sweep

REPO = Path(__file__).resolve().parents[1]


def qk_sweep(root: Path, values, seeds=(0, 1), declared=None, rope="slice", rng_seed=0) -> None:
    """A sweep of one's own: model.qk_scale over `values` on the tiny smoke settings, with an
    effect of 0.01 bpb per 0.1 of scale and a per-seed offset shared by the values (seeds pair)."""
    rng = np.random.default_rng(rng_seed)
    offsets = {s: rng.normal(0, 0.006) for s in seeds}
    for value in values:
        for seed in seeds:
            config = copy.deepcopy(run_config("tiny", rope, "c_fc_2x", seed, name=root.name))
            config["model"]["qk_scale"] = value
            config["stats"]["baseline"] = declared
            final = 1.65 + 0.1 * (value - 1.0) + offsets[seed] + rng.normal(0, 0.0005)
            write_run(root / f"model.qk_scale={value},seed={seed}", config, final, 9000.0, rng)


def comparison(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "comparison.csv")


def test_the_recipe_default_of_model_qk_scale_is_what_the_derived_rule_looks_for():
    # Independent of the report code: what `ablate-train` composes with no overrides.
    assert compose([]).model.qk_scale == 1.0


def test_a_sweep_of_ones_own_gets_its_composed_default_as_baseline_in_a_real_process(tmp_path):
    root, out = tmp_path / "runs" / "qk", tmp_path / "results" / "qk"
    qk_sweep(root, (1.2, 1.0))
    command = [sys.executable, "-m", "harness.report", str(root), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "#### depth 4 (baseline: `model.qk_scale=1.0`)" in result.stdout
    table = comparison(out)
    assert table.loc[table["is_baseline"], "variant"].tolist() == ["model.qk_scale=1.0"]
    other = table[~table["is_baseline"]].iloc[0]
    assert other["val_bpb_delta"] == pytest.approx(0.02, abs=0.003) and other["val_bpb_test"] == "paired"
    report = (out / "report.md").read_text()
    assert "Baseline: `model.qk_scale=1.0`, derived from the sweep: `model.qk_scale` at its composed default" in report


def test_without_the_default_among_the_values_the_first_sorted_value_is_the_baseline(tmp_path):
    root = tmp_path / "qk"
    qk_sweep(root, (1.3, 1.1, 1.2))
    report = build_report([root], tmp_path / "out")
    assert report.comparison.loc[report.comparison["is_baseline"], "variant"].tolist() == ["model.qk_scale=1.1"]
    assert report.comparison["val_bpb_delta"].notna().sum() == 2
    assert "first value in sorted order" in report.report_path.read_text()


def test_a_declared_baseline_wins_over_the_derived_one_and_the_flag_over_both(tmp_path):
    root = tmp_path / "qk"
    qk_sweep(root, (1.0, 1.2), declared=["model.qk_scale=1.2"])
    declared = build_report([root], tmp_path / "declared")
    assert declared.comparison.loc[declared.comparison["is_baseline"], "variant"].item() == "model.qk_scale=1.2"
    assert "declared by the runs' `stats.baseline`" in declared.report_path.read_text()
    given = build_report([root], tmp_path / "given", baseline=["model.qk_scale=1.0"])
    assert given.comparison.loc[given.comparison["is_baseline"], "variant"].item() == "model.qk_scale=1.0"
    assert "given with --baseline" in given.report_path.read_text()


def test_the_smoke_experiment_declares_pr492s_baseline():
    for experiment in ("smoke", "rope_mlp_lr", "cpu_scale"):
        assert list(compose([f"experiment={experiment}"]).stats.baseline) == ["rope.split=slice", "mlp_lr.name=c_fc_2x"]
    assert compose([]).stats.baseline is None


def test_two_sweeps_in_one_report_share_the_default_baseline(tmp_path):
    """A rope sweep and a qk_scale sweep: every variant is compared with the all-defaults one."""
    qk_sweep(tmp_path / "qk", (1.0, 1.2))
    qk_sweep(tmp_path / "rope", (1.0,), rope="chunk", rng_seed=1)
    report = build_report([tmp_path / "qk", tmp_path / "rope"], tmp_path / "out")
    table = report.comparison
    assert set(table.loc[table["is_baseline"], "variant"].item().split()) == {"rope.split=slice", "model.qk_scale=1.0"}
    assert table["val_bpb_delta"].notna().sum() == 2  # chunk and qk_scale=1.2, each against the baseline


def test_one_stray_run_beside_the_smoke_grid_gets_a_delta(tmp_path):
    for run in write_sweep(tmp_path / "smoke"):  # as real runs, which carry the recipe's qk_scale
        config = run.read_config()
        config["model"]["qk_scale"] = 1.0
        run.write_config(config)
    qk_sweep(tmp_path / "stray", (1.2,), seeds=(0,))
    report = build_report([tmp_path / "smoke", tmp_path / "stray"], tmp_path / "out")
    table = report.comparison
    baseline = set(table.loc[table["is_baseline"], "variant"].item().split())
    assert baseline == {"rope.split=slice", "mlp_lr.name=c_fc_2x", "model.qk_scale=1.0"}
    stray = table[table["variant"].str.contains("qk_scale=1.2")].iloc[0]
    assert np.isfinite(stray["val_bpb_delta"]) and stray["val_bpb_verdict"] == "one seed: not tested"
    assert "declared by the runs' `stats.baseline`" in report.report_path.read_text()
