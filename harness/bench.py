"""GPU speed benchmarks: `python -m harness.bench throughput|rope [OVERRIDES...] [options]`.

    python -m harness.bench throughput model=d12 model.window_pattern=L     # one training step's tok/s and MFU
    python -m harness.bench throughput model=d24 train.device_batch_size=16
    python -m harness.bench rope                                            # rotary + QK norm alone, d12..d24
    python -m harness.bench ab "rope=slice" "rope=chunk" model=d12          # B's step time vs A's, with a CI
    python -m harness.bench throughput model=d12 --profile trace.json       # + a torch.profiler trace
    python -m harness.bench suite                                           # all of issue 16's cases (bench_suite.py)

`throughput` composes the config as `python -m harness.train` would and times the training step
through the same functions the trainer calls (plan_run, build_model, compile_for_training,
build_optimizer, optimizer_step) on random tokens already on the device, so data loading is not
timed. It reports the median step after warm-up (the first steps compile), tokens per second,
model FLOPs per token (`GPT.flops_per_token`), MFU against the datasheet peak and against the
bf16 matmul rate measured in the same process, and peak memory; the JSON it writes is what
`python -m harness.plan --throughput FILE` reads.

`ab` builds two configs (A's and B's own overrides, each one quoted string, on top of shared
overrides) in one process, warms both up, then times them in interleaved blocks (AB BA AB ...,
so drift of the machine cancels) and reports B's mean step time relative to A's in percent with
a 95% interval (Fieller's, paired by block) and the paired t-test's p-value: an A/A comparison
holds 0 in its interval 95% of the time.

`rope` times RMSNorm(rotary(x)) for q and k as one attention layer applies them, forward,
backward and both, for every `rope.split`, at the head counts of d12..d24 (B x T x H x 128),
beside the memory-traffic floor: the bytes that must move divided by the bandwidth.

Both run on CPU too (smaller shapes, float32, no compilation) so the code path can be checked
anywhere; CPU numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from harness.cli import compose, exit_on_config_error
from harness.errors import ConfigError

DEFAULT_OUT_DIR = Path("results/benchmarks")
# CPU-sized choices used when the device is the CPU, for the keys the command line does not name
# (the smoke experiment's model, batch and vocabulary).
CPU_DEFAULTS = {"model": "tiny", "train": "smoke", "data.vocab_size": "2048"}
# Datasheet HBM bandwidth (bytes/s) per device name substring, first match wins.
DATASHEET_BANDWIDTH = {
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,  # SXM
    "H200": 4.8e12,
    "A100": 2.0e12,  # 80 GB SXM (2.04); the 40 GB card is 1.56
    "B200": 8.0e12,
}
# The matmul whose rate is the practical ceiling MFU is compared with.
CUDA_MATMUL = (8192, torch.bfloat16)
CPU_MATMUL = (512, torch.float32)


# devices and timing ------------------------------------------------------------------------
def resolve_bench_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    return torch.device(requested)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def time_ms(run: Callable, device: torch.device, iters: int, warmup: int, prepare: Callable | None = None) -> float:
    """Median milliseconds of `run(prepare())`, where only `run` is timed (CUDA events on a GPU)."""
    times = []
    for i in range(warmup + iters):
        state = prepare() if prepare else None
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(state)
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end)
        else:
            started = time.perf_counter()
            run(state)
            elapsed = 1000 * (time.perf_counter() - started)
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def matmul_rate(device: torch.device) -> dict:
    """TFLOP/s of a square matmul: 8192^3 bf16 on CUDA (the practical tensor-core ceiling), a small
    float32 one on CPU (only so the code path runs; not comparable with anything)."""
    n, dtype = CUDA_MATMUL if device.type == "cuda" else CPU_MATMUL
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    repeats = 10 if device.type == "cuda" else 3
    ms = time_ms(lambda _: [a @ b for _ in range(repeats)], device, iters=5, warmup=2)
    return {
        "matmul_tflops": 2 * n**3 * repeats / (ms / 1000) / 1e12,
        "matmul_shape": f"{n}x{n}x{n}",
        "matmul_dtype": str(dtype).removeprefix("torch."),
    }


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 24)  # 512 MiB / 32 MiB of bf16
    src = torch.empty(numel, device=device, dtype=torch.bfloat16).fill_(1)
    dst = torch.empty_like(src)
    ms = time_ms(lambda _: dst.copy_(src), device, iters=10, warmup=3)
    return 2 * src.numel() * src.element_size() / (ms / 1000)


def datasheet_bandwidth(device: torch.device) -> float | None:
    name = device_name(device)
    return next((bw for key, bw in DATASHEET_BANDWIDTH.items() if key in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB


def provenance_fields(argv: list[str]) -> dict:
    from harness.provenance import provenance

    info = provenance()
    return {
        "command": shlex.join(["python", "-m", "harness.bench", *argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "git_commit": info["git_commit"],
        "git_dirty": info["git_dirty"],
    }


def write_json(record: dict, out: Path | None, stem: str) -> Path:
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = DEFAULT_OUT_DIR / f"{stem}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # JSON has no infinity: an unbounded interval (noise swamping the signal) is written as null.
    out.write_text(json.dumps(_finite_or_none(record), indent=2) + "\n")
    return out


def _finite_or_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def cpu_defaults(overrides: list[str], device: torch.device) -> list[str]:
    """CPU-sized choices for the keys the command line does not name (none on CUDA)."""
    if device.type != "cpu":
        return []
    named = {o.split("=", 1)[0] for o in overrides}
    return [f"{key}={value}" for key, value in CPU_DEFAULTS.items() if key not in named]


# throughput ------------------------------------------------------------------------------
def random_batches(vocab_size: int, batch: int, seq_len: int, device: torch.device, count: int = 4):
    """Endless (inputs, targets) of uniform random tokens, generated once on the device."""
    data = [torch.randint(0, vocab_size, (batch, seq_len + 1), device=device) for _ in range(count)]
    i = 0
    while True:
        row = data[i % count]
        yield row[:, :-1], row[:, 1:]
        i += 1


@dataclass
class StepTimes:
    plan: object  # harness.train.RunPlan
    seconds: list[float]
    final_loss: float
    compiled: bool

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class TrainingStep:
    """One composed config's model and optimizer, and a function that takes one training step."""

    plan: object  # harness.train.RunPlan
    step: Callable[[], float]
    compiled: bool


def build_training_step(overrides: list[str], device: torch.device) -> TrainingStep:
    """The composed config's optimizer step exactly as the trainer takes it (plan_run, build_model,
    compile_for_training, build_optimizer, optimizer_step), on random tokens already on the device."""
    from harness.optim import build_optimizer
    from harness.train import autocast_for, build_model, compile_for_training, optimizer_step, plan_run

    plan = plan_run(compose(overrides), check_inputs=False)
    if plan.dist.world_size != 1:
        raise ConfigError(
            f"harness.bench measures one process; WORLD_SIZE={plan.dist.world_size} (run it without torchrun)"
        )
    model = build_model(plan)
    step_model = compile_for_training(model, plan)
    optimizer, _ = build_optimizer(
        model, plan.optim, plan.placement, plan.train.total_batch_tokens, device.type, model_compiled=plan.train.compile
    )
    autocast = autocast_for(plan.device, plan.train.dtype)
    batches = random_batches(plan.model.vocab_size, plan.train.device_batch_size, plan.model.sequence_len, plan.device)

    def step() -> float:
        loss = optimizer_step(step_model, model, optimizer, batches, plan.grad_accum, plan.device, autocast)
        return loss.item()  # the trainer's per-step host sync, kept for a like-for-like step

    return TrainingStep(plan, step, compiled=step_model is not model)


def timed_steps(step: Callable[[], float], device: torch.device, count: int) -> tuple[list[float], float]:
    """Seconds of each of `count` steps (synchronized before and after), and the last loss."""
    seconds, loss = [], math.nan
    for _ in range(count):
        synchronize(device)
        started = time.perf_counter()
        loss = step()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds, loss


def measure_steps(
    overrides: list[str], device: torch.device, steps: int, warmup: int, profile: Path | None = None
) -> StepTimes:
    """Optimizer steps of the composed config exactly as the trainer takes them, timed after warm-up;
    with `profile`, two more steps under torch.profiler, written there as a Chrome trace."""
    training = build_training_step(overrides, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed_steps(training.step, device, warmup)
    seconds, final_loss = timed_steps(training.step, device, steps)
    if profile is not None:
        profile_steps(training.step, device, profile)
    return StepTimes(training.plan, seconds, final_loss, training.compiled)


def profile_steps(step: Callable, device: torch.device, path: Path, count: int = 2) -> None:
    """Run `count` steps under torch.profiler; write a Chrome trace (chrome://tracing, Perfetto) and
    print the kernels that take the most device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(count):
            step()
        synchronize(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=25))
    print(f"profiler trace of {count} steps: {path}")


def autocast_dtype(dtype: str, device: torch.device) -> str:
    """What `harness.train.autocast_for` runs the matmuls in."""
    return "bfloat16" if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda") else "float32"


def run_throughput(args: argparse.Namespace, argv: list[str]) -> dict:
    from harness.hardware import peak_flops

    device = resolve_bench_device(args.device)
    defaults = cpu_defaults(args.overrides, device)
    if defaults:
        print(f"CPU: using {' '.join(defaults)} (name any of them on the command line to choose)")
    overrides = [*defaults, *args.overrides, f"train.device={device.type}"]
    matmul = matmul_rate(device)
    timed = measure_steps(overrides, device, args.steps, args.warmup, args.profile)
    plan, cfg = timed.plan, timed.plan.cfg
    tok_per_s = plan.train.total_batch_tokens / timed.median
    fpt = plan.flops_per_token
    achieved = fpt * tok_per_s
    peak = peak_flops(device)
    record = {
        "benchmark": "throughput",
        "model_depth": int(cfg.model.depth),
        "window_pattern": str(cfg.model.window_pattern),
        "sequence_len": int(cfg.model.sequence_len),
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


# ab ----------------------------------------------------------------------------------------
def interleaved_order(block: int) -> tuple[str, str]:
    """AB, BA, AB, BA, ...: each pair of blocks runs A and B once in each position, so a drift of
    the machine that is linear in time (clocks, heat, a neighbour's load) cancels in the mean."""
    return ("a", "b") if block % 2 == 0 else ("b", "a")


def run_ab(args: argparse.Namespace, argv: list[str]) -> dict:
    """Time configs A and B, built in this one process, in interleaved blocks after warm-up, and
    compare B's mean step time with A's (paired by block, Fieller's interval: stats.ratio_compare)."""
    from omegaconf import OmegaConf

    from harness.results.stats import ratio_compare

    device = resolve_bench_device(args.device)
    sides = {"a": shlex.split(args.a), "b": shlex.split(args.b)}
    defaults = cpu_defaults([*args.overrides, *sides["a"], *sides["b"]], device)
    if defaults:
        print(f"CPU: using {' '.join(defaults)} (name any of them on the command line to choose)")
    # The shared overrides first, so that A's and B's own settings win where they name the same key.
    overrides = {k: [*defaults, *args.overrides, *v, f"train.device={device.type}"] for k, v in sides.items()}
    built = {}
    for side in ("a", "b"):
        torch.manual_seed(0)  # the same random tokens for both, where the shapes agree
        built[side] = build_training_step(overrides[side], device)
    for side in ("a", "b"):  # warm-up (compilation) is never timed
        timed_steps(built[side].step, device, args.warmup)
    blocks: dict[str, list[float]] = {"a": [], "b": []}
    for block in range(args.blocks):
        for side in interleaved_order(block):
            seconds, _ = timed_steps(built[side].step, device, args.steps_per_block)
            blocks[side].append(sum(seconds) / len(seconds))
    result = ratio_compare(list(enumerate(blocks["b"])), list(enumerate(blocks["a"])), alpha=1 - args.confidence)
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
        "config_a": _ab_config(args.a, overrides["a"], built["a"], OmegaConf),
        "config_b": _ab_config(args.b, overrides["b"], built["b"], OmegaConf),
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


def _ab_config(text: str, overrides: list[str], built: TrainingStep, omegaconf) -> dict:
    plan = built.plan
    return {
        "argument": text,
        "overrides": overrides,
        "model_depth": int(plan.cfg.model.depth),
        "rope_split": plan.model.rope_split,
        "attention": plan.model.attention,
        "total_batch_tokens": plan.train.total_batch_tokens,
        "device_batch_size": plan.train.device_batch_size,
        "grad_accum_steps": plan.grad_accum,
        "compiled": built.compiled,
        "resolved": omegaconf.to_container(plan.cfg, resolve=True),
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
    from models.rotary import rotate_and_normalize

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
    from harness.results.stats import ratio_compare

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


def run_rope(args: argparse.Namespace, argv: list[str]) -> dict:
    from harness.config import model_config
    from models.gpt import config_from_depth
    from models.rotary import SPLITS, fused_unavailable_reason, rotary_tables

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
    for depth in tqdm(args.depths, desc="rope", unit="depth"):
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
    return f"{x[f'{kind}_delta_pct']:+.1f}% [{low:+.1f}%, {high:+.1f}%] p={x[f'{kind}_p_value']:.2g}"


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


# command line ----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench",
        description="GPU speed benchmarks of the training step and of the rotary + QK-norm kernels.",
    )
    sub = parser.add_subparsers(dest="benchmark", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m harness.train")
    common.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    common.add_argument("--out", type=Path, help=f"JSON file to write (default: a new file under {DEFAULT_OUT_DIR}/)")
    throughput = sub.add_parser(
        "throughput",
        parents=[common],
        help="tok/s, MFU and peak memory of the composed config's training step",
        epilog="Example: python -m harness.bench throughput model=d12 model.window_pattern=L",
    )
    throughput.add_argument("--steps", type=int, default=10, help="timed optimizer steps (median reported)")
    throughput.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    throughput.add_argument(
        "--profile", type=Path, metavar="TRACE.json", help="then profile 2 more steps, writing a Chrome trace here"
    )
    ab = sub.add_parser(
        "ab",
        help="configs A and B in one process, timed in interleaved blocks: B's step time vs A's with a 95%% CI",
        epilog='Example: python -m harness.bench ab "rope=slice" "rope=chunk" model=d12 --blocks 20',
    )
    ab.add_argument("a", help='config A\'s own overrides, one quoted string (e.g. "rope=slice"; "" for none)')
    ab.add_argument("b", help="config B's own overrides, likewise")
    ab.add_argument("overrides", nargs="*", help="overrides both share, as for python -m harness.train")
    ab.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ab.add_argument("--out", type=Path, help=f"JSON file to write (default: a new file under {DEFAULT_OUT_DIR}/)")
    ab.add_argument("--blocks", type=int, default=10, help="timed blocks per config, interleaved ABBA...")
    ab.add_argument(
        "--steps-per-block", type=int, default=3, help="optimizer steps per block (their mean is one value)"
    )
    ab.add_argument("--warmup", type=int, default=3, help="untimed steps of each config first (compilation)")
    ab.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    rope = sub.add_parser(
        "rope",
        parents=[common],
        help="rotary + QK RMSNorm alone, every rope.split, beside the memory-traffic floor",
        epilog="Example: python -m harness.bench rope --depths 12 24",
    )
    rope.add_argument("--depths", type=int, nargs="+", default=[12, 16, 20, 24], help="model depths (head counts)")
    rope.add_argument("--batch", type=int, help="batch rows (default: train.device_batch_size on CUDA, 2 on CPU)")
    rope.add_argument("--seq-len", type=int, help="sequence length (default: model.sequence_len on CUDA, 256 on CPU)")
    rope.add_argument("--splits", nargs="+", help="rope.split modes to time (default: all)")
    rope.add_argument("--blocks", type=int, default=10, help="interleaved blocks; the splits take turns in each")
    rope.add_argument("--iters", type=int, default=20, help="timed iterations per block and measurement (median)")
    rope.add_argument("--warmup", type=int, default=5, help="untimed iterations before the first block")
    rope.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    if not argv or argv[0] not in sub.choices:
        parser.parse_args(argv)  # prints the usage or help and exits
    # Each subcommand parses on its own so overrides and options may interleave.
    args = sub.choices[argv[0]].parse_intermixed_args(argv[1:])
    args.benchmark = argv[0]
    for name in ("steps", "iters", "steps_per_block"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if getattr(args, "blocks", 2) < 2:
        parser.error("--blocks must be at least 2 (an interval needs two blocks of each)")
    if not 0 < getattr(args, "confidence", 0.5) < 1:
        parser.error("--confidence must be between 0 and 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["suite"]:  # every GPU measurement of issue 16 in one call (harness/bench_suite.py)
        from harness.bench_suite import main as run_suite

        return run_suite(argv[1:])
    args = parse_args(argv)
    if args.benchmark == "throughput":
        record = run_throughput(args, argv)
        r = record
        stem = f"throughput-d{r['model_depth']}-{r['window_pattern']}-{r['attention']}-{r['rope_split']}-{r['device']}"
    elif args.benchmark == "ab":
        record = run_ab(args, argv)
        stem = f"ab-{record['device']}"
    else:
        record = run_rope(args, argv)
        stem = f"rope-{record['device']}"
    path = write_json(record, args.out, stem)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
