"""One writer per run directory: the OS file lock `run.lock` and its holder's note `run.lock.json`.

The process that trains or evaluates a run holds `run.lock` (an OS file lock, so the kernel drops
it when the process dies) and names itself in `run.lock.json` (host, pid, since). A second process
on the same run says who holds it, in one line, and moves on: two launches of the same sweep split
its runs. The kernel alone decides who holds the lock: `run.lock` is never deleted (a newcomer that
deleted it on the word of a stale `run.lock.json`, left by a killed run, could take a second lock
while a live process that had just taken the first had not yet named itself), and the lock's
descriptor is not inherited by child processes (closed in forked children, close-on-exec otherwise),
so a lock outlives its holder only as long as that process lives. This module owns only the lock:
it must not read or write anything else in the run directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from datetime import datetime, timezone

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
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise RunBusy naming its holder; never waits."""
        self.rundir.path.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the file is only a handle for the kernel's lock; it is never written or removed.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            if holder_is_gone(holder):
                # Its label is stale (left by a killed run): the live holder has not named itself yet.
                holder = None
            raise RunBusy(f"{self.rundir.path}: {describe_holder(holder)}; leaving the run to it") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD[fd] = self
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(
            self.holder_path,
            {"host": socket.gethostname(), "pid": os.getpid(), "since": since, "purpose": self.purpose},
        )

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.holder_path.unlink(missing_ok=True)
        fd, self._fd = self._fd, None
        _HELD.pop(fd, None)
        os.close(fd)  # closing the last descriptor of the open file releases the kernel's lock

    def holder(self) -> dict | None:
        try:
            return json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None


# The locks this process holds, by descriptor: a forked child (a data loader worker, say) closes
# its copies at once, so the lock is released when the holder itself exits, not when its last
# child does. (exec'd children never see them: the descriptors are close-on-exec.)
_HELD: dict[int, RunLock] = {}


def _close_inherited_locks() -> None:
    for fd, lock in list(_HELD.items()):
        lock._fd = None  # the child holds nothing: its release() must not close a reused descriptor
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


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
