"""The recipes' schedules, as pure functions of the step.

The LR multiplier is a trapezoid: linear warmup (348fbb3: none; 92d63d4: 40 steps), flat, linear
warmdown over the last warmdown_ratio of the run (0.5; 0.65) to final_lr_frac (0; 0.05).
Muon's momentum warms up linearly (0.85 -> 0.95 over 300 steps; 0.85 -> 0.97 over 400) and, in
92d63d4, falls linearly over the LR warmdown (0.97 -> 0.90). Muon's weight decay falls to zero
over the run, linearly (348fbb3) or along a half cosine (92d63d4).

Pure: no config, no tensors, no state; the trainer calls them once per step with its own numbers.
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
    # nanochat-recipe-2026-07.md section 5: a fixed 40-step warmup replaces the ratio (0 in 348fbb3).
    warmup = warmup_steps if warmup_steps > 0 else round(warmup_ratio * num_iterations)
    warmdown_steps = round(warmdown_ratio * num_iterations)
    if step < warmup:
        # (step + 1): the first step already trains at 1/warmup, never at LR 0.
        return (step + 1) / warmup
    if step <= num_iterations - warmdown_steps:
        return 1.0
    # nanochat-recipe.md section 5: linear over the last warmdown_ratio of the run to final_lr_frac
    # (348fbb3: last 50% to 0; 92d63d4: last 65% to 0.05).
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
    # nanochat-recipe.md section 4: 0.85 -> 0.95 over the first 300 steps
    # (nanochat-recipe-2026-07.md section 4: 0.85 -> 0.97 over 400).
    if warmup_steps > 0 and step < warmup_steps:
        frac = step / warmup_steps
        return (1 - frac) * warmup_momentum + frac * momentum
    # 92d63d4 only: the momentum follows the LR warmdown back down (0.97 -> 0.90), over the same steps.
    warmdown_steps = round(warmdown_ratio * num_iterations)
    warmdown_start = num_iterations - warmdown_steps
    if warmdown_momentum is not None and warmdown_steps > 0 and step >= warmdown_start:
        progress = (step - warmdown_start) / warmdown_steps
        return momentum * (1 - progress) + warmdown_momentum * progress
    return momentum


def weight_decay_multiplier(step: int, num_iterations: int, schedule: str = "linear") -> float:
    """Muon's weight decay at `step` as a fraction of its configured value."""
    # nanochat-recipe-2026-07.md section 4: a half cosine from 1 to 0 over the run.
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / num_iterations))
    # nanochat-recipe.md section 4: "decayed linearly to 0 over training".
    if schedule == "linear":
        return 1 - step / num_iterations
    raise ValueError(f"weight decay schedule {schedule!r} is not one of {WEIGHT_DECAY_SCHEDULES}")
