"""Validation bits per byte: a loss that does not depend on the tokenizer's vocabulary.

bpb = sum of token losses in nats / (ln 2 x sum of the UTF-8 byte lengths of those tokens),
over target tokens whose byte length is positive (special tokens such as BOS count 0 bytes and
are left out of both sums), reduced over every data-parallel rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(
    model,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes: torch.Tensor,
    device: torch.device,
    autocast,
) -> float:
    """`model(x, y, reduction='none')` gives per-token losses; `autocast` is a context factory."""
    token_bytes = token_bytes.to(device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.float64, device=device)
    for inputs, targets in batches:
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast():
            losses = model(inputs, targets, reduction="none")
        num_bytes = torch.where(targets >= 0, token_bytes[targets.clamp_min(0)], 0)
        counted = num_bytes > 0
        total_nats += losses.double()[counted].sum()
        total_bytes += num_bytes[counted].double().sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        raise ValueError("validation set has no target bytes")
    return (total_nats / (math.log(2) * total_bytes)).item()
