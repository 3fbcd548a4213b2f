"""A run's lifecycle: what happens when a command is run (again) on a run directory.

Training and `harness.evaluate` both go through here; this module is the one answer to "what
happens when I re-run this command?":

1. **One writer.** The process that trains or evaluates a run holds `run.lock` (an OS file lock,
   so the kernel drops it when the process dies) and names itself in `run.lock.json` (host, pid,
   since). A second process on the same run says who holds it, in one line, and moves on: two
   launches of the same sweep split its runs. A lock whose holder is gone never blocks.
2. **The decision** (`decide`), read from the run directory alone, before anything is written:

   | the run directory holds                        | re-running the command                     |
   |------------------------------------------------|--------------------------------------------|
   | nothing                                        | trains from step 0                         |
   | a different config (a changed default, say)    | refused in one line, nothing touched;      |
   |                                                | train.resume=force continues anyway        |
   | a completed run                                | nothing to do                              |
   | a failed or diverged run                       | nothing to do; sweep.retry_failed=true     |
   |                                                | starts over, the old files in attempts/<n>/|
   | a running (killed) or interrupted run          | resumes from its newest *valid* checkpoint |
   |   ... with no checkpoint written yet           | trains from step 0                         |
   |   ... whose checkpoints are all invalid        | says why, stops, touches nothing           |
   | anything, with train.resume=never              | starts over, the old files in attempts/<n>/|

   A run stopped by its environment (I/O error, full disk, out of memory, a lost rank) is
   recorded `interrupted`, so re-running the same command resumes it.
3. **Checkpoints are verified** before use: every file the manifest lists must be there with
   its size and CRC-32. A checkpoint that fails is reported in one line, moved to
   checkpoints/rejected/ (never deleted) and the next older one is tried. Files load with
   `weights_only=True`, so a checkpoint cannot run code; one that needs more is refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.results.rundir import ATTEMPTS_DIR, CheckpointRefused, RunDir, atomic_write_json

log = logging.getLogger("ablate.lifecycle")

# Config keys that may change between invocations of the same run without changing what it computes.
RESUME_IGNORED_PREFIXES = (
    "paths.",
    "train.resume",
    "sweep.",
    "logger.",
    "launcher.",
    "name",
    "optimized_metric",
    "stats.",  # how the report tests (configs/config.yaml's stats), not what the run computes
)
# What a start-over moves into attempts/<n>/: everything the previous attempt wrote.
ATTEMPT_FILES = ("config.yaml", "params.tsv", "metrics.jsonl", "summary.json", "checkpoints")
LOCK_NAME, HOLDER_NAME = "run.lock", "run.lock.json"
REJECTED_DIR = "rejected"


class RunBusy(Exception):
    """Another live process holds the run's lock. Not an error: that process does the work."""


class RunStopped(Exception):
    """The run cannot go on for a reason outside its config (no valid checkpoint, a full disk, a
    refused checkpoint file). One line; re-running the same command resumes once it is fixed."""


# the config the run directory holds ---------------------------------------------------------
def resolved_config(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def location_keys(cfg: DictConfig) -> set[str]:
    """Keys that say where files live, not what a run computes: harness.identity's LOCATION_KEYS and
    whatever else takes its value from paths.* or the environment."""
    from harness.identity import LOCATION_KEYS

    unresolved = _flatten(OmegaConf.to_container(cfg, resolve=False))
    derived = {k for k, v in unresolved.items() if isinstance(v, str) and ("${paths." in v or "${oc.env" in v)}
    return derived | set(LOCATION_KEYS)


def config_differences(saved: dict, current: dict, ignored: set[str] = frozenset()) -> list[str]:
    """Flattened keys whose values differ, leaving out keys that do not change what a run computes."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    keys = sorted(set(flat_saved) | set(flat_current))
    return [
        k
        for k in keys
        if not k.startswith(RESUME_IGNORED_PREFIXES) and k not in ignored and flat_saved.get(k) != flat_current.get(k)
    ]


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# 1. one writer: the run directory's lock ------------------------------------------------------
class RunLock:
    """The exclusive lock on a run directory, held while a process trains or evaluates it."""

    def __init__(self, rundir: RunDir, purpose: str):
        from filelock import FileLock

        self.rundir, self.purpose = rundir, purpose
        self.lock_path, self.holder_path = rundir.path / LOCK_NAME, rundir.path / HOLDER_NAME
        self._lock = FileLock(str(self.lock_path))

    def acquire(self) -> None:
        """Take the lock now or raise RunBusy naming its holder; never waits."""
        from filelock import Timeout

        self.rundir.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            holder = self.holder()
            if not holder_is_gone(holder):
                raise RunBusy(f"{self.rundir.path}: {describe_holder(holder)}; leaving the run to it") from None
            # The OS lock outlived the process that took it (a child inherited the descriptor, or a
            # network filesystem kept it): set that lock file aside and take a fresh one.
            log.warning(f"{self.lock_path}: its holder {describe_holder(holder)} is gone; taking the lock over")
            self.lock_path.unlink(missing_ok=True)
            self._lock.acquire(timeout=0)
        atomic_write_json(
            self.holder_path,
            {"host": socket.gethostname(), "pid": os.getpid(), "since": _now(), "purpose": self.purpose},
        )

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.holder_path.unlink(missing_ok=True)
        self._lock.release()

    def holder(self) -> dict | None:
        try:
            return json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None


def holder_is_gone(holder: dict | None) -> bool:
    """Only a holder on this host can be checked: its pid is no longer a process."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another process holds its lock (it has not named itself yet)"
    return (
        f"{holder.get('purpose', 'used')} by host {holder.get('host')} pid {holder.get('pid')} "
        f"since {holder.get('since')}"
    )


@contextlib.contextmanager
def claimed(rundir: RunDir, purpose: str, is_main: bool = True):
    """Hold the run's lock for the block (rank 0 only: it alone writes the run directory); the
    other ranks learn from rank 0 whether it got it. Raises RunBusy on every rank if not."""
    lock, busy = RunLock(rundir, purpose), None
    if is_main:
        try:
            lock.acquire()
        except RunBusy as e:
            busy = str(e)
    busy = broadcast(busy)
    if busy is not None:
        raise RunBusy(busy)
    try:
        yield lock
    finally:
        if is_main:
            lock.release()


def broadcast(value):
    """Rank 0's value on every rank (a plain value; a single process returns it as is)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# 2. the decision -------------------------------------------------------------------------------
@dataclass
class Start:
    """What this invocation does with the run directory, and why (one line for the log)."""

    action: str  # fresh | resume | skip
    reason: str
    checkpoint: str | None = None  # resume: the newest valid checkpoint
    start_over: bool = False  # fresh: keep the previous attempt's files in attempts/<n>/
    rejected: list[str] = field(default_factory=list)  # checkpoints that failed verification
    write_config: bool = True  # false when the saved config already says what the run computes


def decide(rundir: RunDir, config: dict, resume: str, retry_failed: bool, ignored: set[str]) -> Start:
    """The table in the module docstring. Reads only; raises ConfigError (changed config) or
    RunStopped (checkpoints but none valid) without touching anything."""
    if not rundir.exists():
        return Start("fresh", "a new run")
    if resume == "never":
        return Start("fresh", "train.resume=never: starting over", start_over=True)
    changed = config_differences(rundir.read_config(), config, ignored)
    if changed and resume != "force":
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        raise ConfigError(
            f"{rundir.path} holds a run with a different config ({shown}); "
            f"use another name=..., or train.resume=force to continue anyway, or train.resume=never to restart"
        )
    status = read_status(rundir)
    if status == "completed":
        return Start("skip", "already completed; nothing to do")
    if status in ("failed", "diverged"):
        if retry_failed:
            return Start("fresh", f"was {status}; sweep.retry_failed=true starts it over", start_over=True)
        return Start(
            "skip",
            f"already {status}; nothing to do (sweep.retry_failed=true starts it over, keeping this attempt)",
        )
    if not rundir.list_checkpoints():
        return Start("fresh", "no checkpoint was written yet: training from step 0")
    checkpoint, problems = newest_valid_checkpoint(rundir)
    if checkpoint is None:
        raise RunStopped(
            f"{rundir.checkpoints_dir}: no valid checkpoint ({'; '.join(problems)}); "
            "the run's files are left as they are"
        )
    return Start(
        "resume",
        f"resuming from {checkpoint.name}",
        checkpoint=str(checkpoint),
        rejected=problems,
        write_config=bool(changed),
    )


def read_status(rundir: RunDir) -> str | None:
    """The summary's status; an unreadable summary (torn by a full disk) counts as none."""
    try:
        return rundir.status()
    except (OSError, ValueError):
        return None


# 3. checkpoints --------------------------------------------------------------------------------
def newest_valid_checkpoint(rundir: RunDir) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose files all match its manifest, and one line per newer one that
    does not (logged as it is found)."""
    problems = []
    for checkpoint in reversed(rundir.list_checkpoints()):
        problem = rundir.verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint, problems
        line = f"checkpoint {checkpoint.parent / checkpoint.stem}: {problem}"
        log.warning(line + "; trying the one before")
        problems.append(line)
    return None, problems


def set_aside_rejected(rundir: RunDir, valid: Path) -> None:
    """Move the checkpoints newer than `valid` (they failed verification) to checkpoints/rejected/:
    out of the way of the resumed run's own, and there for a look at what the disk did."""
    rejected = rundir.checkpoints_dir / REJECTED_DIR
    newer = [p for p in rundir.checkpoints_dir.glob("step_*") if p.is_file() and p.name.split(".")[0] > valid.stem]
    for file in newer:
        rejected.mkdir(exist_ok=True)
        os.replace(file, rejected / file.name)


def load_for_resume(checkpoint: Path, rank: int, device: torch.device) -> tuple[dict, dict]:
    """The main file (model, progress: every rank needs it) and this rank's shard, weights-only.
    A refusal on any rank stops every rank, before anything is written."""
    from harness.distributed import any_rank

    main, shard, refused = {}, {}, None
    try:
        main = RunDir.load_checkpoint(checkpoint)
        # A rank past the world size that wrote the checkpoint has no shard: restore re-shards (harness/reshard.py).
        shard = RunDir.load_checkpoint(checkpoint, rank=rank) if rank < main["world_size"] else {}
    except (CheckpointRefused, OSError, RuntimeError) as e:
        refused = str(e) if isinstance(e, CheckpointRefused) else f"checkpoint {checkpoint} cannot be loaded ({e})"
    if any_rank(refused is not None, device):
        raise RunStopped(refused or f"checkpoint {checkpoint}: another rank's shard was refused")
    return main, shard


def checkpoint_for_evaluation(rundir: RunDir) -> Path:
    """The newest valid checkpoint (rank 0 calls this); none is a RunStopped."""
    if not rundir.list_checkpoints():
        raise ConfigError(f"run_dir={rundir.path} has no checkpoint in {rundir.checkpoints_dir}")
    checkpoint, problems = newest_valid_checkpoint(rundir)
    if checkpoint is None:
        raise RunStopped(f"{rundir.checkpoints_dir}: no valid checkpoint to evaluate ({'; '.join(problems)})")
    return checkpoint


# writing what the decision says ------------------------------------------------------------------
def prepare(rundir: RunDir, start: Start, config: dict, running_summary: dict) -> None:
    """Rank 0, under the lock: put the run directory in the state `start` describes, then mark
    it running. Nothing a run wrote is deleted: a start-over moves it to attempts/<n>/."""
    if start.action == "fresh":
        if start.start_over:
            attempt = archive_attempt(rundir)
            log.info(f"{rundir.path}: the previous attempt's files are in {ATTEMPTS_DIR}/{attempt}/")
        else:
            # Killed before its first checkpoint: what it logged is recomputed identically from step 0.
            rundir.metrics_path.unlink(missing_ok=True)
    elif start.action == "resume":
        set_aside_rejected(rundir, Path(start.checkpoint))
    if start.write_config:
        if start.action == "resume":  # train.resume=force with a changed config: keep what it was trained with
            keep = rundir.path / f"config.before-force.{_stamp()}.yaml"
            os.replace(rundir.config_path, keep)
            log.warning(f"{rundir.path}: train.resume=force; the config it was trained with is kept as {keep.name}")
        rundir.write_config(config)
    rundir.write_summary(running_summary)


def archive_attempt(rundir: RunDir) -> int:
    """Move the previous attempt's files into attempts/<n>/ (n = 1, 2, ...); returns n."""
    attempts = rundir.path / ATTEMPTS_DIR
    numbers = [int(p.name) for p in attempts.iterdir() if p.name.isdigit()] if attempts.is_dir() else []
    target = attempts / str(max(numbers, default=0) + 1)
    target.mkdir(parents=True)
    for name in ATTEMPT_FILES:
        if (rundir.path / name).exists():
            os.replace(rundir.path / name, target / name)
    return int(target.name)


def trim_metrics(rundir: RunDir, num_records: int, step: int) -> None:
    """On resume: cut what was logged after the checkpoint; say what is missing before it."""
    missing, unreadable = rundir.truncate_metrics(num_records)
    if missing or unreadable:
        log.warning(
            f"{rundir.metrics_path}: of the {num_records} records logged up to checkpoint step {step}, "
            f"{missing} are missing and {unreadable} unreadable (dropped); the rest are kept"
        )


# how a run ended ------------------------------------------------------------------------------------
def is_environment_fault(error: BaseException) -> bool:
    """Faults of the machine, not of the config or the code: the run is resumable (`interrupted`)."""
    faults: tuple[type[BaseException], ...] = (OSError, MemoryError, RunStopped, torch.cuda.OutOfMemoryError)
    dist_error = getattr(torch.distributed, "DistError", None)  # a lost rank (torch >= 2.2)
    if dist_error is not None:
        faults += (dist_error,)
    return isinstance(error, faults)


def describe_fault(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: {error}"
    return f"{type(error).__name__}: {error}"


def record_config_failure(rundir: RunDir, config: dict, message: str, summary: dict) -> None:
    """In a sweep, a job rejected by its config still gets a run directory the report can show;
    a directory that already holds a run keeps its record exactly as it is."""
    if rundir.exists() or rundir.summary_path.exists():
        return
    with contextlib.suppress(Exception):
        rundir.write_config(config)
    rundir.write_summary({**summary, "status": "failed", "error": f"ConfigError: {message}", "ended_at": _now()})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# the writes of a running run --------------------------------------------------------------------
def broadcast_decision(decide_on_main) -> Start:
    """Rank 0 decides (it alone reads under the lock); every rank gets the decision or its error."""
    from harness.distributed import dist_info_from_env

    outcome = None
    if dist_info_from_env().is_main:
        try:
            outcome = decide_on_main()
        except (ConfigError, RunStopped) as e:
            outcome = e
    outcome = broadcast(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def write_checkpoint(
    rundir: RunDir, step: int, dist_info, device: torch.device, shard: dict, main_state, keep_last: int
):
    """Every rank writes its shard, then rank 0 the main file (`main_state()`) and the manifest,
    whose presence marks the checkpoint complete; returns its path on rank 0. A write that fails
    on any rank (a full disk, an I/O error) removes what this checkpoint wrote and raises the
    OSError on every rank; the previous checkpoint is untouched."""
    from harness.distributed import any_rank

    entry, error, path = None, None, None
    try:
        entry = rundir.save_checkpoint_shard(step, dist_info.rank, shard)
    except OSError as e:
        error = e
    entries = gather_to_main(entry)
    if any_rank(error is not None, device):
        rundir.remove_unfinished_checkpoint(step, dist_info.rank)
        raise error or RunStopped(f"checkpoint step {step}: another rank could not write its shard")
    if dist_info.is_main:
        try:
            path = rundir.save_checkpoint(step, main_state(), keep_last, entries)
        except OSError as e:
            error = e
            for rank in range(dist_info.world_size):
                rundir.remove_unfinished_checkpoint(step, rank)
            rundir.remove_unfinished_checkpoint(step)
    if any_rank(error is not None, device):
        raise error or RunStopped(f"checkpoint step {step}: rank 0 could not write it")
    return path


def gather_to_main(entry: dict | None) -> list[dict] | None:
    """Every rank's shard manifest entry, on rank 0 (None on the others)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [entry] if entry is not None else []
    entries = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(entry, entries, dst=0)
    return [e for e in entries if e is not None] if entries is not None else None


def list_tree(value):
    """random.getstate() as nested lists, and back with tuple_tree: plain containers that every
    torch release's weights-only unpickler takes."""
    return [list_tree(v) for v in value] if isinstance(value, tuple) else value


def tuple_tree(value):
    return tuple(tuple_tree(v) for v in value) if isinstance(value, list) else value
