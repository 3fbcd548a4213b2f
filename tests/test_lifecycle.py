"""harness.run (lock, decision, checkpoints) and the run directory's checkpoint files, without training: the manifest
catches what a disk does to a file, one lock holder ever (a stale label never breaks a held lock), a
cut of metrics.jsonl counts what it drops, a start-over keeps the previous attempt, shared caches follow the umask."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch

from harness.data.cache import build_once
from harness.results.rundir import CheckpointRefused, RunDir, find_run_dirs
from harness.run.checkpoint import newest_valid_checkpoint
from harness.run.decision import archive_attempt, decide
from harness.run.lock import RunBusy, RunLock


def checkpointed_run(tmp_path, steps=(4, 8)) -> RunDir:
    rundir = RunDir(tmp_path / "run")
    rundir.write_config({"seed": 0})
    for step in steps:
        shard = rundir.save_checkpoint_shard(step, 0, {"optimizer": torch.full((1000,), float(step))})
        rundir.save_checkpoint(step, {"step": step, "model": torch.arange(1000.0) * step}, keep_last=3, shards=[shard])
    rundir.write_summary({"status": "interrupted"})
    return rundir


def test_a_whole_checkpoint_verifies_and_each_kind_of_damage_is_named(tmp_path):
    rundir = checkpointed_run(tmp_path)
    newest = rundir.checkpoint_path(8)
    assert rundir.verify_checkpoint(newest) is None
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) - 10])
    assert rundir.verify_checkpoint(newest) == f"{newest.name} is truncated ({len(data) - 10} of {len(data)} bytes)"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # one bit
    newest.write_bytes(bytes(flipped))
    assert "fails its checksum" in rundir.verify_checkpoint(newest)
    newest.write_bytes(data)
    rundir.shard_path(newest, 0).unlink()
    assert rundir.verify_checkpoint(newest) == f"{rundir.shard_path(newest, 0).name} is missing"
    found, problems = newest_valid_checkpoint(rundir)
    assert found == rundir.checkpoint_path(4) and len(problems) == 1


def test_a_main_file_without_its_manifest_did_not_finish(tmp_path):
    rundir = checkpointed_run(tmp_path)
    rundir.manifest_path(rundir.checkpoint_path(8)).unlink()
    assert "did not finish" in rundir.verify_checkpoint(rundir.checkpoint_path(8))
    assert rundir.latest_checkpoint() == rundir.checkpoint_path(4)


def test_a_checkpoint_with_other_objects_is_refused_naming_the_file(tmp_path):
    rundir = RunDir(tmp_path)
    rundir.save_checkpoint(4, {"step": 4, "when": socket.socket}, keep_last=2)  # a class: not weights-only
    with pytest.raises(CheckpointRefused, match=f"^checkpoint file {rundir.checkpoint_path(4)} holds more than"):
        RunDir.load_checkpoint(rundir.checkpoint_path(4))


def test_decide_resumes_from_the_newest_valid_checkpoint_and_stops_when_none_is(tmp_path):
    from harness.errors import RunStopped

    rundir = checkpointed_run(tmp_path)
    rundir.checkpoint_path(8).write_bytes(b"\0" * 100)
    start = decide(rundir, {"seed": 0}, "auto", False, set())
    assert (start.action, start.checkpoint) == ("resume", str(rundir.checkpoint_path(4)))
    rundir.checkpoint_path(4).write_bytes(b"\0" * 100)
    with pytest.raises(RunStopped, match="no valid checkpoint"):
        decide(rundir, {"seed": 0}, "auto", False, set())


def test_a_start_over_moves_the_previous_attempt_and_the_report_does_not_count_it(tmp_path):
    rundir = checkpointed_run(tmp_path)
    rundir.append_metrics({"step": 1, "train_loss": 5.0})
    assert archive_attempt(rundir) == 1
    assert not rundir.metrics_path.exists() and not rundir.checkpoints_dir.exists()
    attempt = rundir.path / "attempts" / "1"
    assert (attempt / "metrics.jsonl").exists() and (attempt / "checkpoints").is_dir()
    rundir.write_config({"seed": 0})
    assert [r.path for r in find_run_dirs(tmp_path)] == [rundir.path]
    assert archive_attempt(rundir) == 2


def test_truncating_metrics_counts_what_is_missing_or_unreadable(tmp_path):
    rundir = RunDir(tmp_path)
    for step in range(1, 6):
        rundir.append_metrics({"step": step})
    lines = rundir.metrics_path.read_text().splitlines(keepends=True)
    lines[1] = '{"step": 2, "tra\n'
    rundir.metrics_path.write_text("".join(lines))
    assert rundir.truncate_metrics(4) == (0, 1)
    assert [r["step"] for r in rundir.read_metrics()] == [1, 3, 4]
    assert rundir.truncate_metrics(5) == (2, 0)  # the checkpoint counted 5, the file holds 3


def test_a_failed_metrics_append_leaves_no_partial_line(tmp_path, monkeypatch):
    import errno

    rundir = RunDir(tmp_path)
    rundir.append_metrics({"step": 1})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data)[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match=str(rundir.metrics_path)):
        rundir.append_metrics({"step": 2})
    monkeypatch.setattr(os, "write", real_write)
    assert rundir.metrics_path.read_text() == '{"step": 1}\n'


def test_the_lock_names_its_holder_and_one_whose_process_is_gone_is_taken_over(tmp_path):
    rundir = RunDir(tmp_path)
    held = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from harness.run.lock import RunLock; from harness.results.rundir import RunDir\n"
            "lock = RunLock(RunDir(sys.argv[1]), 'trained'); lock.acquire(); print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=f"trained by host {socket.gethostname()} pid {held.pid} since "):
            RunLock(rundir, "evaluated").acquire()
    finally:
        held.kill()
        held.wait()
    # Killed: the kernel released its OS lock; its holder file is left and names a dead pid.
    assert json.loads((tmp_path / "run.lock.json").read_text())["pid"] == held.pid
    lock = RunLock(rundir, "trained")
    lock.acquire()
    assert json.loads((tmp_path / "run.lock.json").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock.json").exists()


# A lock contender for the race below: it takes part in one trial per `go.<n>` file, with a delay
# injected between taking the OS lock and writing its label (the window a stale label used to open).
CONTENDER = """
import os, sys, time
from pathlib import Path
import harness.run.lock as lock_module
from harness.results.rundir import RunDir

root, trials, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
write_label = lock_module.atomic_write_json
def slow_label(path, obj):
    time.sleep(delay)
    write_label(path, obj)
lock_module.atomic_write_json = slow_label
for trial in range(trials):
    while not (root / f"go.{trial}").exists():
        time.sleep(0.001)
    lock = lock_module.RunLock(RunDir(root / f"run{trial}"), "trained")
    try:
        lock.acquire()
    except lock_module.RunBusy:
        pass
    else:
        try:  # a second holder finds the marker of the first
            os.close(os.open(root / f"run{trial}" / "holding", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            (root / f"double.{trial}.{os.getpid()}").touch()
        time.sleep(delay)
        (root / f"run{trial}" / "holding").unlink(missing_ok=True)
        lock.release()
    (root / f"done.{trial}.{os.getpid()}").touch()
"""


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_stale_label_never_makes_two_holders(tmp_path):
    """Three processes start together on a run whose label names a dead pid (what every killed run
    leaves); the one that takes the OS lock is slow to name itself. Exactly one holds the lock."""
    trials, contenders = 30, 3
    stale = json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "since": "earlier", "purpose": "trained"})
    for trial in range(trials):
        (tmp_path / f"run{trial}").mkdir()
        (tmp_path / f"run{trial}" / "run.lock").touch()
        (tmp_path / f"run{trial}" / "run.lock.json").write_text(stale)
    processes = [
        subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path), str(trials), "0.05"])
        for _ in range(contenders)
    ]
    try:
        for trial in range(trials):
            (tmp_path / f"go.{trial}").touch()
            while len(list(tmp_path.glob(f"done.{trial}.*"))) < contenders:
                assert all(p.poll() in (None, 0) for p in processes), "a contender crashed"
                time.sleep(0.005)
    finally:
        for p in processes:
            p.wait(timeout=600)
    assert [p.returncode for p in processes] == [0] * contenders
    assert sorted(p.name for p in tmp_path.glob("double.*")) == []
    assert all((tmp_path / f"run{trial}" / "run.lock").exists() for trial in range(trials))


def test_a_held_lock_with_a_stale_label_is_busy_and_a_forked_child_does_not_keep_it(tmp_path):
    """The kernel decides: a lock held under a label naming a dead pid is busy, never broken; and
    a child forked by the holder (a data loader worker) does not keep the lock after the holder exits."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; from harness.run.lock import RunLock; from harness.results.rundir import RunDir\n"
            "lock = RunLock(RunDir(sys.argv[1]), 'trained'); lock.acquire()\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    time.sleep(120); os._exit(0)\n"
            "print(child, flush=True); sys.stdin.readline(); os._exit(0)",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(holder.stdout.readline())
    try:
        (tmp_path / "run.lock.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
        with pytest.raises(RunBusy, match="has not named itself yet"):
            RunLock(RunDir(tmp_path), "evaluated").acquire()
        holder.stdin.write("exit\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
        lock = RunLock(RunDir(tmp_path), "trained")
        lock.acquire()  # the forked child still runs, but holds nothing
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_cache_entries_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        final = build_once(tmp_path / "entry", lambda tmp: (tmp / "file").write_text("x"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(final.stat().st_mode) == 0o755  # mkdtemp alone makes 0700: a teammate could not read it
