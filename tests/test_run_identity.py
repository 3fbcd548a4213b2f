"""What names a run: location keys (data and bundle folders, anything under paths.*) stay out of run
folder names, the resume check and the report's axes; a run with no overrides does not land in
its sweep's root folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.cli import CONFIG_DIR, compose
from harness.identity import LOCATION_KEYS, is_bookkeeping, location_keys
from harness.results.collect import collect_dirs
from harness.results.compare import comparison_table, parse_baseline
from harness.results.rundir import RunDir
from harness.results.synthetic import write_sweep
from harness.run.decision import config_differences
from harness.run.spec import resolved_config

REPO = Path(__file__).resolve().parents[1]


def run_dir(*overrides: str) -> str:
    return compose(list(overrides), with_hydra=True).hydra.run.dir


def test_every_location_key_stays_out_of_hydras_folder_names():
    exclude = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())["hydra"]["job"]["config"]["override_dirname"]
    assert set(LOCATION_KEYS) <= set(exclude["exclude_keys"])


def test_hydras_folder_name_leaves_out_only_bookkeeping_keys_and_groups():
    """The folder name's exclude list is harness.identity's bookkeeping: each entry is a bookkeeping
    key or a config group whose choice is one (Hydra reads the YAML list before our code runs)."""
    exclude = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())["hydra"]["job"]["config"]["override_dirname"]
    bookkeeping_groups = {"logger", "launcher", "hparams_search", "experiment"}
    assert [k for k in exclude["exclude_keys"] if not (is_bookkeeping(k) or k in bookkeeping_groups)] == []
    assert not is_bookkeeping("seed") and not is_bookkeeping("model.depth") and not is_bookkeeping("train.resume_x")


def test_an_absolute_data_path_is_not_in_the_run_folder_name():
    """Before, data.path=/abs/my/text became the nested folders data.path=/abs/my/text,..."""
    overrides = [
        "data=local",
        "data.path=/abs/my/text",
        "data.val_path=/abs/my/val",
        "eval.core.bundle_dir=/elsewhere/eval_bundle",
        "rope=chunk",
    ]
    assert run_dir(*overrides) == "runs/default/data=local,rope=chunk"
    sweep_job = compose(["experiment=smoke", *overrides], with_hydra=True).hydra
    assert (sweep_job.sweep.dir, sweep_job.sweep.subdir) == ("runs/smoke", "data=local,rope=chunk")


def test_a_run_with_no_overrides_lands_beside_its_sweep_not_in_its_root():
    """`harness.train experiment=smoke` in runs/smoke/ itself would be one more seed-0 baseline run in
    the sweep's report; a run with overrides is the sweep's job of the same overrides, as before."""
    assert run_dir("experiment=smoke") == "runs/smoke-defaults"
    assert run_dir("experiment=smoke", "paths.data_dir=/d") == "runs/smoke-defaults"  # a location only
    assert run_dir() == "runs/default-defaults"
    assert run_dir("experiment=smoke", "seed=1", "rope=chunk") == "runs/smoke/rope=chunk,seed=1"
    assert compose(["experiment=smoke"], with_hydra=True).hydra.sweep.subdir == "defaults"


def test_a_long_override_set_gets_a_folder_name_the_filesystem_accepts(tmp_path):
    """Filesystems refuse names over 255 bytes (before: OSError 'File name too long' from Hydra). A long
    set is cut to 200 bytes and keeps apart from another with the same head by a hash of the whole."""
    import hashlib

    many = ["train.warmup_steps=0"] + [
        f"optim.adamw.{key}={value}"
        for key, value in [("embedding_lr", 0.31), ("unembedding_lr", 0.0041), ("scalar_lr", 0.51)]
    ]
    many += ["train.num_iterations=70", "train.print_every=7", "train.checkpoint_every=35", "eval.val_every=35"]
    many += ["optim.muon.lr=0.021", "optim.muon.momentum=0.94", "optim.muon.ns_steps=4", "model.depth=3"]
    full = ",".join(sorted(many))
    assert len(full.encode()) > 255
    folder = run_dir("experiment=smoke", *many).removeprefix("runs/smoke/")
    assert folder == full.encode()[:187].decode() + "-" + hashlib.sha256(full.encode()).hexdigest()[:12]
    assert len(folder.encode()) == 200
    other = run_dir("experiment=smoke", *many[1:], "train.warmup_steps=1").removeprefix("runs/smoke/")
    assert other != folder and other[:187] == folder[:187]
    (tmp_path / folder).mkdir()  # the filesystem takes it


def test_the_command_line_resolves_the_run_folder_in_its_own_process():
    """Hydra resolves hydra.run.dir in the training process: the harness registers its resolver there."""
    command = [sys.executable, "-m", "harness.train", "experiment=smoke", "-c", "all", "--resolve", "-p"]
    shown = subprocess.run([*command, "hydra.run.dir"], capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.strip().splitlines()[-1] == "runs/smoke-defaults"


def test_resuming_elsewhere_ignores_where_the_data_lives():
    """The same run on another machine: its data and bundle folders differ, nothing it computes does."""
    here = compose(["data=local", "data.path=/machine_a/text", "eval.core.bundle_dir=/machine_a/bundle"])
    there = compose(["data=local", "data.path=/machine_b/text", "eval.core.bundle_dir=/machine_b/bundle"])
    assert config_differences(resolved_config(here), resolved_config(there), location_keys(there)) == []
    other_data_seed = compose(["data=local", "data.path=/machine_b/text", "data.seed=1"])
    assert config_differences(resolved_config(here), resolved_config(other_data_seed), location_keys(here)) == [
        "data.seed"
    ]


def relocate(runs: list[RunDir], data_dir: str) -> None:
    """As if the sweep ran where paths.data_dir is `data_dir`: every path under it moves."""
    for run in runs:
        config = OmegaConf.create(run.read_config())
        config.paths.data_dir = data_dir
        config.data.cache_dir = f"{data_dir}/builtin"
        config.data.path = f"{data_dir}/text"  # not a key of data=builtin; stands for a data=local run
        config.eval.core.bundle_dir = f"{data_dir}/eval_bundle"
        run.write_config(OmegaConf.to_container(config))


def test_two_sweeps_with_different_data_directories_compare_as_one_variant_set(tmp_path):
    """Seeds 0-1 on one machine, 2-3 on another: one set of 8 variants of 4 seeds, one baseline,
    every other variant compared with it (before: data.cache_dir etc. split them into 16 variants
    and no baseline matched)."""
    first = write_sweep(tmp_path / "a" / "smoke", seeds=(0, 1), rng_seed=0)
    second = write_sweep(tmp_path / "b" / "smoke", seeds=(2, 3), rng_seed=1)
    relocate(first, "/home/me/.cache/ablate")
    relocate(second, "/scratch/you/ablate")
    collection = collect_dirs(tmp_path / "a" / "smoke", tmp_path / "b" / "smoke")
    assert not set(collection.axes) & set(LOCATION_KEYS)
    assert collection.variant_keys == ["rope.split", "mlp_lr.name"]
    sizes = collection.runs.groupby("variant").size()
    assert len(sizes) == 8 and (sizes == 4).all()
    table, _ = comparison_table(collection, parse_baseline(None))
    assert table["is_baseline"].sum() == 1
    assert (table["n_seeds"] == 4).all() and (table["seeds"] == "0,1,2,3").all()
    assert (table.loc[~table["is_baseline"], "val_bpb_test"] == "paired").all()


@pytest.mark.parametrize("key", LOCATION_KEYS)
def test_each_location_key_alone_is_never_an_axis(tmp_path, key):
    from harness.results.collect import ablation_axes

    assert ablation_axes([{key: "/a", "rope.split": "slice"}, {key: "/b", "rope.split": "chunk"}]) == ["rope.split"]


@pytest.mark.parametrize("data", ["builtin", "local", "fineweb", "climbmix"])
def test_data_seed_follows_seed_in_every_data_config(data):
    assert compose([f"data={data}", "seed=5"]).data.seed == 5
    assert compose([f"data={data}", "seed=5", "data.seed=2"]).data.seed == 2


def test_data_seed_following_seed_adds_nothing_to_the_folder_name_and_an_explicit_one_is_an_axis():
    """The folder names what the command line said: `seed=1` alone, whose data order follows it; an
    explicit data.seed is a choice of its own, in the name."""
    assert run_dir("experiment=smoke", "seed=1") == "runs/smoke/seed=1"
    assert run_dir("experiment=smoke", "seed=1", "data.seed=0") == "runs/smoke/data.seed=0,seed=1"


def test_resuming_checks_the_data_order_the_seed_sets():
    """Same seed: nothing differs. Another seed: both seeds differ, data.seed included."""
    one, again, other = (compose(["data=builtin", f"seed={s}"]) for s in (1, 1, 2))
    assert config_differences(resolved_config(one), resolved_config(again), location_keys(one)) == []
    assert config_differences(resolved_config(one), resolved_config(other), location_keys(one)) == [
        "data.seed",
        "seed",
    ]


def _flat(seed: int, data_seed: int | None, rope: str = "slice") -> dict:
    flat = {"seed": seed, "rope.split": rope, "model.depth": 4}
    return flat if data_seed is None else {**flat, "data.seed": data_seed}


def test_a_data_seed_that_follows_the_seed_or_never_moves_is_no_axis():
    from harness.results.collect import ablation_axes, data_order_view, noise_sources

    follows = [_flat(s, s, r) for s in (0, 1, 2) for r in ("slice", "chunk")]
    fixed = [_flat(s, 0, r) for s in (0, 1, 2) for r in ("slice", "chunk")]
    for flats in (follows, fixed):
        assert ablation_axes(data_order_view(flats)) == ["rope.split"]
    assert noise_sources(follows) == "initialisation and data order (data.seed follows seed)"
    assert noise_sources(fixed) == "initialisation only (data.seed fixed at 0 in every run)"
    assert noise_sources([_flat(s, None) for s in (0, 1)]).startswith("initialisation (")
    assert noise_sources([_flat(0, d) for d in (0, 1)]).startswith("data order only")


def test_holding_the_data_order_fixed_in_some_runs_is_an_axis_of_its_own():
    """Arm A lets data.seed follow, arm B holds it at 0: the axis says which, not the number, so
    A's seeds 1 and 2 are one variant. B's seed 0 is A's seed 0 (the same computation)."""
    from harness.results.collect import FOLLOWS_SEED, ablation_axes, data_order_view, noise_sources

    flats = [_flat(s, s) for s in (0, 1, 2)] + [_flat(s, 0) for s in (1, 2)]
    view = data_order_view(flats)
    assert ablation_axes(view) == ["data.seed"]
    assert [f["data.seed"] for f in view] == [FOLLOWS_SEED] * 3 + [0, 0]
    assert "3 of 5 runs" in noise_sources(flats)


def test_a_synthetic_sweep_whose_data_seed_follows_seed_keeps_its_variants(tmp_path):
    write_sweep(tmp_path / "smoke", seeds=(0, 1, 2))
    collection = collect_dirs(tmp_path / "smoke")
    assert {flat["data.seed"] for flat in collection.configs.values()} == {0, 1, 2}
    assert "data.seed" not in collection.axes
    assert collection.variant_keys == ["rope.split", "mlp_lr.name"]


def test_no_override_value_can_name_a_run_folder_outside_the_runs_dir():
    """Issue 26 item 10: every value Hydra writes into a run's folder name is checked for a `..`
    component (a key the config validates later would give a less direct message); location keys,
    which stay out of folder names, may hold relative paths."""
    from harness.cli import check_run_location
    from harness.errors import ConfigError

    for override in ("+note=a/../../../x", "name=..", "seed=../1"):
        with pytest.raises(ConfigError, match="would put the run folder outside paths.runs_dir"):
            check_run_location([override])
    check_run_location(["data.path=../data", "paths.runs_dir=../runs", "name=team/sweep", "+note=a..b"])
