"""`bench rope`: RMSNorm(rotary(x)) for q and k alone, forward, backward and both, for every
rope.split, at the head counts of d12..d24, beside the memory-traffic floor; the splits take turns
in interleaved blocks."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from tqdm import tqdm

from harness.bench.common import (
    copy_bandwidth,
    datasheet_bandwidth,
    device_name,
    provenance_fields,
    resolve_bench_device,
    time_ms,
)
from harness.cli import compose
from harness.config import model_config
from harness.errors import ConfigError
from harness.results.stats import ratio_compare
from models.gpt import config_from_depth
from models.rotary import SPLITS, fused_unavailable_reason, rotary_tables, rotate_and_normalize


# rope ------------------------------------------------------------------------------------
def rope_traffic_bytes(batch: int, seq_len: int, heads: int, head_dim: int, element_size: int) -> dict:
    """Bytes that must cross memory for q and k of one layer (see models/rope_triton.py):
    forward reads x and writes z and a float32 1/RMS per row; backward reads the gradient, z
    and 1/RMS and writes dx; the cos/sin tables (float32) are read once."""
    n = batch * seq_len * heads * head_dim
    rows = n // head_dim
    tables = 2 * seq_len * (head_dim // 2) * 4
    forward = 2 * (2 * n * element_size + 4 * rows) + tables
    backward = 2 * (3 * n * element_size + 4 * rows) + tables
    return {"forward": forward, "backward": backward, "forward_backward": forward + backward}


ROPE_KINDS = ("forward", "backward", "forward_backward")


def rope_case(split: str, q: torch.Tensor, k: torch.Tensor, cos, sin, compiled: bool) -> dict[str, tuple]:
    """For one split, per measurement kind: (run, prepare) for `time_ms`."""

    def apply(qk):
        return rotate_and_normalize(qk[0], cos, sin, split), rotate_and_normalize(qk[1], cos, sin, split)

    if compiled:
        apply = torch.compile(apply, dynamic=False)
    grads = (torch.randn_like(q), torch.randn_like(k))

    def backward(outputs):
        torch.autograd.grad(outputs, (q, k), grads)

    def forward_backward(_):
        backward(apply((q, k)))

    return {
        "forward": (lambda _: apply((q, k)), None),
        "backward": (backward, lambda: apply((q, k))),
        "forward_backward": (forward_backward, None),
    }


def time_interleaved(cases: dict[str, dict[str, tuple]], device, blocks: int, iters: int, warmup: int) -> dict:
    """Per split and kind, the median ms of each of `blocks` blocks of `iters` iterations; the splits
    take turns within each block, the order rotating from block to block, so drift cancels."""
    splits = list(cases)
    times: dict[str, dict[str, list[float]]] = {s: {kind: [] for kind in ROPE_KINDS} for s in splits}
    for block in range(blocks):
        shift = block % len(splits)
        for split in splits[shift:] + splits[:shift]:
            for kind in ROPE_KINDS:
                run, prepare = cases[split][kind]
                times[split][kind].append(time_ms(run, device, iters, warmup if block == 0 else 0, prepare))
    return times


def rope_comparisons(times: dict, reference: str, confidence: float) -> dict[str, dict]:
    """Each split's mean time per kind relative to the reference split: percent, interval, p (paired by block)."""
    out = {}
    for split, kinds in times.items():
        if split == reference:
            continue
        fields = {}
        for kind, values in kinds.items():
            result = ratio_compare(list(enumerate(values)), list(enumerate(times[reference][kind])), 1 - confidence)
            fields |= {
                f"{kind}_delta_pct": result.delta_pct,
                f"{kind}_ci_low_pct": result.low_pct,
                f"{kind}_ci_high_pct": result.high_pct,
                f"{kind}_p_value": result.p_value,
            }
        out[split] = fields
    return out


def _say_how_long(first_s: float, args: argparse.Namespace, splits: int) -> None:
    """On CPU the default grid takes minutes (5.5 on a shared 2-core machine): after the first
    depth, the remaining time at its pace (deeper models have more heads, so a lower bound), and
    how to shorten it."""
    left = first_s * (len(args.depths) - 1)
    calls = len(args.depths) * splits * args.blocks * len(ROPE_KINDS)
    tqdm.write(
        f"CPU: the first of {len(args.depths)} depths took {first_s:.0f} s ({calls} timed blocks of {args.iters} "
        f"iterations in all); the rest will take at least {left / 60:.1f} min. "
        "--depths 12 --blocks 3 --iters 5 gives a quick look.",
        file=sys.stderr,
    )


def run_rope(args: argparse.Namespace, argv: list[str]) -> dict:

    device = resolve_bench_device(args.device)
    cfg = compose([*args.overrides, f"train.device={device.type}"])
    base = model_config(cfg)
    on_cuda = device.type == "cuda"
    batch = args.batch or (int(cfg.train.device_batch_size) if on_cuda else 2)
    seq_len = args.seq_len or (base.sequence_len if on_cuda else 256)
    dtype = torch.bfloat16 if on_cuda else torch.float32
    splits = args.splits or list(SPLITS)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ConfigError(f"--splits {unknown[0]!r} is not one of: {', '.join(SPLITS)}")
    skipped = {}
    if "fused" in splits:
        reason = fused_unavailable_reason(device) if on_cuda else "timed on CUDA only (the interpreter is for tests)"
        if reason:
            skipped["fused"] = reason
    bandwidth = copy_bandwidth(device)
    datasheet = datasheet_bandwidth(device)
    results = []
    reference = next((s for s in splits if s not in skipped), None)  # what the others are compared with
    started = time.perf_counter()
    for i, depth in enumerate(tqdm(args.depths, desc="rope", unit="depth")):
        if i == 1 and not on_cuda:
            _say_how_long(time.perf_counter() - started, args, len(splits) - len(skipped))
        shape_cfg = config_from_depth(depth, int(cfg.model.aspect_ratio), int(cfg.model.head_dim))
        heads, head_dim = shape_cfg.n_head, shape_cfg.head_dim
        cos, sin = rotary_tables(seq_len, head_dim, base.rope_base, device)
        q, k = (torch.randn(batch, seq_len, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
                for _ in range(2))  # fmt: skip
        traffic = rope_traffic_bytes(batch, seq_len, heads, head_dim, q.element_size())
        floors = {f"floor_{kind}_ms": 1000 * b / bandwidth for kind, b in traffic.items()}
        if datasheet:
            floors |= {f"datasheet_floor_{kind}_ms": 1000 * b / datasheet for kind, b in traffic.items()}
        if on_cuda:
            torch._dynamo.reset()  # a fresh cache per depth: shapes and splits would exhaust the recompile limit
        cases = {split: rope_case(split, q, k, cos, sin, on_cuda) for split in splits if split not in skipped}
        times = time_interleaved(cases, device, args.blocks, args.iters, args.warmup)
        versus = rope_comparisons(times, reference, args.confidence)
        for split, kinds in times.items():
            timing = {f"{kind}_ms": statistics.fmean(kinds[kind]) for kind in ROPE_KINDS}
            timing |= {f"{kind}_block_ms": kinds[kind] for kind in ROPE_KINDS}
            results.append({"depth": depth, "shape": [batch, seq_len, heads, head_dim], "split": split,
                            **timing, **versus.get(split, {}),
                            **{f"bytes_{kind}": b for kind, b in traffic.items()}, **floors})  # fmt: skip
    record = {
        "benchmark": "rope",
        "device": device.type,
        "gpu_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": on_cuda,
        "batch": batch,
        "sequence_len": seq_len,
        "blocks": args.blocks,
        "iters_per_block": args.iters,
        "reference_split": reference,
        "confidence": args.confidence,
        "measured_bandwidth_gbps": bandwidth / 1e9,
        "datasheet_bandwidth_gbps": datasheet / 1e9 if datasheet else None,
        "skipped": skipped,
        "results": results,
        **provenance_fields(argv),
    }
    print(format_rope(record))
    return record


def _versus(x: dict, kind: str) -> str:
    if f"{kind}_delta_pct" not in x:
        return "(reference)"
    low, high = x[f"{kind}_ci_low_pct"], x[f"{kind}_ci_high_pct"]
    # Fieller's interval has no finite bounds when the reference time is not distinguishable from 0.
    interval = f"[{low:+.1f}%, {high:+.1f}%]" if math.isfinite(low) and math.isfinite(high) else "[unbounded]"
    return f"{x[f'{kind}_delta_pct']:+.1f}% {interval} p={x[f'{kind}_p_value']:.2g}"


def format_rope(r: dict) -> str:
    bw = f"floor at the measured copy bandwidth {r['measured_bandwidth_gbps']:,.0f} GB/s"
    if r["datasheet_bandwidth_gbps"]:
        bw += f" (datasheet {r['datasheet_bandwidth_gbps']:,.0f} GB/s: columns 'ds')"
    lines = [
        f"rotary + QK RMSNorm, q and k of one layer: {r['gpu_name']}, {r['dtype']}, "
        f"{'compiled' if r['compiled'] else 'eager'}, B={r['batch']} T={r['sequence_len']}; {bw}",
        f"mean over {r['blocks']} interleaved blocks (splits take turns) of the median of {r['iters_per_block']} "
        f"iterations; vs {r['reference_split']}: relative difference of the means, Fieller's interval, paired by block",
        "",
    ]
    header = ["depth", "shape", "split", "fwd ms", "bwd ms", "fwd+bwd ms", "floor fwd", "floor bwd", "bwd/floor"]
    header += [f"fwd+bwd vs {r['reference_split']} [{r['confidence']:.0%} CI]"]
    if r["datasheet_bandwidth_gbps"]:
        header += ["ds floor bwd", "bwd/ds floor"]
    rows = []
    for x in r["results"]:
        row = [
            f"d{x['depth']}",
            "x".join(map(str, x["shape"])),
            x["split"],
            f"{x['forward_ms']:.3f}",
            f"{x['backward_ms']:.3f}",
            f"{x['forward_backward_ms']:.3f}",
            f"{x['floor_forward_ms']:.3f}",
            f"{x['floor_backward_ms']:.3f}",
            f"{x['backward_ms'] / x['floor_backward_ms']:.2f}x",
            _versus(x, "forward_backward"),
        ]
        if r["datasheet_bandwidth_gbps"]:
            floor = x["datasheet_floor_backward_ms"]
            row += [f"{floor:.3f}", f"{x['backward_ms'] / floor:.2f}x"]
        rows.append(row)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines += [f"skipped {split}: {reason}" for split, reason in r["skipped"].items()]
    if r["device"] == "cpu":
        lines.append("CPU numbers only check the code path; they say nothing about a GPU.")
    return "\n".join(lines)
