"""Sweeps beyond comma lists: the preflight's jobs are the ones Hydra's basic sweeper launches (glob,
range, choice included), and an Optuna study checks each trial as it launches, gets a float back
from every trial (a failed one too) and ends in optimization_results.yaml and a report."""

import fnmatch
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.cli import CONFIG_DIR, compose, expand_sweep, plan_launch
from harness.errors import ConfigError
from harness.objective import OBJECTIVES, check_objective, objective_value
from harness.results.collect import collect_dirs

REPO = Path(__file__).resolve().parents[1]

# A Hydra app on the harness's configs that only prints each job's overrides: Hydra's own multirun
# (its sweeper, its launcher) is the reference for the jobs the preflight expands.
RECORDING_APP = f"""
import json
import hydra
from hydra.core.hydra_config import HydraConfig
import harness.cli  # registers ${{ablate.run_dir:...}}, which names run folders, as harness.train does

@hydra.main(version_base="1.3", config_path={str(CONFIG_DIR)!r}, config_name="config")
def app(cfg):
    print("JOB " + json.dumps(list(HydraConfig.get().overrides.task)), flush=True)

app()
"""


def hydra_launched_jobs(overrides: list[str], tmp_path: Path) -> list[list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", RECORDING_APP, "-m", *overrides, f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line[4:]) for line in result.stdout.splitlines() if line.startswith("JOB ")]


def options(group: str, pattern: str = "*") -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if fnmatch.fnmatch(p.stem, pattern))


def test_glob_range_and_choice_expand_to_the_values_they_name():
    jobs = expand_sweep(["mlp_lr=glob(c_*)", "seed=range(1,4)", "model=choice(tiny,d12)"])
    expected = [
        [f"mlp_lr={m}", f"seed={s}", f"model={d}"]
        for m in options("mlp_lr", "c_*")
        for s in (1, 2, 3)
        for d in ("tiny", "d12")
    ]
    assert jobs == expected
    assert options("mlp_lr", "c_*") == ["c_fc_2x", "c_proj_2x"]  # the glob matched something to test
    # a float range stops before its end, as Python's range does
    assert expand_sweep(["optim.muon.lr=range(0.01,0.04,0.01)"]) == [
        ["optim.muon.lr=0.01"],
        ["optim.muon.lr=0.02"],
        ["optim.muon.lr=0.03"],
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=rope_mlp_lr", "mlp_lr=glob(c_*)", "seed=choice(0,5)", "model=d12,d24"],
        ["rope=glob(*)", "seed=range(0,2)", "train.num_iterations=7"],
    ],
    ids=["experiment+glob+choice+list", "glob-all+range+fixed"],
)
def test_the_jobs_are_the_ones_hydra_launches(overrides, tmp_path):
    assert expand_sweep(overrides) == hydra_launched_jobs(overrides, tmp_path)


def test_a_single_run_and_an_hparams_search_without_dash_m():
    assert plan_launch(["model=tiny", "seed=3"]).jobs == [["model=tiny", "seed=3"]]
    # hparams_search sets hydra.mode=MULTIRUN: no -m, yet a study whose trials the sweeper chooses
    launch = plan_launch(["hparams_search=smoke"])
    assert launch.chooses_trials and launch.jobs == []
    assert launch.sweeper.startswith("hydra_plugins.hydra_optuna_sweeper.")
    with pytest.raises(ConfigError, match="picks its trials as it runs"):
        expand_sweep(["hparams_search=smoke"])


def test_every_searched_key_is_composed_up_front():
    with pytest.raises(ConfigError, match="^optim.muon.lrr is not a config key"):
        plan_launch(["hparams_search=smoke", "optim.muon.lrr=interval(0.01,0.02)"])
    with pytest.raises(ConfigError, match="^rope=spiral is not an option"):
        plan_launch(["hparams_search=smoke", "rope=choice(slice,spiral)"])


def test_objective_value_is_the_metric_or_the_worst_for_the_direction():
    cfg = OmegaConf.create({"optimized_metric": "final_val_bpb"})
    assert objective_value(cfg.optimized_metric, {"status": "completed", "final_val_bpb": 1.25}) == 1.25
    for summary in (
        None,  # the job failed before it had a summary
        {"status": "failed", "final_val_bpb": None},
        {"status": "diverged", "final_val_bpb": None, "last_val_bpb": 9.0},
        {"status": "completed", "final_val_bpb": float("nan")},
    ):
        assert objective_value(cfg.optimized_metric, summary, "minimize") == math.inf
    core = OmegaConf.create({"optimized_metric": "core"})
    assert objective_value(core.optimized_metric, {"status": "diverged", "core": 0.2}, "maximize") == -math.inf
    assert objective_value(core.optimized_metric, {"status": "completed", "core": 0.2}, "maximize") == 0.2


def test_the_objective_names_a_summary_number_optimized_its_way():
    assert check_objective(compose(["optimized_metric=min_val_bpb"])) == "min_val_bpb"
    assert check_objective(compose(["optimized_metric=core", "eval=core"]), "maximize") == "core"
    with pytest.raises(ConfigError, match="set hydra.sweeper.direction=maximize"):
        check_objective(compose(["optimized_metric=tok_per_s"]), "minimize")
    assert set(OBJECTIVES) <= {
        "final_val_bpb",
        "min_val_bpb",
        "last_val_bpb",
        "core",
        "tok_per_s",
        "mfu",
    }, "an objective that summary.json does not write"


@pytest.mark.slow
def test_an_optuna_study_survives_a_failed_trial_and_is_reported(tmp_path):
    """Four trials of hparams_search=smoke, one searched key making some trials impossible (3 rows
    do not divide the 2,048-token batch): those are recorded as failed and return +inf, the study
    goes on, Optuna's best trial is the best completed run, and the report's tables list every trial."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "harness.train",
        "hparams_search=smoke",
        "train.device_batch_size=choice(16,3)",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.seed=0",  # its random start draws both batch sizes
        "train.num_iterations=4",
        "eval.val_every=2",
        f"paths.runs_dir={runs}",
        f"paths.results_dir={results}",
        "~hydra.callbacks.report",  # the plots take longer than the study; the tables are checked below
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = runs / "hparams_smoke"
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    statuses = sorted(s["status"] for s in summaries.values())
    assert len(summaries) == 4 and "failed" in statuses and "completed" in statuses, statuses
    for name, summary in summaries.items():
        if summary["status"] == "failed":
            assert "train.device_batch_size=3" in name
            assert summary["error"].startswith("ConfigError: train.total_batch_tokens=2048 is not divisible")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    completed = [s["final_val_bpb"] for s in summaries.values() if s["status"] == "completed"]
    assert best["best_value"] == pytest.approx(min(completed), rel=1e-12)
    assert best["best_params"]["train.device_batch_size"] == 16
    table = collect_dirs(sweep).runs
    assert len(table) == 4
    assert {"optim.muon.lr", "optim.adamw.embedding_lr"} <= set(table.columns)
    assert sorted(table["status"]) == statuses
