"""The launchers end to end on CPU (gloo): a launcher=torchrun sweep runs every job as two processes,
one after another, and a rank that dies fails only its own run; a launcher=submitit_local job of two
tasks is preempted (SIGUSR2, what SLURM sends before the time limit), checkpoints, is requeued by
submitit and resumes to exactly the loss history of the torchrun sweep's uninterrupted run of the
same config."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.results.rundir import RunDir, find_run_dirs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc"),
]

STEPS = 16
RUN_ARGS = [
    "experiment=smoke",
    "rope=slice",
    "seed=0",
    f"train.num_iterations={STEPS}",
    "train.device_batch_size=8",  # 2,048 tokens = 8 rows x 128 tokens x 2 ranks
    "train.checkpoint_every=4",
    "eval.val_every=8",
    "eval.val_tokens=4096",
]


def train_command(runs_dir, *overrides, multirun: bool = True) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness.train",
        *(["-m"] if multirun else []),
        *RUN_ARGS,
        f"paths.runs_dir={runs_dir}",
        f"paths.results_dir={runs_dir}/results",
        *overrides,
    ]


def one_thread_env() -> dict:
    """One intra-op thread per process, as torchrun gives its workers: two processes on a 2-core
    machine, and the same float32 sums in every run compared here."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def train_steps(rundir: RunDir) -> list[int]:
    return [r["step"] for r in rundir.read_metrics() if "train_loss" in r]


def history(rundir: RunDir) -> list[tuple]:
    return [(r["step"], r.get("train_loss"), r.get("val_bpb")) for r in rundir.read_metrics()]


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`, oldest first (from /proc; pids grow with creation here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_until(condition, timeout_s: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def torchrun_sweep(tmp_path_factory):
    """A sweep of three jobs (mlp_lr), two processes per job. While the second job trains, its rank 1
    is killed (SIGKILL, as when a GPU or its process dies). Returns the runs folder, the killed run's
    folder name, the sweep's exit code and its output."""
    runs = tmp_path_factory.mktemp("torchrun")
    sweep = train_command(runs, "mlp_lr=c_fc_2x,none,c_proj_2x", "launcher=torchrun", "launcher.nproc_per_node=2")
    process = subprocess.Popen(sweep, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:

        def second_job_training() -> bool:
            found = find_run_dirs(runs)
            done = [r for r in found if r.status() == "completed"]
            going = [r for r in found if r.status() == "running" and len(train_steps(r)) >= 3]
            return len(done) == 1 and len(going) == 1

        wait_until(second_job_training, what="the second job to train")
        (victim,) = [r for r in find_run_dirs(runs) if r.status() == "running"]
        workers = [p for p in children(process.pid) if "spawn_main" in command_line(p)]
        assert len(workers) == 2, [command_line(p) for p in children(process.pid)]
        os.kill(workers[-1], signal.SIGKILL)  # the younger worker: local rank 1
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    return runs, victim.path.name, process.returncode, output


def test_torchrun_sweep_runs_each_job_on_two_ranks_and_a_dead_rank_fails_only_its_run(torchrun_sweep):
    """The killed run is recorded as interrupted (a lost rank is the machine's fault: re-running
    resumes it) with the cause, and the sweep goes on to the last job and the report."""
    runs, victim, returncode, output = torchrun_sweep
    assert returncode == 0, output[-3000:]
    found = find_run_dirs(runs)
    assert len(found) == 3
    statuses = {r.path.name: r.status() for r in found}
    assert sorted(statuses.values()) == ["completed"] * 2 + ["interrupted"], statuses
    assert statuses[victim] == "interrupted"
    (killed,) = [r for r in found if r.path.name == victim]
    error = killed.read_summary()["error"]
    assert error.startswith("rank 1:") and "SIGKILL" in error, error
    for rundir in found:
        if rundir.status() == "completed":
            summary = rundir.read_summary()
            assert (summary["world_size"], summary["grad_accum_steps"]) == (2, 1)
            assert train_steps(rundir) == list(range(1, STEPS + 1))  # rank 0 alone writes metrics
    report = (runs / "results" / "smoke" / "runs.csv").read_text()
    assert report.count("completed") == 2 and report.count("interrupted") == 1


def submitit_tasks(controller_pid: int) -> list[int]:
    return [p for p in children(controller_pid) if "submitit.core._submit" in command_line(p)]


def submitit_controller(sweep_pid: int) -> int | None:
    controllers = [p for p in children(sweep_pid) if "submitit.local._local" in command_line(p)]
    return controllers[0] if controllers else None


def test_submitit_job_preempted_checkpoints_requeues_and_resumes_with_no_lost_or_repeated_step(
    tmp_path, torchrun_sweep
):
    """The uninterrupted reference is the torchrun sweep's run of the same config: two ranks of one
    thread under either launcher compute the same run, so the histories are equal bit for bit."""
    torchrun_runs, _, _, _ = torchrun_sweep  # its first job, c_fc_2x, is never the one killed
    (uninterrupted,) = [r for r in find_run_dirs(torchrun_runs) if r.read_config()["mlp_lr"]["name"] == "c_fc_2x"]
    assert uninterrupted.status() == "completed"
    # No report (~hydra.callbacks.report): this test reads the run, and the plots would double its time.
    launcher = ["launcher=submitit_local", "launcher.nproc_per_node=2", "mlp_lr=c_fc_2x", "~hydra.callbacks.report"]

    runs = tmp_path / "preempted"
    process = subprocess.Popen(
        train_command(runs, *launcher),
        env=one_thread_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def training() -> bool:
            found = find_run_dirs(runs)
            return bool(found) and len(train_steps(found[0])) >= 6

        wait_until(training, what="the job to train six steps")
        controller = submitit_controller(process.pid)
        tasks = submitit_tasks(controller)
        assert len(tasks) == 2, [command_line(p) for p in children(controller)]
        for task in tasks:  # SLURM signals every task of the job
            os.kill(task, signal.SIGUSR2)
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, output[-3000:]

    (rundir,) = find_run_dirs(runs)
    summary = rundir.read_summary()
    assert summary["status"] == "completed" and summary["world_size"] == 2
    rank0_logs = "".join(p.read_text() for p in runs.rglob("*_0_log.out"))
    assert "Requeued job" in rank0_logs
    resumed = [line for line in rank0_logs.splitlines() if "resumed from" in line]
    assert len(resumed) == 1, rank0_logs[-3000:]
    resumed_at = int(resumed[0].rsplit("at step", 1)[1])
    assert 6 <= resumed_at < STEPS  # from the checkpoint written where the signal stopped it
    assert train_steps(rundir) == list(range(1, STEPS + 1))
    assert history(rundir) == history(uninterrupted)


def test_a_world_size_that_cannot_split_the_data_streams_is_refused_in_one_line(tmp_path):
    """A checkpoint resumes on any number of ranks (tests/test_distributed_invariance.py); what cannot
    run, fresh or resumed, is a world size that does not divide data.streams: the launcher's
    preflight refuses it before any process starts or any run directory is made."""
    four_ranks = ["launcher=torchrun", "launcher.nproc_per_node=4", "train.device_batch_size=4", "data.streams=2"]
    command = train_command(tmp_path, *four_ranks, "mlp_lr=none", multirun=False)
    refused = subprocess.run(command, env=one_thread_env(), capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: data.streams=2 must be a positive multiple of the world size 4 (each rank produces whole "
        "streams); use the same data.streams in every run you compare"
    )
    assert find_run_dirs(tmp_path) == []


def test_submitit_local_runs_the_smoke_experiment_and_shows_its_progress(tmp_path):
    """The README's CPU experiment under launcher=submitit_local with its defaults (one task per job,
    the smoke batch): the job completes, and its progress lines reach the sweep's console while it
    trains, prefixed with its run folder, before the report."""
    command = [
        sys.executable,
        "-m",
        "harness.train",
        "-m",
        "experiment=smoke",
        "launcher=submitit_local",
        "rope=slice",
        "mlp_lr=c_fc_2x",
        "seed=0",
        "train.num_iterations=4",
        "train.print_every=2",
        "eval.val_every=4",
        "eval.val_tokens=2048",
        f"paths.runs_dir={tmp_path}",
        f"paths.results_dir={tmp_path}/results",
    ]
    done = subprocess.run(command, env=one_thread_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (rundir,) = find_run_dirs(tmp_path / "smoke")
    assert rundir.read_summary()["status"] == "completed"
    prefix = f"[{rundir.path.relative_to(tmp_path / 'smoke').as_posix()}] "
    followed = [line for line in done.stdout.splitlines() if line.startswith(prefix)]
    assert any("step     2/4" in line for line in followed) and any("step     4/4" in line for line in followed)
    assert done.stdout.index(prefix) < done.stdout.index("report: ")


def test_a_stopped_rank_ends_the_run_interrupted_naming_it_within_launcher_timeout(tmp_path):
    """SIGSTOP (not dead: the elastic agent sees nothing) on rank 1: rank 0's next collective gives up
    after launcher.timeout_s, and the run ends `interrupted` (resumable) in one line naming rank 1."""
    command = train_command(
        tmp_path,
        "launcher=torchrun",
        "launcher.nproc_per_node=2",
        "launcher.timeout_s=30",  # above rank 0's startup work (it tokenizes while rank 1 waits)
        "launcher.shutdown_timeout_s=5",
        "train.num_iterations=400",
        multirun=False,
    )
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=one_thread_env()
    )
    stopped = None
    try:
        # On the run's own progress: a few steps logged, then rank 1 stopped.
        wait_until(lambda: process.poll() is not None or any(train_steps(r) for r in find_run_dirs(tmp_path)), 1800)
        workers = [p for p in children(process.pid) if "spawn_main" in command_line(p)]
        assert len(workers) == 2, [command_line(p) for p in children(process.pid)]
        stopped = workers[-1]  # the younger worker: local rank 1
        os.kill(stopped, signal.SIGSTOP)
        stderr = process.communicate(timeout=1800)[1]
    finally:
        if stopped is not None:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signum)
        process.kill()
    (rundir,) = find_run_dirs(tmp_path)
    assert process.returncode == 1, stderr[-3000:]
    # torch's agent logs its own view of the failed worker too; the harness's line is the last of its own.
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors, stderr[-6000:]
    line = errors[-1]
    assert line == (
        f"error: {rundir.path}: rank 1 went silent (no answer for launcher.timeout_s=30 s); interrupted, "
        "re-run the same command to resume"
    ), stderr[-4000:]
    summary = rundir.read_summary()
    assert summary["status"] == "interrupted" and "rank 1 went silent" in summary["error"]
