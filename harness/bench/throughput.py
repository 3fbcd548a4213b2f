"""`bench throughput`: one composed config's training step, tokens per second, MFU and peak memory;
the JSON it writes is what `python -m harness.plan --throughput FILE` reads."""

from __future__ import annotations

import argparse

import torch

from harness.bench.common import (
    autocast_dtype,
    cpu_batch,
    cpu_defaults,
    device_name,
    matmul_rate,
    measure_steps,
    peak_memory_gib,
    provenance_fields,
    resolve_bench_device,
)
from harness.hardware import peak_flops


def run_throughput(args: argparse.Namespace, argv: list[str]) -> dict:
    device = resolve_bench_device(args.device)
    defaults = cpu_defaults(args.overrides, device)
    defaults += cpu_batch(args.overrides, defaults, device)
    if defaults:
        print(f"CPU: using {' '.join(defaults)} (name any of them on the command line to choose)")
    overrides = [*defaults, *args.overrides, f"train.device={device.type}"]
    matmul = matmul_rate(device)
    timed = measure_steps(overrides, device, args.steps, args.warmup, args.profile)
    plan = timed.spec
    tok_per_s = plan.train.total_batch_tokens / timed.median
    fpt = plan.flops_per_token
    achieved = fpt * tok_per_s
    peak = peak_flops(device)
    record = {
        "benchmark": "throughput",
        "model_depth": plan.model.n_layer,
        "window_pattern": plan.model.window_pattern,
        "sequence_len": plan.model.sequence_len,
        "attention": plan.model.attention,
        "rope_split": plan.model.rope_split,
        "device_batch_size": plan.train.device_batch_size,
        "total_batch_tokens": plan.train.total_batch_tokens,
        "grad_accum_steps": plan.grad_accum,
        "world_size": plan.dist.world_size,
        "compiled": timed.compiled,
        "autocast_dtype": autocast_dtype(plan.train.dtype, device),
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "step_time_s": timed.median,
        "step_times_s": timed.seconds,
        "tok_per_s": tok_per_s,
        "flops_per_token": fpt,
        "achieved_tflops": achieved / 1e12,
        "peak_flops": peak,
        "mfu": achieved / peak if peak else None,
        **matmul,
        "mfu_vs_matmul": achieved / (matmul["matmul_tflops"] * 1e12),
        "peak_memory_gib": peak_memory_gib(device),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "final_loss": timed.final_loss,
        "device": device.type,
        "gpu_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "overrides": overrides,
        **provenance_fields(argv),
    }
    print(format_throughput(record))
    return record


def format_throughput(r: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"device: {r['gpu_name']} ({r['device']}), torch {r['torch_version']}",
        f"config: d{r['model_depth']} window {r['window_pattern']} T={r['sequence_len']} attention={r['attention']} "
        f"rope={r['rope_split']} batch {r['device_batch_size']} x {r['grad_accum_steps']} accumulation "
        f"= {r['total_batch_tokens']:,} tokens, compiled={r['compiled']}, {r['autocast_dtype']}",
        f"matmul {r['matmul_shape']} {r['matmul_dtype']}: {r['matmul_tflops']:.3g} TFLOP/s"
        + ("  (CPU float32: only checks the code path)" if r["device"] == "cpu" else ""),
        f"step: median {1000 * r['step_time_s']:.1f} ms over {r['steps']} steps after {r['warmup_steps']} warm-up",
        f"tok/s {r['tok_per_s']:,.0f} | FLOPs/token {r['flops_per_token']:,.0f} | {r['achieved_tflops']:.2f} TFLOP/s | "
        f"MFU {pct(r['mfu'])} of datasheet | {pct(r['mfu_vs_matmul'])} of measured matmul",
        f"peak memory {r['peak_memory_gib']:.2f} GiB ({r['peak_memory_kind']})",
    ]
    return "\n".join(lines)
