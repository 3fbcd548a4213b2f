"""What every benchmark shares: the device, timing, records and files, CPU-sized defaults, random
token batches, and one training step of a composed config built as the trainer builds it
(harness.run.build). It must not define a benchmark's statistics (harness.bench.ab does)."""

from __future__ import annotations

import json
import math
import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness.cli import compose
from harness.errors import ConfigError
from harness.hardware import GIB, peak_memory_bytes, resolve_device
from harness.provenance import provenance
from harness.run.build import TrainingStep
from harness.run.build import build_training_step as build_run_step
from harness.run.spec import RunSpec, resolve_run

DEFAULT_OUT_DIR = Path("results/benchmarks")
# CPU-sized choices used when the device is the CPU, for the keys the command line does not name
# (the smoke experiment's model, batch and vocabulary).
CPU_DEFAULTS = {"model": "tiny", "train": "smoke", "data.vocab_size": "2048"}
BATCH_KEYS = ("train.device_batch_size", "train.total_batch_tokens")
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
    """The benchmarks' --device, by the trainer's rule."""
    return resolve_device(requested, setting="--device ")


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
    """Peak memory of this process, as training records it (harness.hardware.peak_memory_bytes)."""
    return peak_memory_bytes(device) / GIB


def provenance_fields(argv: list[str], program: tuple[str, ...] = ("python", "-m", "harness.bench")) -> dict:
    """When, where and how a benchmark ran; `program` is what precedes argv on its command line."""
    info = provenance()
    return {
        "command": shlex.join([*program, *argv]),
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


def cpu_batch(overrides: list[str], defaults: list[str], device: torch.device) -> list[str]:
    """On CPU, a batch that divides when the command names a model but no batch: a named model keeps
    its sequence length (d12: 2,048), which train=smoke's 2,048-token batch of 16 rows cannot hold;
    one row of one sequence divides on any model. None on CUDA or when the batch already divides."""
    named = {o.split("=", 1)[0] for o in overrides}
    if device.type != "cpu" or "model" not in named or named & {"train", *BATCH_KEYS}:
        return []
    cfg = compose([*defaults, *overrides])
    if cfg.train.total_batch_tokens % (cfg.train.device_batch_size * cfg.model.sequence_len) == 0:
        return []
    return ["train.device_batch_size=1", "train.total_batch_tokens=${model.sequence_len}"]


# one training step -------------------------------------------------------------------------
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
    spec: RunSpec
    seconds: list[float]
    final_loss: float
    compiled: bool

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def build_training_step(overrides: list[str], device: torch.device) -> TrainingStep:
    """The composed config's optimizer step exactly as the trainer takes it (harness.run.build), on
    random tokens already on the device: the one step builder of every benchmark."""
    spec = resolve_run(compose(overrides), check_inputs=False)
    if spec.dist.world_size != 1:
        raise ConfigError(
            f"harness.bench measures one process; WORLD_SIZE={spec.dist.world_size} (run it without torchrun)"
        )
    built = build_run_step(spec)
    # After the model: its init seeds the generator, so the tokens are the same for every config.
    built.batches = random_batches(
        spec.model.vocab_size, spec.train.device_batch_size, spec.model.sequence_len, spec.device
    )
    return built


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
    return StepTimes(training.spec, seconds, final_loss, training.compiled)


def profile_steps(step: Callable, device: torch.device, path: Path, count: int = 2) -> None:
    """Run `count` steps under torch.profiler; write a Chrome trace (chrome://tracing, Perfetto) and
    print the kernels that take the most device time."""
    from torch.profiler import ProfilerActivity, profile  # only with --profile: the profiler is large

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
    """What `harness.run.build.autocast_for` runs the matmuls in."""
    return "bfloat16" if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda") else "float32"
