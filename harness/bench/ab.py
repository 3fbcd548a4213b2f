"""`bench ab`, and the one A/B method of every benchmark: two configs built in one process, timed in
interleaved blocks (AB BA AB ...: drift of the machine cancels), B's mean step time against A's with
Fieller's interval paired by block (harness.results.stats.ratio_compare). The GPU suite's A/B
cases use the same blocks and interval."""

from __future__ import annotations

import argparse
import shlex
import statistics
from collections.abc import Callable

import torch

from harness.bench.common import (
    build_training_step,
    cpu_batch,
    cpu_defaults,
    device_name,
    provenance_fields,
    resolve_bench_device,
    timed_steps,
)
from harness.results.stats import RatioComparison, ratio_compare
from harness.run.build import TrainingStep


# ab ----------------------------------------------------------------------------------------
def interleaved_order(block: int) -> tuple[str, str]:
    """AB, BA, AB, BA, ...: each pair of blocks runs A and B once in each position, so a drift of
    the machine that is linear in time (clocks, heat, a neighbour's load) cancels in the mean."""
    return ("a", "b") if block % 2 == 0 else ("b", "a")


def interleaved_blocks(
    steps: dict[str, Callable[[], float]], device: torch.device, blocks: int, steps_per_block: int, warmup: int
) -> dict[str, list[list[float]]]:
    """Warm both sides up (never timed: compilation), then `blocks` blocks per side in the order of
    `interleaved_order`; per side, per block, the seconds of each of its steps."""
    for side in ("a", "b"):
        timed_steps(steps[side], device, warmup)
    seconds: dict[str, list[list[float]]] = {"a": [], "b": []}
    for block in range(blocks):
        for side in interleaved_order(block):
            seconds[side].append(timed_steps(steps[side], device, steps_per_block)[0])
    return seconds


def block_means(step_seconds: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    """Each block's mean step time: one value per block, the unit the interval pairs."""
    return {side: [sum(block) / len(block) for block in blocks] for side, blocks in step_seconds.items()}


def compare_blocks(blocks: dict[str, list[float]], confidence: float) -> RatioComparison:
    """B's mean block time relative to A's, paired by block, with Fieller's interval."""
    return ratio_compare(list(enumerate(blocks["b"])), list(enumerate(blocks["a"])), alpha=1 - confidence)


def run_ab(args: argparse.Namespace, argv: list[str]) -> dict:
    """Time configs A and B, built in this one process, in interleaved blocks after warm-up, and
    compare B's mean step time with A's (paired by block, Fieller's interval: stats.ratio_compare)."""
    device = resolve_bench_device(args.device)
    sides = {"a": shlex.split(args.a), "b": shlex.split(args.b)}
    defaults = cpu_defaults([*args.overrides, *sides["a"], *sides["b"]], device)
    defaults += cpu_batch([*args.overrides, *sides["a"], *sides["b"]], defaults, device)
    if defaults:
        print(f"CPU: using {' '.join(defaults)} (name any of them on the command line to choose)")
    # The shared overrides first, so that A's and B's own settings win where they name the same key.
    overrides = {k: [*defaults, *args.overrides, *v, f"train.device={device.type}"] for k, v in sides.items()}
    built = {}
    for side in ("a", "b"):
        torch.manual_seed(0)  # the same random tokens for both, where the shapes agree
        built[side] = build_training_step(overrides[side], device)
    step_seconds = interleaved_blocks(
        {side: built[side].step for side in built}, device, args.blocks, args.steps_per_block, args.warmup
    )
    blocks = block_means(step_seconds)
    result = compare_blocks(blocks, args.confidence)
    record = {
        "benchmark": "ab",
        "delta_pct": result.delta_pct,
        "ci_low_pct": result.low_pct,
        "ci_high_pct": result.high_pct,
        "confidence": args.confidence,
        "p_value": result.p_value,
        "test": f"paired t over {args.blocks} blocks, Fieller interval of mean(B) / mean(A)",
        "verdict": ab_verdict(result.low_pct, result.high_pct),
        "blocks": args.blocks,
        "steps_per_block": args.steps_per_block,
        "warmup_steps": args.warmup,
        "order": "".join(side.upper() for block in range(args.blocks) for side in interleaved_order(block)),
        "block_times_a_s": blocks["a"],
        "block_times_b_s": blocks["b"],
        "step_time_a_s": statistics.fmean(blocks["a"]),
        "step_time_b_s": statistics.fmean(blocks["b"]),
        "config_a": _ab_config(args.a, overrides["a"], built["a"]),
        "config_b": _ab_config(args.b, overrides["b"], built["b"]),
        "shared_overrides": list(args.overrides),
        "device": device.type,
        "gpu_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        **provenance_fields(argv),
    }
    print(format_ab(record))
    return record


def ab_verdict(low_pct: float, high_pct: float) -> str:
    if low_pct > 0:
        return "B slower"
    if high_pct < 0:
        return "B faster"
    return "no difference detected"


def _ab_config(text: str, overrides: list[str], built: TrainingStep) -> dict:
    plan = built.spec
    return {
        "argument": text,
        "overrides": overrides,
        "model_depth": plan.model.n_layer,
        "rope_split": plan.model.rope_split,
        "attention": plan.model.attention,
        "total_batch_tokens": plan.train.total_batch_tokens,
        "device_batch_size": plan.train.device_batch_size,
        "grad_accum_steps": plan.grad_accum,
        "compiled": built.compiled,
        "resolved": plan.config,
    }


def format_ab(r: dict) -> str:
    def side(name: str) -> str:
        c, step = r[f"config_{name}"], r[f"step_time_{name}_s"]
        tokens = c["total_batch_tokens"] / step
        return (
            f"{name.upper()}: {c['argument'] or '(shared overrides only)'}: "
            f"d{c['model_depth']} rope={c['rope_split']}, "
            f"mean step {1000 * step:.2f} ms ({tokens:,.0f} tok/s), compiled={c['compiled']}"
        )

    lines = [
        f"device: {r['gpu_name']} ({r['device']}), torch {r['torch_version']}; "
        f"{r['blocks']} blocks of {r['steps_per_block']} steps, interleaved {r['order'][:8]}..., "
        f"after {r['warmup_steps']} warm-up steps each",
        side("a"),
        side("b"),
        f"B vs A step time: {r['delta_pct']:+.2f}% [{r['ci_low_pct']:+.2f}%, {r['ci_high_pct']:+.2f}%] "
        f"({r['confidence']:.0%} CI), p = {r['p_value']:.3g}: {r['verdict']}",
    ]
    if r["device"] == "cpu":
        lines.append("CPU numbers only check the code path; they say nothing about a GPU.")
    return "\n".join(lines)
