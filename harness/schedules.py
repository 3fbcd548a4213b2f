"""The recipes' schedules, as pure functions of the step.

The LR multiplier is a trapezoid: linear warmup (348fbb3: none; 92d63d4: 40 steps), flat, linear
warmdown over the last warmdown_ratio of the run (0.5; 0.65) to final_lr_frac (0; 0.05).
Muon's momentum warms up linearly (0.85 -> 0.95 over 300 steps; 0.85 -> 0.97 over 400) and, in
92d63d4, falls linearly over the LR warmdown (0.97 -> 0.90). Muon's weight decay falls to zero
over the run, linearly (348fbb3) or along a half cosine (92d63d4).
"""

from __future__ import annotations

import math

WEIGHT_DECAY_SCHEDULES = ("linear", "cosine")


def lr_multiplier(
    step: int,
    num_iterations: int,
    warmup_ratio: float,
    warmdown_ratio: float,
    final_lr_frac: float,
    warmup_steps: int = 0,
) -> float:
    """`warmup_steps` > 0 fixes the warmup length in steps; otherwise it is warmup_ratio of the run."""
    warmup = warmup_steps if warmup_steps > 0 else round(warmup_ratio * num_iterations)
    warmdown_steps = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown_steps:
        return 1.0
    progress = (num_iterations - step) / warmdown_steps
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(
    step: int,
    warmup_momentum: float,
    momentum: float,
    warmup_steps: int,
    warmdown_momentum: float | None = None,
    num_iterations: int = 0,
    warmdown_ratio: float = 0.0,
) -> float:
    """Warm-up from warmup_momentum, then `momentum`; with `warmdown_momentum`, linear to it over the
    LR warmdown. The warm-up wins where the two overlap (a warmdown longer than the run minus 400)."""
    if warmup_steps > 0 and step < warmup_steps:
        frac = step / warmup_steps
        return (1 - frac) * warmup_momentum + frac * momentum
    warmdown_steps = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown_steps
    if warmdown_momentum is not None and warmdown_steps > 0 and step >= warmdown_start:
        progress = (step - warmdown_start) / warmdown_steps
        return momentum * (1 - progress) + warmdown_momentum * progress
    return momentum


def weight_decay_multiplier(step: int, num_iterations: int, schedule: str = "linear") -> float:
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / num_iterations))
    if schedule == "linear":
        return 1 - step / num_iterations
    raise ValueError(f"weight decay schedule {schedule!r} is not one of {WEIGHT_DECAY_SCHEDULES}")
