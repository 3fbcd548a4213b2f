"""`python -m harness.inspect <overrides>`: what a run with these overrides would train.

Prints every parameter's name, shape, optimizer, base LR, LR multiplier and effective LR (the
same table every run logs to params.tsv; the layers that share all of it share a row, `--all`
shows each parameter), then the parameter counts by role and the horizon, and under precision=fp8
which Linear layers run in float8.
Builds the model on the meta device, so d24 costs no memory and no data is read. A recipe that
chooses its batch or Muon weight decay from the model's size also gets those lines.
"""

from __future__ import annotations

import argparse

from harness.cli import compose, exit_on_config_error
from harness.config import (
    AUTO_BATCH,
    OptimConfig,
    TrainConfig,
    lr_placement,
    model_config,
    num_iterations,
    optim_config,
    train_config,
)
from harness.hardware import resolve_device
from harness.optim import LAYER_INDEX, ParamRow, layer_pattern, parameter_table
from harness.precision import describe_float8, precision_config
from models.gpt import GPT


def format_rows(rows: list[ParamRow], collapse: bool = False) -> str:
    """The LR table; `collapse` folds the per-layer copies of a parameter that the optimizer treats
    identically into one row, named with `*` for the layer and the layers it stands for."""
    header = ("name", "shape", "optimizer", "base_lr", "multiplier", "effective_lr", "betas", "weight_decay")
    groups = collapse_layers(rows) if collapse else [(r.name, "", r) for r in rows]
    if collapse:
        header = (header[0], "layers", *header[1:])
    table = [header] + [
        (
            name,
            *((layers,) if collapse else ()),
            " x ".join(map(str, r.shape)),
            r.optimizer,
            f"{r.base_lr:.6g}",
            f"{r.multiplier:.4g}",
            f"{r.lr:.6g}",
            "" if r.betas is None else f"({r.betas[0]}, {r.betas[1]})",
            f"{r.weight_decay:.4g}",
        )
        for name, layers, r in groups
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table)


def collapse_layers(rows: list[ParamRow]) -> list[tuple[str, str, ParamRow]]:
    """(name with the layer index as *, the layers, one row) for every set of rows that differ only
    in their layer index, in the order of their first layer. Rows whose shape, optimizer, LR,
    multiplier, betas or weight decay differ between layers stay apart, each with its layers."""
    groups: dict[tuple, list[tuple[int, ParamRow]]] = {}
    for r in rows:
        match = LAYER_INDEX.search(r.name)
        if match is None:
            groups[(r.name,)] = [(-1, r)]
            continue
        pattern = layer_pattern(r.name)
        key = (pattern, r.shape, r.optimizer, r.base_lr, r.multiplier, r.betas, r.weight_decay)
        groups.setdefault(key, []).append((int(match.group(1)), r))
    collapsed = []
    for key, members in groups.items():
        if len(members) == 1:
            collapsed.append((members[0][1].name, "", members[0][1]))
        else:
            collapsed.append((key[0], _layer_list([i for i, _ in members]), members[0][1]))
    return collapsed


def _layer_list(layers: list[int]) -> str:
    """0-11, or 1,3,5,7,9,11 when they are not consecutive."""
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def describe(overrides: list[str], every_row: bool = False) -> str:
    cfg = compose(overrides)
    model_cfg = model_config(cfg)
    train = train_config(cfg)
    model = GPT.on_meta(model_cfg)
    optim = optim_config(cfg)
    rows = parameter_table(model, optim, lr_placement(cfg), train.total_batch_tokens)
    counts = model.parameter_counts()
    fpt = model.flops_per_token()
    steps = num_iterations(train, counts["scaling"], fpt)
    tokens = steps * train.total_batch_tokens
    lines = [
        f"model: depth {model_cfg.n_layer}, dim {model_cfg.n_embd}, {model_cfg.n_head} heads x {model_cfg.head_dim}, "
        f"vocab {model_cfg.vocab_size} (padded {model_cfg.padded_vocab_size}), sequence {model_cfg.sequence_len}, "
        f"windows {model_cfg.window_sizes()}, rope.split={model_cfg.rope_split}, mlp_lr={cfg.mlp_lr.name}",
        "",
        format_rows(rows, collapse=not every_row),
        "",
        "parameter counts:",
        *(f"  {role:<13} {count:>15,}" for role, count in counts.items()),
        "",
        f"FLOPs per token: {fpt:,.0f}",
        f"horizon: {steps:,} steps x {train.total_batch_tokens:,} tokens = {tokens:,} tokens, {tokens * fpt:.3e} FLOPs",
        *recipe_schedule_lines(cfg, train, optim, steps),
    ]
    precision = precision_config(cfg)
    if precision.fp8:  # which matrices run in float8 (bf16, the default, prints nothing more)
        lines += ["", describe_float8(model, precision, resolve_device(train.device).type)]
    return "\n".join(lines)


def recipe_schedule_lines(cfg, train: TrainConfig, optim: OptimConfig, steps: int) -> list[str]:
    """What the transfer rules and schedules of a recipe that uses them decide (harness/recipe.py):
    the automatic batch, the horizon-scaled Muon weight decay, warmup and warmdown in steps. Printed
    only where a recipe uses them, so the January recipe's output stays as it always was."""
    lines = []
    if cfg.train.total_batch_tokens == AUTO_BATCH:
        batch = train.total_batch_tokens
        lines.append(f"batch: automatic, {batch:,} tokens (train.batch_exponent {train.batch_exponent})")
    muon = optim.muon
    if muon.weight_decay_rule == "horizon":
        lines.append(
            f"Muon weight decay: {muon.weight_decay} x {muon.weight_decay_horizon_scale:.6f} = "
            f"{muon.weight_decay * muon.weight_decay_horizon_scale:.6f} at step 0, {muon.weight_decay_schedule} to 0"
        )
    if train.warmup_steps or muon.warmdown_momentum is not None:
        warmdown = round(train.warmdown_ratio * steps)
        lines.append(
            f"schedule: LR warmup {train.warmup_steps} steps, warmdown {warmdown:,} steps to {train.final_lr_frac}; "
            f"Muon momentum {muon.warmup_momentum} -> {muon.momentum} over {muon.momentum_warmup_steps} steps"
            + ("" if muon.warmdown_momentum is None else f", -> {muon.warmdown_momentum} over the warmdown")
        )
    return lines


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m harness.inspect",
        description="Print the parameter table (optimizer, LR, multiplier per parameter), the parameter counts "
        "and the horizon of the run that `python -m harness.train OVERRIDES` would launch. Nothing is trained "
        "or downloaded; the model is built on the meta device.",
        epilog="example: python -m harness.inspect model=d24 mlp_lr=c_proj_2x",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for harness.train (key=value)")
    parser.add_argument(
        "--all", action="store_true", help="one row per parameter (default: layers treated alike share a row)"
    )
    args = parser.parse_intermixed_args(argv)
    print(describe(args.overrides, every_row=args.all))


if __name__ == "__main__":
    main()
