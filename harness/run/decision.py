"""What an invocation does with a run directory, decided from the directory alone, and the writes
that carry the decision out. The one answer to "what happens when I re-run this command?":

| the run directory holds                        | re-running the command                     |
|------------------------------------------------|--------------------------------------------|
| nothing                                        | trains from step 0                         |
| checkpoints, metrics or a summary, no config   | refused in one line, nothing touched       |
| a start-over cut short (attempts/<n>/.moving)  | the move is finished first, then as above  |
| a different config (a changed default, say)    | refused in one line, nothing touched;      |
|                                                | train.resume=force continues anyway        |
| other data (summary's data_fingerprint)        | refused in one line, nothing touched       |
| a completed run                                | nothing to do                              |
| a failed or diverged run                       | nothing to do; sweep.retry_failed=true     |
|                                                | starts over, the old files in attempts/<n>/|
| a running (killed) or interrupted run          | resumes from its newest *valid* checkpoint |
|   ... with no checkpoint written yet           | trains from step 0                         |
|   ... whose checkpoints are all invalid        | says why, stops, touches nothing           |
| anything, with train.resume=never              | starts over, the old files in attempts/<n>/|

A run stopped by its environment (I/O error, full disk, out of memory, a lost rank) is recorded
`interrupted` (harness.run.outcome), so re-running the same command resumes it. `decide` reads
only; `prepare` writes, under the lock, and deletes nothing a run wrote (a start-over moves it to
attempts/<n>/, with a marker written first and the config moved last, so a kill at any point
leaves either the config in place or a marker saying which move to finish). Which config keys
may differ is harness.identity's bookkeeping list.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from harness.distributed import broadcast, dist_info_from_env
from harness.errors import ConfigError, RunStopped
from harness.identity import flatten, is_bookkeeping
from harness.results.rundir import ATTEMPTS_DIR, RunDir
from harness.run.checkpoint import newest_valid_checkpoint, set_aside_rejected
from harness.run.outcome import Summary, write_summary

log = logging.getLogger("ablate.lifecycle")

# What a start-over moves into attempts/<n>/: everything the previous attempt wrote. The config goes
# last: while it is in place, the directory still reads as the run it was.
ATTEMPT_FILES = ("params.tsv", "metrics.jsonl", "summary.json", "checkpoints", "config.yaml")
# Written into attempts/<n>/ before the first file moves and removed after the last: a move cut short
# by a kill is finished by the next invocation (`finish_start_over`) instead of read as a new run.
MOVING_MARKER = ".moving"

Action = Literal["fresh", "resume", "skip"]


@dataclass
class Decision:
    """What this invocation does with the run directory, and why (one line for the log)."""

    action: Action
    reason: str
    checkpoint: str | None = None  # resume: the newest valid checkpoint
    start_over: bool = False  # fresh: keep the previous attempt's files in attempts/<n>/
    rejected: list[str] = field(default_factory=list)  # checkpoints that failed verification
    write_config: bool = True  # false when the saved config already says what the run computes


# the config the run directory holds ---------------------------------------------------------
def config_differences(saved: dict, current: dict, ignored: set[str] = frozenset()) -> list[str]:
    """Flattened keys whose values differ, leaving out bookkeeping keys (harness.identity) and `ignored`."""
    flat_saved, flat_current = flatten(saved), flatten(current)
    keys = sorted(set(flat_saved) | set(flat_current))
    return [k for k in keys if not is_bookkeeping(k) and k not in ignored and flat_saved.get(k) != flat_current.get(k)]


# the decision -------------------------------------------------------------------------------------
def decide(
    rundir: RunDir, config: dict, resume: str, retry_failed: bool, ignored: set[str], data: str | None = None
) -> Decision:
    """The table in the module docstring. Reads only; raises ConfigError (changed config, other
    data: `data` is RunData.fingerprint) or RunStopped (checkpoints but none valid) without touching
    anything."""
    if not rundir.exists():
        found = [name for name in ATTEMPT_FILES if (rundir.path / name).exists()]
        if found:
            raise RunStopped(
                f"{rundir.path} holds {', '.join(found)} but no config.yaml; refusing to touch it "
                "(put the run's config.yaml back, or use another name=...)"
            )
        return Decision("fresh", "a new run")
    if resume == "never":
        return Decision("fresh", "train.resume=never: starting over", start_over=True)
    changed = config_differences(rundir.read_config(), config, ignored)
    if changed and resume != "force":
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        raise ConfigError(
            f"{rundir.path} holds a run with a different config ({shown}); "
            f"use another name=..., or train.resume=force to continue anyway, or train.resume=never to restart"
        )
    check_data(rundir, data)
    status = read_status(rundir)
    if status == "completed":
        return Decision("skip", "already completed; nothing to do")
    if status in ("failed", "diverged"):
        if retry_failed:
            return Decision("fresh", f"was {status}; sweep.retry_failed=true starts it over", start_over=True)
        return Decision(
            "skip",
            f"already {status}; nothing to do (sweep.retry_failed=true starts it over, keeping this attempt)",
        )
    if not rundir.list_checkpoints():
        return Decision("fresh", "no checkpoint was written yet: training from step 0")
    checkpoint, problems = newest_valid_checkpoint(rundir)
    if checkpoint is None:
        raise RunStopped(
            f"{rundir.checkpoints_dir}: no valid checkpoint ({'; '.join(problems)}); "
            "the run's files are left as they are"
        )
    return Decision(
        "resume",
        f"resuming from {checkpoint.name}",
        checkpoint=str(checkpoint),
        rejected=problems,
        write_config=bool(changed),
    )


def check_data(rundir: RunDir, data: str | None) -> None:
    """A run is resumed or skipped only for the data it was trained on. Data locations are kept out
    of folder names (harness.identity), so the same command pointed at another folder finds this
    run; a run recorded before fingerprints existed is unknown, not different."""
    try:
        recorded = (rundir.read_summary() or {}).get("data_fingerprint")
    except (OSError, ValueError):
        return
    if data is not None and isinstance(recorded, str) and recorded != data:
        raise ConfigError(
            f"{rundir.path} was trained on other data (fingerprint {recorded}, the data now gives {data}: "
            "data.* points at another text or tokenizer); give this data its own run with name=..."
        )


def read_status(rundir: RunDir) -> str | None:
    """The summary's status; an unreadable summary (torn by a full disk) counts as none."""
    try:
        return rundir.status()
    except (OSError, ValueError):
        return None


def broadcast_decision(decide_on_main):
    """Rank 0 decides (it alone reads under the lock); every rank gets the decision or its error."""
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


# writing what the decision says ------------------------------------------------------------------
def prepare(rundir: RunDir, decision: Decision, config: dict, running: Summary) -> None:
    """Rank 0, under the lock: put the run directory in the state `decision` describes, then mark
    it running. Nothing a run wrote is deleted: a start-over moves it to attempts/<n>/."""
    if decision.action == "fresh":
        if decision.start_over:
            attempt = archive_attempt(rundir)
            log.info(f"{rundir.path}: the previous attempt's files are in {ATTEMPTS_DIR}/{attempt}/")
        else:
            # Killed before its first checkpoint: what it logged is recomputed identically from step 0.
            rundir.metrics_path.unlink(missing_ok=True)
    elif decision.action == "resume":
        set_aside_rejected(rundir, Path(decision.checkpoint))
    if decision.write_config:
        if decision.action == "resume":  # train.resume=force with a changed config: keep what it was trained with
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            keep = rundir.path / f"config.before-force.{stamp}.yaml"
            os.replace(rundir.config_path, keep)
            log.warning(f"{rundir.path}: train.resume=force; the config it was trained with is kept as {keep.name}")
        rundir.write_config(config)
    write_summary(rundir, running)


def archive_attempt(rundir: RunDir) -> int:
    """Move the previous attempt's files into attempts/<n>/ (n = 1, 2, ...); returns n. The marker
    goes first and the config last, so a kill at any point is finished by `finish_start_over`."""
    attempts = rundir.path / ATTEMPTS_DIR
    numbers = [int(p.name) for p in attempts.iterdir() if p.name.isdigit()] if attempts.is_dir() else []
    target = attempts / str(max(numbers, default=0) + 1)
    target.mkdir(parents=True)
    (target / MOVING_MARKER).touch()
    move_attempt(rundir, target)
    return int(target.name)


def move_attempt(rundir: RunDir, target: Path) -> None:
    for name in ATTEMPT_FILES:
        if (rundir.path / name).exists():
            os.replace(rundir.path / name, target / name)
    (target / MOVING_MARKER).unlink()


def finish_start_over(rundir: RunDir) -> None:
    """Rank 0, under the lock, before `decide`: a start-over killed part-way moved some files into
    attempts/<n>/ and left its marker there; the rest follow, as that invocation meant."""
    for marker in sorted((rundir.path / ATTEMPTS_DIR).glob(f"*/{MOVING_MARKER}")):
        log.warning(f"{rundir.path}: finishing a start-over that was cut short (into {marker.parent})")
        move_attempt(rundir, marker.parent)
