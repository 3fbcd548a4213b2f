"""The run's spec: the composed config checked and turned into one frozen `RunSpec`.

`resolve_run(cfg)` is the only place a run's Hydra tree becomes typed values: it refuses keys no
schema names (`check_keys`, every section's schema is in harness.config, harness.data.config,
harness.eval.core and harness.precision), resolves the tree once into plain values (`tree`, what
config.yaml holds), reads every section from that (model, train, optim, LR placement, eval and
CORE, data, precision, logger, launcher, paths, seed) and computes the numbers derived from them,
once: gradient accumulation, the horizon in steps, FLOPs per token and the parameter counts.
Everything below it (session, trainer, build, checkpoint, outcome) takes the spec's fields.

It raises ConfigError for user mistakes and must not build a model on a real device or write
anything but the probe file of `check_writable`; with `check_inputs` it reads the data (the
tokenizer, which the run then reuses, and for data=builtin the validation split) and the CORE bundle.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import (
    ROOT_KEYS,
    EvalConfig,
    LauncherConfig,
    LoggerConfig,
    LRPlacement,
    OptimConfig,
    PathsConfig,
    RecipeConfig,
    RopeConfig,
    StatsConfig,
    SweepConfig,
    TrainConfig,
    check_logger,
    check_rope,
    check_seed,
    eval_config,
    grad_accum_steps,
    lr_placement,
    model_config,
    model_keys,
    num_iterations,
    optim_config,
    train_config,
    unknown_keys,
)
from harness.data.checks import check_inputs as check_data_inputs
from harness.data.config import SOURCES, DataConfig, data_config
from harness.data.loader import check_stream_split
from harness.data.tokenizer import Tokenizer
from harness.distributed import DistInfo, dist_info_from_env
from harness.errors import ConfigError
from harness.eval.core import CoreConfig, check_bundle, core_config
from harness.hardware import resolve_device
from harness.identity import location_keys
from harness.optim import parameter_table
from harness.precision import PrecisionConfig, check_precision, precision_config
from harness.run.profile import check_profile
from models.gpt import GPT, GPTConfig


@dataclass(frozen=True)
class RunSpec:
    """Everything derived from the config alone, checked before any model is built. Below this
    module nothing reads the Hydra tree: each consumer takes the field it needs."""

    config: dict  # the resolved tree, as config.yaml and every checkpoint hold it (the resume check's)
    model: GPTConfig
    train: TrainConfig
    optim: OptimConfig
    placement: LRPlacement
    evals: EvalConfig
    core: CoreConfig | None  # None unless eval.core.enabled (a disabled section's values are not checked)
    data: DataConfig | None  # None with check_inputs=False: nothing reads data
    precision: PrecisionConfig
    seed: int
    name: str  # the sweep's name: the logger's group
    launcher_kind: str
    runs_dir: Path
    retry_failed: bool  # sweep.retry_failed: whether a re-invocation retries a failed run
    location_keys: frozenset[str]  # keys that say where files live in this config (harness.identity)
    dist: DistInfo
    device: torch.device
    grad_accum: int
    num_iterations: int
    flops_per_token: float
    param_counts: dict
    # The tokenizer the data check loaded (None where it loads none: data=local, or check_inputs=False);
    # the run reuses it rather than loading it again (harness.run.build.RunData).
    tokenizer: Tokenizer | None = field(default=None, compare=False, repr=False)

    @property
    def rows_per_step(self) -> int:
        """The global batch in rows of model.sequence_len tokens (what the data loader serves per step)."""
        return self.train.total_batch_tokens // self.model.sequence_len


def resolve_run(cfg: DictConfig, check_inputs: bool = True, world_size: int | None = None) -> RunSpec:
    """Validate the config and derive the run's arithmetic. Raises ConfigError on user mistakes.
    `check_inputs=False` skips the output directory, dataset and CORE bundle checks (benchmarks on
    random tokens, planning).
    `world_size` plans for that many ranks (the preflight, before a launcher starts them); by
    default this process's rank and world size come from the environment."""
    unresolved = OmegaConf.to_container(cfg, resolve=False)  # interpolations as written: ${paths.data_dir}
    check_keys(unresolved)
    # The one conversion of the Hydra tree: plain, resolved values (also what config.yaml holds);
    # every section reader below takes this tree, and nothing after this function sees either.
    tree = resolved_config(cfg)
    model_cfg = model_config(tree)
    train, optim, placement, evals = train_config(tree), optim_config(tree), lr_placement(tree), eval_config(tree)
    # The preflight plans for the launcher's world size before any rank exists; a rank reads its own.
    dist = dist_info_from_env() if world_size is None else DistInfo(world_size=world_size)
    device = resolve_device(train.device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    # nanochat-recipe.md section 5: accumulation = total batch / (device batch x T x world size).
    grad_accum = grad_accum_steps(train, model_cfg.sequence_len, dist.world_size)
    precision = check_precision(precision_config(tree), device)
    # Counts and FLOPs from a model on the meta device: its shapes without memory, so d24 costs nothing
    # here (nanochat-recipe.md section 1 gives d12's 286,262,424 and d24's 1,384,124,976 parameters;
    # section 5 the FLOPs per token, 6 x the non-embedding matrices + the attention term).
    meta_model = GPT.on_meta(model_cfg)
    counts = meta_model.parameter_counts()
    fpt = meta_model.flops_per_token()
    parameter_table(meta_model, optim, placement, train.total_batch_tokens)  # rejects LR-placement typos
    # The horizon in steps from the scaling parameters (block matrices + lm_head, section 1).
    steps = num_iterations(train, counts["scaling"], fpt)
    check_profile(train.profile.steps, steps)
    seed = check_seed(tree["seed"])
    check_logger(tree["logger"])
    if evals.val_every <= 0:
        raise ConfigError(f"eval.val_every={evals.val_every} must be positive")
    # Each rank's share of the validation rows fills at least one batch: no rank scores only padding.
    one_batch_per_rank = train.device_batch_size * model_cfg.sequence_len * dist.world_size
    if evals.val_tokens < one_batch_per_rank:
        raise ConfigError(
            f"eval.val_tokens={evals.val_tokens} is less than one validation batch per rank "
            f"(train.device_batch_size x model.sequence_len x world_size = {one_batch_per_rank})"
        )
    # Data and CORE settings matter only to a run that reads data: benchmarks on random tokens and
    # plans (check_inputs=False) neither read nor check them.
    data = data_config(tree) if check_inputs else None
    core = core_config(tree) if check_inputs and evals.core.get("enabled", False) else None
    launcher_kind, runs_dir = str(tree["launcher"].get("kind")), Path(str(tree["paths"]["runs_dir"]))
    tokenizer = None
    if check_inputs:
        # The streams split over the ranks and the global batch's rows (harness.data.loader).
        check_stream_split(data.streams, train.total_batch_tokens // model_cfg.sequence_len, dist.world_size)
        if not str(tree["paths"]["runs_dir"]).strip():
            raise ConfigError("paths.runs_dir='' is empty; give the folder runs are written to (default: runs)")
        if launcher_kind in ("local", "torchrun"):  # runs on this machine (SLURM jobs run elsewhere)
            check_rope(model_cfg, device)
        check_writable("paths.runs_dir", runs_dir)
        # Last: the data check may build the builtin tokenizer, the slowest thing the preflight does.
        tokenizer = check_data_inputs(data, model_cfg.sequence_len, evals.val_tokens)
        if core is not None:
            check_bundle(tree)
    return RunSpec(
        config=tree,
        model=model_cfg,
        train=train,
        optim=optim,
        placement=placement,
        evals=evals,
        core=core,
        data=data,
        precision=precision,
        seed=seed,
        name=str(tree["name"]),
        launcher_kind=launcher_kind,
        runs_dir=runs_dir,
        retry_failed=bool(tree["sweep"]["retry_failed"]),
        location_keys=frozenset(location_keys(unresolved)),
        dist=dist,
        device=device,
        grad_accum=grad_accum,
        num_iterations=steps,
        flops_per_token=fpt,
        param_counts=counts,
        tokenizer=tokenizer,
    )


# Each section's schema: a dataclass (nested dataclass sections are checked with it) or the tuple
# of its allowed keys. `data` has one schema per source and `eval.core` one of its own (below).
SECTION_SCHEMAS = {
    "model": model_keys(),
    "rope": RopeConfig,
    "mlp_lr": LRPlacement,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "precision": PrecisionConfig,
    "logger": LoggerConfig,
    "launcher": LauncherConfig,
    "paths": PathsConfig,
    "sweep": SweepConfig,
    "stats": StatsConfig,
    "recipe": RecipeConfig,
}


def check_keys(unresolved: dict) -> None:
    """Refuse a key no schema names, wherever it was written: on the command line (where
    harness.cli.check_overrides names it first) or in a YAML file of configs/ (an experiment's
    `model: {window_patern: L}`), as one `unknown key ...; allowed: ...` line. Only names are
    checked here; each section's conversion checks the values. `unresolved`: the composed config as
    plain values, interpolations unresolved."""
    tree = {
        key: value for key, value in unresolved.items() if key != "hydra"
    }  # Hydra's and its plugins' (submitit, Optuna) settings, not the job's
    unknown_keys(tree, ROOT_KEYS, "")
    for section, schema in SECTION_SCHEMAS.items():
        if tree.get(section) is not None:
            unknown_keys(tree[section], schema, section)
    core = (tree.get("eval") or {}).get("core")
    if core is not None:
        unknown_keys(core, CoreConfig, "eval.core")
    data = tree.get("data") or {}
    if isinstance(data, dict) and data.get("source") in SOURCES:  # another source: data_config names it
        unknown_keys(data, SOURCES[data["source"]], "data")


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
