"""The recipe's schedules, as pure functions of the step.

The LR multiplier is a trapezoid (linear warmup, flat, linear warmdown to `final_lr_frac`),
Muon's momentum warms up from 0.85 to 0.95 over 300 steps, and Muon's weight decay falls
linearly to zero over the run.
"""

from __future__ import annotations


def lr_multiplier(
    step: int, num_iterations: int, warmup_ratio: float, warmdown_ratio: float, final_lr_frac: float
) -> float:
    warmup_steps = round(warmup_ratio * num_iterations)
    warmdown_steps = round(warmdown_ratio * num_iterations)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step <= num_iterations - warmdown_steps:
        return 1.0
    progress = (num_iterations - step) / warmdown_steps
    return progress + (1 - progress) * final_lr_frac


def muon_momentum(step: int, warmup_momentum: float, momentum: float, warmup_steps: int) -> float:
    frac = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return (1 - frac) * warmup_momentum + frac * momentum


def weight_decay_multiplier(step: int, num_iterations: int) -> float:
    return 1 - step / num_iterations
