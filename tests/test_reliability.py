"""Fault injection: killed runs resume to the uninterrupted result, a torn checkpoint write never
counts, a diverging run in a sweep is recorded and the sweep goes on, and re-running a finished
sweep trains nothing. Real processes, real signals, the tiny smoke model on CPU."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from harness.results.rundir import RunDir, find_run_dirs

pytestmark = pytest.mark.slow

STEPS = 16
RUN_ARGS = [
    "experiment=smoke",
    f"train.num_iterations={STEPS}",
    "train.checkpoint_every=4",
    "eval.val_every=8",
    "eval.val_tokens=4096",
    "train.print_every=100",
]


def train_command(runs_dir, *extra, multirun=False):
    return [
        sys.executable,
        "-m",
        "harness.train",
        *(["-m"] if multirun else []),
        *RUN_ARGS,
        f"paths.runs_dir={runs_dir}",
        f"paths.results_dir={runs_dir}/results",
        *extra,
    ]


def only_run(runs_dir) -> RunDir:
    runs = find_run_dirs(runs_dir)
    assert len(runs) == 1, runs
    return runs[0]


def history(rundir: RunDir) -> list[tuple]:
    """What a run computed, step by step: everything but timings."""
    return [(r["step"], r.get("train_loss"), r.get("val_bpb"), r.get("lr_multiplier")) for r in rundir.read_metrics()]


def final_weights(rundir: RunDir) -> dict:
    return RunDir.load_checkpoint(rundir.checkpoint_path(STEPS))["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    runs = tmp_path_factory.mktemp("reference")
    subprocess.run(train_command(runs), check=True, capture_output=True)
    rundir = only_run(runs)
    assert rundir.read_summary()["status"] == "completed"
    return rundir


def train_records(rundir: RunDir) -> int:
    if not rundir.metrics_path.exists():
        return 0
    return sum('"train_loss"' in line for line in rundir.metrics_path.read_text().splitlines())


def start_and_stop_at(runs, step: int, signum: int) -> subprocess.Popen:
    """Start a run and send `signum` once it has logged `step` training steps."""
    process = subprocess.Popen(train_command(runs), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        runs_found = find_run_dirs(runs)
        if runs_found and train_records(runs_found[0]) >= step:
            process.send_signal(signum)
            break
        time.sleep(0.02)
    process.wait(timeout=120)
    return process


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_step_then_resume_equals_the_uninterrupted_run(tmp_path, reference, seed):
    kill_step = random.Random(seed).randint(2, STEPS - 2)
    killed = start_and_stop_at(tmp_path, kill_step, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    rundir = only_run(tmp_path)
    assert rundir.read_summary()["status"] == "running"  # died without a word
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    assert rundir.read_summary()["status"] == "completed"
    assert history(rundir) == history(reference)
    expected = final_weights(reference)
    for name, tensor in final_weights(rundir).items():
        assert torch.equal(tensor, expected[name]), name


def test_sigterm_checkpoints_marks_interrupted_and_resumes(tmp_path, reference):
    stopped = start_and_stop_at(tmp_path, 6, signal.SIGTERM)
    assert stopped.returncode != 0
    rundir = only_run(tmp_path)
    summary = rundir.read_summary()
    assert summary["status"] == "interrupted"
    assert rundir.latest_checkpoint() == rundir.checkpoint_path(summary["step"])  # saved where it stopped
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    assert rundir.read_summary()["status"] == "completed"
    assert history(rundir) == history(reference)


def test_a_checkpoint_write_killed_halfway_never_counts(tmp_path):
    """The writer dies after the bytes are written but before the rename: the previous
    checkpoint stays the newest, loads, and the leftover temporary file is ignored."""
    script = (
        "import os, sys, torch\n"
        "from harness.results.rundir import RunDir\n"
        "run = RunDir(sys.argv[1])\n"
        "run.save_checkpoint(4, {'w': torch.ones(1000)}, keep_last=2)\n"
        "os.fsync = lambda fd: os._exit(9)\n"
        "run.save_checkpoint(8, {'w': torch.zeros(1000)}, keep_last=2)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)])
    assert result.returncode == 9
    rundir = RunDir(tmp_path)
    leftovers = [p for p in rundir.checkpoints_dir.iterdir() if p.suffix == ".tmp"]
    assert leftovers, "the simulated crash should leave a temporary file behind"
    assert rundir.latest_checkpoint() == rundir.checkpoint_path(4)
    assert torch.equal(RunDir.load_checkpoint(rundir.latest_checkpoint())["w"], torch.ones(1000))


def test_shards_without_a_main_file_are_not_a_checkpoint(tmp_path):
    rundir = RunDir(tmp_path)
    rundir.save_checkpoint_shard(4, 0, {"optimizer": 1})
    rundir.save_checkpoint(4, {"step": 4}, keep_last=2)
    rundir.save_checkpoint_shard(8, 0, {"optimizer": 2})  # the run died before rank 0's main file
    assert rundir.latest_checkpoint() == rundir.checkpoint_path(4)
    assert RunDir.load_checkpoint(rundir.latest_checkpoint(), rank=0) == {"optimizer": 1}


def test_torn_metrics_line_is_skipped_and_summaries_are_atomic(tmp_path):
    rundir = RunDir(tmp_path)
    rundir.append_metrics({"step": 1, "train_loss": 5.0})
    rundir.append_metrics({"step": 2, "train_loss": 4.0})
    with open(rundir.metrics_path, "a") as f:
        f.write('{"step": 3, "train_lo')  # the process died mid-line
    assert [r["step"] for r in rundir.read_metrics()] == [1, 2]
    rundir.write_summary({"status": "running", "loss": float("nan")})
    assert json.loads(rundir.summary_path.read_text()) == {"status": "running", "loss": None}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def run_files(runs) -> list:
    """What the runs wrote: config, metrics, summary, checkpoints (not Hydra's own bookkeeping,
    which it rewrites on every invocation, nor logs and the report)."""
    return [
        p
        for rundir in find_run_dirs(runs)
        for p in rundir.path.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    ]


def sweep_summaries(runs) -> dict[float, dict]:
    """Summary by the swept scalar LR."""
    return {r.read_config()["optim"]["adamw"]["scalar_lr"]: r.read_summary() for r in find_run_dirs(runs)}


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on_and_rerunning_trains_nothing(tmp_path):
    # An absurd scalar LR overflows the residual scalars: NaN loss within a few steps.
    sweep = [
        "rope=slice",
        "mlp_lr=c_fc_2x",
        "seed=0",
        "optim.adamw.scalar_lr=0.5,1e30,0.4",
        "train.num_iterations=8",
        "eval.val_every=4",
    ]
    first = subprocess.run(train_command(tmp_path, *sweep, multirun=True), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    summaries = sweep_summaries(tmp_path)
    assert {lr: s["status"] for lr, s in summaries.items()} == {0.5: "completed", 1e30: "diverged", 0.4: "completed"}
    assert "loss is nan" in summaries[1e30]["error"]
    report = (tmp_path / "results" / "smoke").rglob("*.csv")
    assert any("diverged" in p.read_text() for p in report), "the report must show the diverged run"

    files_before = {p: p.stat().st_mtime_ns for p in run_files(tmp_path)}
    again = subprocess.run(train_command(tmp_path, *sweep, multirun=True), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("nothing to do") + again.stderr.count("nothing to do") == 3
    assert {p: p.stat().st_mtime_ns for p in run_files(tmp_path)} == files_before

    retried = subprocess.run(
        train_command(tmp_path, *sweep, "sweep.retry_failed=true", multirun=True), capture_output=True, text=True
    )
    assert retried.returncode == 0, retried.stderr[-2000:]
    after = sweep_summaries(tmp_path)
    assert after[0.5] == summaries[0.5] and after[0.4] == summaries[0.4]  # completed runs untouched
    assert after[1e30]["status"] == "diverged" and after[1e30]["started_at"] != summaries[1e30]["started_at"]


def test_rerunning_with_a_changed_config_is_refused(tmp_path, reference):
    """The run directory is the run's identity: a different config there is an error naming the keys."""
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    rundir = only_run(tmp_path)
    config = rundir.read_config()
    config["optim"]["muon"]["beta2"] = 0.9  # as if a default had changed since the run
    rundir.write_config(config)
    refused = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {rundir.path} holds a run with a different config (optim.muon.beta2); use another name=..., "
        "or train.resume=force to continue anyway, or train.resume=never to restart"
    )
