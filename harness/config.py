"""Typed config sections and the one conversion from the Hydra config to them.

Hydra composes YAML groups into an OmegaConf tree; the harness converts each section once,
here, into a frozen dataclass, and the rest of the code (and models/) sees plain Python values.
Checks that need only the config (batch arithmetic, horizon, shapes) live here too, so that they
run before any model is built or any GPU time is spent.

Owns: every section's schema (the dataclasses below, and the key check `unknown_keys`), the section
readers and the config-only arithmetic. Must not: read files, touch a device, or be called below
harness.run.spec, which calls each reader once per run and hands on the typed values. The values'
defaults live in configs/ (one place); the recipe facts they encode are in
/work/shared/reference/nanochat-recipe.md (348fbb3) and nanochat-recipe-2026-07.md (92d63d4).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness import recipe
from harness.errors import ConfigError
from models.attention import ATTENTION_BACKENDS
from models.gpt import RECIPE_FEATURES, GPTConfig, config_from_depth
from models.rotary import SPLITS


@dataclass(frozen=True)
class MuonConfig:
    """configs/optim/recipe.yaml's `muon`: the block matrices' optimizer (nanochat-recipe.md section 4)."""

    lr: float  # 0.02 in both recipes, then x the LR placement's multiplier per matrix
    momentum: float  # Nesterov momentum: 0.95 (348fbb3), 0.97 (92d63d4)
    warmup_momentum: float  # 0.85: where the momentum warm-up starts (harness.schedules)
    momentum_warmup_steps: int  # 300 (348fbb3), 400 (92d63d4)
    ns_steps: int  # 5 Polar Express iterations (harness.optim.POLAR_EXPRESS_COEFFS)
    beta2: float  # NorMuon's second-moment EMA: 0.95 (348fbb3), 0.9 (92d63d4)
    weight_decay: float  # at the reference depth: 0.2 (348fbb3), 0.28 (92d63d4); cautious (same sign)
    dtype: str  # of the orthogonalization: auto = bfloat16 on CUDA (as the reference runs it), float32 elsewhere
    # --- recipe pieces; the defaults are nanochat 348fbb3 (configs/recipe/ sets them) ---
    # Momentum falls linearly from `momentum` to this over the LR warmdown (92d63d4: 0.97 -> 0.90);
    # null keeps it constant.
    warmdown_momentum: float | None = None
    # MuonEq: rescale every row of the update to the mean row norm before orthogonalizing.
    row_equilibration: bool = False
    # The Frobenius norm is divided by this factor too, so the spectral norm starts under 1.
    norm_headroom: float = 1.02
    # Muon+: after Polar Express, set the Frobenius norm to sqrt(min(rows, cols)), an exactly
    # semi-orthogonal matrix's, correcting the iteration's under-convergence.
    norm_rescale: bool = False
    # depth_squared: weight_decay x (12 / depth)^2 (348fbb3). horizon: weight_decay x sqrt(B / B_ref)
    # x D_ref / D, constant T_epoch (92d63d4; see harness/recipe.py).
    weight_decay_rule: str = "depth_squared"
    # linear: to zero over the run (348fbb3) | cosine: 0.5 (1 + cos(pi step / N)) (92d63d4).
    weight_decay_schedule: str = "linear"
    # Derived, not a key: the horizon rule's sqrt(B / B_ref) x D_ref / D for this model and batch.
    weight_decay_horizon_scale: float = 1.0


@dataclass(frozen=True)
class AdamWConfig:
    """configs/optim/recipe.yaml's `adamw`: embeddings, lm_head and the per-layer scalars
    (nanochat-recipe.md section 4; 92d63d4's changes in nanochat-recipe-2026-07.md section 4)."""

    # lm_head and embedding LRs are x (model_dim / 768)^-0.5: d12's width is the reference.
    reference_model_dim: int
    unembedding_lr: float  # lm_head: 0.004 (348fbb3), 0.008 (92d63d4)
    embedding_lr: float  # wte and value embeddings: 0.3 (base_train's default, not the method's 0.2)
    scalar_lr: float  # resid_lambdas train at scalar_lr x 0.01, x0_lambdas at scalar_lr (0.5)
    betas: tuple[float, float]  # (0.8, 0.95)
    x0_betas: tuple[float, float]  # (0.96, 0.95): x0_lambdas only
    eps: float  # 1e-10
    weight_decay: float  # 0 in 348fbb3: only Muon decays there
    # --- per-group values where 92d63d4 differs; null falls back to betas / weight_decay above ---
    unembedding_betas: tuple[float, float] | None = None
    embedding_betas: tuple[float, float] | None = None
    value_embedding_betas: tuple[float, float] | None = None
    unembedding_weight_decay: float | None = None
    embedding_weight_decay: float | None = None
    value_embedding_weight_decay: float | None = None
    resid_weight_decay: float | None = None
    x0_weight_decay: float | None = None
    # Value embeddings at this fraction of the embedding LR (92d63d4: 0.5).
    value_embedding_lr_scale: float = 1.0
    # The smear gate and the smear and backout lambdas (only in models that have them): a fixed LR,
    # scaled neither by width nor by batch, as 92d63d4 sets it.
    smear_lr: float = 0.2
    smear_betas: tuple[float, float] = (0.8, 0.95)
    smear_weight_decay: float = 0.0


@dataclass(frozen=True)
class LRMultiplier:
    match: str
    value: float


@dataclass(frozen=True)
class LRPlacement:
    """Where Muon's LR multipliers go: a named shape rule, then explicit per-name multipliers."""

    name: str
    shape_rule: str
    multipliers: tuple[LRMultiplier, ...] = ()


@dataclass(frozen=True)
class OptimConfig:
    # Every LR is x sqrt(total_batch_tokens / this) (nanochat-recipe.md section 4: 2^19 = 524,288).
    reference_batch_tokens: int
    muon: MuonConfig
    adamw: AdamWConfig
    # The depth the batch and weight-decay transfer rules take as their reference (harness/recipe.py).
    reference_depth: int = 12
    compile: Any = "auto"  # torch.compile the update math: "auto" (CUDA only), true or false


@dataclass(frozen=True)
class ProfileConfig:
    # [first, last]: torch.profiler records those steps into <run_dir>/profile/ (harness/run/profile.py).
    steps: tuple[int, int] | None = None


@dataclass(frozen=True)
class TrainConfig:
    """configs/train/: the batch, the horizon and the LR schedule (nanochat-recipe.md section 5),
    and how the harness runs, saves and watches the loop."""

    total_batch_tokens: int  # 524,288 in 348fbb3; -1 = the recipe's batch rule (92d63d4)
    device_batch_size: int  # rows per micro-step: 32 x 2048 tokens (16 for d24 on 80 GB)
    # The horizon, first that is set (> 0) wins: steps, a FLOPs budget, tokens per scaling parameter
    # (10.5 is base_train's default; PR #492 and 92d63d4 ran 12).
    num_iterations: int
    target_flops: float
    target_param_data_ratio: float
    warmup_ratio: float  # 0 in 348fbb3
    warmdown_ratio: float  # 0.5 (348fbb3), 0.65 (92d63d4)
    final_lr_frac: float  # 0 (348fbb3), 0.05 (92d63d4)
    device: str
    dtype: str
    compile: bool
    print_every: int
    checkpoint_every: int
    keep_checkpoints: int
    resume: str
    # Not the recipe's: the harness stops a run whose loss exceeds factor x its best smoothed value
    # after this many steps (harness.run.trainer), so a diverged sweep point costs minutes, not hours.
    divergence_factor: float
    divergence_after_steps: int
    # --- recipe pieces; the defaults are nanochat 348fbb3 (configs/recipe/ sets them) ---
    # LR warmup in steps; when > 0 it replaces warmup_ratio (92d63d4: 40).
    warmup_steps: int = 0
    # total_batch_tokens = -1 picks the batch by the Power Lines rule with this exponent.
    batch_exponent: float = 0.383
    # floor: int(ratio x P) // B, as both 348fbb3 and 92d63d4 compute it | nearest: round(ratio x P / B),
    # what this harness did before (one step more in 8 of 96 scanned configurations; no reference rounds so),
    # kept so that runs saved with it still load.
    horizon_rounding: str = "floor"
    # A profiler window (bookkeeping: not part of what the run computes).
    profile: ProfileConfig = ProfileConfig()


@dataclass(frozen=True)
class EvalConfig:
    """configs/eval/ (nanochat-recipe.md section 5: val bpb every 250 steps on 20 x 524,288 tokens;
    92d63d4: 80 x 524,288). `core` is harness.eval.core.CoreConfig's section, read there."""

    val_every: int
    val_tokens: int
    core: dict[str, Any] = field(default_factory=dict)


# The sections below had no schema before issue 25: the code read them key by key, so a misspelt
# key in an experiment YAML was ignored without a word. Each names every key its section may hold;
# `unknown_keys` holds the composed tree to them (harness.run.spec.check_keys). A key added to a
# YAML file of configs/<section>/ must be added here too, or every run that composes it is refused.
@dataclass(frozen=True)
class ModelShape:
    """configs/model/: the network's shape. The recipe's architectural pieces (configs/recipe/)
    are the rest of the model section: models.gpt.RECIPE_FEATURES, typed by GPTConfig."""

    depth: int
    aspect_ratio: int  # model_dim = depth x aspect_ratio, rounded up to whole heads (nanochat's rule)
    head_dim: int
    sequence_len: int
    window_pattern: str  # S (short) and L (long) sliding windows, repeated over the layers
    attention: str
    rotary_cache_len: int = 0  # 0: the rotary table is sequence_len long (models.rotary)


@dataclass(frozen=True)
class RopeConfig:
    """configs/rope/: how the rotary embedding splits channels, and its base frequency."""

    split: str
    base: float  # 10,000 in nanochat 2026-01; 100,000 in 2026-07 (configs/recipe/nanochat_2026_07.yaml)


@dataclass(frozen=True)
class LoggerConfig:
    """configs/logger/: where metrics go beside metrics.jsonl (harness.loggers)."""

    kind: str = "none"
    project: str | None = None
    entity: str | None = None
    group: str | None = None  # null: the sweep's name
    mode: str = "online"
    tags: tuple[str, ...] = ()  # recorded in summary.json, runs.csv and the report, whatever the logger
    notes: str = ""  # free text: why this run; recorded there too
    dir: str | None = None
    loggers: tuple[str, ...] = ()  # logger=many: the kinds it writes to at once
    flush_secs: float = 120  # tensorboard: how often events reach the disk (SummaryWriter's default)


@dataclass(frozen=True)
class LauncherConfig:
    """configs/launcher/: how many processes a run is and who starts them (harness.launch)."""

    kind: str
    nodes: int = 1
    nproc_per_node: int = 1
    start_method: str = "spawn"
    shutdown_timeout_s: int = 30  # the torchrun launcher's grace before it kills a hung worker
    # Seconds a collective waits for a silent rank before the run stops, resumable (torch: 30 minutes).
    timeout_s: float | None = None


@dataclass(frozen=True)
class PathsConfig:
    """configs/config.yaml's `paths`: where runs, reports and downloaded data live (bookkeeping:
    harness.identity.LOCATION_KEYS)."""

    runs_dir: str
    results_dir: str
    data_dir: str


@dataclass(frozen=True)
class SweepConfig:
    """configs/config.yaml's `sweep`: what a re-invoked sweep does with failed runs."""

    retry_failed: bool = False


@dataclass(frozen=True)
class StatsConfig:
    """configs/config.yaml's `stats`: the report's sequential design (harness.results.sequential)."""

    sequential: bool = False
    looks: tuple[int, ...] = ()
    baseline: tuple[str, ...] | None = None  # the variant compared with, as KEY=VALUE items; null: the default


@dataclass(frozen=True)
class RecipeConfig:
    """configs/recipe/: which nanochat recipe set the architectural and optimizer keys."""

    name: str


# The top level of the composed tree: one key per config group of configs/config.yaml's defaults
# list and its own plain keys (`hydra`, Hydra's own, is never a job's: harness.run.spec.check_keys).
ROOT_KEYS = (
    "name",
    "seed",
    "optimized_metric",
    "paths",
    "sweep",
    "stats",
    "model",
    "rope",
    "mlp_lr",
    "optim",
    "data",
    "train",
    "eval",
    "logger",
    "launcher",
    "precision",
    "recipe",
)


def model_keys() -> tuple[str, ...]:
    """The keys the model section may hold: its shape and the recipe's architectural pieces."""
    return (*(f.name for f in dataclasses.fields(ModelShape)), *RECIPE_FEATURES)


def unknown_keys(tree: dict, schema: Any, key: str) -> None:
    """Refuse the first key of `tree` that `schema` (a dataclass, or a tuple of allowed names) does
    not name, as `unknown key <key>.<name>; allowed: ...`; nested dataclass sections are checked too."""
    if not isinstance(tree, dict):
        return  # not a mapping: the section's conversion names the key and what it must be
    dataclass_schema = dataclasses.is_dataclass(schema)
    names = tuple(f.name for f in dataclasses.fields(schema)) if dataclass_schema else schema
    unknown = sorted(set(map(str, tree)) - set(names))
    prefix = f"{key}." if key else ""
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; allowed: {', '.join(sorted(names))}")
    if not dataclass_schema:
        return
    hints = typing.get_type_hints(schema)
    for name, value in tree.items():
        inner = _dataclass_in(hints[name])
        if inner is not None:
            unknown_keys(value, inner, f"{prefix}{name}")


def _dataclass_in(hint: Any) -> Any:
    """The dataclass a field holds (itself, or X in `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def _plain(node: Any) -> Any:
    """A section as plain Python values: a composed (OmegaConf) node resolved, a plain one as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def to_dataclass(cls, node: Any, key: str):
    """Build dataclass `cls` from a config node, naming `key` in any error."""
    data = _plain(node)
    if not isinstance(data, dict):
        raise ConfigError(f"{key} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {key}.{f.name}")
            continue
        values[f.name] = _convert(hints[f.name], data[f.name], f"{key}.{f.name}")
    return cls(**values)


def _convert(hint, value, key: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: null, else an X
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value, key)
    if dataclasses.is_dataclass(hint):
        return to_dataclass(hint, value, key)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must have {len(args)} entries")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        # No float key means anything at inf or NaN: an LR, eps or FLOPs budget of inf trains garbage.
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def _require_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")


def _require_at_least(key: str, value: float, lowest: float) -> None:
    if not value >= lowest:  # `not >=` also refuses NaN
        raise ConfigError(f"{key}={value} must be at least {lowest:g}")


def _require_beta(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value} must be in [0, 1)")


# torch.manual_seed takes any integer that fits in 64 bits, signed or not.
SEED_RANGE = (-(2**63), 2**64 - 1)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an integer")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"seed={seed} is outside what torch accepts: [-2**63, 2**64 - 1]")
    return seed


def check_logger(logger: Any) -> None:
    """The logger's kinds, mode, tags and notes, before a run directory exists (building the logger
    checks them again, on every rank)."""
    from harness.loggers import logger_kinds

    logger_kinds(logger)


# sections --------------------------------------------------------------------------------
def model_config(cfg: Mapping[str, Any]) -> GPTConfig:
    """The network's dataclass from the model, rope and data sections of the config (the resolved
    tree harness.run.spec hands every section reader, or a composed one)."""
    m, rope = cfg["model"], cfg["rope"]
    for key in ("depth", "aspect_ratio", "head_dim", "sequence_len"):
        if int(m[key]) <= 0:
            raise ConfigError(f"model.{key}={m[key]} must be positive")
    # nanochat's rule: model_dim = depth x aspect_ratio, rounded up to a whole number of heads.
    model_dim = math.ceil(m["depth"] * m["aspect_ratio"] / m["head_dim"]) * m["head_dim"]
    # The value-embedding gate reads the first 32 channels (nanochat 2026-01's ve_gate_channels).
    if model_dim < 32:
        raise ConfigError(f"model_dim={model_dim} (model.depth x model.aspect_ratio) must be at least 32")
    _require_choice("rope.split", rope["split"], SPLITS)
    _require_rope_base(rope["base"])
    _require_choice("model.attention", m["attention"], ATTENTION_BACKENDS)
    hints = typing.get_type_hints(GPTConfig)
    plain = _plain(m)
    features = {name: _convert(hints[name], plain[name], f"model.{name}") for name in RECIPE_FEATURES if name in plain}
    try:
        return config_from_depth(
            int(m["depth"]),
            int(m["aspect_ratio"]),
            int(m["head_dim"]),
            vocab_size=int(cfg["data"]["vocab_size"]),
            sequence_len=int(m["sequence_len"]),
            window_pattern=str(m["window_pattern"]),
            rope_split=str(rope["split"]),
            rope_base=float(rope["base"]),
            rotary_cache_len=int(m.get("rotary_cache_len", 0)),
            attention=str(m["attention"]),
            **features,
        )
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def _require_rope_base(base: Any) -> None:
    """The rotary base is the root of the frequencies' geometric series: positive and finite."""
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not (0 < base < math.inf):
        raise ConfigError(f"rope.base={base!r} must be a positive finite number")


SHAPE_RULES = ("none", "legacy", "pr492")


def lr_placement(cfg: Mapping[str, Any]) -> LRPlacement:
    """configs/mlp_lr/: the ablation axis (nanochat-recipe.md section 4: 348fbb3 boosts tall matrices,
    c_fc 2x; PR #492's flip boosts wide ones, c_proj 2x and ve_gate too)."""
    placement = to_dataclass(LRPlacement, cfg["mlp_lr"], "mlp_lr")
    _require_choice("mlp_lr.shape_rule", placement.shape_rule, SHAPE_RULES)
    for i, multiplier in enumerate(placement.multipliers):
        _require_at_least(f"mlp_lr.multipliers[{i}].value", multiplier.value, 0.0)
    return placement


def optim_config(cfg: Mapping[str, Any]) -> OptimConfig:
    """The optim section, checked; under the horizon weight-decay rule (92d63d4) with its scale for
    this model and batch filled in."""
    optim = to_dataclass(OptimConfig, cfg["optim"], "optim")
    _require_choice("optim.muon.dtype", optim.muon.dtype, ("auto", "float32", "bfloat16"))
    muon, adamw = optim.muon, optim.adamw
    for key in ("lr", "weight_decay"):
        _require_at_least(f"optim.muon.{key}", getattr(muon, key), 0.0)
    for key in ("unembedding_lr", "embedding_lr", "scalar_lr", "weight_decay", "eps"):
        _require_at_least(f"optim.adamw.{key}", getattr(adamw, key), 0.0)
    # Momenta and betas are decay rates: 1 or more never forgets, or grows without bound.
    for key in ("momentum", "warmup_momentum", "beta2"):
        _require_beta(f"optim.muon.{key}", getattr(muon, key))
    for key in ("betas", "x0_betas", "unembedding_betas", "embedding_betas", "value_embedding_betas", "smear_betas"):
        for i, beta in enumerate(getattr(adamw, key) or ()):
            _require_beta(f"optim.adamw.{key}[{i}]", beta)
    if muon.warmdown_momentum is not None:
        _require_beta("optim.muon.warmdown_momentum", muon.warmdown_momentum)
    if not muon.norm_headroom >= 1.0:
        raise ConfigError(f"optim.muon.norm_headroom={muon.norm_headroom} must be at least 1 (spectral norm under 1)")
    if muon.ns_steps < 1:
        raise ConfigError(f"optim.muon.ns_steps={muon.ns_steps} must be at least 1 (Newton-Schulz iterations)")
    for key in ("reference_batch_tokens",):
        if getattr(optim, key) <= 0:
            raise ConfigError(f"optim.{key}={getattr(optim, key)} must be positive")
    _require_choice("optim.muon.weight_decay_rule", optim.muon.weight_decay_rule, ("depth_squared", "horizon"))
    _require_choice("optim.muon.weight_decay_schedule", optim.muon.weight_decay_schedule, ("linear", "cosine"))
    if optim.reference_depth <= 0:
        raise ConfigError(f"optim.reference_depth={optim.reference_depth} must be positive")
    # 92d63d4's rule needs the batch and the horizon (nanochat-recipe-2026-07.md section 4), so the
    # train section is read here too; 348fbb3's depth_squared rule is applied in harness.optim.
    if optim.muon.weight_decay_rule == "horizon":
        train = train_config(cfg)
        scale = recipe.horizon_weight_decay_scale(
            train.total_batch_tokens, optim.reference_batch_tokens, _horizon_ratio(cfg, optim, train)
        )
        optim = dataclasses.replace(optim, muon=dataclasses.replace(optim.muon, weight_decay_horizon_scale=scale))
    if not (optim.compile == "auto" or isinstance(optim.compile, bool)):
        raise ConfigError(f"optim.compile={optim.compile!r} is not one of: auto, true, false")
    return optim


def _horizon_ratio(cfg: Mapping[str, Any], optim: OptimConfig, train: TrainConfig) -> float:
    """D / D_ref: this model's horizon in tokens over the reference depth's (harness/recipe.py)."""
    model = model_config(cfg)
    shape = cfg["model"]
    reference = recipe.at_depth(model, optim.reference_depth, int(shape["aspect_ratio"]), int(shape["head_dim"]))
    return recipe.token_ratio(
        train.target_param_data_ratio, recipe.scaling_params(model), recipe.scaling_params(reference)
    )


def train_config(cfg: Mapping[str, Any]) -> TrainConfig:
    """The train section, checked; with total_batch_tokens=-1, the batch the recipe's rule picks."""
    train = to_dataclass(TrainConfig, cfg["train"], "train")
    _require_choice("train.device", train.device, ("auto", "cpu", "cuda"))
    _require_choice("train.dtype", train.dtype, ("auto", "float32", "bfloat16"))
    _require_choice("train.resume", train.resume, ("auto", "never", "force"))
    _require_choice("train.horizon_rounding", train.horizon_rounding, ("nearest", "floor"))
    for key in ("device_batch_size", "print_every", "checkpoint_every"):
        if getattr(train, key) <= 0:
            raise ConfigError(f"train.{key}={getattr(train, key)} must be positive")
    for key in ("warmup_ratio", "warmdown_ratio", "final_lr_frac"):
        value = getattr(train, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"train.{key}={value} must be in [0, 1]")
    if train.warmup_ratio + train.warmdown_ratio > 1.0:
        raise ConfigError(
            f"train.warmup_ratio + train.warmdown_ratio = {train.warmup_ratio} + {train.warmdown_ratio} "
            "must be at most 1 (they split one horizon)"
        )
    if not train.divergence_factor > 1.0:
        raise ConfigError(
            f"train.divergence_factor={train.divergence_factor} must be greater than 1 "
            "(a loss above factor x its best smoothed value counts as diverged)"
        )
    _require_at_least("train.divergence_after_steps", train.divergence_after_steps, 0)
    if train.total_batch_tokens == AUTO_BATCH:
        optim = to_dataclass(OptimConfig, cfg["optim"], "optim")
        batch = recipe.auto_total_batch(
            optim.reference_batch_tokens, train.batch_exponent, _horizon_ratio(cfg, optim, train)
        )
        train = dataclasses.replace(train, total_batch_tokens=batch)
    elif train.total_batch_tokens <= 0:
        raise ConfigError(
            f"train.total_batch_tokens={train.total_batch_tokens} must be positive, or {AUTO_BATCH} for the "
            "automatic batch"
        )
    return train


# train.total_batch_tokens: this value means "choose by the recipe's batch rule" (harness/recipe.py).
AUTO_BATCH = -1


def eval_config(cfg: Mapping[str, Any]) -> EvalConfig:
    """The eval section's own keys; eval.core is read by harness.eval.core.core_config."""
    return to_dataclass(EvalConfig, cfg["eval"], "eval")


# arithmetic that must hold before a run starts -------------------------------------------
def grad_accum_steps(train: TrainConfig, sequence_len: int, world_size: int) -> int:
    """Micro-steps per optimizer step; the total batch must split evenly over ranks and micro-batches."""
    tokens_per_micro_step = train.device_batch_size * sequence_len * world_size
    if train.total_batch_tokens % tokens_per_micro_step:
        raise ConfigError(
            f"train.total_batch_tokens={train.total_batch_tokens} is not divisible by "
            f"train.device_batch_size x model.sequence_len x world_size = "
            f"{train.device_batch_size} x {sequence_len} x {world_size} = {tokens_per_micro_step}; "
            + _batch_suggestion(train, sequence_len, world_size)
        )
    return train.total_batch_tokens // tokens_per_micro_step


def _batch_suggestion(train: TrainConfig, sequence_len: int, world_size: int) -> str:
    """A device batch that divides: the largest one up to the chosen one; else a total batch that does."""
    rows = train.total_batch_tokens // (sequence_len * world_size)
    if rows and train.total_batch_tokens % (sequence_len * world_size) == 0:
        fits = max(b for b in range(1, min(train.device_batch_size, rows) + 1) if rows % b == 0)
        return f"a device batch that divides it: train.device_batch_size={fits} ({rows // fits} accumulation step(s))"
    tokens = train.device_batch_size * sequence_len * world_size
    return f"the total must be a multiple of model.sequence_len x world_size: e.g. train.total_batch_tokens={tokens}"


def num_iterations(train: TrainConfig, scaling_params: int, flops_per_token: float) -> int:
    """The horizon: explicit steps, else a FLOPs budget, else a tokens-per-parameter ratio."""
    if train.num_iterations > 0:
        return train.num_iterations
    if train.target_flops > 0:
        steps = round(train.target_flops / (flops_per_token * train.total_batch_tokens))
    elif train.target_param_data_ratio > 0 and train.horizon_rounding == "floor":
        steps = int(train.target_param_data_ratio * scaling_params) // train.total_batch_tokens
    elif train.target_param_data_ratio > 0:
        steps = round(train.target_param_data_ratio * scaling_params / train.total_batch_tokens)
    else:
        raise ConfigError(
            "no horizon: set one of train.num_iterations, train.target_flops, train.target_param_data_ratio"
        )
    if steps <= 0:
        raise ConfigError(f"the configured horizon rounds to {steps} steps; raise it")
    return steps


def check_rope(model: GPTConfig, device: Any) -> None:
    """rope.split=fused is a CUDA (Triton) kernel: refused before any model is built elsewhere."""
    if model.rope_split == "fused":
        from models.rotary import fused_unavailable_reason

        reason = fused_unavailable_reason(device)
        if reason is not None:
            raise ConfigError(reason)
