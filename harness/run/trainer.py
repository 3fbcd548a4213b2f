"""The training loop: evaluate when due, take a step, log, checkpoint, until the horizon or a stop.

`Trainer.run` reads as the table of contents; each step of it is one short method below. The
trainer owns the model, optimizer, data loader and what the loop accumulates (`TrainState`, saved
in every checkpoint); it appends to metrics.jsonl and writes checkpoints through
harness.run.checkpoint. It must not decide whether a run starts, resumes or is skipped
(harness.run.decision), nor write summary.json (harness.run.outcome).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from harness.data import build_train_loader
from harness.data.loader import open_corpus
from harness.distributed import all_reduce_mean, any_rank
from harness.eval.bpb import evaluate_bpb
from harness.eval.core import run_core_eval
from harness.hardware import GIB, peak_flops, peak_memory_bytes
from harness.optim import summarize_parameter_table
from harness.precision import full_precision_linears
from harness.results.rundir import RunDir
from harness.run.build import RunData, build_training_step, optimizer_step
from harness.run.checkpoint import (
    LoadedCheckpoint,
    check_tokenizer,
    optimizer_shard,
    restore_rng,
    rng_state,
    trim_metrics,
    write_checkpoint,
)
from harness.run.outcome import Summary, started_summary
from harness.run.profile import StepProfiler
from harness.run.spec import RunSpec
from harness.schedules import lr_multiplier, muon_momentum, weight_decay_multiplier

log = logging.getLogger("ablate.train")

# Steps left out of the throughput summary: the first ones include compilation and warm-up.
THROUGHPUT_WARMUP_STEPS = 5


@dataclass
class TrainState:
    """What the loop accumulates, saved in every checkpoint."""

    step: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    min_val_bpb: float = math.inf
    last_val_bpb: float | None = None
    min_loss_ema: float = math.inf
    loss_ema: float | None = None
    core: dict = field(default_factory=dict)
    step_tok_per_s: list = field(default_factory=list)
    peak_memory_bytes: int = 0  # the most any attempt of this run held so far (harness.hardware)


class Diverged(Exception):
    pass


class Trainer:
    def __init__(self, spec: RunSpec, rundir: RunDir, logger, data: RunData):
        self.spec, self.rundir, self.logger = spec, rundir, logger
        self.device = spec.device
        self.tokenizer = data.tokenizer
        self.token_bytes = self.tokenizer.token_bytes()
        self.tokenizer_hash = self.tokenizer.digest()
        built = build_training_step(spec)  # the benchmarks' builder too
        self.model, self.step_model, self.autocast = built.model, built.step_model, built.autocast
        self.optimizer, self.param_rows = built.optimizer, built.param_rows
        self.val_batches = data.val_batches
        self.loader = None
        self.state = TrainState()
        self.metrics_records = 0
        self.peak_flops = peak_flops(self.device)
        self.stop_signal: int | None = None
        self.divergence: str | None = None
        self.saved_step: int | None = None  # the step of the checkpoint on disk that this process wrote or read
        self.profiler = StepProfiler(spec.train.profile.steps, rundir.path, spec.dist.rank, self.device)

    # the loop ------------------------------------------------------------------------------
    def run(self, resume: LoadedCheckpoint | None) -> str:
        """Train to the horizon. Returns the final status: completed, diverged or interrupted."""
        if resume is not None:
            self.restore(resume)
        else:
            self._open_loader(None)
        first_step, last_step = self.state.step, self.spec.num_iterations
        if resume is not None and first_step == last_step:
            return "completed"  # the final checkpoint is written after the final evaluation: nothing is left
        while True:
            step = self.state.step
            if step > first_step and step % self.spec.train.checkpoint_every == 0 and step < last_step:
                self.save_checkpoint()
            self.evaluate(step)
            if step == last_step:
                break
            if self.stop_requested():
                self.save_checkpoint()
                return "interrupted"
            lrm = self.apply_schedules(step)
            self.profiler.before_step(step)
            loss, step_time = self.timed_train_step()
            self.state.step += 1
            self.profiler.after_step(self.state.step)
            self.state.train_time_s += step_time
            self.state.wall_time_s += step_time
            self.log_step(loss, lrm, step_time)
            try:
                self.check_divergence(loss)
            except Diverged as e:
                log.error(f"diverged: {e}")
                self.divergence = str(e)
                return "diverged"
        self.save_checkpoint()
        return "completed"

    def stop_requested(self) -> bool:
        """Whether any rank was signalled: all ranks must stop at the same step."""
        return any_rank(self.stop_signal is not None, self.device)

    # checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Every rank its shard, then rank 0 the main file and the manifest (harness.run.checkpoint)."""
        step = self.state.step
        if step == self.saved_step:
            return  # resumed here and stopped at once: that checkpoint is already on disk
        path = write_checkpoint(
            self.rundir,
            step,
            self.spec.dist,
            self.device,
            self.shard_state(),
            self.main_state,
            self.spec.train.keep_checkpoints,
        )
        if path is not None:
            log.info(f"checkpoint {path}")
        self.saved_step = step

    def shard_state(self) -> dict:
        """This rank's part: tensors and plain values only (a weights-only load takes them back)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": rng_state(self.device),
        }

    def main_state(self) -> dict:
        return {
            "step": self.state.step,
            "world_size": self.spec.dist.world_size,
            "model": self.model.state_dict(),
            "train_state": asdict(self.state),
            "metrics_records": self.metrics_records,
            "tokenizer": self.tokenizer_hash,
            "config": self.spec.config,
        }

    def restore(self, loaded: LoadedCheckpoint) -> None:
        """Continue from a loaded checkpoint: its main file and this rank's shard."""
        ckpt = loaded.main
        check_tokenizer(loaded.path, ckpt["tokenizer"], self.tokenizer)
        shard = optimizer_shard(loaded, self.optimizer, self.spec.dist.world_size, self.spec.dist.rank)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(shard["optimizer"])
        self.state = TrainState(**ckpt["train_state"])
        self.metrics_records = ckpt["metrics_records"]
        restore_rng(shard["rng"], self.device)
        self._open_loader(shard["loader"])
        if self.spec.dist.is_main:
            trim_metrics(self.rundir, self.metrics_records, self.state.step)
        self.saved_step = self.state.step
        log.info(f"resumed from {loaded.path} at step {self.state.step}")

    def _open_loader(self, state: dict | None) -> None:
        self.loader = build_train_loader(
            self.spec.data,
            self.tokenizer,
            self.spec.train.device_batch_size,
            self.spec.model.sequence_len,
            self.spec.dist.rank,
            self.spec.dist.world_size,
            state=state,
            rows_per_step=self.spec.rows_per_step,
        )
        self.batches = iter(self.loader)

    # one optimizer step --------------------------------------------------------------------
    def apply_schedules(self, step: int) -> float:
        spec, muon = self.spec, self.spec.optim.muon
        lrm = lr_multiplier(
            step,
            spec.num_iterations,
            spec.train.warmup_ratio,
            spec.train.warmdown_ratio,
            spec.train.final_lr_frac,
            spec.train.warmup_steps,
        )
        momentum = muon_momentum(
            step,
            muon.warmup_momentum,
            muon.momentum,
            muon.momentum_warmup_steps,
            muon.warmdown_momentum,
            spec.num_iterations,
            spec.train.warmdown_ratio,
        )
        wd = weight_decay_multiplier(step, spec.num_iterations, muon.weight_decay_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = momentum
                group["weight_decay"] = group["initial_weight_decay"] * wd
        return lrm

    def timed_train_step(self) -> tuple[float, float]:
        """One step, and its seconds measured between device synchronizations."""
        self._synchronize()
        started = time.perf_counter()
        loss = self.train_step()
        self._synchronize()
        return loss, time.perf_counter() - started

    def train_step(self) -> float:
        """One optimizer step; returns the loss averaged over micro-batches and ranks."""
        loss = optimizer_step(
            self.step_model, self.model, self.optimizer, self.batches, self.spec.grad_accum, self.device, self.autocast
        )
        return all_reduce_mean(loss).item()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # evaluation ----------------------------------------------------------------------------
    def due(self, every: int, step: int) -> bool:
        return step % every == 0 or step == self.spec.num_iterations

    def evaluate(self, step: int) -> None:
        start = time.perf_counter()
        self.model.eval()
        with full_precision_linears(self.model):  # precision=fp8 is scored like bf16
            self._evaluate(step)
        self.model.train()
        self.state.wall_time_s += time.perf_counter() - start

    def _evaluate(self, step: int) -> None:
        if self.due(self.spec.evals.val_every, step):
            bpb = evaluate_bpb(self.step_model, self.val_batches, self.token_bytes, self.device, self.autocast)
            self.state.last_val_bpb = bpb
            self.state.min_val_bpb = min(self.state.min_val_bpb, bpb)
            self.record({"val_bpb": bpb})
            log.info(f"step {step:5d} | val bpb {bpb:.4f}")
        if self.spec.core is not None and self.due(self.spec.core.every, step):
            self.evaluate_core()

    def evaluate_core(self) -> None:
        # The eager model: CORE's batches vary in shape, and a compiled model would recompile for each.
        result = run_core_eval(
            self.model,
            self.tokenizer,
            self.spec.core,
            device=self.device,
            autocast=self.autocast,
            progress=self.spec.dist.is_main,
        )
        record = result.to_record()
        self.state.core = record
        self.record(record)
        log.info(f"step {self.state.step:5d} | CORE {result.core:.4f}")

    # logging -------------------------------------------------------------------------------
    def record(self, values: dict) -> None:
        """Append a metrics record (rank 0 only) stamped with the run's progress counters."""
        if not self.spec.dist.is_main:
            return
        tokens = self.state.step * self.spec.train.total_batch_tokens
        record = {
            "step": self.state.step,
            "tokens": tokens,
            "flops": tokens * self.spec.flops_per_token,
            "time_s": self.state.train_time_s,
            **values,
        }
        self.rundir.append_metrics(record)
        self.metrics_records += 1
        self.logger.log(record)

    def mfu(self, tok_per_s: float | None) -> float | None:
        """Model FLOPs utilization: FLOPs per token x tokens per second over every rank's peak."""
        if not (tok_per_s and self.peak_flops):
            return None
        return self.spec.flops_per_token * tok_per_s / (self.peak_flops * self.spec.dist.world_size)

    def peak_memory_gib(self) -> float:
        """This rank's peak memory so far, over every attempt of the run (bookkeeping: it changes
        nothing the run computes, and no resume check compares it)."""
        self.state.peak_memory_bytes = max(self.state.peak_memory_bytes, peak_memory_bytes(self.device))
        return self.state.peak_memory_bytes / GIB

    def log_step(self, loss: float, lrm: float, step_time: float) -> None:
        spec = self.spec
        tok_per_s = spec.train.total_batch_tokens / step_time
        self.state.step_tok_per_s.append(tok_per_s)
        mfu = self.mfu(tok_per_s)
        peak_gib = self.peak_memory_gib()
        self.record(
            {"train_loss": loss, "lr_multiplier": lrm, "tok_per_s": tok_per_s, "mfu": mfu, "peak_memory_gib": peak_gib}
        )
        step = self.state.step
        if spec.dist.is_main and (step % spec.train.print_every == 0 or step == spec.num_iterations):
            remaining = (spec.num_iterations - step) * step_time
            mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "-"
            log.info(
                f"step {step:5d}/{spec.num_iterations} ({100 * step / spec.num_iterations:5.1f}%) | "
                f"loss {loss:.4f} | lrm {lrm:.2f} | dt {1000 * step_time:.0f}ms | "
                f"tok/s {tok_per_s:,.0f} | mfu {mfu_text} | eta {remaining / 60:.1f}m"
            )

    def check_divergence(self, loss: float) -> None:
        """Stop on a non-finite loss, or on a loss above divergence_factor x its best smoothed value."""
        state, train = self.state, self.spec.train
        if not math.isfinite(loss):
            raise Diverged(f"loss is {loss} at step {state.step}")
        # An EMA over about 10 steps: the smoothed loss the runaway check compares with.
        state.loss_ema = loss if state.loss_ema is None else 0.9 * state.loss_ema + 0.1 * loss
        if state.step > train.divergence_after_steps and loss > train.divergence_factor * state.min_loss_ema:
            raise Diverged(
                f"loss {loss:.3f} at step {state.step} exceeds {train.divergence_factor} x "
                f"its best smoothed value {state.min_loss_ema:.3f}"
            )
        state.min_loss_ema = min(state.min_loss_ema, state.loss_ema)

    def summary(self, status: str, error: str | None = None) -> Summary:
        spec, state = self.spec, self.state
        steady = state.step_tok_per_s[THROUGHPUT_WARMUP_STEPS:] or state.step_tok_per_s
        tok_per_s = statistics.median(steady) if steady else None
        tokens = state.step * spec.train.total_batch_tokens
        core = state.core
        return started_summary(
            spec,
            status,
            step=state.step,
            tokens=tokens,
            flops=tokens * spec.flops_per_token,
            final_val_bpb=state.last_val_bpb if state.step == spec.num_iterations else None,
            last_val_bpb=state.last_val_bpb,
            min_val_bpb=state.min_val_bpb if math.isfinite(state.min_val_bpb) else None,
            core=core.get("core"),
            core_tasks={k.split("/", 1)[1]: v for k, v in core.items() if k.startswith("core/")},
            train_time_s=state.train_time_s,
            wall_time_s=state.wall_time_s,
            tok_per_s=tok_per_s,
            mfu=self.mfu(tok_per_s),
            peak_memory_gib=self.peak_memory_gib(),
            tokenizer=self.tokenizer_hash,
            error=error,
        )


def data_passes(spec: RunSpec, tokenizer) -> tuple[float, int] | None:
    """(how many times the horizon reads the training split, the split's tokens) for data=builtin,
    whose split is small (4 MB of text by default) and counted in its tokenized cache; None for
    sources whose size is not known without reading them (and for a spec resolved without data)."""
    if spec.data is None or spec.data.source != "builtin":
        return None
    split_tokens = open_corpus(spec.data, "train", tokenizer, spec.model.sequence_len).num_tokens
    return spec.num_iterations * spec.train.total_batch_tokens / split_tokens, split_tokens


def repeats_data_warning(spec: RunSpec, passes: tuple[float, int] | None) -> str | None:
    """What a run that reads its training split more than once is told before it starts."""
    if passes is None or passes[0] <= 1:
        return None
    times, split_tokens = passes
    return (
        f"the horizon reads the training split {times:.2f} times ({split_tokens:,} tokens): documents repeat "
        f"from about step {split_tokens // spec.train.total_batch_tokens:,}, after which validation bpb can "
        "stop falling or rise (data.corpus_bytes sets data=builtin's size)"
    )


def describe_spec(spec: RunSpec, trainer: Trainer, passes: tuple[float, int] | None = None) -> str:
    counts = spec.param_counts
    tokens = spec.num_iterations * spec.train.total_batch_tokens
    over_data = "" if passes is None else f", {passes[0]:.2f} passes over the training split's {passes[1]:,} tokens"
    return "\n".join(
        [
            f"model: {spec.model}",
            "parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()),
            f"batch: {spec.train.total_batch_tokens:,} tokens = {spec.train.device_batch_size} x "
            f"{spec.model.sequence_len} x {spec.grad_accum} accumulation x {spec.dist.world_size} ranks",
            f"horizon: {spec.num_iterations:,} steps, {tokens:,} tokens, "
            f"{tokens * spec.flops_per_token:.3e} FLOPs ({tokens / counts['scaling']:.2f} tokens per scaling param)"
            + over_data,
            f"LR table (every parameter in {trainer.rundir.params_path.name}):\n"
            + summarize_parameter_table(trainer.param_rows),
        ]
    )
