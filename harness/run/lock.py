"""One writer per run directory: the OS file lock `run.lock` and its holder's note `run.lock.json`.

The process that trains or evaluates a run holds `run.lock` (an OS file lock, so the kernel drops
it when the process dies) and names itself in `run.lock.json` (host, pid, since). A second process
on the same run says who holds it, in one line, and moves on: two launches of the same sweep split
its runs. A lock whose holder is gone never blocks. This module owns only the lock: it must not
read or write anything else in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from datetime import datetime, timezone

from filelock import FileLock, Timeout

from harness.distributed import broadcast
from harness.results.rundir import RunDir, atomic_write_json

log = logging.getLogger("ablate.lifecycle")

LOCK_NAME, HOLDER_NAME = "run.lock", "run.lock.json"


class RunBusy(Exception):
    """Another live process holds the run's lock. Not an error: that process does the work."""


class RunLock:
    """The exclusive lock on a run directory, held while a process trains or evaluates it."""

    def __init__(self, rundir: RunDir, purpose: str):
        self.rundir, self.purpose = rundir, purpose
        self.lock_path, self.holder_path = rundir.path / LOCK_NAME, rundir.path / HOLDER_NAME
        self._lock = FileLock(str(self.lock_path))

    def acquire(self) -> None:
        """Take the lock now or raise RunBusy naming its holder; never waits."""
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
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(
            self.holder_path,
            {"host": socket.gethostname(), "pid": os.getpid(), "since": since, "purpose": self.purpose},
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
