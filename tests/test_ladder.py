"""The depth ladders (configs/experiment/ladder.yaml, ladder_cpu.yaml): every rung sized, timed and
tuned by the recipe's rules written out here by hand, and `harness.plan` costing each rung."""

from __future__ import annotations

import math

import pytest
import yaml

from harness import plan
from harness.cli import CONFIG_DIR, compose, expand_sweep
from harness.config import lr_placement, model_config, num_iterations, optim_config, train_config
from harness.optim import parameter_table
from models.gpt import GPT


def sweep_params(experiment: str) -> dict:
    """The experiment file's own sweep (strings, as Hydra's sweeper reads them)."""
    text = (CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()
    return {key: str(value) for key, value in yaml.safe_load(text)["hydra"]["sweeper"]["params"].items()}


# One seed: expanding a sweep composes every job, and more seeds add nothing to check here.
GPU_JOBS = expand_sweep(["experiment=ladder", "seed=0"])
CPU_JOBS = expand_sweep(["experiment=ladder_cpu", "seed=0"])
CPU_DEPTHS = sorted({int(o.split("=")[1]) for job in CPU_JOBS for o in job if o.startswith("model.depth=")})


def test_the_gpu_ladder_is_the_recipes_four_depths_by_two_placements():
    assert sweep_params("ladder") == {"model": "d12,d16,d20,d24", "seed": "0,1,2", "mlp_lr": "c_fc_2x,c_proj_2x"}
    assert len(GPU_JOBS) == 4 * 2
    assert sorted(model_config(compose(job)).n_layer for job in GPU_JOBS[::2]) == [12, 16, 20, 24]


def test_the_plan_costs_every_rung_of_the_gpu_ladder(capsys, plan_without_memory):
    assert plan.main(["experiment=ladder", "seed=0"]) == 0
    printed = capsys.readouterr().out
    assert "| `model=d12 mlp_lr=c_fc_2x` | 12 | 286M | 110M | 802M | 2,205 |" in printed  # d12's own horizon
    for depth in (12, 16, 20, 24):
        assert f"\n| {depth} | 2 |" in printed  # the per-rung table: runs, tokens, FLOPs, GPU-hours


def test_the_cpu_ladder_has_four_rungs_two_placements_and_six_seeds():
    params = sweep_params("ladder_cpu")
    assert (params["mlp_lr"], params["seed"]) == ("c_fc_2x,c_proj_2x", "range(0,6)")
    assert len(CPU_JOBS) == 4 * 2 and len(CPU_DEPTHS) == 4


@pytest.mark.parametrize("depth", CPU_DEPTHS)
def test_each_cpu_rung_follows_the_recipes_rules(depth):
    cfg = compose(["experiment=ladder_cpu", f"model.depth={depth}", "mlp_lr=c_fc_2x"])
    aspect, head_dim = int(cfg.model.aspect_ratio), int(cfg.model.head_dim)
    model = model_config(cfg)
    # Width from depth by the aspect ratio, rounded up to whole heads; heads of head_dim.
    width = math.ceil(depth * aspect / head_dim) * head_dim
    assert (model.n_embd, model.n_head) == (width, width // head_dim)
    # Horizon from one tokens-per-parameter ratio: int(ratio x P) // B, P = block matrices + lm_head.
    meta = GPT.on_meta(model)
    train = train_config(cfg)
    ratio = float(cfg.train.target_param_data_ratio)
    scaling = meta.parameter_counts()["scaling"]
    assert num_iterations(train, scaling, meta.flops_per_token()) == int(ratio * scaling) // train.total_batch_tokens
    # LRs: AdamW's embedding and unembedding scaled by (width / 768)^-0.5, everything by sqrt(B / B_ref).
    optim = optim_config(cfg)
    rows = {r.name: r for r in parameter_table(meta, optim, lr_placement(cfg), train.total_batch_tokens)}
    batch = math.sqrt(train.total_batch_tokens / optim.reference_batch_tokens)
    assert rows["lm_head.weight"].lr == pytest.approx(0.004 * (width / 768) ** -0.5 * batch)
    assert rows["transformer.wte.weight"].lr == pytest.approx(0.3 * (width / 768) ** -0.5 * batch)
    assert rows["transformer.h.0.mlp.c_fc.weight"].lr == pytest.approx(0.02 * 2 * batch)
    assert rows["transformer.h.0.attn.c_q.weight"].weight_decay == pytest.approx(0.2 * (12 / depth) ** 2)


def test_every_cpu_rung_shares_one_ratio_and_batch():
    configs = [compose(job) for job in CPU_JOBS]
    assert len({float(c.train.target_param_data_ratio) for c in configs}) == 1
    assert len({int(c.train.total_batch_tokens) for c in configs}) == 1
    assert all(int(c.train.num_iterations) <= 0 for c in configs)  # no fixed step count: the ratio decides
