"""launcher=slurm against a real SLURM: the one-node cluster of .ci/slurm-up.sh (CI brings it up before
`make test`). A sweep runs as one job array and is reported; a job sent SIGUSR2 (SLURM's time-limit
warning) checkpoints, is requeued and resumes to the same history, bit for bit, as the sweep's
uninterrupted run of its config; a job killed outright ends its sweep, and re-running the sweep
resumes it to that same history. Where no SLURM answers, every test skips and says why.

The jobs are one task of one CPU (two fit the 2-core CI machine side by side) and run as whoever
submits them, with the submitting interpreter (submitit pickles the call), on this machine's files."""

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_launch import (  # noqa: E402  (the launcher tests' commands and waits, reused)
    command_line,
    history,
    one_thread_env,
    train_command,
    train_steps,
    wait_until,
)

from harness.launch.slurm import FirstStateQueryError, squeue_watcher  # noqa: E402
from harness.results.rundir import RunDir, find_run_dirs  # noqa: E402

# The ClusterName .ci/slurm-up.sh writes: the tests submit only to that cluster unless told to, since on
# a login node of a real cluster the jobs would not see this machine's /tmp.
TEST_CLUSTER = "ablate-ci"
OPT_IN = "ABLATE_SLURM_TESTS"


def slurm_unavailable() -> str | None:
    """Why these tests cannot run here, or None when a SLURM with an idle node answers."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (sinfo/sbatch not on PATH); as root, `bash .ci/slurm-up.sh` starts a one-node cluster"
    try:
        # scontrol ping answers at once where the controller is down (sinfo retries for 9 s)
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        if ping.returncode != 0:
            said = (ping.stdout.strip().splitlines() or ping.stderr.strip().splitlines() or ["no answer"])[0]
            return f"no SLURM answers (scontrol ping: {said}); `bash .ci/slurm-up.sh` starts a one-node cluster"
        sinfo = ["sinfo", "--noheader", "--Node", "--format=%t"]
        nodes = subprocess.run(sinfo, capture_output=True, text=True, timeout=30)
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        return f"no SLURM answers ({e.cmd[0]} took over 30 s); `bash .ci/slurm-up.sh` starts a one-node cluster"
    if nodes.returncode != 0:
        said = (nodes.stderr.strip().splitlines() or ["no output"])[0]
        return f"no SLURM answers (sinfo: {said}); `bash .ci/slurm-up.sh` starts a one-node cluster"
    if "idle" not in nodes.stdout.split():
        return f"no idle SLURM node (sinfo node states: {' '.join(nodes.stdout.split()) or 'none'})"
    names = [line.split("=", 1)[1].strip() for line in config.stdout.splitlines() if line.startswith("ClusterName")]
    if names != [TEST_CLUSTER] and os.environ.get(OPT_IN) != "1":
        return (
            f"SLURM cluster {names[0] if names else '?'} is not the test cluster of .ci/slurm-up.sh; "
            f"{OPT_IN}=1 submits the test jobs to it (they must see this machine's /tmp)"
        )
    return None


UNAVAILABLE = slurm_unavailable()
needs_slurm = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

# One task of one CPU per job, no GPU; each run one rank, as the sweep's reference run is.
SLURM_ARGS = [
    "launcher=slurm",
    "launcher.nproc_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.timeout_min=30",
]
# The preemption and kill tests read the run, not the report (its plots would double their time).
NO_REPORT = "~hydra.callbacks.report"


def job_ids(runs: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs: submitit's folder per job holds its pickled call, and is named
    by the job's id (<array>_<task> in a sweep of several runs, which is one job array)."""
    return sorted(p.parent.name for p in runs.glob("*/.submitit/*/*_submitted.pkl"))


def job_tasks(runs: Path) -> list[int]:
    """The training processes of the sweep's jobs: submitit's task (`python -u -m submitit.core._submit
    <job folder>`, started by srun, whose own command line ends the same). `scancel --signal=KILL` would
    not do: SLURM takes it as a cancel, which sends SIGTERM first, and the run checkpoints."""
    tasks = []
    for entry in Path("/proc").iterdir():
        line = command_line(int(entry.name)) if entry.name.isdigit() else ""
        if "-m submitit.core._submit" in line and str(runs) in line and not line.startswith("srun "):
            tasks.append(int(entry.name))
    return tasks


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    """The sweep's output once it ends (a generous ceiling: it waits on SLURM's jobs)."""
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        process.kill()
    return output


def wait_for_steps(process: subprocess.Popen, runs: Path, steps: int) -> None:
    """Until the sweep's one run has trained `steps` steps (its metrics.jsonl); a sweep that ends first
    fails the test with its output."""

    def trained() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"the sweep ended before its job trained {steps} steps:\n{process.stdout.read()[-3000:]}"
            )
        found = find_run_dirs(runs)
        return bool(found) and len(train_steps(found[0])) >= steps and bool(job_ids(runs))

    wait_until(trained, timeout_s=600, what=f"the job to train {steps} steps")


def submitit_logs(runs: Path) -> str:
    return "".join(p.read_text() for p in sorted(runs.rglob("*_log.out")))


def resumed_steps(log: str) -> list[int]:
    return [int(line.rsplit("at step", 1)[1]) for line in log.splitlines() if "resumed from" in line]


@pytest.fixture(scope="module")
def slurm_sweep(tmp_path_factory):
    """A two-run sweep (mlp_lr) under launcher=slurm, reported. Returns the runs folder, its exit code
    and output. Its c_fc_2x run is the uninterrupted reference of the tests below."""
    runs = tmp_path_factory.mktemp("slurm_sweep")
    done = subprocess.run(
        train_command(runs, "mlp_lr=c_fc_2x,none", *SLURM_ARGS),
        env=one_thread_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return runs, done.returncode, done.stdout + done.stderr


def reference(slurm_sweep) -> RunDir:
    runs, _, _ = slurm_sweep
    (uninterrupted,) = [r for r in find_run_dirs(runs) if r.read_config()["mlp_lr"]["name"] == "c_fc_2x"]
    assert uninterrupted.status() == "completed"
    return uninterrupted


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_a_sweep_runs_as_one_job_array_on_slurm_and_is_reported(slurm_sweep):
    """Both runs are tasks of one SLURM job array, complete, and reach the report. On a cluster without
    accounting the sweep learns job states from squeue: sacct's complaint never reaches the console."""
    runs, returncode, output = slurm_sweep
    assert returncode == 0, output[-3000:]
    ids = job_ids(runs)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1, ids  # <array>_0, <array>_1
    assert sorted(i.split("_")[1] for i in ids) == ["0", "1"]
    found = find_run_dirs(runs)
    assert sorted(r.status() for r in found) == ["completed", "completed"]
    for rundir in found:
        assert rundir.read_summary()["world_size"] == 1
        assert train_steps(rundir) == list(range(1, 17))
    assert "Starting with JobEnvironment(job_id=" in submitit_logs(runs)  # run inside SLURM's jobs
    report = (runs / "results" / "smoke" / "runs.csv").read_text()
    assert report.count("completed") == 2
    assert "report: " in output
    assert "accounting storage is disabled" not in output
    assert output.count("Bypassing sacct error") <= 1


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_usr2_checkpoints_requeues_and_resumes_bitwise(tmp_path, slurm_sweep):
    """SIGUSR2 as SLURM sends it before the time limit (scancel --signal=USR2): the run checkpoints at
    the next step, submitit requeues the job, and after SLURM's hold on requeued jobs (AuthInfo
    cred_expire, 20 s on the test cluster) it resumes from that checkpoint to the reference's history."""
    uninterrupted = reference(slurm_sweep)
    runs = tmp_path / "preempted"
    process = start(train_command(runs, "mlp_lr=c_fc_2x", *SLURM_ARGS, NO_REPORT))
    try:
        wait_for_steps(process, runs, 6)
        (job,) = job_ids(runs)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    finally:
        output = finish(process)
    assert process.returncode == 0, output[-3000:]
    (rundir,) = find_run_dirs(runs)
    assert rundir.status() == "completed"
    logs = submitit_logs(runs)
    assert "Requeued job" in logs, logs[-3000:]
    (resumed_at,) = resumed_steps(logs)
    assert 6 <= resumed_at < 16  # from the checkpoint written where the signal stopped it
    assert train_steps(rundir) == list(range(1, 17))
    assert history(rundir) == history(uninterrupted)
    assert rundir.read_summary()["final_val_bpb"] == uninterrupted.read_summary()["final_val_bpb"]


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_a_job_killed_outright_ends_its_sweep_and_rerunning_the_sweep_resumes_it(tmp_path, slurm_sweep):
    """SIGKILL to the job's training process (an out-of-memory kill, a crash: no checkpoint on the way
    out): the sweep sees the job end (squeue says it failed) and stops with an error instead of waiting
    for a result that never comes; the same command again submits a new job, which resumes from the
    newest checkpoint to the reference's history."""
    uninterrupted = reference(slurm_sweep)
    runs = tmp_path / "killed"
    command = train_command(runs, "mlp_lr=c_fc_2x", *SLURM_ARGS, NO_REPORT)
    process = start(command)
    try:
        wait_for_steps(process, runs, 6)
        (job,) = job_ids(runs)
        (task,) = job_tasks(runs)
        os.kill(task, signal.SIGKILL)
    finally:
        output = finish(process)
    assert process.returncode != 0, output[-3000:]
    (rundir,) = find_run_dirs(runs)
    assert rundir.status() == "running"  # killed: no summary written on the way out
    assert "has not produced any output" in output, output[-3000:]

    rerun = start(command)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-3000:]
    assert rundir.status() == "completed"
    assert len(job_ids(runs)) == 2  # the killed job and the one that resumed it
    (resumed_at,) = resumed_steps(submitit_logs(runs))
    assert 4 <= resumed_at < 16
    assert train_steps(rundir) == list(range(1, 17))
    assert history(rundir) == history(uninterrupted)


# Without a cluster ---------------------------------------------------------------------------------
def test_submitit_state_query_warning_is_shown_once_per_sweep():
    """The filter WatchSlurmJobs puts on submitit's logger: the first failed sacct call is logged (with
    a note that repeats are hidden), the next ones are not, and submitit's other messages pass."""
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("submitit.test_filter")  # a child: records reach only this test's handler
    logger.propagate = False
    logger.addHandler(Collect())
    logger.addFilter(FirstStateQueryError())
    logger.setLevel(logging.INFO)
    error = "Call #{} - Bypassing sacct error Command '['sacct']' returned non-zero exit status 1., status may be ..."
    for call in (1, 2, 3):
        logger.warning(error.format(call))
    logger.warning("Bypassing signal SIGTERM")
    logger.info("Job completed successfully")
    assert seen == [
        error.format(1) + " (this warning is shown once per sweep)",
        "Bypassing signal SIGTERM",
        "Job completed successfully",
    ]


def test_squeue_watcher_reads_array_tasks_as_submitit_names_them():
    """The squeue query and its output (squeue --array --format=%i|%T, as SLURM 22.05 prints it) read
    into submitit's states: ended jobs are done, pending and requeued ones are not."""
    watcher = squeue_watcher()
    for job in ("7_0", "7_1", "8_0"):
        watcher.register_job(job)
    command = watcher._make_command()
    assert command[0] == "squeue" and command[-1] == "--jobs=7,8"
    watcher._info_dict.update(watcher.read_info(b"7_0|COMPLETED\n7_1|RUNNING\n8_0|FAILED\n"))
    assert [watcher.is_done(j, mode="cache") for j in ("7_0", "7_1", "8_0")] == [True, False, True]
    watcher._info_dict.update(watcher.read_info("7_1|REQUEUED\n"))
    assert not watcher.is_done("7_1", mode="cache")


def test_launcher_slurm_without_slurm_is_one_line_before_any_folder(tmp_path):
    """Where sbatch is not on PATH, the preflight refuses launcher=slurm in one line, exit code 2, and
    the sweep folder is never made."""
    bare = tmp_path / "bin"
    bare.mkdir()
    command = train_command(tmp_path / "runs", "mlp_lr=c_fc_2x,none", *SLURM_ARGS)
    refused = subprocess.run(command, env={**one_thread_env(), "PATH": str(bare)}, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = refused.stderr.strip().splitlines()  # "error: job 1/2 (<its overrides>): launcher=slurm ..."
    assert line.startswith("error: job 1/2 (") and line.endswith(
        "launcher=slurm submits every run with sbatch, which is not on this machine's PATH (no SLURM here); "
        "run the command on a SLURM login node, or try the SLURM path on this machine with launcher=submitit_local"
    )
    assert not (tmp_path / "runs").exists()
