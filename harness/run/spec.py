"""The run's spec: the composed config checked and turned into one frozen `RunSpec`.

`resolve_run(cfg)` is where a run's config is validated (batch arithmetic, horizon, LR placement,
precision, seed, logger, and with `check_inputs` the output folder, data and CORE bundle) and
where the numbers derived from it are computed, once: gradient accumulation, the horizon in steps,
FLOPs per token and the parameter counts. It raises ConfigError for user mistakes and must not
build a model on a real device, load data or write anything but the probe file of
`check_writable`. Sections not yet typed here are still read from `RunSpec.cfg` (issue 25 phase 2).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

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
from harness.data import check_data
from harness.data.loader import check_streams
from harness.distributed import DistInfo, dist_info_from_env
from harness.errors import ConfigError
from harness.eval.core import check_bundle
from harness.hardware import resolve_device
from harness.optim import parameter_table
from harness.precision import check_precision
from harness.run.profile import check_profile
from models.gpt import GPT, GPTConfig


@dataclass(frozen=True)
class RunSpec:
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

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


def resolve_run(cfg: DictConfig, check_inputs: bool = True, world_size: int | None = None) -> RunSpec:
    """Validate the config and derive the run's arithmetic. Raises ConfigError on user mistakes.
    `check_inputs=False` skips the output directory, dataset and CORE bundle checks (benchmarks on
    random tokens, planning).
    `world_size` plans for that many ranks (the preflight, before a launcher starts them); by
    default this process's rank and world size come from the environment."""
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
    check_profile(train.profile.steps, steps)
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
        check_streams(cfg, train.total_batch_tokens // model_cfg.sequence_len, dist.world_size)
        if not str(cfg.paths.runs_dir).strip():
            raise ConfigError("paths.runs_dir='' is empty; give the folder runs are written to (default: runs)")
        if cfg.launcher.get("kind") in ("local", "torchrun"):  # runs on this machine (SLURM jobs run elsewhere)
            check_rope(model_cfg, device)
        check_writable("paths.runs_dir", Path(cfg.paths.runs_dir))
        check_data(cfg, dist.world_size)
        if evals.core.get("enabled", False):
            check_bundle(cfg)
    return RunSpec(cfg, model_cfg, train, optim, placement, evals, dist, device, grad_accum, steps, fpt, counts)


def resolved_config(cfg: DictConfig) -> dict:
    """The config as the run directory's config.yaml (and every checkpoint) holds it: every
    interpolation resolved."""
    return OmegaConf.to_container(cfg, resolve=True)


def check_writable(key: str, path: Path) -> None:
    """Create `path` if needed and write a file in it: permission bits alone mislead (root, NFS)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"{key}={path} is not a writable directory ({e.strerror})") from None
