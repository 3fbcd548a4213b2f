"""Every config group composes into valid typed sections; bad values give one clear line."""

from pathlib import Path

import pytest

from harness.cli import CONFIG_DIR, compose, expand_sweep
from harness.config import (
    eval_config,
    grad_accum_steps,
    lr_placement,
    model_config,
    num_iterations,
    optim_config,
    train_config,
)
from harness.errors import ConfigError
from models.gpt import GPT

GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]


def test_the_menu_has_every_ablation_axis():
    assert {
        "model",
        "rope",
        "mlp_lr",
        "optim",
        "data",
        "train",
        "eval",
        "logger",
        "launcher",
        "experiment",
    } <= set(GROUPS)
    options = {g: {o for gg, o in OPTIONS if gg == g} for g in GROUPS}
    assert options["rope"] >= {"slice", "chunk"}
    assert options["mlp_lr"] >= {"c_fc_2x", "c_proj_2x", "none", "pr492_shape_rule"}
    assert options["model"] >= {"tiny", "d12", "d16", "d20", "d24"}


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes_to_valid_sections(group, option):
    cfg = compose([f"{group}={option}"])
    model = model_config(cfg)
    train = train_config(cfg)
    optim_config(cfg)
    lr_placement(cfg)
    eval_config(cfg)
    meta = GPT.on_meta(model)
    num_iterations(train, meta.parameter_counts()["scaling"], meta.flops_per_token())


@pytest.mark.parametrize("depth,dim,heads", [(12, 768, 6), (16, 1024, 8), (20, 1280, 10), (24, 1536, 12)])
def test_depth_drives_sizing(depth, dim, heads):
    model = model_config(compose([f"model=d{depth}"]))
    assert (model.n_layer, model.n_embd, model.n_head, model.head_dim) == (depth, dim, heads, 128)


def test_smoke_sweep_expands_to_the_grid():
    jobs = expand_sweep(["experiment=smoke"])
    assert len(jobs) == 16
    assert {tuple(sorted(j)) for j in jobs} == {
        tuple(sorted(["experiment=smoke", f"rope={r}", f"mlp_lr={m}", f"seed={s}"]))
        for r in ("slice", "chunk")
        for m in ("c_fc_2x", "c_proj_2x", "none", "pr492_shape_rule")
        for s in ("0", "1")
    }
    # a command-line sweep replaces the experiment's values for that key
    assert len(expand_sweep(["experiment=smoke", "seed=0,1,2"])) == 24


@pytest.mark.parametrize(
    "experiment,compared",
    [
        ("ladder", ["mlp_lr"]),
        ("ladder_cpu", ["mlp_lr"]),
        ("cpu_scale", ["mlp_lr"]),
        ("rope_mlp_lr", ["mlp_lr", "rope"]),
    ],
)
def test_the_compared_arms_of_one_seed_are_consecutive_jobs(experiment, compared):
    # Jobs in launch order: the seeds (and rungs) in turn, and within each every combination of the
    # compared axes before the next seed, so the arms share the machine's state (two launches train a
    # pair side by side) and their tok/s and times to target compare.
    jobs = [dict(o.split("=", 1) for o in job) for job in expand_sweep([f"experiment={experiment}"])]
    arms = len({tuple(job[k] for k in compared) for job in jobs})
    for start in range(0, len(jobs), arms):
        block = jobs[start : start + arms]
        fixed = [{k: v for k, v in job.items() if k not in compared} for job in block]
        assert all(f == fixed[0] for f in fixed), block  # one seed and rung in the block
        assert len({tuple(job[k] for k in compared) for job in block}) == arms  # every arm once


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model=d13"], "model=d13 is not an option; choose from: d12, d16, d20, d24, d26, tiny"),
        (["rope=fused_typo"], "rope=fused_typo is not an option; choose from:"),
        (["train.total_batch_tokens=abc"], "train.total_batch_tokens='abc' must be an integer"),
        (["+train.foo=1"], "unknown key train.foo"),
        (["modle=d12"], "modle is not a config key (python -m harness.train --help lists the keys)"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        cfg = compose(overrides)
        train_config(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_batch_must_split_over_micro_batches_and_ranks():
    train = train_config(compose(["train.total_batch_tokens=100000"]))
    with pytest.raises(ConfigError, match=r"train.total_batch_tokens=100000 is not divisible by .* = 32 x 2048 x 1"):
        grad_accum_steps(train, 2048, 1)
    train = train_config(compose([]))
    assert grad_accum_steps(train, 2048, 8) == 1
    assert grad_accum_steps(train, 2048, 1) == 8
    with pytest.raises(ConfigError, match="32 x 2048 x 3"):
        grad_accum_steps(train, 2048, 3)


def test_sequence_longer_than_the_rotary_cache_is_rejected():
    with pytest.raises(ConfigError, match="model: sequence_len=4096 exceeds rotary_cache_len=2048"):
        model_config(compose(["model.sequence_len=4096", "+model.rotary_cache_len=2048"]))


def test_horizon_from_ratio_flops_or_steps():
    meta = GPT.on_meta(model_config(compose(["model=d12"])))
    scaling, fpt = meta.parameter_counts()["scaling"], meta.flops_per_token()
    # int(10.5 x 110,101,632 scaling params) // 524,288 tokens per step = 2205 (2205.02 before flooring)
    assert num_iterations(train_config(compose(["model=d12"])), scaling, fpt) == 2205
    assert num_iterations(train_config(compose(["train.num_iterations=7"])), scaling, fpt) == 7
    budget = 1000 * fpt * 524288
    assert num_iterations(train_config(compose([f"train.target_flops={budget}"])), scaling, fpt) == 1000
    with pytest.raises(ConfigError, match="no horizon"):
        num_iterations(train_config(compose(["train.target_param_data_ratio=-1"])), scaling, fpt)


def reference_ratio_horizon(ratio: float, scaling_params: int, total_batch: int) -> int:
    """nanochat 348fbb3 and 92d63d4 base_train.py, written out: target_tokens = int(ratio x P), then
    num_iterations = target_tokens // total_batch."""
    target_tokens = int(ratio * scaling_params)
    return target_tokens // total_batch


def test_the_january_horizon_floors_as_the_reference():
    """d12 at ratio 10.5 with a 2^20 batch: 1102.5 steps, which the reference floors to 1102 (rounding to
    the nearest step gave 1103)."""
    meta = GPT.on_meta(model_config(compose(["model=d12"])))
    scaling, fpt = meta.parameter_counts()["scaling"], meta.flops_per_token()
    train = train_config(compose(["model=d12", "train.total_batch_tokens=1048576"]))
    assert num_iterations(train, scaling, fpt) == 1102 == reference_ratio_horizon(10.5, scaling, 2**20)


@pytest.mark.parametrize("depth", [8, 12, 16, 20, 24, 26])
@pytest.mark.parametrize("ratio", [8, 10.5, 12, 20])
@pytest.mark.parametrize("batch", [2**19, 2**20])
def test_the_january_ratio_horizon_is_the_references_at_every_size(depth, ratio, batch):
    cfg = compose(
        [f"model.depth={depth}", f"train.target_param_data_ratio={ratio}", f"train.total_batch_tokens={batch}"]
    )
    meta = GPT.on_meta(model_config(cfg))
    scaling = meta.parameter_counts()["scaling"]
    assert num_iterations(train_config(cfg), scaling, meta.flops_per_token()) == reference_ratio_horizon(
        ratio, scaling, batch
    )


def test_every_config_file_is_reachable():
    """No stray YAML outside the groups the defaults list knows."""
    stray = [p for p in Path(CONFIG_DIR).rglob("*.yaml") if p.parent != CONFIG_DIR and p.parent.name not in GROUPS]
    assert not stray


def test_a_fixed_value_on_the_command_line_replaces_the_experiments_sweep():
    jobs = expand_sweep(["experiment=smoke", "rope=chunk"])
    assert len(jobs) == 8
    assert all("rope=chunk" in job for job in jobs)


def test_a_plain_command_line_sweep_expands_without_an_experiment():
    jobs = expand_sweep(["model=d12,d24", "seed=0,1"])
    assert sorted(map(tuple, jobs)) == sorted((f"model={m}", f"seed={s}") for m in ("d12", "d24") for s in ("0", "1"))


@pytest.mark.parametrize("overrides", [["experiment=smoke"], ["recipe=nanochat_2026_07"], ["launcher=torchrun"]])
def test_the_schemas_leave_the_saved_config_as_omegaconf_resolves_it(overrides):
    """config.yaml (and the resume check) hold the composed tree as OmegaConf resolves it: a schema
    adds, renames or fills in no key, so a run directory made before the schemas still matches."""
    from omegaconf import OmegaConf

    from harness.run.spec import resolve_run

    cfg = compose(overrides)
    assert resolve_run(cfg, check_inputs=False).config == OmegaConf.to_container(cfg, resolve=True)


GROUP_OPTIONS = [
    f"{group.name}={option.stem}"
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir())
    for option in sorted(group.glob("*.yaml"))
]


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_every_key_a_config_file_writes_is_named_by_a_schema(option):
    """A key added to a YAML file of configs/ without its schema would refuse every run composing it."""
    from omegaconf import OmegaConf

    from harness.run.spec import check_keys

    check_keys(OmegaConf.to_container(compose([option]), resolve=False))
