"""launcher=slurm (and submitit_local): what a run needs inside a submitit task.

hydra-submitit-launcher submits each Hydra job as a SLURM job of launcher.nodes x
launcher.nproc_per_node tasks; every task runs the Hydra job, so every task calls `main`, which
calls `join_submitit_job` before training. submitit knows the task's place in the job from SLURM's
variables (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, the node list); its
`TorchDistributedEnvironment` exports them as torch.distributed expects (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR = the first node, MASTER_PORT derived from the job id).

Time limits and requeue: submitit asks SLURM for `--signal=USR2@signal_delay_s` (the signal is
`requeue_signal()`; SUBMITIT_PREEMPT_SIGNAL changes it) and installs a handler that, on global
rank 0, resubmits the job (the launcher's `checkpoint` returns the same Hydra job), runs
`scontrol requeue` and exits. The training loop takes that signal first: it checkpoints at the next
step boundary, writes status "interrupted", and only then hands the signal to submitit's handler
(harness.train._hand_over_signal), so the requeue never outruns the checkpoint. The requeued job
runs the same Hydra job in the same run directory, which resumes from that checkpoint.
SIGTERM (scancel; preemption on clusters with PreemptMode=REQUEUE, where SLURM requeues the job
itself) also checkpoints and stops; submitit only logs it.

The sweep's side (`WatchSlurmJobs`, a Hydra callback): how the submitting process learns its jobs'
states, on clusters with accounting (sacct, submitit's way) and without (squeue).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.distributed import has_rank_env
from harness.errors import ConfigError
from harness.launch import SUBMITIT_KINDS


def in_submitit_task() -> bool:
    """True inside a task started by submitit (it sets SUBMITIT_FOLDER before running the job). A
    plain process in an interactive SLURM allocation is not one: it is a single process."""
    return "SUBMITIT_FOLDER" in os.environ


def join_submitit_job(cfg: DictConfig) -> None:
    """In a submitit task, export this task's rank, the world size and the rendezvous for
    torch.distributed, after checking the job has the tasks the preflight planned for."""
    if not in_submitit_task() or has_rank_env():
        return
    from submitit.helpers import TorchDistributedEnvironment

    environment = TorchDistributedEnvironment()
    launcher = cfg.launcher
    planned = launcher.get("nodes", 1) * launcher.get("nproc_per_node", 1) if launcher.kind in SUBMITIT_KINDS else 1
    if environment.world_size != planned:
        raise ConfigError(
            f"this submitit job has {environment.world_size} tasks but launcher.kind={launcher.kind} with "
            f"launcher.nodes x launcher.nproc_per_node = {planned}; size SLURM jobs with launcher.nodes and "
            "launcher.nproc_per_node (not hydra.launcher.nodes / tasks_per_node)"
        )
    # Every GPU of the node stays visible: rank r uses cuda:LOCAL_RANK (harness.train.plan_run).
    environment.export(set_cuda_visible_devices=False)


def requeue_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit (and that it requeues on)."""
    from submitit.core.job_environment import JobEnvironment

    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


# The sweep's side: how it learns that its jobs ended ------------------------------------------------
# submitit's watcher asks `sacct` for the state of the sweep's jobs as it polls. On a cluster without
# accounting (AccountingStorageType=accounting_storage/none: a test or lab cluster) sacct only prints
# "Slurm accounting storage is disabled", submitit logs a warning three times over (its two handlers and
# Hydra's) at every poll, and every job stays UNKNOWN: a job cancelled or killed before it wrote its
# result would keep the sweep waiting forever. There the watcher asks `squeue` instead, which knows every
# job until MinJobAge (300 s by default) after it ends, so it polls at least every SQUEUE_POLL_S.
ACCOUNTING_OFF = "accounting_storage/none"
# The start of the warning submitit logs when its state query fails (sacct's, or squeue's here).
STATE_QUERY_ERROR = "Bypassing sacct error"
# Half of SLURM's default MinJobAge: an ended job is seen before the controller forgets it. (submitit
# waits up to 600 s between sacct calls; squeue is what users run by hand, as often.)
SQUEUE_POLL_S = 150


def accounting_is_off() -> bool:
    """Whether this cluster keeps no job accounting (so sacct cannot answer), from `scontrol show config`."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    settings = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in settings.items()}.get("AccountingStorageType") == ACCOUNTING_OFF


def squeue_watcher(delay_s: float = SQUEUE_POLL_S):
    """submitit's SLURM job watcher, reading the job states from squeue rather than sacct."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueInfoWatcher(SlurmInfoWatcher):
        def _make_command(self) -> list[str] | None:
            # As submitit's own: the array's main ids; every task of an array is listed under it.
            to_check = sorted({job_id.split("_")[0] for job_id in self._registered - self._finished})
            if not to_check:
                return None
            # --array: a line per array task, named as submitit names them (5_0); --states=all: ended jobs too
            return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--jobs={','.join(to_check)}"]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            text = string.decode() if isinstance(string, bytes) else string
            return super().read_info("JobID|State\n" + text)  # as sacct --parsable2 prints it

    return SqueueInfoWatcher(delay_s=delay_s)


class FirstStateQueryError(logging.Filter):
    """Lets submitit's "Bypassing sacct error" warning through once per sweep: it repeats at every
    poll while the query fails (the controller restarting, the accounting daemon down)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Call #") or STATE_QUERY_ERROR not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg = f"{record.getMessage()} (this warning is shown once per sweep)"
        record.args = ()
        return True


class WatchSlurmJobs(Callback):
    """Wired in configs/launcher/slurm.yaml: before the sweep submits its jobs, submitit's repeated
    state-query warning is shown once, and on a cluster without accounting the job states come from
    squeue. Nothing in the jobs themselves changes."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from submitit.slurm.slurm import SlurmJob

        submitit_logger = logging.getLogger("submitit")
        for old in [f for f in submitit_logger.filters if isinstance(f, FirstStateQueryError)]:
            submitit_logger.removeFilter(old)
        submitit_logger.addFilter(FirstStateQueryError())
        if accounting_is_off():
            SlurmJob.watcher = squeue_watcher(delay_s=SQUEUE_POLL_S)
