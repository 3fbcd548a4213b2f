"""Fault injection: killed runs resume to the uninterrupted result, a torn checkpoint write never
counts, a diverging run in a sweep is recorded and the sweep goes on, and re-running a finished
sweep trains nothing. Real processes, real signals, the tiny smoke model on CPU."""

import json
import os
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

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


# A multirun whose report a test does not read leaves it out: the plots are most of a small sweep's time.
NO_REPORT = "~hydra.callbacks.report"


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


# A generous bound on a tiny run's progress: far above its minute of work even at a load of 10.
PROGRESS_CEILING_S = 1800


def start_and_stop_at(runs, step: int, signum: int) -> subprocess.Popen:
    """Start a run and send `signum` once it has logged `step` training steps. Waits on the run's
    own progress for as long as it lives (startup alone can take minutes on a loaded machine); the
    ceiling only keeps a hung run from hanging the suite."""
    process = subprocess.Popen(train_command(runs), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + PROGRESS_CEILING_S
    while time.monotonic() < deadline and process.poll() is None:
        runs_found = find_run_dirs(runs)
        if runs_found and train_records(runs_found[0]) >= step:
            process.send_signal(signum)
            break
        time.sleep(0.02)
    process.wait(timeout=PROGRESS_CEILING_S)
    return process


def test_sigkill_at_a_random_step_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    # One seeded draw: the other resumes here start from steps 6 (SIGTERM), 8 (full disk) and 12 (corruption).
    kill_step = random.Random(0).randint(2, STEPS - 2)
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
    assert stopped.returncode == 130
    stderr = stopped.stderr.read()
    assert "Traceback" not in stderr  # one line, with the command that resumes
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted (stopped by signal {int(signal.SIGTERM)}; checkpoint saved, re-run to resume); resume with: "
        + shlex.join(train_command(tmp_path))
    )
    rundir = only_run(tmp_path)
    summary = rundir.read_summary()
    assert summary["status"] == "interrupted"
    assert rundir.latest_checkpoint() == rundir.checkpoint_path(summary["step"])  # saved where it stopped
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    commands = [line for line in (rundir.path / "train.log").read_text().splitlines() if "] - command: " in line]
    assert [line.split("] - command: ")[1] for line in commands] == [shlex.join(train_command(tmp_path))] * 2
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
    which it rewrites on every invocation, nor logs and the report, nor the lock file, which taking the
    lock opens and some filelock versions truncate)."""
    return [
        p
        for rundir in find_run_dirs(runs)
        for p in rundir.path.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != "run.lock"
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
    again = subprocess.run(train_command(tmp_path, *sweep, NO_REPORT, multirun=True), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("nothing to do") + again.stderr.count("nothing to do") == 3
    assert {p: p.stat().st_mtime_ns for p in run_files(tmp_path)} == files_before

    retried = subprocess.run(
        train_command(tmp_path, *sweep, "sweep.retry_failed=true", NO_REPORT, multirun=True),
        capture_output=True,
        text=True,
    )
    assert retried.returncode == 0, retried.stderr[-2000:]
    after = sweep_summaries(tmp_path)
    assert after[0.5] == summaries[0.5] and after[0.4] == summaries[0.4]  # completed runs untouched
    assert after[1e30]["status"] == "diverged" and after[1e30]["started_at"] != summaries[1e30]["started_at"]
    # The start-over kept the first attempt, and the report reads only the current one.
    (retried_run,) = [r for r in find_run_dirs(tmp_path) if r.read_config()["optim"]["adamw"]["scalar_lr"] == 1e30]
    first_attempt = RunDir(retried_run.path / "attempts" / "1")
    assert first_attempt.read_summary() == summaries[1e30] and first_attempt.read_metrics()
    assert len(find_run_dirs(tmp_path)) == 3

    # A default changes after the sweep: every job is refused in one line, each run's record stays byte for byte.
    for rundir in find_run_dirs(tmp_path):
        config = rundir.read_config()
        config["optim"]["muon"]["beta2"] = 0.9
        rundir.write_config(config)
    record = {p: p.read_bytes() for p in run_files(tmp_path)}
    changed = subprocess.run(train_command(tmp_path, *sweep, NO_REPORT, multirun=True), capture_output=True, text=True)
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert changed.stderr.count("holds a run with a different config (optim.muon.beta2)") == 3, changed.stderr[-3000:]
    assert {p: p.read_bytes() for p in run_files(tmp_path)} == record


def test_rerunning_with_a_changed_config_is_refused(tmp_path, reference, reference_root):
    """The run directory is the run's identity: a different config there is an error naming the keys."""
    rundir = copy_of_reference(reference, reference_root, tmp_path, status="completed")
    config = rundir.read_config()
    config["optim"]["muon"]["beta2"] = 0.9  # as if a default had changed since the run
    rundir.write_config(config)
    refused = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {rundir.path} holds a run with a different config (optim.muon.beta2); use another name=..., "
        "or train.resume=force to continue anyway, or train.resume=never to restart"
    )


# run integrity (issue 15): checkpoints that cannot run code, corruption, full disks, one writer ------------------
@pytest.fixture(scope="module")
def reference_root(reference):
    """The runs folder the reference run lives in (copies of it keep the same relative path)."""
    return reference.path.parent.parent


def copy_of_reference(reference, reference_root, tmp_path, status: str | None = "interrupted") -> RunDir:
    """The reference run copied to where the same command run in `tmp_path` finds it, marked as
    stopped before the end (so re-running resumes instead of skipping)."""
    target = tmp_path / reference.path.relative_to(reference_root)
    shutil.copytree(reference.path, target)
    rundir = RunDir(target)
    if status is None:
        rundir.summary_path.unlink()
    else:
        rundir.write_summary({**rundir.read_summary(), "status": status})
    return rundir


def snapshot(rundir: RunDir) -> dict:
    """The run's record by content: every file but Hydra's .hydra/ and the job's log, which every
    invocation rewrites, and the lock file (taking the lock opens it)."""
    return {
        p.relative_to(rundir.path): p.read_bytes()
        for p in rundir.path.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != "run.lock"
    }


def rewrite_manifest(rundir: RunDir, checkpoint) -> None:
    """What a careful forger does: make the manifest match the altered files."""
    from harness.results.rundir import file_entry

    manifest_path = rundir.manifest_path(checkpoint)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = [file_entry(checkpoint.parent / f["name"]) for f in manifest["files"]]
    manifest_path.write_text(json.dumps(manifest))


class Payload:
    """Unpickling this runs `code`: what a malicious checkpoint would carry."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def test_a_pickled_payload_in_a_checkpoint_is_not_executed_by_resume_or_evaluate(tmp_path, reference, reference_root):
    marker = tmp_path / "payload_ran"
    rundir = copy_of_reference(reference, reference_root, tmp_path / "runs")
    newest = rundir.checkpoint_path(STEPS)
    state = torch.load(newest, weights_only=True)
    state["train_state"]["core"] = Payload(f"open({str(marker)!r}, 'w').close()")
    torch.save(state, newest)
    rewrite_manifest(rundir, newest)
    # The payload is live: a plain torch.load would run it.
    torch.load(newest, weights_only=False)
    assert marker.exists()
    marker.unlink()
    before = snapshot(rundir)

    resumed = subprocess.run(train_command(tmp_path / "runs"), capture_output=True, text=True)
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    last = resumed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint file {newest} holds more than tensors and plain values"), last
    evaluated = subprocess.run(
        [sys.executable, "-m", "harness.evaluate", f"run_dir={rundir.path}", "core=false"],
        capture_output=True,
        text=True,
    )
    assert evaluated.returncode == 1, evaluated.stderr[-2000:]
    assert evaluated.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint file {newest} holds more than")
    assert not marker.exists(), "the checkpoint ran code"
    assert snapshot(rundir) == before


def tensor_data_offset(path, member_suffix: str = "") -> tuple[int, int]:
    """Where the largest tensor's bytes lie in a torch.save zip: (offset, length)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def truncate_main(rundir, checkpoint):
    with open(checkpoint, "r+b") as f:
        f.truncate(checkpoint.stat().st_size // 2)


def truncate_shard(rundir, checkpoint):
    shard = rundir.shard_path(checkpoint, 0)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)


def zero_header(rundir, checkpoint):
    with open(checkpoint, "r+b") as f:
        f.write(bytes(512))


def random_bytes_in_tensor_data(rundir, checkpoint):
    offset, length = tensor_data_offset(checkpoint)
    with open(checkpoint, "r+b") as f:
        f.seek(offset + length // 2)
        f.write(random.Random(0).randbytes(64))


@pytest.mark.parametrize("corrupt", [truncate_main, truncate_shard, zero_header, random_bytes_in_tensor_data])
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_and_ends_bitwise_equal(
    tmp_path, reference, reference_root, corrupt
):
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    newest = rundir.checkpoint_path(STEPS)
    corrupt(rundir, newest)
    resumed = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    warnings = [line for line in resumed.stdout.splitlines() + resumed.stderr.splitlines() if "trying the one" in line]
    assert len(warnings) == 1 and f"checkpoint {newest.parent / newest.stem}: " in warnings[0], warnings
    assert (rundir.checkpoints_dir / "rejected" / newest.name).exists()  # kept for a look, not deleted
    assert rundir.read_summary()["status"] == "completed"
    assert history(rundir) == history(reference)
    expected = final_weights(reference)
    for name, tensor in final_weights(rundir).items():
        assert torch.equal(tensor, expected[name]), name


def test_no_valid_checkpoint_says_so_and_touches_nothing(tmp_path, reference, reference_root):
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    for checkpoint in rundir.list_checkpoints():
        zero_header(rundir, checkpoint)
    before = snapshot(rundir)
    stopped = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert stopped.returncode == 1
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {rundir.checkpoints_dir}: no valid checkpoint (checkpoint ") and last.endswith(
        "the run's files are left as they are"
    ), last
    assert snapshot(rundir) == before


FULL_DISK = """
import errno, os, sys
target, when = sys.argv[1], sys.argv[2].encode()
real_write = os.write

def write(fd, data):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if target in name and when in bytes(data):
        real_write(fd, bytes(data)[: len(data) // 2])  # the disk fills up part-way through the write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(fd, data)

os.write = write
sys.argv = ["harness.train", *sys.argv[3:]]
from harness.train import cli_main
cli_main()
"""


def test_a_full_disk_mid_checkpoint_or_mid_metrics_is_interrupted_and_resumes_to_the_same_run(tmp_path, reference):
    rundir_path = None
    # First the disk fills while checkpoint 12's shard is written (the shard holds the loader state)...
    for target, when in (("step_00000012.rank000.pt", "loader"), ("metrics.jsonl", '"step": 10, "time_s"')):
        full = subprocess.run(
            [sys.executable, "-c", FULL_DISK, target, when, *train_command(tmp_path)[3:]],
            capture_output=True,
            text=True,
        )
        assert full.returncode == 1, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert "Traceback" not in full.stderr
        assert last.startswith("error: ") and "the disk is full: [Errno 28] No space left on device" in last, last
        assert target in last and last.endswith("interrupted, re-run the same command to resume"), last
        rundir = only_run(tmp_path)
        rundir_path = rundir.path
        assert rundir.read_summary()["status"] == "interrupted"
        leftovers = [p.name for p in rundir.path.rglob("*") if p.name.endswith(".tmp") or "step_00000012" in p.name]
        assert leftovers == []
        assert rundir.latest_checkpoint() == rundir.checkpoint_path(8)
        assert rundir.verify_checkpoint(rundir.checkpoint_path(8)) is None
        rundir.read_metrics()  # no torn line left behind
        # ...then, resumed from 8, while step 10's train record is appended; then space returns.
    resumed = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rundir = RunDir(rundir_path)
    assert rundir.read_summary()["status"] == "completed"
    assert history(rundir) == history(reference)


def test_a_second_process_on_a_held_run_names_the_holder_and_writes_nothing(tmp_path, reference, reference_root):
    from harness.run.lock import RunLock

    rundir = copy_of_reference(reference, reference_root, tmp_path)
    lock = RunLock(rundir, "trained")
    lock.acquire()
    try:
        before = snapshot(rundir)
        second = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
        after = snapshot(rundir)
    finally:
        lock.release()
    assert second.returncode == 0, second.stderr[-2000:]
    holder = json.loads(before[Path("run.lock.json")])
    lines = [line for line in (second.stdout + second.stderr).splitlines() if "leaving the run to it" in line]
    assert len(lines) == 1, second.stderr[-2000:]
    assert lines[0].endswith(
        f"{rundir.path}: trained by host {socket.gethostname()} pid {os.getpid()} since {holder['since']}; "
        "leaving the run to it"
    )
    assert after == before


def test_two_identical_sweeps_launched_together_train_each_run_once(tmp_path):
    sweep = ["rope=slice", "mlp_lr=c_fc_2x,none", "seed=0,1", "train.num_iterations=8", "eval.val_every=4"]
    command = train_command(tmp_path, *sweep, NO_REPORT, multirun=True)
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    runs = find_run_dirs(tmp_path)
    assert len(runs) == 4
    for rundir in runs:
        assert rundir.read_summary()["status"] == "completed"
        steps = [r["step"] for r in rundir.read_metrics() if "train_loss" in r]
        assert steps == list(range(1, 9)), (rundir.path, steps)  # each step recorded once
    trained = [sum("training from step 0" in line or "a new run" in line for line in o.splitlines()) for o in outputs]
    assert sum(trained) == 4, trained


def test_deleting_the_summary_of_a_completed_run_adds_no_records_and_a_torn_line_is_reported(
    tmp_path, reference, reference_root
):
    rundir = copy_of_reference(reference, reference_root, tmp_path, status=None)
    lines = rundir.metrics_path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:10] + "\n"  # a torn line in the middle (a disk that lost part of a write)
    rundir.metrics_path.write_text("".join(lines))
    rerun = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rundir.read_summary()["status"] == "completed"
    warned = [line for line in (rerun.stdout + rerun.stderr).splitlines() if "unreadable (dropped)" in line]
    assert len(warned) == 1 and "0 are missing and 1 unreadable" in warned[0], warned
    expected = history(reference)
    assert history(rundir) == expected[:2] + expected[3:]


# run integrity, second pass (issue 26) ------------------------------------------------------------------------------
def run_with_hook(hook: str, command: list[str]) -> subprocess.CompletedProcess:
    """`command` (a harness.train command line) run in a process that first executes `hook`."""
    script = f"import sys\n{hook}\nsys.argv = {command[2:]!r}\nfrom harness.train import cli_main\ncli_main()"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


# Killed the moment a start-over moves summary.json into attempts/<n>/: part of the attempt has moved.
KILL_MID_START_OVER = """
import os, signal
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if str(src).endswith("summary.json") and "attempts" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
"""


def test_a_start_over_killed_part_way_is_finished_and_nothing_is_lost(tmp_path, reference, reference_root):
    rundir = copy_of_reference(reference, reference_root, tmp_path, status="completed")
    before = snapshot(rundir)
    killed = run_with_hook(KILL_MID_START_OVER, train_command(tmp_path, "train.resume=never"))
    assert killed.returncode == -signal.SIGKILL
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    attempt = rundir.path / "attempts" / "1"
    kept = {Path(name): (attempt / name).read_bytes() for name in map(str, before) if (attempt / name).is_file()}
    assert kept == {name: data for name, data in before.items() if name.parts[0] != "attempts"}
    assert not (attempt / ".moving").exists()
    assert rundir.read_summary()["status"] == "completed"  # the new attempt trained from step 0
    assert history(rundir) == history(reference)


def test_a_run_dir_without_its_config_is_refused_and_untouched(tmp_path, reference, reference_root):
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    rundir.config_path.unlink()
    before = snapshot(rundir)
    refused = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {rundir.path} holds params.tsv, metrics.jsonl")
    assert "no config.yaml" in refused.stderr and "Traceback" not in refused.stderr
    assert snapshot(rundir) == before


def test_a_refused_resume_leaves_the_run_as_it_was_and_resumes_once_fixed(tmp_path, reference, reference_root):
    """A checkpoint trained with another tokenizer is refused after the run dir is claimed: the
    run's summary stays as it was (not `failed`), so the re-run after the fix resumes."""
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    newest = rundir.checkpoint_path(STEPS)
    original = {p: p.read_bytes() for p in (newest, rundir.manifest_path(newest))}
    state = torch.load(newest, weights_only=True)
    torch.save({**state, "tokenizer": "another-tokenizer"}, newest)
    rewrite_manifest(rundir, newest)
    before = rundir.read_summary()
    refused = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert refused.returncode == 2
    assert "was trained with tokenizer another-tokenizer" in refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.stderr
    assert rundir.read_summary() == before
    for path, data in original.items():  # the cause fixed
        path.write_bytes(data)
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    assert rundir.read_summary()["status"] == "completed"
    assert history(rundir) == history(reference)


def test_resume_force_across_a_shape_change_is_refused_touching_nothing(tmp_path, reference, reference_root):
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    before = snapshot(rundir)
    # A shape-changing default, as the run's folder sees it: its own directory, another depth.
    command = train_command(tmp_path, "model.depth=2", "train.resume=force", f"hydra.run.dir='{rundir.path}'")
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint {rundir.checkpoint_path(STEPS)} does not fit the config's model"), line
    assert "Traceback" not in refused.stderr
    assert snapshot(rundir) == before


def text_folder(path: Path, seed: int) -> Path:
    """A data=local folder of 40 short documents drawn from a small vocabulary."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "light", "north", "paper", "green", "quiet"]
    path.mkdir(parents=True)
    for i in range(40):
        (path / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)))
    return path


def local_command(tmp_path, data_path, *extra, multirun=False):
    return [
        sys.executable,
        "-m",
        "harness.train",
        *(["-m"] if multirun else []),
        "experiment=smoke",
        "data=local",
        f"data.path={data_path}",
        "data.val_fraction=0.25",
        "train.num_iterations=4",
        "eval.val_every=4",
        "eval.val_tokens=2048",
        f"paths.runs_dir={tmp_path}/runs",
        f"paths.data_dir={tmp_path}/cache",
        *extra,
    ]


def test_a_run_knows_its_data_and_is_not_skipped_or_resumed_for_other_data(tmp_path):
    first, second = text_folder(tmp_path / "A", 0), text_folder(tmp_path / "B", 1)
    subprocess.run(local_command(tmp_path, first), check=True, capture_output=True)
    rundir = only_run(tmp_path / "runs")
    fingerprint = rundir.read_summary()["data_fingerprint"]
    before = snapshot(rundir)
    refused = subprocess.run(local_command(tmp_path, second), capture_output=True, text=True)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {rundir.path} was trained on other data (fingerprint {fingerprint}"), line
    assert line.endswith("give this data its own run with name=...")
    assert snapshot(rundir) == before
    # A run recorded before fingerprints existed: unknown, not different; resuming records it.
    summary = rundir.read_summary()
    del summary["data_fingerprint"]
    rundir.write_summary({**summary, "status": "interrupted"})
    subprocess.run(local_command(tmp_path, first), check=True, capture_output=True)
    assert rundir.read_summary()["data_fingerprint"] == fingerprint
    assert rundir.read_summary()["status"] == "completed"


def test_a_sweep_whose_jobs_share_one_folder_is_refused_before_any_run(tmp_path):
    first, second = text_folder(tmp_path / "A", 0), text_folder(tmp_path / "B", 1)
    command = local_command(tmp_path, f"{first},{second}", "hydra.sweeper.params={}", multirun=True)
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: jobs 1 and 2 of the sweep map to one run folder: they differ only in data.path, kept out of "
        "folder names; sweep it in separate commands, each with its own name=..."
    )
    assert not (tmp_path / "runs").exists()


def test_checkpoints_from_before_manifests_are_verified_by_loading_and_resume(tmp_path, reference, reference_root):
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    for checkpoint in rundir.list_checkpoints():
        rundir.manifest_path(checkpoint).unlink()  # as the release before manifests wrote them
    evaluated = subprocess.run(
        [sys.executable, "-m", "harness.evaluate", f"run_dir={rundir.path}", "core=false"],
        capture_output=True,
        text=True,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert rundir.read_summary()["evaluations"][-1]["checkpoint"] == rundir.checkpoint_path(STEPS).name
    # A shard that does not load is still refused: the one before is used.
    newest = rundir.checkpoint_path(STEPS)
    RunDir.shard_path(newest, 0).write_bytes(b"\0" * 64)
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    assert rundir.read_summary()["status"] == "completed"
    assert history(rundir) == history(reference)
    assert (rundir.checkpoints_dir / "rejected" / newest.name).exists()


def test_a_loader_state_of_another_version_says_resuming_is_impossible_by_design(tmp_path, reference, reference_root):
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    for checkpoint in rundir.list_checkpoints():
        shard_path = RunDir.shard_path(checkpoint, 0)
        shard = torch.load(shard_path, weights_only=True)
        torch.save({**shard, "loader": {**shard["loader"], "version": 1}}, shard_path)
        rewrite_manifest(rundir, checkpoint)
    before = snapshot(rundir)
    refused = subprocess.run(train_command(tmp_path), capture_output=True, text=True)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert "data loader state is version 1" in line and "cannot be resumed by design" in line, line
    assert "Traceback" not in refused.stderr
    assert snapshot(rundir) == {**before, **{p: d for p, d in snapshot(rundir).items() if p.name == "params.tsv"}}
    assert rundir.read_summary()["status"] == "interrupted"


def test_a_run_resumed_under_other_library_versions_keeps_the_earlier_ones(tmp_path, reference, reference_root):
    rundir = copy_of_reference(reference, reference_root, tmp_path)
    summary = rundir.read_summary()
    earlier = {**summary["versions"], "torch": "2.0.0"}
    rundir.write_summary({**summary, "versions": earlier, "evaluations": [{"step": 12, "val_bpb": 3.0}]})
    subprocess.run(train_command(tmp_path), check=True, capture_output=True)
    resumed = rundir.read_summary()
    assert resumed["status"] == "completed"
    assert resumed["versions"]["torch"] == torch.__version__
    assert resumed["earlier_versions"] == [earlier]
    assert resumed["evaluations"] == [{"step": 12, "val_bpb": 3.0}]
