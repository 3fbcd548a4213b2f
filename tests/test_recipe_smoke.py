"""Both recipes through the real CLI on the tiny smoke model: a sweep over them completes and reports
the recipe as its axis, and a July-recipe run killed mid-way resumes to the uninterrupted result,
bit for bit (its new parameters, optimizer state and schedules included)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness.results.rundir import RunDir, find_run_dirs

pytestmark = pytest.mark.slow

STEPS = 6
ARGS = [
    "experiment=smoke",
    "rope=slice",
    "mlp_lr=c_fc_2x",
    "seed=0",
    f"train.num_iterations={STEPS}",
    "train.checkpoint_every=2",
    "eval.val_every=3",
    "eval.val_tokens=4096",
]


def command(runs, *extra, multirun=False):
    return [
        sys.executable,
        "-m",
        "harness.train",
        *(["-m"] if multirun else []),
        *ARGS,
        f"paths.runs_dir={runs}",
        f"paths.results_dir={runs}/results",
        *extra,
    ]


def history(rundir: RunDir) -> list[tuple]:
    return [(r["step"], r.get("train_loss"), r.get("val_bpb"), r.get("lr_multiplier")) for r in rundir.read_metrics()]


def weights(rundir: RunDir) -> dict:
    return RunDir.load_checkpoint(rundir.checkpoint_path(STEPS))["model"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    runs = tmp_path_factory.mktemp("recipes")
    subprocess.run(
        command(runs, "recipe=nanochat_2026_01,nanochat_2026_07", multirun=True), check=True, capture_output=True
    )
    return runs


def test_a_sweep_over_both_recipes_completes_and_reports_the_recipe(sweep):
    by_recipe = {d.read_config()["recipe"]["name"]: d for d in find_run_dirs(sweep)}
    assert set(by_recipe) == {"nanochat_2026_01", "nanochat_2026_07"}
    for rundir in by_recipe.values():
        assert rundir.read_summary()["status"] == "completed"
    assert "smear_lambda" in weights(by_recipe["nanochat_2026_07"])
    assert "smear_lambda" not in weights(by_recipe["nanochat_2026_01"])
    runs_csv = (sweep / "results" / "smoke" / "runs.csv").read_text().splitlines()
    assert "recipe.name" in runs_csv[0].split(",")


def test_a_killed_july_run_resumes_bitwise(tmp_path, sweep):
    reference = next(d for d in find_run_dirs(sweep) if d.read_config()["recipe"]["name"] == "nanochat_2026_07")
    process = subprocess.Popen(
        command(tmp_path, "recipe=nanochat_2026_07"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        found = find_run_dirs(tmp_path)
        if found and found[0].metrics_path.exists():
            steps = [json.loads(line).get("step") for line in found[0].metrics_path.read_text().splitlines() if line]
            if '"train_loss"' in found[0].metrics_path.read_text() and max(steps) >= 3:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait(timeout=300)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(command(tmp_path, "recipe=nanochat_2026_07"), check=True, capture_output=True)
    (rundir,) = find_run_dirs(tmp_path)
    assert rundir.read_summary()["status"] == "completed"
    assert history(rundir) == history(reference)
    expected = weights(reference)
    for name, tensor in weights(rundir).items():
        assert torch.equal(tensor, expected[name]), name
