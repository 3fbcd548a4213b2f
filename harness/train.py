"""Training: the Hydra entry point `python -m harness.train` and the loop it runs.

    python -m harness.train model=d12 rope=chunk mlp_lr=c_proj_2x     # one run
    python -m harness.train -m experiment=smoke                       # a sweep (Hydra multirun)

Order of work: check the whole config (batch arithmetic, horizon, LR placement, data and CORE
bundle present) before anything heavy; claim the run directory, which is the run's identity, and
let harness.lifecycle decide what this invocation does there (train, resume from the newest valid
checkpoint, skip, refuse); then build tokenizer, model, optimizer and data, and loop: evaluate when
due, take a step, log, checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from harness.cli import CONFIG_DIR
from harness.config import (
    EvalConfig,
    LRPlacement,
    OptimConfig,
    TrainConfig,
    check_logger,
    check_rope,
    check_seed,
    eval_config,
    grad_accum_steps,
    lr_placement,
    model_config,
    num_iterations,
    optim_config,
    train_config,
)
from harness.data.tokenizer import Tokenizer
from harness.distributed import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    broadcast_parameters,
    destroy_process_group,
    dist_info_from_env,
    has_rank_env,
    init_process_group,
)
from harness.errors import USAGE_EXIT_CODE, ConfigError
from harness.eval.bpb import evaluate_bpb
from harness.hardware import peak_flops, resolve_device
from harness.lifecycle import (
    RunBusy,
    RunStopped,
    Start,
    broadcast,
    broadcast_decision,
    claimed,
    decide,
    describe_fault,
    is_environment_fault,
    list_tree,
    load_for_resume,
    location_keys,
    prepare,
    record_config_failure,
    resolved_config,
    trim_metrics,
    tuple_tree,
    write_checkpoint,
)
from harness.optim import build_optimizer, format_parameter_table, parameter_table, summarize_parameter_table
from harness.precision import check_precision, convert_for_training, full_precision_linears
from harness.provenance import provenance
from harness.reshard import load_rank_shard
from harness.results.rundir import RunDir
from harness.schedules import lr_multiplier, muon_momentum, weight_decay_multiplier
from models.gpt import GPT, GPTConfig

log = logging.getLogger("ablate.train")

# Steps left out of the throughput summary: the first ones include compilation and warm-up.
THROUGHPUT_WARMUP_STEPS = 5


@dataclass(frozen=True)
class RunPlan:
    """Everything derived from the config alone, checked before any model is built."""

    cfg: DictConfig
    model: GPTConfig
    train: TrainConfig
    optim: OptimConfig
    placement: LRPlacement
    evals: EvalConfig
    dist: DistInfo
    device: torch.device
    grad_accum: int
    num_iterations: int
    flops_per_token: float
    param_counts: dict

    @property
    def core_enabled(self) -> bool:
        return bool(self.evals.core.get("enabled", False))


def plan_run(cfg: DictConfig, check_inputs: bool = True, world_size: int | None = None) -> RunPlan:
    """Validate the config and derive the run's arithmetic. Raises ConfigError on user mistakes.
    `check_inputs=False` skips the output directory, dataset and CORE bundle checks (benchmarks on
    random tokens, planning).
    `world_size` plans for that many ranks (the preflight, before a launcher starts them); by
    default this process's rank and world size come from the environment."""
    from harness.data import check_data

    model_cfg = model_config(cfg)
    train, optim, placement, evals = train_config(cfg), optim_config(cfg), lr_placement(cfg), eval_config(cfg)
    dist = dist_info_from_env() if world_size is None else DistInfo(world_size=world_size)
    device = resolve_device(train.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    grad_accum = grad_accum_steps(train, model_cfg.sequence_len, dist.world_size)
    check_precision(cfg, device)
    meta_model = GPT.on_meta(model_cfg)
    counts = meta_model.parameter_counts()
    fpt = meta_model.flops_per_token()
    parameter_table(meta_model, optim, placement, train.total_batch_tokens)  # rejects LR-placement typos
    steps = num_iterations(train, counts["scaling"], fpt)
    check_seed(cfg.seed)
    check_logger(cfg.logger)
    if evals.val_every <= 0:
        raise ConfigError(f"eval.val_every={evals.val_every} must be positive")
    one_batch_per_rank = train.device_batch_size * model_cfg.sequence_len * dist.world_size
    if evals.val_tokens < one_batch_per_rank:
        raise ConfigError(
            f"eval.val_tokens={evals.val_tokens} is less than one validation batch per rank "
            f"(train.device_batch_size x model.sequence_len x world_size = {one_batch_per_rank})"
        )
    if check_inputs:
        from harness.data.loader import check_streams

        check_streams(cfg, train.total_batch_tokens // model_cfg.sequence_len, dist.world_size)
        if not str(cfg.paths.runs_dir).strip():
            raise ConfigError("paths.runs_dir='' is empty; give the folder runs are written to (default: runs)")
        if cfg.launcher.get("kind") in ("local", "torchrun"):  # runs on this machine (SLURM jobs run elsewhere)
            check_rope(model_cfg, device)
        check_writable("paths.runs_dir", Path(cfg.paths.runs_dir))
        check_data(cfg, dist.world_size)
        if evals.core.get("enabled", False):
            from harness.eval.core import check_bundle

            check_bundle(cfg)
    return RunPlan(cfg, model_cfg, train, optim, placement, evals, dist, device, grad_accum, steps, fpt, counts)


def check_writable(key: str, path: Path) -> None:
    """Create `path` if needed and write a file in it: permission bits alone mislead (root, NFS)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"{key}={path} is not a writable directory ({e.strerror})") from None


# the trainer ---------------------------------------------------------------------------------
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


class Diverged(Exception):
    pass


def autocast_for(device: torch.device, dtype: str):
    """A context factory: bf16 autocast on CUDA (the recipe), plain float32 on CPU."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def materialize(config: GPTConfig, device: torch.device, seed: int) -> GPT:
    """The network on `device` with the recipe's init (seeded) and the recipe's storage dtypes."""
    model = GPT.on_meta(config)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()
    if device.type == "cuda":
        # The recipe keeps embedding tables in bf16 on the GPU (half the memory and traffic).
        model.transformer.wte.to(torch.bfloat16)
        model.value_embeds.to(torch.bfloat16)
    return model


def build_model(plan: RunPlan) -> GPT:
    model = materialize(plan.model, plan.device, plan.cfg.seed)
    convert_for_training(model, plan.cfg, plan.device)  # precision=fp8: float8 Linear layers, before compile
    broadcast_parameters(model)  # every rank starts from rank 0's weights, whatever its RNG did
    return model


def check_tokenizer(checkpoint: Path, saved_digest: str, tokenizer) -> None:
    """A checkpoint's token ids mean something only with the tokenizer it was trained with."""
    if saved_digest != tokenizer.digest():
        raise ConfigError(
            f"checkpoint {checkpoint} was trained with tokenizer {saved_digest}, but the current one is "
            f"{tokenizer.digest()}; its token ids would mean other things (point data.* at the run's tokenizer, "
            "or train.resume=never to restart)"
        )


def compile_for_training(model: GPT, plan: RunPlan):
    """torch.compile when train.compile is set (on CPU too: the smoke turns it off, its steps are too few
    to pay back the compilation); the eager model otherwise."""
    if plan.train.compile:
        return torch.compile(model, dynamic=False)
    return model


def optimizer_step(
    step_model, model: GPT, optimizer, batches, grad_accum: int, device: torch.device, autocast
) -> torch.Tensor:
    """Accumulate gradients over `grad_accum` micro-batches, then step; returns the mean loss
    (a device tensor, so no host sync happens here)."""
    total = torch.zeros((), device=device)
    for _ in range(grad_accum):
        inputs, targets = next(batches)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            loss = step_model(inputs, targets)
        (loss / grad_accum).backward()
        total += loss.detach()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return total / grad_accum


@dataclass
class RunData:
    """The tokenizer and this rank's validation batches: loading them is the last data check."""

    tokenizer: Tokenizer
    val_batches: list

    @classmethod
    def load(cls, plan: RunPlan) -> RunData:
        from harness.data import build_tokenizer, val_batches

        tokenizer = build_tokenizer(plan.cfg)
        batches = val_batches(
            plan.cfg,
            tokenizer,
            plan.train.device_batch_size,
            plan.model.sequence_len,
            plan.evals.val_tokens,
            plan.dist.rank,
            plan.dist.world_size,
        )
        return cls(tokenizer, batches)


class Trainer:
    def __init__(self, plan: RunPlan, rundir: RunDir, logger, data: RunData):
        self.plan, self.rundir, self.logger = plan, rundir, logger
        train = plan.train
        self.device = plan.device
        self.autocast = autocast_for(self.device, train.dtype)
        self.tokenizer = data.tokenizer
        self.token_bytes = self.tokenizer.token_bytes()
        self.tokenizer_hash = self.tokenizer.digest()
        self.model = build_model(plan)
        self.step_model = compile_for_training(self.model, plan)
        self.optimizer, self.param_rows = build_optimizer(
            self.model,
            plan.optim,
            plan.placement,
            train.total_batch_tokens,
            self.device.type,
            plan.dist.world_size,
            plan.dist.rank,
            model_compiled=plan.train.compile,
        )
        self.val_batches = data.val_batches
        self.loader = None
        self.state = TrainState()
        self.metrics_records = 0
        self.peak_flops = peak_flops(self.device)
        self.stop_signal: int | None = None
        self.divergence: str | None = None
        self.saved_step: int | None = None  # the step of the checkpoint on disk that this process wrote or read

    # checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Every rank its shard, then rank 0 the main file and the manifest (harness.lifecycle)."""
        step = self.state.step
        if step == self.saved_step:
            return  # resumed here and stopped at once: that checkpoint is already on disk
        path = write_checkpoint(
            self.rundir,
            step,
            self.plan.dist,
            self.device,
            self.shard_state(),
            self.main_state,
            self.plan.train.keep_checkpoints,
        )
        if path is not None:
            log.info(f"checkpoint {path}")
        self.saved_step = step

    def shard_state(self) -> dict:
        """This rank's part: tensors and plain values only (a weights-only load takes them back)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "python": list_tree(random.getstate()),
            },
        }

    def main_state(self) -> dict:
        return {
            "step": self.state.step,
            "world_size": self.plan.dist.world_size,
            "model": self.model.state_dict(),
            "train_state": asdict(self.state),
            "metrics_records": self.metrics_records,
            "tokenizer": self.tokenizer_hash,
            "config": resolved_config(self.plan.cfg),
        }

    def restore(self, path: Path, ckpt: dict, shard: dict) -> None:
        """Continue from checkpoint `path`, whose main file and this rank's shard are loaded."""
        check_tokenizer(path, ckpt["tokenizer"], self.tokenizer)
        if ckpt["world_size"] != self.plan.dist.world_size:
            # Another world size: the optimizer state is re-sharded (the data position is per stream, not per rank).
            shard = load_rank_shard(
                lambda rank: RunDir.load_checkpoint(path, rank=rank),
                ckpt["world_size"],
                self.plan.dist.world_size,
                self.plan.dist.rank,
                self.optimizer,
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(shard["optimizer"])
        self.state = TrainState(**ckpt["train_state"])
        self.metrics_records = ckpt["metrics_records"]
        torch.set_rng_state(shard["rng"]["torch"])
        if shard["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(shard["rng"]["cuda"], self.device)
        random.setstate(tuple_tree(shard["rng"]["python"]))
        self._open_loader(shard["loader"])
        if self.plan.dist.is_main:
            trim_metrics(self.rundir, self.metrics_records, self.state.step)
        self.saved_step = self.state.step
        log.info(f"resumed from {path} at step {self.state.step}")

    def _open_loader(self, state: dict | None) -> None:
        from harness.data import build_train_loader

        self.loader = build_train_loader(
            self.plan.cfg,
            self.tokenizer,
            self.plan.train.device_batch_size,
            self.plan.model.sequence_len,
            self.plan.dist.rank,
            self.plan.dist.world_size,
            state=state,
        )
        self.batches = iter(self.loader)

    # one optimizer step --------------------------------------------------------------------
    def apply_schedules(self, step: int) -> float:
        plan, muon = self.plan, self.plan.optim.muon
        lrm = lr_multiplier(
            step,
            plan.num_iterations,
            plan.train.warmup_ratio,
            plan.train.warmdown_ratio,
            plan.train.final_lr_frac,
            plan.train.warmup_steps,
        )
        momentum = muon_momentum(
            step,
            muon.warmup_momentum,
            muon.momentum,
            muon.momentum_warmup_steps,
            muon.warmdown_momentum,
            plan.num_iterations,
            plan.train.warmdown_ratio,
        )
        wd = weight_decay_multiplier(step, plan.num_iterations, muon.weight_decay_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = momentum
                group["weight_decay"] = group["initial_weight_decay"] * wd
        return lrm

    def train_step(self) -> float:
        """One optimizer step; returns the loss averaged over micro-batches and ranks."""
        loss = optimizer_step(
            self.step_model, self.model, self.optimizer, self.batches, self.plan.grad_accum, self.device, self.autocast
        )
        return all_reduce_mean(loss).item()

    # evaluation ----------------------------------------------------------------------------
    def due(self, every: int, step: int) -> bool:
        return step % every == 0 or step == self.plan.num_iterations

    def evaluate(self, step: int) -> None:
        start = time.perf_counter()
        self.model.eval()
        with full_precision_linears(self.model):  # precision=fp8 is scored like bf16
            self._evaluate(step)
        self.model.train()
        self.state.wall_time_s += time.perf_counter() - start

    def _evaluate(self, step: int) -> None:
        if self.due(self.plan.evals.val_every, step):
            bpb = evaluate_bpb(self.step_model, self.val_batches, self.token_bytes, self.device, self.autocast)
            self.state.last_val_bpb = bpb
            self.state.min_val_bpb = min(self.state.min_val_bpb, bpb)
            self.record({"val_bpb": bpb})
            log.info(f"step {step:5d} | val bpb {bpb:.4f}")
        if self.plan.core_enabled and self.due(int(self.plan.evals.core["every"]), step):
            self.evaluate_core()

    def evaluate_core(self) -> None:
        from harness.eval.core import core_config, run_core_eval

        # The eager model: CORE's batches vary in shape, and a compiled model would recompile for each.
        result = run_core_eval(
            self.model,
            self.tokenizer,
            core_config(self.plan.cfg),
            device=self.device,
            autocast=self.autocast,
            progress=self.plan.dist.is_main,
        )
        record = result.to_record()
        self.state.core = record
        self.record(record)
        log.info(f"step {self.state.step:5d} | CORE {result.core:.4f}")

    # logging -------------------------------------------------------------------------------
    def record(self, values: dict) -> None:
        """Append a metrics record (rank 0 only) stamped with the run's progress counters."""
        if not self.plan.dist.is_main:
            return
        tokens = self.state.step * self.plan.train.total_batch_tokens
        record = {
            "step": self.state.step,
            "tokens": tokens,
            "flops": tokens * self.plan.flops_per_token,
            "time_s": self.state.train_time_s,
            **values,
        }
        self.rundir.append_metrics(record)
        self.metrics_records += 1
        self.logger.log(record)

    def log_step(self, loss: float, lrm: float, step_time: float) -> None:
        plan = self.plan
        tok_per_s = plan.train.total_batch_tokens / step_time
        self.state.step_tok_per_s.append(tok_per_s)
        mfu = None
        if self.peak_flops:
            mfu = plan.flops_per_token * tok_per_s / (self.peak_flops * plan.dist.world_size)
        self.record({"train_loss": loss, "lr_multiplier": lrm, "tok_per_s": tok_per_s, "mfu": mfu})
        step = self.state.step
        if plan.dist.is_main and (step % plan.train.print_every == 0 or step == plan.num_iterations):
            remaining = (plan.num_iterations - step) * step_time
            mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "-"
            log.info(
                f"step {step:5d}/{plan.num_iterations} ({100 * step / plan.num_iterations:5.1f}%) | "
                f"loss {loss:.4f} | lrm {lrm:.2f} | dt {1000 * step_time:.0f}ms | "
                f"tok/s {tok_per_s:,.0f} | mfu {mfu_text} | eta {remaining / 60:.1f}m"
            )

    def check_divergence(self, loss: float) -> None:
        """Stop on a non-finite loss, or on a loss above divergence_factor x its best smoothed value."""
        state, train = self.state, self.plan.train
        if not math.isfinite(loss):
            raise Diverged(f"loss is {loss} at step {state.step}")
        state.loss_ema = loss if state.loss_ema is None else 0.9 * state.loss_ema + 0.1 * loss
        if state.step > train.divergence_after_steps and loss > train.divergence_factor * state.min_loss_ema:
            raise Diverged(
                f"loss {loss:.3f} at step {state.step} exceeds {train.divergence_factor} x "
                f"its best smoothed value {state.min_loss_ema:.3f}"
            )
        state.min_loss_ema = min(state.min_loss_ema, state.loss_ema)

    # the loop ------------------------------------------------------------------------------
    def run(self, resume: tuple[Path, dict, dict] | None) -> str:
        """Train to the horizon. Returns the final status: completed, diverged or interrupted."""
        if resume is not None:
            self.restore(*resume)
        else:
            self._open_loader(None)
        first_step, last_step = self.state.step, self.plan.num_iterations
        if resume is not None and first_step == last_step:
            return "completed"  # the final checkpoint is written after the final evaluation: nothing is left
        while True:
            step = self.state.step
            if step > first_step and step % self.plan.train.checkpoint_every == 0 and step < last_step:
                self.save_checkpoint()
            self.evaluate(step)
            if step == last_step:
                break
            if self.stop_requested():
                self.save_checkpoint()
                return "interrupted"
            lrm = self.apply_schedules(step)
            self._synchronize()
            started = time.perf_counter()
            loss = self.train_step()
            self._synchronize()
            step_time = time.perf_counter() - started
            self.state.step += 1
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

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self, status: str, error: str | None = None) -> dict:
        plan, state = self.plan, self.state
        steady = state.step_tok_per_s[THROUGHPUT_WARMUP_STEPS:] or state.step_tok_per_s
        tok_per_s = statistics.median(steady) if steady else None
        mfu = None
        if tok_per_s and self.peak_flops:
            mfu = plan.flops_per_token * tok_per_s / (self.peak_flops * plan.dist.world_size)
        tokens = state.step * plan.train.total_batch_tokens
        core = state.core
        return {
            **base_summary(plan),
            "status": status,
            "step": state.step,
            "tokens": tokens,
            "flops": tokens * plan.flops_per_token,
            "final_val_bpb": state.last_val_bpb if state.step == plan.num_iterations else None,
            "last_val_bpb": state.last_val_bpb,
            "min_val_bpb": state.min_val_bpb if math.isfinite(state.min_val_bpb) else None,
            "core": core.get("core"),
            "core_tasks": {k.split("/", 1)[1]: v for k, v in core.items() if k.startswith("core/")},
            "train_time_s": state.train_time_s,
            "wall_time_s": state.wall_time_s,
            "tok_per_s": tok_per_s,
            "mfu": mfu,
            "tokenizer": self.tokenizer_hash,
            "error": error,
        }


def base_summary(plan: RunPlan) -> dict:
    return {
        "num_iterations": plan.num_iterations,
        "grad_accum_steps": plan.grad_accum,
        "flops_per_token": plan.flops_per_token,
        "param_counts": plan.param_counts,
        "device": torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else "cpu",
        "world_size": plan.dist.world_size,
        **provenance(),
    }


# entry points ----------------------------------------------------------------------------------
def run_training(cfg: DictConfig, run_dir: Path, run_name: str = "") -> dict:
    """Train (or skip, or resume) the run in `run_dir`; returns its summary. Usable without Hydra.
    What this invocation does with an existing run directory is harness.lifecycle's decision."""
    plan = plan_run(cfg)
    rundir = RunDir(run_dir)
    config = resolved_config(cfg)
    init_process_group(plan.dist, plan.device)
    try:
        # A new run's data is loaded before its directory is made: a mistake found only now (a split
        # that tokenizes to fewer validation rows than eval.val_tokens) leaves no half-made run.
        new_run = broadcast(not rundir.exists() if plan.dist.is_main else None)
        data = RunData.load(plan) if new_run else None
        with claimed(rundir, "trained", plan.dist.is_main):
            start = broadcast_decision(
                lambda: decide(rundir, config, plan.train.resume, bool(cfg.sweep.retry_failed), location_keys(cfg))
            )
            if start.action == "skip":
                log.info(f"{rundir.path}: {start.reason}")
                return rundir.read_summary() or {}
            resume = None
            if start.action == "resume":
                checkpoint = Path(start.checkpoint)
                resume = (checkpoint, *load_for_resume(checkpoint, plan.dist.rank, plan.device))
            return train_claimed(plan, rundir, config, start, resume, run_name, data)
    except RunBusy as e:
        log.warning(str(e))  # that process trains it; a sweep moves on to its next run
        return {}
    finally:
        destroy_process_group()


def train_claimed(
    plan: RunPlan, rundir: RunDir, config: dict, start: Start, resume, run_name: str, data: RunData | None
) -> dict:
    """The run, its directory claimed: prepare it as decided, build, loop, record how it ended."""
    from harness.loggers import build_logger

    cfg = plan.cfg
    started_at = _now()
    trainer, logger, status, error = None, None, "failed", None
    try:
        if plan.dist.is_main:
            log.info(f"{rundir.path}: {start.reason}")
            prepare(rundir, start, config, {**base_summary(plan), "status": "running", "started_at": started_at})
        logger = build_logger(
            cfg.logger,
            run_dir=rundir.path,
            run_name=run_name or rundir.path.name,
            group=str(cfg.name),
            config=config,
            rank=plan.dist.rank,
        )
        trainer = Trainer(plan, rundir, logger, data or RunData.load(plan))
        if plan.dist.is_main:
            rundir.params_path.write_text(format_parameter_table(trainer.param_rows))
            log.info(describe_plan(plan, trainer))
        with _stop_on_signals(trainer):
            status = trainer.run(resume)
        error = trainer.divergence
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except Exception as e:
        if not is_environment_fault(e):
            error = f"{type(e).__name__}: {e}"
            if not isinstance(e, ConfigError):  # a user mistake is one line, printed by the entry point
                log.error(traceback.format_exc())
            raise
        # The machine's fault, not the config's: resumable from the newest valid checkpoint.
        status, error = "interrupted", describe_fault(e)
        raise RunStopped(f"{rundir.path}: {error}; interrupted, re-run the same command to resume") from None
    finally:
        summary = (
            trainer.summary(status, error) if trainer else {**base_summary(plan), "status": status, "error": error}
        )
        summary.update(started_at=started_at, ended_at=_now())
        if plan.dist.is_main:
            try:
                rundir.write_summary(summary)
            except OSError as e:  # a full disk: the summary still says running, which resumes too
                log.error(f"{rundir.summary_path}: not updated ({describe_fault(e)})")
            if logger is not None:
                logger.summary(summary)
        if logger is not None:
            logger.finish(status)
    log.info(f"{status}: {rundir.path} (final val bpb {summary.get('final_val_bpb')})")
    if status == "interrupted":
        _hand_over_signal(trainer.stop_signal)
        raise KeyboardInterrupt(f"stopped by signal {trainer.stop_signal}; checkpoint saved, re-run to resume")
    return summary


def describe_plan(plan: RunPlan, trainer: Trainer) -> str:
    counts = plan.param_counts
    tokens = plan.num_iterations * plan.train.total_batch_tokens
    return "\n".join(
        [
            f"model: {plan.model}",
            "parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()),
            f"batch: {plan.train.total_batch_tokens:,} tokens = {plan.train.device_batch_size} x "
            f"{plan.model.sequence_len} x {plan.grad_accum} accumulation x {plan.dist.world_size} ranks",
            f"horizon: {plan.num_iterations:,} steps, {tokens:,} tokens, "
            f"{tokens * plan.flops_per_token:.3e} FLOPs ({tokens / counts['scaling']:.2f} tokens per scaling param)",
            f"LR table (every parameter in {trainer.rundir.params_path.name}):\n"
            + summarize_parameter_table(trainer.param_rows),
        ]
    )


# A repeat of a stop signal within this many seconds is the same request: a terminal's Ctrl-C reaches
# torchrun's workers directly and once more through torchrun, which forwards it.
REPEATED_SIGNAL_S = 2.0


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """SIGINT, SIGTERM and the scheduler's time-limit warning (submitit's SIGUSR2) ask the loop to
    checkpoint and stop at the next step; the same signal again goes to the handler installed before
    (by default: abort at once)."""
    from harness.launch.slurm import requeue_signal

    def request_stop(signum, frame):
        if signum in first_seen:
            if time.monotonic() - first_seen[signum] >= REPEATED_SIGNAL_S:
                signal.signal(signum, previous[signum])
                signal.raise_signal(signum)
            return
        first_seen[signum] = time.monotonic()
        log.warning(f"signal {signum}: checkpointing at the next step boundary (again to abort)")
        trainer.stop_signal = signum

    first_seen: dict[int, float] = {}
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, requeue_signal())}
    for s in previous:
        signal.signal(s, request_stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _hand_over_signal(signum: int | None) -> None:
    """After the checkpoint, pass the stop signal to the handler that was installed before the loop,
    if it is someone's (submitit's: on rank 0 it requeues the job and exits). Python's defaults are
    left out: the caller raises KeyboardInterrupt, as a stopped run always does."""
    handler = signal.getsignal(signum) if signum is not None else None
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict | float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from harness.launch import quiet_other_ranks
    from harness.launch.slurm import join_submitit_job
    from harness.launch.torchrun import run_on_workers
    from harness.objective import chooses_trials, sweep_return

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run_name = hydra_cfg.job.override_dirname
    try:
        if chooses_trials():  # Optuna: this trial's values were not known to the preflight
            check_job(cfg)
        if cfg.launcher.kind == "torchrun" and not has_rank_env():
            return sweep_return(cfg, run_on_workers(cfg, run_dir, run_name))  # each worker calls run_training
        join_submitit_job(cfg)  # a SLURM task: its rank, the world size and the rendezvous
        quiet_other_ranks(dist_info_from_env().rank)
        return sweep_return(cfg, run_training(cfg, run_dir, run_name))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        if not multirun:
            remove_unstarted(run_dir, Path(str(cfg.paths.runs_dir)), hydra_cfg.job.name)
            sys.exit(USAGE_EXIT_CODE)
        record_config_failure(RunDir(run_dir), resolved_config(cfg), str(e), provenance())
    except RunStopped as e:
        print(f"error: {e}", file=sys.stderr)  # one line; the run directory says interrupted or is untouched
        if not multirun:
            sys.exit(1)
    except KeyboardInterrupt:
        raise
    except Exception:
        if not multirun:
            raise
    # In a sweep a failed run is recorded in its summary and the sweep goes on with the next one.
    return sweep_return(cfg, None)


def remove_unstarted(run_dir: Path, runs_dir: Path, job_name: str) -> None:
    """A single run refused by a check that needed its data loaded: the folder Hydra made for it goes
    (it holds only Hydra's .hydra/ and job log), and so do parents it leaves empty below runs_dir."""
    run_dir, runs_dir = run_dir.resolve(), runs_dir.resolve()
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - {".hydra", f"{job_name}.log"}:
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / f"{job_name}.log").unlink(missing_ok=True)
    folder = run_dir
    with contextlib.suppress(OSError):
        while folder != runs_dir and runs_dir in folder.parents:
            folder.rmdir()
            folder = folder.parent


# Hydra's own flags (help, config printing, shell completion): handed over without a preflight.
HYDRA_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--resolve",
    "--package",
    "-p",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
)


def preflight(argv: list[str]) -> None:
    """Compose and check every job the command would launch, before the first one starts."""
    from harness.cli import check_jobs, check_overrides, compose, plan_launch

    def check(job: list[str]) -> None:
        check_overrides(job)
        check_job(compose(job))

    multirun = any(a in ("-m", "--multirun") for a in argv)
    launch = plan_launch([a for a in argv if not a.startswith("-")], multirun)
    check_jobs(launch.jobs, check)


def check_job(cfg: DictConfig) -> None:
    """The preflight of one job: its config checked for the world size its launcher will start."""
    from harness.launch import launcher_world_size

    plan_run(cfg, world_size=launcher_world_size(cfg))


def cli_main() -> None:
    from harness.cli import exit_on_config_error

    argv = sys.argv[1:]
    if not any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        exit_on_config_error(preflight)(argv)
    main()


if __name__ == "__main__":
    cli_main()
