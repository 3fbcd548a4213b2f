"""launcher=torchrun: one run as N processes on this node, started by torch's elastic launch API.

This is `torchrun --standalone --nproc_per_node=N` called from inside the Hydra job, so a sweep with
Hydra's basic launcher runs its jobs one after another, each an N-process job in its own run
directory. Torch's agent starts the workers, gives them RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, a
c10d rendezvous on a free port, stops them all when one fails, and forwards SIGINT/SIGTERM to them
(they checkpoint and stop; see `shutdown_timeout_s`). Each worker calls `run_training`.

The outcome of a job: rank 0's summary when it finishes; otherwise the root cause (the first worker
to fail) is written into the run's summary as a failed run and raised, so a sweep records it and
goes on; a ConfigError in a worker comes back as a ConfigError; a signal to this process stops the
sweep with KeyboardInterrupt, as it does without the launcher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.distributed import dist_info_from_env
from harness.errors import ConfigError, RunStopped
from harness.results.rundir import RunDir
from harness.run.outcome import Summary, read_summary, record_worker_failure, stopped_on_request
from harness.run.session import run_training
from harness.run.spec import resolve_run

log = logging.getLogger("ablate.launch")

# spawn: every worker a fresh interpreter, as torchrun starts them. forkserver: workers forked from one
# server that imported the harness once per sweep (~1 s to start a worker instead of ~5-10 s), for many
# short runs; the server keeps the environment it started with, and it is tested on CPU only.
START_METHODS = ("spawn", "forkserver")
# torch._dynamo: imported on first use by the model's meta-device init; once here, not in every worker.
FORKSERVER_PRELOAD = ["harness.launch.torchrun", "harness.run.session", "torch._dynamo"]
# What Hydra's default job logging writes, so the workers' lines read like the rest of the log.
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class WorkerFailed(RuntimeError):
    """A worker of a launcher=torchrun run failed; the message is the root cause."""


def run_on_workers(cfg: DictConfig, run_dir: Path, run_name: str) -> dict:
    """Train the run in `run_dir` as launcher.nproc_per_node processes; rank 0's summary."""
    # torch's elastic agent: loaded only when a job uses launcher=torchrun.
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    nproc = int(cfg.launcher.nproc_per_node)
    # Unresolved: the workers resolve ${paths...} and ${oc.env:...} themselves (same environment), so
    # resume still tells which keys only say where files live (harness.identity.location_keys).
    config = OmegaConf.to_container(cfg, resolve=False)
    log.info(f"{run_dir}: starting {nproc} processes")
    try:
        results = elastic_run(
            train_worker,
            (config, str(run_dir), run_name, _job_log_file()),
            nproc,
            start_method=str(cfg.launcher.get("start_method", "spawn")),
            shutdown_timeout_s=int(cfg.launcher.get("shutdown_timeout_s", 30)),
        )
    except ChildFailedError as e:
        raise worker_failure(e, RunDir(run_dir)) from None
    except RuntimeError:
        # The agent itself can fail while a worker is stopped (its poll of a stopped process): if rank 0
        # recorded why the run ended (a silent rank), that is the one line to show.
        summary = read_summary(RunDir(run_dir))
        if summary is not None and summary.status == "interrupted" and summary.get("error"):
            raise RunStopped(f"{run_dir}: {summary.error}; interrupted, re-run the same command to resume") from None
        raise
    except SignalException as e:
        raise KeyboardInterrupt(f"signal {e.sigval}: the workers were asked to checkpoint and stop") from None
    return results[0]


def elastic_run(
    entrypoint: Callable,
    args: tuple,
    nproc_per_node: int,
    start_method: str = "spawn",
    shutdown_timeout_s: int = 30,
) -> dict[int, Any]:
    """`entrypoint(*args)` in `nproc_per_node` new processes on this node, as `torchrun --standalone`
    starts them; returns each local rank's return value. Raises ChildFailedError if any fails."""
    import multiprocessing

    # torch's elastic agent: loaded only when a job uses launcher=torchrun.
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if start_method == "forkserver":
        multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    with (
        tempfile.TemporaryDirectory(prefix="ablate-torchrun-") as error_dir,
        _threads_per_worker(nproc_per_node),
        _signal_handlers_kept(),
    ):
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc_per_node,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",  # torchrun --standalone: the store binds a free port itself
            max_restarts=0,  # a failed run is recorded as failed, not restarted from scratch
            start_method=start_method,
            logs_specs=DefaultLogsSpecs(log_dir=error_dir),  # where workers leave their error files
            shutdown_timeout=shutdown_timeout_s,
        )
        return elastic_launch(config, entrypoint)(*args)


@contextlib.contextmanager
def _threads_per_worker(nproc_per_node: int):
    """torchrun's default: one OpenMP thread per worker unless OMP_NUM_THREADS says otherwise, so N
    workers do not each start a thread per core."""
    if "OMP_NUM_THREADS" in os.environ or nproc_per_node == 1:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


@contextlib.contextmanager
def _signal_handlers_kept():
    """Torch's agent installs its own SIGINT/SIGTERM/SIGHUP/SIGQUIT handlers and leaves them; between
    jobs of a sweep, Ctrl-C should again mean KeyboardInterrupt."""
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    previous = {s: signal.getsignal(s) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _job_log_file() -> str | None:
    """The file Hydra's job logging writes (runs/.../train.log), for rank 0 to append to."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def train_worker(config: dict, run_dir: str, run_name: str, log_file: str | None) -> dict:
    """One rank: torch's agent has set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment."""
    _configure_logging(dist_info_from_env().rank, log_file)
    cfg = OmegaConf.create(config)
    OmegaConf.set_struct(cfg, True)  # as Hydra hands it over: a typo'd key is an error, not None
    return run_training(resolve_run(cfg), Path(run_dir), run_name)


def _configure_logging(rank: int, log_file: str | None) -> None:
    """Rank 0 logs to the console and the job's log file, like the Hydra job; other ranks print only
    warnings and errors."""
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(console)
    if rank != 0:
        root.setLevel(logging.WARNING)
        return
    root.setLevel(logging.INFO)
    if log_file:
        file = logging.FileHandler(log_file)
        file.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(file)


def failure_message(failure) -> str:
    return failure.message["message"] if isinstance(failure.message, dict) else str(failure.message)


def reported_failure(error) -> tuple:
    """The (rank, failure) a failed launch is reported by: a worker's own RunStopped line (a silent
    rank, a full disk) wins over the signal deaths the agent then caused while shutting the other
    ranks down; torch's first failure (by time) may be either, depending on which it saw first."""
    for rank, failure in sorted(error.failures.items()):
        if failure_message(failure).startswith(f"{RunStopped.__name__}: "):
            return rank, failure
    return error.get_first_failure()


def worker_failure(error, rundir: RunDir) -> Exception:
    """What a failed launch means for the run (`error` is torch's ChildFailedError): the exception to
    raise, after recording the root cause in the run's summary when the workers could not."""
    rank, failure = reported_failure(error)
    message = failure_message(failure)
    summary = read_summary(rundir)
    if stopped_on_request(summary):  # stopped by a signal
        return KeyboardInterrupt(f"rank {rank}: {message}")
    config_error = f"{ConfigError.__name__}: "
    if message.startswith(config_error):
        return ConfigError(message[len(config_error) :])
    # A worker killed by a signal, or one failing before rank 0's own summary names the cause.
    record_worker_failure(rundir, summary, rank, message, killed=failure.exitcode < 0)
    if message.startswith(f"{RunStopped.__name__}: "):  # the worker's own line (a silent rank, a full disk)
        return RunStopped(message[len(RunStopped.__name__) + 2 :])
    if (read_summary(rundir) or Summary()).status == "interrupted":  # the machine's fault: one line, resumable
        return RunStopped(f"{rundir.path}: rank {rank}: {message}")
    return WorkerFailed(f"{rundir.path}: rank {rank} failed: {message}")
