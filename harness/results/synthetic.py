"""Synthetic sweeps: run directories with known numbers, written through RunDir like real ones.

For tests and for previewing a report without training anything:

    python -m harness.results.synthetic runs/demo            # the smoke grid, 2 seeds
    python -m harness.results.synthetic runs/demo --models d12 d24 --seeds 0 1 2 --core

Each run's config is the real resolved config of `experiment=smoke` with the run's model, rope
and mlp_lr groups swapped in from configs/. Its val bpb falls smoothly from `START_BPB` to a
final value = depth's base + the variant's effect + a per-seed offset shared by all variants
(seeds pair up, as in real sweeps where the seed fixes data order and initialisation) + a
little independent noise. Numbers are plausible, not measured.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from harness.results.rundir import RunDir
from harness.run.outcome import Summary, write_summary

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
SMOKE_GRID = {
    "rope": ("slice", "chunk"),
    "mlp_lr": ("c_fc_2x", "c_proj_2x", "none", "pr492_shape_rule"),
}
# Made-up effects on final val bpb: the recipe's placement best, chunk identical to slice.
SMOKE_EFFECTS = {"c_fc_2x": 0.0, "c_proj_2x": 0.004, "none": 0.009, "pr492_shape_rule": 0.006, "chunk": 0.0}
CORE_TASKS = (
    "hellaswag_zeroshot",
    "jeopardy",
    "bigbench_qa_wikidata",
    "arc_easy",
    "arc_challenge",
    "copa",
    "commonsense_qa",
    "piqa",
    "openbook_qa",
    "lambada_openai",
    "hellaswag",
    "winograd",
    "winogrande",
    "bigbench_dyck_languages",
    "agi_eval_lsat_ar",
    "bigbench_cs_algorithms",
    "bigbench_operators",
    "bigbench_repeat_copy_logic",
    "squad",
    "coqa",
    "boolq",
    "bigbench_language_identification",
)
START_BPB = 3.4
BASE_BPB = {4: 1.65, 12: 0.86, 16: 0.82, 20: 0.79, 24: 0.76}
BASE_TOK_PER_S = {4: 9000.0, 12: 420_000.0, 16: 250_000.0, 20: 160_000.0, 24: 100_000.0}
H100_PEAK_FLOPS = 989e12
NATS_PER_BPB = math.log(2) * 3.5  # bytes per token of the smoke tokenizer, roughly


@functools.lru_cache(maxsize=1)
def _smoke_config() -> dict:
    from omegaconf import OmegaConf

    from harness.cli import compose

    return OmegaConf.to_container(compose(["experiment=smoke"]), resolve=True)


def _group(group: str, choice: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / group / f"{choice}.yaml").read_text())


def run_config(
    model: str = "tiny", rope: str = "slice", mlp_lr: str = "c_fc_2x", seed: int = 0, name: str = "smoke"
) -> dict:
    """The resolved config a real run of these choices would write (smoke experiment otherwise):
    data.seed follows the seed, as configs/data/ has it."""
    smoke = _smoke_config()
    config = {**smoke, "name": name, "seed": seed, "data": {**smoke["data"], "seed": seed}}
    config.update(model=_group("model", model), rope=_group("rope", rope), mlp_lr=_group("mlp_lr", mlp_lr))
    return config


@functools.cache
def _flops_per_token(model: str) -> float:
    from omegaconf import OmegaConf

    from harness.config import model_config
    from models.gpt import GPT

    cfg = OmegaConf.create(run_config(model))
    return float(GPT.on_meta(model_config(cfg)).flops_per_token())


def write_run(
    path: str | os.PathLike,
    config: dict,
    final_val_bpb: float,
    tok_per_s: float,
    rng: np.random.Generator,
    status: str | None = "completed",
    stop_step: int | None = None,
    core: Mapping[str, float] | None = None,
) -> RunDir:
    """One run directory. `status` None leaves no summary.json (a run still going, or killed);
    `stop_step` ends the metrics early (failed, interrupted, running); diverged runs blow up."""
    run = RunDir(path)
    run.write_config(config)
    steps, val_every = config["train"]["num_iterations"], config["eval"]["val_every"]
    batch = config["train"]["total_batch_tokens"]
    fpt = _flops_per_token(_model_choice(config))
    last = steps if stop_step is None else stop_step
    on_gpu = config["model"]["depth"] >= 12
    val_history = []
    for step in range(last + 1):
        tokens, progress = step * batch, _progress(step, steps)
        base = {"step": step, "tokens": tokens, "flops": tokens * fpt, "time_s": tokens / tok_per_s}
        if step < last or stop_step is None:
            loss = (final_val_bpb + (START_BPB - final_val_bpb) * progress) * NATS_PER_BPB
            loss += rng.normal(0, 0.06)
            if status == "diverged" and step > 0.6 * steps:
                loss = math.inf if step == last else loss * (1 + 4 * (step / steps - 0.6))
            speed = tok_per_s * (1 + rng.normal(0, 0.02))
            run.append_metrics(
                {
                    **base,
                    "train_loss": loss,
                    "lr_multiplier": _lr(step, steps),
                    "tok_per_s": speed,
                    "mfu": fpt * speed / H100_PEAK_FLOPS if on_gpu else None,
                }
            )
        if step % val_every == 0 or step == steps:
            if status == "diverged" and step > 0.6 * steps:
                continue
            bpb = final_val_bpb + (START_BPB - final_val_bpb) * progress + rng.normal(0, 0.0005) * (step < steps)
            val_history.append(bpb)
            run.append_metrics({**base, "val_bpb": bpb})
    if core is not None and stop_step is None and status == "completed":
        centered = {f"core/{task}": value for task, value in core.items()}
        run.append_metrics({**base, "core": float(np.mean(list(core.values()))), **centered})
    if status is not None:
        summary = _summary(config, status, last, steps, batch, fpt, tok_per_s, val_history, core, on_gpu)
        write_summary(run, Summary.from_json(summary))
    return run


def _summary(config, status, last, steps, batch, fpt, tok_per_s, val_history, core, on_gpu) -> dict:
    tokens = last * batch
    finished = status == "completed"
    return {
        "status": status,
        "step": last,
        "num_iterations": steps,
        "tokens": tokens,
        "flops": tokens * fpt,
        "final_val_bpb": val_history[-1] if finished else None,
        "last_val_bpb": val_history[-1] if val_history else None,
        "min_val_bpb": min(val_history) if val_history else None,
        "core": float(np.mean(list(core.values()))) if core and finished else None,
        "core_tasks": dict(core) if core and finished else {},
        "train_time_s": tokens / tok_per_s,
        "wall_time_s": tokens / tok_per_s * 1.15 + 4.0,
        "tok_per_s": tok_per_s,
        "mfu": fpt * tok_per_s / H100_PEAK_FLOPS if on_gpu else None,
        "error": "RuntimeError: CUDA error: an illegal memory access was encountered" if status == "failed" else None,
        "versions": {"torch": "2.13.0", "python": "3.11"},
        "git_commit": "0000000",
        "device": "NVIDIA H100 80GB HBM3" if on_gpu else "cpu",
        "world_size": 1,
        "flops_per_token": fpt,
    }


def _progress(step: int, steps: int) -> float:
    """1 at step 0, 0 at the last step: a power-law-like fall."""
    tau = max(steps / 20, 1.0)
    end = 1 / (1 + steps / tau)
    return (1 / (1 + step / tau) - end) / (1 - end)


def _lr(step: int, steps: int) -> float:
    """The recipe's schedule: flat, then linear warmdown over the last half to 0."""
    return min(1.0, (steps - step) / (0.5 * steps))


def _model_choice(config: dict) -> str:
    depth = config["model"]["depth"]
    return "tiny" if config["model"]["head_dim"] < 128 else f"d{depth}"


def write_sweep(
    root: str | os.PathLike,
    models: Sequence[str] = ("tiny",),
    seeds: Sequence[int] = (0, 1),
    grid: Mapping[str, Sequence[str]] = SMOKE_GRID,
    effects: Mapping[str, float] = SMOKE_EFFECTS,
    statuses: Mapping[tuple[str, ...], str | None] | None = None,
    core: bool = False,
    seed_sd: float = 0.006,
    noise_sd: float = 0.0015,
    rng_seed: int = 0,
) -> list[RunDir]:
    """A Hydra-multirun-shaped sweep: root/<override_dirname>/ per run (model in the name when
    several). `statuses` maps (model, rope, mlp_lr, seed as str) to a non-completed status
    (None: no summary at all)."""
    rng = np.random.default_rng(rng_seed)
    statuses = statuses or {}
    seed_offsets = {s: rng.normal(0, seed_sd) for s in seeds}
    runs = []
    for model, rope, mlp_lr, seed in itertools.product(models, grid["rope"], grid["mlp_lr"], seeds):
        config = run_config(model, rope, mlp_lr, seed, name=Path(root).name)
        depth = config["model"]["depth"]
        effect = effects.get(rope, 0.0) + effects.get(mlp_lr, 0.0)
        final = BASE_BPB.get(depth, 1.0) + effect + seed_offsets[seed] + rng.normal(0, noise_sd)
        speed = BASE_TOK_PER_S.get(depth, 1e5) * (1.005 if rope == "chunk" else 1.0) * (1 + rng.normal(0, 0.01))
        overrides = {"mlp_lr": mlp_lr, "rope": rope, "seed": seed}
        if len(models) > 1:
            overrides["model"] = model
        name = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        key = (model, rope, mlp_lr, str(seed))
        status = statuses.get(key, "completed")
        stop = None if status in ("completed", "diverged") else config["train"]["num_iterations"] // 2
        task_values = _core_values(depth, effect, seed_offsets[seed], rng) if core else None
        runs.append(write_run(Path(root) / name, config, final, speed, rng, status, stop, task_values))
    return runs


def _core_values(depth: int, effect: float, seed_offset: float, rng: np.random.Generator) -> dict[str, float]:
    level = 0.05 + 0.01 * depth - 2 * effect - seed_offset
    spread = np.linspace(-0.12, 0.35, len(CORE_TASKS))
    return {t: float(level + s + rng.normal(0, 0.01)) for t, s in zip(CORE_TASKS, spread, strict=True)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m harness.results.synthetic")
    parser.add_argument("root", help="sweep directory to create")
    parser.add_argument("--models", nargs="+", default=["tiny"], help="model configs, e.g. tiny or d12 d24")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--core", action="store_true", help="write CORE results too")
    args = parser.parse_args(argv)
    runs = write_sweep(args.root, args.models, args.seeds, core=args.core)
    print(f"wrote {len(runs)} synthetic runs under {args.root}")


if __name__ == "__main__":
    main()
