"""Stop signals during training: SIGINT, SIGTERM and the scheduler's time-limit warning ask the loop
to checkpoint and stop at the next step; afterwards the signal goes on to whoever handled it before.

This module owns only the signal handlers; it must not touch the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time

from harness.launch.slurm import requeue_signal

log = logging.getLogger("ablate.train")

# A repeat of a stop signal within this many seconds is the same request: a terminal's Ctrl-C reaches
# torchrun's workers directly and once more through torchrun, which forwards it.
REPEATED_SIGNAL_S = 2.0


@contextlib.contextmanager
def stop_on_signals(trainer):
    """SIGINT, SIGTERM and the scheduler's time-limit warning (submitit's SIGUSR2) ask the loop to
    checkpoint and stop at the next step (`trainer.stop_signal`); the same signal again goes to the
    handler installed before (by default: abort at once)."""

    def request_stop(signum, frame):
        if signum in first_seen:
            if time.monotonic() - first_seen[signum] >= REPEATED_SIGNAL_S:
                signal.signal(signum, previous[signum])
                signal.raise_signal(signum)
            return
        first_seen[signum] = time.monotonic()
        log.warning(f"signal {signum}: checkpointing at the next step boundary (again to abort)")
        trainer.stop_signal = signum

    first_seen: dict[int, float] = {}
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, requeue_signal())}
    for s in previous:
        signal.signal(s, request_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def hand_over_signal(signum: int | None) -> None:
    """After the checkpoint, pass the stop signal to the handler that was installed before the loop,
    if it is someone's (submitit's: on rank 0 it requeues the job and exits). Python's defaults are
    left out: the caller raises KeyboardInterrupt, as a stopped run always does."""
    handler = signal.getsignal(signum) if signum is not None else None
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)
