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
"""

from __future__ import annotations

import os
import signal

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
