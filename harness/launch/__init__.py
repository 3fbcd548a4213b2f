"""How a run's processes are started. The training loop never knows: it reads its rank and world
size from the environment (harness.distributed), and the launcher arranges that environment.

    launcher=local           the run in the Hydra job's own process (one CPU or GPU); also what each
                             worker of a hand-started `torchrun -m harness.train` uses
    launcher=torchrun        each run as launcher.nproc_per_node processes on this node, started by
                             torch's elastic launch API with a standalone rendezvous (torchrun's own
                             engine, called from the Hydra job, so a sweep runs its jobs in turn)
    launcher=slurm           hydra-submitit-launcher: each run is a SLURM job of launcher.nodes x
                             launcher.nproc_per_node tasks, one per GPU; ranks and the rendezvous come
                             from SLURM through submitit; the time-limit signal checkpoints and requeues
    launcher=submitit_local  the SLURM path on this machine (submitit's local executor), to try it out

The world size a launcher will start is known before any process starts (`launcher_world_size`),
so the preflight checks the batch arithmetic for it.
"""

from __future__ import annotations

import logging
import shutil

from omegaconf import DictConfig

from harness.distributed import has_rank_env
from harness.errors import ConfigError

LAUNCHER_KINDS = ("local", "torchrun", "slurm", "submitit_local")
# Launchers that start the run's processes through submitit (SLURM or its local stand-in).
SUBMITIT_KINDS = ("slurm", "submitit_local")


def launcher_world_size(cfg: DictConfig, submitting: bool = True) -> int | None:
    """The number of ranks the configured launcher starts for each run, after checking the launcher
    section; None when the ranks come from this process's environment instead (launcher=local, or a
    process that torchrun or submitit already started). `submitting`: this process is about to
    launch the runs (the training preflight), so the launcher must be usable here; False for sizing
    them only (`harness.plan` on a laptop plans a SLURM sweep)."""
    launcher = cfg.launcher
    kind = launcher.get("kind")
    if kind not in LAUNCHER_KINDS:
        raise ConfigError(f"launcher.kind={kind!r} is not one of: {', '.join(LAUNCHER_KINDS)}")
    nodes, nproc = launcher.get("nodes", 1), launcher.get("nproc_per_node", 1)
    for key, value in (("launcher.nodes", nodes), ("launcher.nproc_per_node", nproc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if kind == "local" and nodes * nproc > 1:
        raise ConfigError(
            f"launcher.nodes={nodes} x launcher.nproc_per_node={nproc} needs a launcher that starts processes: "
            "launcher=torchrun (one node) or launcher=slurm"
        )
    if kind == "torchrun":
        from harness.launch.torchrun import START_METHODS

        if nodes != 1:
            raise ConfigError(f"launcher.nodes={nodes}: launcher=torchrun runs on one node; use launcher=slurm")
        method = launcher.get("start_method", "spawn")
        if method not in START_METHODS:
            raise ConfigError(f"launcher.start_method={method!r} is not one of: {', '.join(START_METHODS)}")
    if kind == "local" or has_rank_env():
        return None
    if kind == "slurm" and submitting:
        check_slurm_client()
    if kind == "torchrun":
        check_local_devices(cfg, nproc)
    return nodes * nproc


def slurm_client() -> str | None:
    """Where sbatch is, or None where SLURM is not installed."""
    return shutil.which("sbatch")


def check_slurm_client() -> None:
    """launcher=slurm submits with sbatch: without it, hydra-submitit-launcher would fail after making
    the sweep folder, with a traceback. A task already inside a SLURM job is not submitting."""
    from harness.launch.slurm import in_submitit_task

    if slurm_client() is None and not in_submitit_task():
        raise ConfigError(
            "launcher=slurm submits every run with sbatch, which is not on this machine's PATH (no SLURM here); "
            "run the command on a SLURM login node, or try the SLURM path on this machine with launcher=submitit_local"
        )


def check_local_devices(cfg: DictConfig, nproc: int) -> None:
    """On CUDA each rank needs its own GPU on this node (gloo on CPU takes any number of processes)."""
    import torch

    from harness.hardware import resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise ConfigError(
            f"launcher.nproc_per_node={nproc} but this node has {torch.cuda.device_count()} CUDA devices; "
            "lower launcher.nproc_per_node"
        )


def quiet_other_ranks(rank: int) -> None:
    """Only rank 0 writes the job's log: every other rank drops the log file (Hydra gives each one a
    handler on the same file) and prints warnings and errors only."""
    if rank == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)
