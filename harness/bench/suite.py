"""`python -m harness.bench suite`: every GPU number issue 16 asks for, in one process, one call.

    python -m harness.bench suite                       # on one H100/H200: d12, about 8 minutes
    python -m harness.bench suite --device cpu --tiny   # the same cases at the tiny size (tests)
    python -m harness.bench suite --only optimizer ab_rope_bf16

Cases, in this order (the order is the priority: when the time budget runs out, the rest are recorded
as skipped with that reason, and `--only NAME ...` measures them in a second call):

  matmul           the bf16 8192^3 matmul rate, the ceiling MFU is compared with
  attention_*      d12 tok/s, window L and SSSL, each with model.attention = sdpa | flex | auto
  ab_rope_bf16     rope=slice against rope=chunk, interleaved, in bf16
  ab_rope_fp8      the same in precision=fp8
  fp8_vs_bf16      precision=fp8 against bf16 (rope=slice), interleaved
  rope_fused       rope=fused tok/s, against both splits, and its agreement with eager in bf16
  optimizer        the compiled optimizer step against the eager one
  memory           ablate-plan's peak-memory estimate against the allocator's measured peak: d12 at
                   device batch 32 and d24 at 16 (the reference's facts; tiny: one small shape)
  launcher         a short training run as a plain process and as one launcher=torchrun worker

Every case records its peak memory (CUDA allocator peak; on CPU only the process's max RSS so far).
A/B cases interleave blocks of steps of the two configs in one process (AB BA AB ..., `bench ab`'s
method), so drift and other load hit both alike; they report each side's median, the ratio of
medians and, from two rounds on, B's step time against A's with `bench ab`'s Fieller interval.
What a CPU cannot run (FlexAttention's backward, the fused Triton kernel, float8 matmuls) is skipped
with the reason in the output.

Output: `results/benchmarks/suite-<device>-<UTC stamp>.json` and `.md` beside it (format in
experiments/rope_mlp_lr/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from harness import memory
from harness.bench.ab import ab_verdict, block_means, compare_blocks, interleaved_blocks
from harness.bench.common import (
    DEFAULT_OUT_DIR,
    build_training_step,
    device_name,
    matmul_rate,
    peak_memory_gib,
    provenance_fields,
    resolve_bench_device,
    synchronize,
    timed_steps,
)
from harness.cli import compose
from harness.config import lr_placement, model_config, optim_config
from harness.errors import ConfigError
from harness.optim import build_optimizer
from harness.run.build import TrainingStep, materialize
from models.rotary import fused_unavailable_reason, rotary_tables, rotate_and_normalize

# Seconds the suite may spend; a case is started only while more than its estimate is left.
DEFAULT_BUDGET_S = 450.0
# The interval level of the A/B cases, as `bench ab`'s default.
AB_CONFIDENCE = 0.95
# The shapes: d12 on a GPU (the recipe's batch), the smoke's tiny model on CPU.
GPU_BASE = ["model=d12"]
TINY_BASE = ["model=tiny", "train=smoke", "data.vocab_size=2048"]
CASE_NAMES = (
    "matmul",
    "attention_L_sdpa",
    "attention_L_flex",
    "attention_L_auto",
    "attention_SSSL_sdpa",
    "attention_SSSL_flex",
    "attention_SSSL_auto",
    "ab_rope_bf16",
    "ab_rope_fp8",
    "fp8_vs_bf16",
    "rope_fused",
    "optimizer",
    "memory",
    "launcher",
)
# The memory case's (model, device batch): on a GPU the shapes whose fit the reference's users know
# (d24 fits an 80 GB GPU at 16 rows, not 32; d12 fits at 32), with the tiny model for CPU tests.
MEMORY_SHAPES = (("d12", 32), ("d24", 16))
MEMORY_SHAPES_TINY = (("tiny", 2),)
# Steps the memory case takes before reading the peak: the optimizer state exists after the first.
MEMORY_STEPS = 3


@dataclass
class Settings:
    device: torch.device
    base: list[str]
    steps: int
    warmup: int
    rounds: int
    budget_s: float
    skip: set[str]
    only: set[str] | None


# one training step, as the trainer takes it -----------------------------------------------
def build_step(s: Settings, overrides: list[str]) -> TrainingStep:
    """The case's config, built by the benchmarks' one step builder (so precision=fp8 converts,
    train.compile compiles) on random tokens."""
    return build_training_step([*s.base, *overrides, f"train.device={s.device.type}"], s.device)


def step_seconds(training: TrainingStep, device: torch.device) -> float:
    """Seconds of one optimizer step, host-synchronized like the trainer's."""
    return timed_steps(training.step, device, 1)[0][0]


def reset_peak(device: torch.device) -> None:
    torch._dynamo.reset()  # every case compiles afresh: the recompile limit is per process
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def throughput_case(s: Settings, overrides: list[str]) -> dict:
    reset_peak(s.device)
    training = build_step(s, overrides)
    timed_steps(training.step, s.device, s.warmup)
    seconds = timed_steps(training.step, s.device, s.steps)[0]
    median = statistics.median(seconds)
    spec = training.spec
    return {
        "overrides": overrides,
        "step_time_s": median,
        "step_times_s": seconds,
        "tok_per_s": spec.train.total_batch_tokens / median,
        "flops_per_token": spec.flops_per_token,
        "compiled": training.compiled,
        "peak_memory_gib": peak_memory_gib(s.device),
    }


def ab_case(s: Settings, a: list[str], b: list[str]) -> dict:
    """A and B built side by side, then `rounds` interleaved blocks of `steps` steps per side
    (harness.bench.ab's method): each side's median, and B's mean block time against A's with
    Fieller's interval once there are two blocks of each."""
    reset_peak(s.device)
    sides = {"a": build_step(s, a), "b": build_step(s, b)}
    blocks = interleaved_blocks({k: v.step for k, v in sides.items()}, s.device, s.rounds, s.steps, s.warmup)
    seconds = {side: [t for block in per_block for t in block] for side, per_block in blocks.items()}
    medians = {key: statistics.median(v) for key, v in seconds.items()}
    tokens = sides["a"].spec.train.total_batch_tokens
    interval = None
    if s.rounds >= 2:
        result = compare_blocks(block_means(blocks), AB_CONFIDENCE)
        interval = {
            "delta_pct": result.delta_pct,
            "ci_low_pct": result.low_pct,
            "ci_high_pct": result.high_pct,
            "confidence": AB_CONFIDENCE,
            "p_value": result.p_value,
            "verdict": ab_verdict(result.low_pct, result.high_pct),
        }
    return {
        "a": a,
        "b": b,
        "a_tok_per_s": tokens / medians["a"],
        "b_tok_per_s": tokens / medians["b"],
        "b_over_a": medians["a"] / medians["b"],  # > 1: B is faster
        "a_step_times_s": seconds["a"],
        "b_step_times_s": seconds["b"],
        "b_vs_a_step_time": interval,  # None with one round: an interval needs two blocks of each
        "peak_memory_gib": peak_memory_gib(s.device),  # both models at once
    }


# the parts that are not a training step ---------------------------------------------------------
def timed_optimizer_step(optimizer, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def optimizer_case(s: Settings) -> dict:
    """The optimizer step alone on random gradients, optim.compile=false against true: both built
    side by side, warmed up (the compiled one compiles), then interleaved as the A/B cases are."""
    cfg = compose([*s.base, f"train.device={s.device.type}"])
    reset_peak(s.device)
    optimizers = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        model = materialize(model_config(cfg), s.device, seed=0)
        optim = dataclasses.replace(optim_config(cfg), compile=compiled)
        optimizers[label], _ = build_optimizer(
            model, optim, lr_placement(cfg), int(cfg.train.total_batch_tokens), s.device.type
        )
        generator = torch.Generator(device=s.device).manual_seed(0)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, device=s.device, dtype=p.dtype, generator=generator)
        for _ in range(max(s.warmup, 2)):  # the first compiled step compiles; the second shows no recompile
            timed_optimizer_step(optimizers[label], s.device)
    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(s.rounds):
        for label, optimizer in optimizers.items():
            seconds[label] += [timed_optimizer_step(optimizer, s.device) for _ in range(s.steps)]
    result = {"model_dim": model_config(cfg).n_embd, "peak_memory_gib": peak_memory_gib(s.device)}
    for label, values in seconds.items():
        result[f"{label}_step_time_s"] = statistics.median(values)
        result[f"{label}_step_times_s"] = values
    result["compiled_speedup"] = result["eager_step_time_s"] / result["compiled_step_time_s"]
    return result


def memory_case(s: Settings, tiny: bool) -> dict:
    """`ablate-plan`'s estimate of the peak per device (harness.memory, one process, the run's dtype
    and compile settings) against the peak measured over MEMORY_STEPS training steps of the same
    config: torch.cuda.max_memory_allocated on a GPU; on a CPU the process's max RSS so far, which also
    holds everything before (tests/test_memory.py validates the CPU side properly). One micro-batch a
    step (train.total_batch_tokens = device batch x sequence): gradient accumulation adds no memory
    (the gradients are one buffer) and would multiply the time."""
    shapes = []
    mine = ("model=", "train.device_batch_size=", "train.total_batch_tokens=")
    base = [o for o in s.base if not o.startswith(mine)]  # this case sets these itself
    for model, batch in MEMORY_SHAPES_TINY if tiny else MEMORY_SHAPES:
        reset_peak(s.device)
        overrides = [*base, f"model={model}", f"train.device_batch_size={batch}", f"train.device={s.device.type}"]
        sequence_len = int(compose(overrides).model.sequence_len)
        training = build_training_step([*overrides, f"train.total_batch_tokens={batch * sequence_len}"], s.device)
        timed_steps(training.step, s.device, MEMORY_STEPS)
        measured = peak_memory_gib(s.device)
        spec = training.spec
        estimate = memory.estimate(
            spec.model, training.param_rows, batch, s.device.type, 1, spec.train.dtype, training.compiled
        )
        shapes.append(
            {
                "model": model,
                "device_batch_size": batch,
                "compiled": training.compiled,
                "estimated_peak_gib": estimate.peak_gib,
                "measured_peak_gib": measured,
                "estimate_error": estimate.peak_gib / measured - 1,
                "estimate_parts_gib": {
                    part: getattr(estimate, part) / memory.GIB for part in ("params", "grads", "optimizer", "step_peak")
                },
            }
        )
        del training  # the next shape starts from an empty allocator
    return {"shapes": shapes, "peak_memory_gib": max(shape["measured_peak_gib"] for shape in shapes)}


def rope_agreement(device: torch.device, heads: int, head_dim: int, seq_len: int) -> dict:
    """rope=fused and the eager splits in bf16 against a float64 reference, forward and gradient:
    relative errors ||out - ref|| / ||ref||."""
    cos, sin = rotary_tables(seq_len, head_dim, 10000.0, device)
    x = torch.randn(2, seq_len, heads, head_dim, device=device)
    upstream = torch.randn_like(x)
    x64 = x.double().requires_grad_()
    ref = rotate_and_normalize(x64, cos.double(), sin.double(), "slice")
    (ref_grad,) = torch.autograd.grad(ref, x64, upstream.double())
    errors = {}
    for split in ("slice", "chunk", "fused"):
        xb = x.bfloat16().requires_grad_()
        out = rotate_and_normalize(xb, cos, sin, split)
        (grad,) = torch.autograd.grad(out, xb, upstream.bfloat16())
        errors[split] = {
            "forward_rel_err": ((out.double() - ref).norm() / ref.norm()).item(),
            "grad_rel_err": ((grad.double() - ref_grad).norm() / ref_grad.norm()).item(),
        }
    return errors


def launcher_case(s: Settings, tiny: bool) -> dict:
    """The same short training run as a plain process and as one launcher=torchrun worker; tok/s
    from each run's summary.json (median of the steps after the first 5)."""
    with tempfile.TemporaryDirectory(prefix="suite-launcher-") as tmp:
        common = [
            *s.base,
            "model.window_pattern=L",
            "data=builtin",
            "eval=bpb",
            "eval.val_every=100000",
            f"paths.runs_dir={tmp}/runs",
            f"paths.data_dir={tmp}/data",
        ]
        if tiny:
            # one data stream: the tiny global batch holds fewer rows than the default 8 streams
            common += ["train.num_iterations=3", "eval.val_tokens=2048", "data.corpus_bytes=400000", "data.streams=1"]
        else:  # the corpus' own tokenizer at vocab 2048 trains in seconds; d12's layers are what is timed
            common += [
                "data.vocab_size=2048",
                "data.corpus_bytes=2000000",
                "train.num_iterations=25",
                "train.total_batch_tokens=65536",
                "eval.val_tokens=65536",
            ]
        result = {"overrides": common}
        for label, extra in (("plain", []), ("torchrun", ["launcher=torchrun", "launcher.nproc_per_node=1"])):
            # an explicit run folder: the folder named by these many overrides would pass the 255-byte name limit
            run_dir = f"hydra.run.dir={tmp}/runs/{label}/run"
            command = [sys.executable, "-m", "harness.train", *common, f"name={label}", run_dir, *extra]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if done.returncode != 0:
                raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
            summary = json.loads(next(Path(tmp, "runs", label).rglob("summary.json")).read_text())
            result[f"{label}_tok_per_s"] = summary["tok_per_s"]
            result[f"{label}_wall_s"] = time.perf_counter() - started
        result["torchrun_over_plain"] = result["torchrun_tok_per_s"] / result["plain_tok_per_s"]
        result["peak_memory_gib"] = None  # in the child processes; not read back
    return result


# the cases ------------------------------------------------------------------------------------
def cuda_only(device: torch.device, what: str) -> str | None:
    return None if device.type == "cuda" else f"{what} runs on CUDA only"


def skip_reason(name: str, s: Settings) -> str | None:
    """Why case `name` cannot run here, or None."""
    if name.startswith("attention_") and name.endswith("_flex"):
        return cuda_only(s.device, "FlexAttention's backward (eager on CPU has none in torch 2.13)")
    if name == "rope_fused":
        if s.device.type != "cuda":
            return cuda_only(s.device, "rope=fused (a Triton kernel; the CPU interpreter is for tests)")
        return fused_unavailable_reason(s.device)
    if name in ("ab_rope_fp8", "fp8_vs_bf16") and s.device.type == "cuda":
        if torch.cuda.get_device_capability(s.device) < (8, 9):
            return "precision=fp8 needs float8 matmuls (compute capability 8.9+)"
    return None


def run_case(name: str, s: Settings, tiny: bool) -> dict:
    fp8 = ["precision=fp8"]
    if name == "matmul":
        return matmul_rate(s.device)
    if name.startswith("attention_"):
        _, window, backend = name.split("_")
        return throughput_case(s, [f"model.window_pattern={window}", f"model.attention={backend}"])
    if name == "ab_rope_bf16":
        return ab_case(s, ["rope=slice"], ["rope=chunk"])
    if name == "ab_rope_fp8":
        return ab_case(s, ["rope=slice", *fp8], ["rope=chunk", *fp8])
    if name == "fp8_vs_bf16":
        return ab_case(s, ["rope=slice"], ["rope=slice", *fp8])
    if name == "rope_fused":
        result = throughput_case(s, ["rope=fused"])
        cfg = compose(s.base)
        shape = model_config(cfg)
        result["agreement_bf16"] = rope_agreement(s.device, shape.n_head, shape.head_dim, shape.sequence_len)
        return result
    if name == "optimizer":
        return optimizer_case(s)
    if name == "memory":
        return memory_case(s, tiny)
    if name == "launcher":
        return launcher_case(s, tiny)
    raise AssertionError(name)


def run_suite(s: Settings, tiny: bool, progress: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    cases, longest = [], 0.0
    for name in CASE_NAMES:
        entry = {"name": name}
        elapsed = time.perf_counter() - started
        reason = skip_reason(name, s)
        if s.only is not None and name not in s.only:
            reason = "not in --only"
        elif name in s.skip:
            reason = "--skip"
        elif reason is None and elapsed + longest > s.budget_s:
            left = s.budget_s - elapsed
            reason = f"time budget: {left:.0f} s of {s.budget_s:.0f} s left, a case took up to {longest:.0f} s"
        if reason:
            entry |= {"status": "skipped", "reason": reason}
            progress(f"[suite] {name}: skipped ({reason})")
        else:
            progress(f"[suite] {name} ...")
            case_started = time.perf_counter()
            try:
                entry |= {"status": "measured", **run_case(name, s, tiny)}
            except Exception as e:  # one broken case must not lose the others' numbers
                entry |= {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:500]}"}
            entry["seconds"] = time.perf_counter() - case_started
            longest = max(longest, entry["seconds"])
            progress(f"[suite] {name}: {entry['status']} in {entry['seconds']:.0f} s")
        cases.append(entry)
    return {"cases": cases, "elapsed_s": time.perf_counter() - started}


# the record and its table -----------------------------------------------------------------------
def derived_ratios(cases: dict[str, dict]) -> dict:
    """The issue's targets as ratios within this one run (None where a case is missing)."""

    def get(name, key):
        case = cases.get(name, {})
        return case.get(key) if case.get("status") == "measured" else None

    ratios = {}
    matmul, flops = get("matmul", "matmul_tflops"), get("attention_L_auto", "flops_per_token")
    tok_l = get("attention_L_auto", "tok_per_s")
    # Target: >= 0.72 (the reference measured 0.676 on an H100).
    ratios["L_auto_mfu_vs_matmul"] = tok_l * flops / (matmul * 1e12) if matmul and flops and tok_l else None
    # Target: SSSL with FlexAttention (auto puts it on the S layers) >= 0.95x window L.
    for backend in ("auto", "flex", "sdpa"):
        tok = get(f"attention_SSSL_{backend}", "tok_per_s")
        ratios[f"SSSL_{backend}_over_L_auto"] = tok / tok_l if tok and tok_l else None
    ratios["fp8_over_bf16"] = get("fp8_vs_bf16", "b_over_a")
    ratios["chunk_over_slice_bf16"] = get("ab_rope_bf16", "b_over_a")
    ratios["chunk_over_slice_fp8"] = get("ab_rope_fp8", "b_over_a")
    fused = get("rope_fused", "tok_per_s")
    for split, key in (("slice", "a_tok_per_s"), ("chunk", "b_tok_per_s")):
        other = get("ab_rope_bf16", key)
        ratios[f"fused_over_{split}"] = fused / other if fused and other else None
    ratios["optimizer_compiled_speedup"] = get("optimizer", "compiled_speedup")
    ratios["torchrun_over_plain"] = get("launcher", "torchrun_over_plain")
    # Target: the estimate within the allocator's peak at every shape (ablate-plan's fits column).
    for shape in get("memory", "shapes") or []:
        ratios[f"memory_{shape['model']}_x{shape['device_batch_size']}_estimated_over_measured"] = (
            shape["estimated_peak_gib"] / shape["measured_peak_gib"]
        )
    return ratios


def case_summary(case: dict) -> tuple[str, str, str]:
    """(tok/s or time, peak GiB, note) for the Markdown table."""
    if case["status"] != "measured":
        return "-", "-", f"{case['status']}: {case['reason']}"
    peak = case.get("peak_memory_gib")
    peak_text = "-" if peak is None else f"{peak:.2f}"
    name = case["name"]
    if name == "matmul":
        return f"{case['matmul_tflops']:.3g} TFLOP/s", "-", f"{case['matmul_shape']} {case['matmul_dtype']}"
    if "tok_per_s" in case:
        note = f"step {1000 * case['step_time_s']:.1f} ms, compiled={case['compiled']}"
        if "agreement_bf16" in case:
            note += "; bf16 rel. err vs float64 (fwd/grad): " + ", ".join(
                f"{k} {v['forward_rel_err']:.1e}/{v['grad_rel_err']:.1e}" for k, v in case["agreement_bf16"].items()
            )
        return f"{case['tok_per_s']:,.0f} tok/s", peak_text, note
    if "b_over_a" in case:
        a, b = " ".join(case["a"]), " ".join(case["b"])
        return (
            f"{case['a_tok_per_s']:,.0f} / {case['b_tok_per_s']:,.0f} tok/s",
            peak_text,
            f"A = {a}, B = {b}: B/A {case['b_over_a']:.4f}",
        )
    if name == "optimizer":
        return (
            f"{1000 * case['eager_step_time_s']:.1f} / {1000 * case['compiled_step_time_s']:.1f} ms",
            peak_text,
            f"eager / compiled at dim {case['model_dim']}: {case['compiled_speedup']:.2f}x",
        )
    if name == "memory":
        return (
            "-",
            peak_text,
            "; ".join(
                f"{m['model']} x {m['device_batch_size']}: estimated {m['estimated_peak_gib']:.2f} GiB, "
                f"measured {m['measured_peak_gib']:.2f} ({100 * m['estimate_error']:+.1f}%)"
                for m in case["shapes"]
            ),
        )
    if name == "launcher":
        return (
            f"{case['plain_tok_per_s']:,.0f} / {case['torchrun_tok_per_s']:,.0f} tok/s",
            peak_text,
            f"plain / torchrun (1 worker): {case['torchrun_over_plain']:.4f}",
        )
    return "-", peak_text, ""


def format_markdown(record: dict) -> str:
    lines = [
        f"# harness.bench suite: {record['gpu_name']} ({record['device']}), {record['date']}",
        "",
        f"commit {record['git_commit']}{' (dirty)' if record['git_dirty'] else ''}, torch {record['torch_version']}, "
        f"CUDA {record['cuda_version']}, base `{' '.join(record['base_overrides'])}`, {record['steps']} timed steps "
        f"after {record['warmup_steps']} warm-up, {record['rounds']} A/B rounds, {record['elapsed_s']:.0f} s",
        "",
        "| case | result | peak GiB | note |",
        "|---|---|---|---|",
    ]
    for case in record["cases"]:
        result, peak, note = case_summary(case)
        lines.append(f"| {case['name']} | {result} | {peak} | {note} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    for key, value in record["ratios"].items():
        lines.append(f"| {key} | {'-' if value is None else f'{value:.4f}'} |")
    if record["device"] == "cpu":
        lines += ["", "CPU numbers only check the code path; they say nothing about a GPU."]
    return "\n".join(lines) + "\n"


def write_outputs(record: dict, out_dir: Path) -> tuple[Path, Path]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"suite-{record['device']}-{stamp}.json"
    md_path = json_path.with_suffix(".md")
    for path, text in ((json_path, json.dumps(record, indent=2) + "\n"), (md_path, format_markdown(record))):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)  # atomic: a reader never sees half a file
    return json_path, md_path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench suite",
        description="Every GPU measurement of issue 16 in one call: matmul ceiling, attention backends, "
        "rope A/B in bf16 and fp8, rope=fused, fp8 vs bf16, compiled optimizer, the memory estimate against "
        "the measured peak, torchrun overhead.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every case (e.g. model=d24)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="the smoke's tiny model (CPU tests), not d12")
    parser.add_argument("--steps", type=int, help="timed steps per case or A/B block (default 5; tiny 1)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, compilation (default 2; tiny 0)")
    parser.add_argument("--rounds", type=int, help="A/B rounds of --steps steps per side (default 3; tiny 1)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds before cases are skipped")
    parser.add_argument("--only", nargs="+", choices=CASE_NAMES, help="measure only these cases")
    parser.add_argument("--skip", nargs="+", choices=CASE_NAMES, default=[], help="leave these cases out")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the JSON and table go")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    device = resolve_bench_device(args.device)
    if device.type == "cpu" and not args.tiny:
        raise ConfigError("harness.bench suite on CPU runs only at the tiny size; add --tiny")
    settings = Settings(
        device=device,
        base=[*(TINY_BASE if args.tiny else GPU_BASE), *args.overrides],
        steps=args.steps or (1 if args.tiny else 5),
        warmup=args.warmup if args.warmup is not None else (0 if args.tiny else 2),
        rounds=args.rounds or (1 if args.tiny else 3),
        budget_s=args.budget,
        skip=set(args.skip),
        only=set(args.only) if args.only else None,
    )
    outcome = run_suite(settings, args.tiny)
    by_name = {c["name"]: c for c in outcome["cases"]}
    record = {
        "benchmark": "suite",
        "device": device.type,
        "gpu_name": device_name(device),
        "base_overrides": settings.base,
        "steps": settings.steps,
        "warmup_steps": settings.warmup,
        "rounds": settings.rounds,
        "budget_s": settings.budget_s,
        **outcome,
        "ratios": derived_ratios(by_name),
        **provenance_fields(["suite", *argv]),
    }
    json_path, md_path = write_outputs(record, args.out_dir)
    print(format_markdown(record))
    print(f"wrote {json_path} and {md_path}")
    return record
