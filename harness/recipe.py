"""Arithmetic a recipe derives from the model's size: the automatic batch and the Muon weight decay.

nanochat 92d63d4 tunes its hyperparameters at a reference depth (d12) and transfers them to other
depths by two rules, both written in terms of the training horizon in tokens, D = ratio x P, where P
is the scaling parameter count (block matrices + lm_head) and D_ref = ratio x P(d12):
- batch (Power Lines, Bopt ~ D^0.383): B = 2^round(log2(B_ref x (D / D_ref)^0.383));
- Muon weight decay (constant T_epoch = B / (lr wd D), with lr ~ sqrt(B)):
  wd = wd_ref x sqrt(B / B_ref) x D_ref / D.
The reference model is the configured model at `optim.reference_depth`, with every other setting
(width rule, features, vocabulary, sequence length) unchanged, as the reference builds it.
Facts: /work/shared/reference/nanochat-recipe-2026-07.md, sections 1 (sizing) and 4 (optimizer).
Owns the formulas only; harness.config applies them to the configured sections, and nothing here
reads a config or builds a model on a device.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

from models.gpt import GPT, GPTConfig, config_from_depth

# Sizing keys of GPTConfig that a depth change recomputes (nanochat-recipe.md section 1: dim =
# depth x aspect_ratio rounded up to whole heads, heads = dim / head_dim); everything else carries over.
_SIZING = {"n_layer", "n_embd", "n_head", "n_kv_head"}


@lru_cache(maxsize=64)
def scaling_params(config: GPTConfig) -> int:
    """Block matrices + lm_head: the parameter count the horizon and the batch rule use."""
    return GPT.on_meta(config).parameter_counts()["scaling"]


def at_depth(config: GPTConfig, depth: int, aspect_ratio: int, head_dim: int) -> GPTConfig:
    """The same model at another depth (the recipe's sizing rule applied to `depth`)."""
    kept = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _SIZING}
    return config_from_depth(depth, aspect_ratio, head_dim, **kept)


def token_ratio(ratio: float, params: int, reference_params: int) -> float:
    """D / D_ref. The ratio cancels except for the reference's int() truncation of D, kept for
    exactness; without a ratio horizon (ratio <= 0) it is P / P_ref."""
    if ratio <= 0:
        return params / reference_params
    # 92d63d4 computes D = int(ratio x P) before dividing; the reference's D_ref is not truncated.
    return int(ratio * params) / (ratio * reference_params)


def auto_total_batch(reference_batch: int, exponent: float, tokens_ratio: float) -> int:
    """The power of two nearest (in log2) to reference_batch x (D / D_ref)^exponent."""
    # Power Lines (Bopt ~ D^0.383), as 92d63d4 applies it: d12 at ratio 12 keeps 2^19 = 524,288 tokens.
    return 2 ** round(math.log2(reference_batch * tokens_ratio**exponent))


def horizon_weight_decay_scale(total_batch: int, reference_batch: int, tokens_ratio: float) -> float:
    """sqrt(B / B_ref) x D_ref / D: what keeps T_epoch constant as batch and horizon move."""
    # T_epoch = B / (lr wd D) with Muon's lr ~ sqrt(B): holding it fixed gives wd ~ sqrt(B) / D.
    return math.sqrt(total_batch / reference_batch) / tokens_ratio
