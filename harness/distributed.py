"""Process-group facts for data-parallel runs, kept apart so the single-process path stays plain.

Under torchrun (or SLURM through submitit) the environment names this process's rank and the
world size; without it the run is one process, rank 0 of 1, and nothing here touches
torch.distributed. harness.launch arranges that environment.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

# The flat collectives of the sharded optimizer. torch 2.14 renamed them (the old names now warn on
# every call); the releases this project supports before that have only the old names.
reduce_scatter_flat = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
all_gather_flat = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """Rank and world size as torchrun sets them (RANK, LOCAL_RANK, WORLD_SIZE)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def has_rank_env() -> bool:
    """Whether a launcher (torchrun, or submitit in a SLURM job) already gave this process its rank."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def init_process_group(info: DistInfo, device: torch.device, timeout_s: float | None = None) -> None:
    """NCCL on CUDA, gloo on CPU; a no-op for a single process or an existing group. `timeout_s`
    (launcher.timeout_s) bounds how long a collective waits for a silent rank (torch's default: 30
    minutes), after which it raises on the ranks still running (`silent_ranks` names the others)."""
    if not info.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        rank=info.rank,
        world_size=info.world_size,
        device_id=device if device.type == "cuda" else None,
        **({"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}),
    )


# After a collective timed out, how long the ranks still running take to say so in the store (they
# all waited in the same collective, so they time out within moments of each other).
ROLL_CALL_S = 5.0


# How a collective that gave up waiting (launcher.timeout_s) says so, lower-cased. gloo: the operation
# that timed out says "Timed out waiting 30000ms for recv operation"; when it closes the connection, an
# operation waited on next (an async reduce's handle.wait()) says only "Application timeout caused pair
# closure", as it did in about one run in three of tests/test_launch.py's stopped-rank test. NCCL's
# watchdog: "Watchdog caught collective operation timeout".
COLLECTIVE_TIMEOUT_MESSAGES = ("timed out", "application timeout caused pair closure", "collective operation timeout")


def is_collective_timeout(error: BaseException) -> bool:
    """A collective gave up waiting (launcher.timeout_s): gloo and NCCL raise a RuntimeError saying so."""
    message = str(error).lower()
    timed_out = any(text in message for text in COLLECTIVE_TIMEOUT_MESSAGES)
    return dist.is_available() and dist.is_initialized() and timed_out


def silent_ranks() -> list[int]:
    """After a collective timed out: every rank still running answers a roll call in the process
    group's store; those that do not (stopped, hung) are returned. Every running rank calls it."""
    store = dist.distributed_c10d._get_default_store()  # the rendezvous store every rank reaches
    rank, world_size = dist.get_rank(), dist.get_world_size()
    store.set(f"ablate/alive/{rank}", "1")
    deadline = time.monotonic() + ROLL_CALL_S
    while True:
        missing = [r for r in range(world_size) if not store.check([f"ablate/alive/{r}"])]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """In place; a sum then a division, since gloo has no AVG reduction."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def process_group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def broadcast_rows_from_main(rows: np.ndarray | None, num_columns: int) -> np.ndarray:
    """Rank 0's (n, num_columns) array of token ids on every rank (the others pass None): its row
    count first, so a short array reaches everyone, then the rows through the device the backend
    needs (NCCL: CUDA). int32 on the wire (token ids are far below 2**31), int64 back."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([0 if rows is None else len(rows)], dtype=torch.int64, device=device)
    dist.broadcast(count, src=0)
    if dist.get_rank() == 0:
        buffer = torch.from_numpy(rows.astype(np.int32)).to(device)
    else:
        buffer = torch.empty((int(count.item()), num_columns), dtype=torch.int32, device=device)
    dist.broadcast(buffer, src=0)
    return buffer.cpu().numpy().astype(np.int64)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (a single process just returns the flag)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast(value):
    """Rank 0's value on every rank (a plain value; a single process returns it as is)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(entry: dict | None) -> list[dict] | None:
    """Every rank's shard manifest entry, on rank 0 (None on the others)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [entry] if entry is not None else []
    entries = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(entry, entries, dst=0)
    return [e for e in entries if e is not None] if entries is not None else None


def broadcast_parameters(model: torch.nn.Module) -> None:
    if dist.is_available() and dist.is_initialized():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
