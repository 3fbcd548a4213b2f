"""Resuming a checkpoint on another number of ranks: the sharded optimizer state, re-sharded on load.

Only the optimizer state depends on the world size W (the model is saved whole, the data position
is per stream, see harness.data.loader). Its layout is DistMuonAdamW's (harness/optim.py):
- AdamW: a tensor whose first dimension divides by W is split into W contiguous row blocks, rank r
  holding block r of exp_avg and exp_avg_sq; any other tensor's state is whole on every rank.
- Muon: each stack of N same-shape matrices is padded to ceil(N/W) x W matrices and rank r holds
  matrices [r c, (r+1) c), c = ceil(N/W), of momentum_buffer and second_moment; padding is zero.
- W = 1 (MuonAdamW) is the same with a single block: every tensor whole, stacks unpadded.
So a state is a set of row ranges of one global tensor per entry, and re-sharding copies, for each
row range the new rank needs, the overlapping rows out of the old ranks' shards, reading one old
shard at a time (a rank never holds more than one old shard and its own new one).

torch.distributed.checkpoint re-shards DTensor and ShardedTensor state; this optimizer keeps plain
tensors in a layout of its own (padded stacks), so describing that layout here is shorter and
clearer than converting the optimizer to DTensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# Per-parameter state entries that are tensors with one row per row (AdamW) or matrix (Muon).
ADAMW_ROW_STATE = ("exp_avg", "exp_avg_sq")
MUON_ROW_STATE = ("momentum_buffer", "second_moment")


@dataclass(frozen=True)
class Layout:
    """Which global rows (first dimension) of an entry of `length` rows each rank holds."""

    length: int
    block: int  # rows stored per rank (padding included)
    sharded: bool  # False: every rank holds all `length` rows

    def rows(self, rank: int) -> tuple[int, int]:
        """The global rows [start, end) that rank's stored tensor begins with (end clipped to length)."""
        if not self.sharded:
            return 0, self.length
        start = rank * self.block
        return start, min(start + self.block, self.length)


def adamw_layout(first_dim: int, world_size: int) -> Layout:
    sharded = world_size > 1 and first_dim % world_size == 0
    return Layout(first_dim, first_dim // world_size if sharded else first_dim, sharded)


def muon_layout(num_matrices: int, world_size: int) -> Layout:
    if world_size == 1:
        return Layout(num_matrices, num_matrices, False)
    return Layout(num_matrices, math.ceil(num_matrices / world_size), True)


def reshard_optimizer_state(
    optimizer: torch.optim.Optimizer,
    saved_states: Iterator[dict],
    saved_world_size: int,
    world_size: int,
    rank: int,
) -> dict:
    """The optimizer state_dict rank `rank` of `world_size` loads, built from the state_dicts that
    `saved_world_size` ranks saved, given in rank order (consumed one at a time). `optimizer` (this
    run's, same model and groups) gives each state entry's parameter and kind."""
    params = [(group["kind"], group, p) for group in optimizer.param_groups for p in group["params"]]
    saved = next(saved_states)
    target = {"state": {}, "param_groups": saved["param_groups"]}
    # (index, key, old layout, new layout) of every row-sharded entry to fill from the old shards
    pieces = []
    for index, entries in saved["state"].items():
        kind, group, p = params[index]
        if kind == "adamw":
            old, new = adamw_layout(p.shape[0], saved_world_size), adamw_layout(p.shape[0], world_size)
            keys = ADAMW_ROW_STATE
        else:
            num = len(group["params"])
            old, new = muon_layout(num, saved_world_size), muon_layout(num, world_size)
            keys = MUON_ROW_STATE
        new_state = {}
        for key, value in entries.items():
            if key in keys:
                new_state[key] = value.new_zeros((new.block, *value.shape[1:]))
                pieces.append((index, key, old, new))
            else:
                new_state[key] = value  # the step count, the same on every rank
        target["state"][index] = new_state
    for old_rank in range(saved_world_size):
        if old_rank > 0:
            saved = next(saved_states)
        for index, key, old, new in pieces:
            if old.sharded or old_rank == 0:  # an unsharded entry is whole on every rank: take rank 0's
                _copy_rows(target["state"][index][key], new.rows(rank), saved["state"][index][key], old.rows(old_rank))
        saved = None  # let the old shard go before the next is read
    return target


def _copy_rows(dest: torch.Tensor, dest_rows: tuple[int, int], src: torch.Tensor, src_rows: tuple[int, int]) -> None:
    """Copy the global rows both hold from `src` into `dest`, each tensor starting at its range's start."""
    start, end = max(dest_rows[0], src_rows[0]), min(dest_rows[1], src_rows[1])
    if start < end:
        dest[start - dest_rows[0] : end - dest_rows[0]] = src[start - src_rows[0] : end - src_rows[0]]


def load_rank_shard(
    load_shard: Callable[[int], dict], saved_world_size: int, world_size: int, rank: int, optimizer
) -> dict:
    """This rank's checkpoint shard (optimizer state, loader state, RNG) when the checkpoint was
    written by `saved_world_size` ranks (`load_shard(q)` reads old rank q's): its own shard when the
    world size is the same; otherwise the optimizer state re-sharded, every old rank's loader state
    merged (the loader then takes this rank's streams), and old rank 0's RNG (every rank seeds its RNG
    alike and nothing in training draws from it per rank)."""
    from harness.data.loader import merge_states

    if saved_world_size == world_size:
        return load_shard(rank)
    loaders, rngs = [], []

    def optimizer_states() -> Iterator[dict]:
        for old_rank in range(saved_world_size):
            shard = load_shard(old_rank)
            loaders.append(shard["loader"])
            rngs.append(shard["rng"])
            yield shard.pop("optimizer")

    optimizer_state = reshard_optimizer_state(optimizer, optimizer_states(), saved_world_size, world_size, rank)
    return {"optimizer": optimizer_state, "loader": merge_states(loaders), "rng": rngs[0]}
