"""User mistakes: each is one line naming the key, the bad value and what is allowed, exit code 2,
raised before any model is built (the command's preflight composes and checks every job)."""

import subprocess
import sys

import pytest

from harness.cli import CONFIG_DIR
from harness.data.config import data_config
from harness.train import cli_main

SMOKE = "experiment=smoke"


def options(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")))


def config_keys(section: str, *optional: str) -> str:
    """The keys the smoke experiment's YAML files give a section (or the top level), and the
    optional ones the code reads with a default."""
    from omegaconf import OmegaConf

    from harness.cli import compose

    cfg = compose([SMOKE])
    node = OmegaConf.select(cfg, section) if section else cfg
    return ", ".join(sorted({*map(str, node.keys()), *optional}))


TRAIN_KEYS = (
    "batch_exponent, checkpoint_every, compile, device, device_batch_size, divergence_after_steps, "
    "divergence_factor, dtype, final_lr_frac, horizon_rounding, keep_checkpoints, num_iterations, print_every, "
    "profile, resume, target_flops, target_param_data_ratio, total_batch_tokens, warmdown_ratio, warmup_ratio, "
    "warmup_steps"
)

CASES = [
    ("model=d13", f"model=d13 is not an option; choose from: {options('model')}"),
    ("rope=diagonal", f"rope=diagonal is not an option; choose from: {options('rope')}"),
    ("mlp_lr=c_fc_3x", f"mlp_lr=c_fc_3x is not an option; choose from: {options('mlp_lr')}"),
    (f"{SMOKE} logger=wandb2", f"logger=wandb2 is not an option; choose from: {options('logger')}"),
    ("train.foo=1", "train.foo is not a config key (python -m harness.train --help lists the keys)"),
    ("+train.foo=1", f"unknown key train.foo; allowed: {TRAIN_KEYS}"),
    ("train.num_iterations", "cannot parse override 'train.num_iterations': expected key=value (or group=option)"),
    ("train.total_batch_tokens=abc", "train.total_batch_tokens='abc' must be an integer"),
    (f"{SMOKE} train.total_batch_tokens=2048.5", "train.total_batch_tokens=2048.5 must be an integer"),
    (
        f"{SMOKE} train.total_batch_tokens=1000",
        "train.total_batch_tokens=1000 is not divisible by train.device_batch_size x model.sequence_len x "
        "world_size = 16 x 128 x 1 = 2048; the total must be a multiple of model.sequence_len x world_size: "
        "e.g. train.total_batch_tokens=2048",
    ),
    (f"{SMOKE} train.device_batch_size=0", "train.device_batch_size=0 must be positive"),
    ("train.device=tpu", "train.device='tpu' is not one of: auto, cpu, cuda"),
    (f"{SMOKE} train.resume=maybe", "train.resume='maybe' is not one of: auto, never, force"),
    (f"{SMOKE} train.compile=maybe", "train.compile='maybe' must be true or false"),
    (f"{SMOKE} seed=abc", "seed='abc' must be an integer"),
    (f"{SMOKE} model.depth=0", "model.depth=0 must be positive"),
    (f"{SMOKE} model.head_dim=33", "model: head_dim=33 must be even (rotary rotates channel pairs)"),
    (f"{SMOKE} model.window_pattern=SXL", "model: window_pattern='SXL' must be a non-empty string of S and L"),
    (
        f"{SMOKE} model.sequence_len=4096 +model.rotary_cache_len=2048",
        "model: sequence_len=4096 exceeds rotary_cache_len=2048",
    ),
    (f"{SMOKE} mlp_lr.shape_rule=diagonal", "mlp_lr.shape_rule='diagonal' is not one of: none, legacy, pr492"),
    (
        f"{SMOKE} mlp_lr.multipliers=[{{match:'*.cfc.weight',value:2.0}}]",
        "mlp_lr.multipliers[0].match='*.cfc.weight' matches no Muon parameter "
        "(names look like transformer.h.0.attn.c_q.weight)",
    ),
    (f"{SMOKE} optim.muon.dtype=fp8", "optim.muon.dtype='fp8' is not one of: auto, float32, bfloat16"),
    (
        f"{SMOKE} train.num_iterations=-1 train.target_param_data_ratio=-1",
        "no horizon: set one of train.num_iterations, train.target_flops, train.target_param_data_ratio",
    ),
    (
        f"{SMOKE} eval.val_tokens=100",
        "eval.val_tokens=100 is less than one validation batch per rank "
        "(train.device_batch_size x model.sequence_len x world_size = 2048)",
    ),
    (
        f"{SMOKE} paths.runs_dir=/etc/passwd/runs",
        "paths.runs_dir=/etc/passwd/runs is not a writable directory (Not a directory)",
    ),
    (
        f"{SMOKE} data=local",
        "data.path is not set; point it at a file or folder of .txt/.jsonl/.parquet files "
        "(data=local data.path=/path/to/text)",
    ),
    (
        f"{SMOKE} data=local data.path=/nonexistent",
        "data.path=/nonexistent does not exist; point it at a file or folder of .txt/.jsonl/.parquet files",
    ),
    (
        "model=tiny",
        "data=fineweb with data.num_shards=40 is missing 41 of 41 shards (first shard_00000.parquet) and the "
        "tokenizer tokenizer_32768 in {data}/fineweb; run: python -m harness.prepare data=fineweb "
        "data.num_shards=40 data.vocab_size=32768 data.dir={data}/fineweb",
    ),
    (
        f"{SMOKE} eval=core",
        "eval.core.bundle_dir={data}/eval_bundle does not exist; fetch the CORE bundle with "
        "`python -m harness.prepare eval=core`",
    ),
    (
        f"{SMOKE} launcher=torchrun launcher.nproc_per_node=2",
        "train.total_batch_tokens=2048 is not divisible by train.device_batch_size x model.sequence_len x "
        "world_size = 16 x 128 x 2 = 4096; a device batch that divides it: train.device_batch_size=8 "
        "(1 accumulation step(s))",
    ),
    (
        f"{SMOKE} launcher=slurm launcher.nodes=4 train.device_batch_size=1",
        "train.total_batch_tokens=2048 is not divisible by train.device_batch_size x model.sequence_len x "
        "world_size = 1 x 128 x 32 = 4096; the total must be a multiple of model.sequence_len x world_size: "
        "e.g. train.total_batch_tokens=4096",
    ),
    (f"{SMOKE} launcher=torchrun launcher.nproc_per_node=0", "launcher.nproc_per_node=0 must be a positive integer"),
    (
        f"{SMOKE} launcher=torchrun +launcher.nodes=2",
        "launcher.nodes=2: launcher=torchrun runs on one node; use launcher=slurm",
    ),
    (
        f"{SMOKE} launcher.nproc_per_node=2",
        "launcher.nodes=1 x launcher.nproc_per_node=2 needs a launcher that starts processes: "
        "launcher=torchrun (one node) or launcher=slurm",
    ),
    (
        f"{SMOKE} launcher=torchrun launcher.start_method=fork",
        "launcher.start_method='fork' is not one of: spawn, forkserver",
    ),
    (
        f"-m {SMOKE} mlp_lr=c_fc_2x,bogus",
        "job 3/8 (rope=slice mlp_lr=bogus seed=0 experiment=smoke paths.runs_dir={runs}): "
        f"mlp_lr=bogus is not an option; choose from: {options('mlp_lr')}",
    ),
    ("recipe=nanochat_2099", f"recipe=nanochat_2099 is not an option; choose from: {options('recipe')}"),
    (
        f"{SMOKE} optim.muon.weight_decay_rule=quadratic",
        "optim.muon.weight_decay_rule='quadratic' is not one of: depth_squared, horizon",
    ),
    (f"{SMOKE} train.horizon_rounding=up", "train.horizon_rounding='up' is not one of: nearest, floor"),
    (
        f"{SMOKE} recipe=nanochat_2026_07 optim.adamw.embedding_betas=[0.8,1.5]",
        "optim.adamw.embedding_betas[1]=1.5 must be in [0, 1)",
    ),
    (
        f"{SMOKE} train.total_batch_tokens=-2",
        "train.total_batch_tokens=-2 must be positive, or -1 for the automatic batch",
    ),
    (
        f"{SMOKE} model.short_window_rounding=sideways",
        "model: short_window_rounding='sideways' is not one of ('down', 'up')",
    ),
    # run integrity (issue 15, item 8): values out of range, keys nothing reads, deleted groups
    (f"{SMOKE} train.warmup_ratio=1.5", "train.warmup_ratio=1.5 must be in [0, 1]"),
    (f"{SMOKE} train.final_lr_frac=-0.1", "train.final_lr_frac=-0.1 must be in [0, 1]"),
    (f"{SMOKE} optim.muon.lr=-0.02", "optim.muon.lr=-0.02 must be at least 0"),
    (f"{SMOKE} optim.adamw.embedding_lr=-1", "optim.adamw.embedding_lr=-1.0 must be at least 0"),
    (
        f"{SMOKE} mlp_lr.multipliers=[{{match:'*.c_fc.weight',value:-2.0}}]",
        "mlp_lr.multipliers[0].value=-2.0 must be at least 0",
    ),
    (f"{SMOKE} optim.adamw.betas=[0.8,1.0]", "optim.adamw.betas[1]=1.0 must be in [0, 1)"),
    (f"{SMOKE} optim.muon.beta2=-0.5", "optim.muon.beta2=-0.5 must be in [0, 1)"),
    (f"{SMOKE} optim.muon.ns_steps=0", "optim.muon.ns_steps=0 must be at least 1 (Newton-Schulz iterations)"),
    (
        f"{SMOKE} train.divergence_factor=1",
        "train.divergence_factor=1.0 must be greater than 1 "
        "(a loss above factor x its best smoothed value counts as diverged)",
    ),
    (
        f"{SMOKE} seed=18446744073709551616",
        "seed=18446744073709551616 is outside what torch accepts: [-2**63, 2**64 - 1]",
    ),
    (f"{SMOKE} paths.runs_dir=", "paths.runs_dir='' is empty; give the folder runs are written to (default: runs)"),
    (f"{SMOKE} +foo=1", f"unknown key foo; allowed: {config_keys('')}"),
    (f"{SMOKE} +model.foo=1", f"unknown key model.foo; allowed: {config_keys('model', 'rotary_cache_len')}"),
    (f"{SMOKE} ~model", f"~model deletes the model group, which every run needs; choose one of: {options('model')}"),
    (f"{SMOKE} logger=wandb logger.mode=onlin", "logger.mode='onlin' is not one of: online, offline, disabled"),
    # sweeps in Hydra's own syntax (issue 14): what the configured sweeper rejects, rejected up front
    (
        f"-m {SMOKE} mlp_lr=glob(zz*)",
        f"mlp_lr=glob(zz*) sweeps over no value; the options of mlp_lr are: {options('mlp_lr')}",
    ),
    (
        f"-m {SMOKE} optim.muon.lr=interval(0.01,0.05)",
        "optim.muon.lr=interval(0.01,0.05): Hydra's basic sweeper enumerates only comma lists, range(), glob() "
        "and choice(); interval() needs a sweeper that samples, e.g. hydra/sweeper=optuna",
    ),
    (f"{SMOKE} seed=0,1", "seed=0,1 is a sweep: add -m (--multirun) to launch one run per value, or quote the value"),
    (
        "hparams_search=smoke mlp_lr=glob(c_*)",
        "mlp_lr=glob(c_*): the Optuna sweeper cannot expand glob(); use choice(a,b,...)",
    ),
    (
        "hparams_search=smoke mlp_lr=choice(c_fc_2x,c_fc_3x)",
        f"mlp_lr=c_fc_3x is not an option; choose from: {options('mlp_lr')}",
    ),
    (
        "hparams_search=smoke optimized_metric=val_loss",
        "optimized_metric='val_loss' is not a summary metric; choose from: final_val_bpb, min_val_bpb, "
        "last_val_bpb, core, tok_per_s, mfu",
    ),
    (
        "hparams_search=smoke optimized_metric=core hydra.sweeper.direction=maximize",
        "optimized_metric=core needs CORE measured: eval=core (or eval.core.enabled=true)",
    ),
    (
        "hparams_search=smoke hydra.sweeper.direction=maximize",
        "hydra.sweeper.direction=maximize for optimized_metric=final_val_bpb, which is better when it is lower; "
        "set hydra.sweeper.direction=minimize",
    ),
    (f"{SMOKE} precision=fp16", f"precision=fp16 is not an option; choose from: {options('precision')}"),
    (
        f"{SMOKE} precision=fp8 precision.recipe=blockwise",
        "precision.recipe='blockwise' is not one of: tensorwise, rowwise",
    ),
    (f"{SMOKE} precision=fp8 precision.emulate=maybe", "precision.emulate='maybe' is not one of: auto, true, false"),
    # issue 26 item 10: inf wherever NaN is refused, and no run folder outside paths.runs_dir
    (f"{SMOKE} optim.muon.lr=inf", "optim.muon.lr=inf must be a finite number"),
    (f"{SMOKE} optim.adamw.eps=inf", "optim.adamw.eps=inf must be a finite number"),
    (f"{SMOKE} optim.muon.lr=nan", "optim.muon.lr=nan must be a finite number"),
    (
        f"{SMOKE} mlp_lr.multipliers=[{{match:'*.c_fc.weight',value:inf}}]",
        "mlp_lr.multipliers[0].value=inf must be a finite number",
    ),
    (f"{SMOKE} rope.base=0", "rope.base=0 must be a positive finite number"),
    (f"{SMOKE} rope.base=-10000", "rope.base=-10000 must be a positive finite number"),
    (f"{SMOKE} rope.base=nan", "rope.base=nan must be a positive finite number"),
    (f"{SMOKE} train.num_iterations=-1 train.target_flops=inf", "train.target_flops=inf must be a finite number"),
    (
        f"{SMOKE} name=..",
        "name=.. would put the run folder outside paths.runs_dir ('..' in a folder name); choose a value without '..'",
    ),
    (
        f"{SMOKE} name=a/../../elsewhere",
        "name=a/../../elsewhere would put the run folder outside paths.runs_dir ('..' in a folder name); choose a "
        "value without '..'",
    ),
    (
        f"{SMOKE} name={'n' * 300}",
        f"name={'n' * 40}... is 300 bytes; a folder name holds at most 246 (255 less the '-defaults' a single run "
        "adds)",
    ),
]


@pytest.fixture(scope="module")
def builtin_data(session_data_dir):
    """The smoke's tokenizer and tokenized corpus, built before the cases: the preflight would
    otherwise print the tokenizer's training progress ahead of the first case's one line."""
    from harness.cli import compose
    from harness.data.loader import check_val_rows
    from harness.data.sources import build_tokenizer

    cfg = compose([SMOKE])
    check_val_rows(data_config(cfg), build_tokenizer(data_config(cfg)), cfg.model.sequence_len, cfg.eval.val_tokens)


@pytest.mark.parametrize("command,message", CASES, ids=[c for c, _ in CASES])
def test_bad_invocation_is_one_line_and_exit_code_2(
    command, message, monkeypatch, capsys, session_data_dir, builtin_data, tmp_path
):
    monkeypatch.setattr(sys, "argv", ["harness.train", *command.split(), f"paths.runs_dir={tmp_path}/runs"])
    # The launcher=slurm case is about its batch: SLURM is there (without it: tests/test_slurm.py).
    monkeypatch.setattr("harness.launch.slurm_client", lambda: "/usr/bin/sbatch")
    if "paths.runs_dir=" in command:  # the case under test names its own runs dir
        monkeypatch.setattr(sys, "argv", ["harness.train", *command.split()])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {message.format(data=session_data_dir, runs=tmp_path / 'runs')}\n"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml")), "a run started"


def test_the_process_exit_code_is_2(tmp_path):
    """The same through a real process: no traceback, one line, exit status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "harness.train", "model=d13", f"paths.runs_dir={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: model=d13 is not an option; choose from: {options('model')}\n"


def test_rope_fused_without_cuda_is_refused_in_the_preflight(monkeypatch, capsys, tmp_path):
    from models.rotary import fused_unavailable_reason

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = fused_unavailable_reason("cpu")
    assert reason is not None and reason.startswith("rope.split=fused ")
    monkeypatch.setattr(sys, "argv", ["harness.train", SMOKE, "rope=fused", f"paths.runs_dir={tmp_path}/runs"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {reason}\n"
    assert not (tmp_path / "runs").exists()


# The same typos the command line refuses (+model.window_patern=L), written in an experiment's YAML
# file where no override names them: (what the file adds, the line the preflight prints).
YAML_TYPOS = [
    (
        "model:\n  window_patern: L\n",
        f"unknown key model.window_patern; allowed: {config_keys('model', 'rotary_cache_len')}",
    ),
    (
        "logger:\n  projet: x\n",
        "unknown key logger.projet; allowed: dir, entity, flush_secs, group, kind, loggers, mode, notes, project, tags",
    ),
    (
        "eval:\n  core:\n    evry: 10\n",
        "unknown key eval.core.evry; allowed: batch_size, bundle_dir, bundle_url, enabled, every, max_per_task",
    ),
    ("optim:\n  muon:\n    momentun: 0.9\n", "unknown key optim.muon.momentun; allowed: "),
    ("launcher:\n  nproc: 2\n", "unknown key launcher.nproc; allowed: kind, nodes, nproc_per_node, "),
    ("sede: 1\n", f"unknown key sede; allowed: {config_keys('')}"),
]


@pytest.mark.parametrize("typo,message", YAML_TYPOS, ids=[t.split(":")[0] for t, _ in YAML_TYPOS])
def test_a_misspelt_key_in_an_experiment_yaml_is_refused_by_the_preflight(
    typo, message, monkeypatch, capsys, session_data_dir, builtin_data, tmp_path
):
    import shutil

    from omegaconf import OmegaConf

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    experiment = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "experiment" / "smoke.yaml"), OmegaConf.create(typo))
    (configs / "experiment" / "typo.yaml").write_text("# @package _global_\n" + OmegaConf.to_yaml(experiment))
    monkeypatch.setattr("harness.cli.CONFIG_DIR", configs)
    monkeypatch.setattr(sys, "argv", ["harness.train", "experiment=typo", f"paths.runs_dir={tmp_path}/runs"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists(), "a run folder was made"
