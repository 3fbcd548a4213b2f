"""Training precision as an ablation axis: `precision=bf16` (the default) or `precision=fp8`.

bf16 is the harness as it always was: the matmuls run in `train.dtype` (auto: bf16 autocast on CUDA,
float32 on CPU) and no module changes. fp8 is the reference's float8 training (nanochat, 2026-02-03,
`--fp8`) through torchao: before compilation every `nn.Linear` whose in and out features are multiples
of 16, the smaller of them at least 128, becomes torchao's `Float8Linear`, which casts input, weight
and output gradient to float8 with dynamic scales (recipe `tensorwise`: one scale per tensor, the
reference's only recipe; `rowwise`: one per row) and multiplies them with `torch._scaled_mm`. The
weight stays the same float32 Parameter, so the optimizer, the LR table and the checkpoint's keys are
the same as bf16's.

On a CPU (no float8 matmul there) torchao's emulation does the same casts and multiplies in high
precision, so the whole path trains and is tested without a GPU.

Every variant is scored in the same precision: `full_precision_linears` swaps each Float8Linear for a
plain Linear sharing its weight while val bpb and CORE run (as the reference did), and
`python -m harness.evaluate` never converts anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
import weakref
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harness.errors import ConfigError
from harness.optim import layer_pattern

log = logging.getLogger("ablate.precision")

PRECISIONS = ("bf16", "fp8")
RECIPES = ("tensorwise", "rowwise")
# torch._scaled_mm needs both matmul dimensions to be multiples of 16; the reference (92d63d4's
# fp8_module_filter) also skips layers too small to gain, min(in, out) < 128. The second rule matters
# from d32 (January recipe: its 16 value-embedding gates, 32 -> 16, pass the first) and on small models:
# the tiny CPU model (dim 64) has nothing in float8; dim 128 (model.aspect_ratio=32) converts every matrix.
FLOAT8_MULTIPLE = 16
FLOAT8_MIN_FEATURES = 128
# Float8 matmuls need compute capability 8.9 (Ada) or newer: H100/H200 are 9.0.
FLOAT8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class PrecisionConfig:
    name: str = "bf16"
    recipe: str = "tensorwise"
    emulate: bool | str = "auto"

    @property
    def fp8(self) -> bool:
        return self.name == "fp8"

    def emulated(self, device: torch.device) -> bool:
        """auto: emulate where no float8 matmul exists (the CPU), real float8 kernels on CUDA."""
        return device.type != "cuda" if self.emulate == "auto" else bool(self.emulate)


def precision_config(cfg: DictConfig) -> PrecisionConfig:
    """The `precision` section; a config saved before the axis existed trained in bf16."""
    node = cfg.get("precision")
    if node is None:
        return PrecisionConfig()
    data = OmegaConf.to_container(node, resolve=True)
    allowed = {f.name for f in dataclasses.fields(PrecisionConfig)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown key precision.{unknown[0]}; allowed: {', '.join(sorted(allowed))}")
    precision = PrecisionConfig(**data)
    if precision.name not in PRECISIONS:
        raise ConfigError(f"precision.name={precision.name!r} is not one of: {', '.join(PRECISIONS)}")
    if precision.recipe not in RECIPES:
        raise ConfigError(f"precision.recipe={precision.recipe!r} is not one of: {', '.join(RECIPES)}")
    if not (precision.emulate == "auto" or isinstance(precision.emulate, bool)):
        raise ConfigError(f"precision.emulate={precision.emulate!r} is not one of: auto, true, false")
    return precision


def check_precision(cfg: DictConfig, device: torch.device) -> PrecisionConfig:
    """Preflight: fp8 needs torchao, and real (not emulated) float8 needs a GPU that has it."""
    precision = precision_config(cfg)
    if not precision.fp8:
        return precision
    _import_torchao_float8()
    if device.type == "cuda" and not precision.emulated(device):
        capability = torch.cuda.get_device_capability(device)
        if capability < FLOAT8_MIN_CAPABILITY:
            raise ConfigError(
                f"precision=fp8 needs float8 matmuls (compute capability 8.9+), this GPU has "
                f"{capability[0]}.{capability[1]}; use precision.emulate=true (slow) or precision=bf16"
            )
    return precision


def _import_torchao_float8():
    """torchao's float8 training module, without the import-time noise of a CPU install (its CUDA
    extensions fail to load there, harmlessly: float8 training is Python over torch._scaled_mm)."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.float8 as float8
            from torchao.float8.float8_linear import Float8Linear
    except ImportError:
        raise ConfigError("precision=fp8 needs torchao (pip install -e '.[fp8]'), which is not installed") from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return float8, Float8Linear


# which layers ------------------------------------------------------------------------------
def float8_eligible(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and module.in_features % FLOAT8_MULTIPLE == 0
        and module.out_features % FLOAT8_MULTIPLE == 0
        and min(module.in_features, module.out_features) >= FLOAT8_MIN_FEATURES
    )


def float8_selection(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the Linear layers that run in float8 under precision=fp8, and of those that stay."""
    converted, kept = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            (converted if float8_eligible(module) else kept).append(name)
    return converted, kept


def collapse_layers(names: list[str]) -> list[str]:
    """transformer.h.0.mlp.c_fc, transformer.h.1.mlp.c_fc, ... -> transformer.h.*.mlp.c_fc x12
    (anything after the name, such as a shape, is kept)."""
    counts: dict[str, int] = {}
    for name in names:
        pattern = layer_pattern(name)
        counts[pattern] = counts.get(pattern, 0) + 1
    return [f"{pattern}  x{n}" if n > 1 else pattern for pattern, n in counts.items()]


def describe_float8(model: nn.Module, precision: PrecisionConfig, device_type: str = "cuda") -> str:
    """What `harness.inspect` prints under precision=fp8: which matrices run in float8."""
    converted, kept = float8_selection(model)
    modules = dict(model.named_modules())

    def with_shapes(names: list[str]) -> list[str]:
        return [f"{n}  {modules[n].in_features} -> {modules[n].out_features}" for n in names]

    mode = "emulated" if precision.emulated(torch.device(device_type)) else "float8 matmuls"
    lines = [
        f"float8 (precision=fp8, recipe {precision.recipe}, {mode} on {device_type}): "
        f"{len(converted)} Linear layers converted, {len(kept)} kept in {'bf16' if device_type == 'cuda' else 'fp32'} "
        f"(in and out features must be multiples of {FLOAT8_MULTIPLE}, the smaller at least {FLOAT8_MIN_FEATURES})",
        *(f"  float8  {pattern}" for pattern in collapse_layers(with_shapes(converted))),
        *(f"  kept    {pattern}" for pattern in collapse_layers(with_shapes(kept))),
    ]
    return "\n".join(lines)


# conversion --------------------------------------------------------------------------------
def convert_for_training(model: nn.Module, cfg: DictConfig, device: torch.device) -> nn.Module:
    """Under precision=fp8, swap the eligible Linear layers for torchao's Float8Linear in place (call
    before torch.compile, as the reference does) and log how many were converted and skipped."""
    precision = precision_config(cfg)
    if not precision.fp8:
        return model
    float8, float8_linear = _import_torchao_float8()
    config = float8.Float8LinearConfig.from_recipe_name(precision.recipe)
    config = dataclasses.replace(config, emulate=precision.emulated(device))
    converted, kept = float8_selection(model)
    modules = dict(model.named_modules())
    _ORIGINAL_CLASSES[model] = {name: type(modules[name]) for name in converted}
    float8.convert_to_float8_training(model, config=config, module_filter_fn=lambda m, _fqn: float8_eligible(m))
    actual = sum(isinstance(m, float8_linear) for m in model.modules())
    if actual != len(converted):
        raise AssertionError(f"torchao converted {actual} Linear layers, the selection named {len(converted)}")
    log.info(
        f"precision fp8 ({precision.recipe}{', emulated' if config.emulate else ''}): {len(converted)} Linear "
        f"layers converted to float8, {len(kept)} skipped ({', '.join(collapse_layers(kept)) or 'none'})"
    )
    return model


def is_float8(module: nn.Module) -> bool:
    """torchao's Float8Linear, recognised without importing torchao (a bf16 run may not have it)."""
    return type(module).__name__ == "Float8Linear" and type(module).__module__.startswith("torchao.")


# The plain twins of a model's float8 layers, built once: a compiled model sees the same modules at every
# evaluation, so it compiles the evaluation graph once instead of at every swap (new objects fail its guards).
_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The class each converted layer had (nn.Linear, or a subclass such as the July recipe's CastLinear, whose
# forward casts the weight to the activations' dtype): its twin is of that class, so evaluation computes
# what the bf16 variant computes.
_ORIGINAL_CLASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plain_twins(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, nn.Linear]]:
    """(parent, attribute, float8 layer, plain layer sharing its weight and bias) per float8 layer."""
    if model not in _TWINS:
        classes = _ORIGINAL_CLASSES.get(model, {})
        twins = []
        for parent_name, parent in model.named_modules():
            for name, child in parent.named_children():
                if is_float8(child):
                    cls = classes.get(f"{parent_name}.{name}" if parent_name else name, nn.Linear)
                    plain = cls(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                    plain.weight = child.weight
                    if child.bias is not None:
                        plain.bias = child.bias
                    twins.append((parent, name, child, plain))
        _TWINS[model] = twins
    return _TWINS[model]


@contextlib.contextmanager
def full_precision_linears(model: nn.Module):
    """Inside the block every Float8Linear is a plain Linear sharing its weight (and bias), so a
    variant's evaluation runs in the same precision as bf16's; outside it the float8 layers return.
    A model without float8 layers passes through untouched."""
    twins = _plain_twins(model) if any(is_float8(m) for m in model.modules()) else []
    for parent, name, child, plain in twins:
        plain.train(child.training)
        setattr(parent, name, plain)
    try:
        yield model
    finally:
        for parent, name, child, _ in twins:
            setattr(parent, name, child)
