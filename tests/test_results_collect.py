"""Sweep collection: run directories of every status into the runs and curves tables."""

import json
import math

import pandas as pd
import pytest

from harness.errors import ConfigError
from harness.results.collect import CURVE_COLUMNS, MISSING, collect_dirs, save_tables
from harness.results.rundir import RunDir


def write_run(
    path,
    *,
    rope="slice",
    mlp="c_fc_2x",
    seed=0,
    depth=4,
    status="completed",
    final=1.5,
    steps=4,
    data_dir="/data",
    summary_extra=None,
):
    """A small run: train records every step, val bpb at 0 and the end, a summary unless status is None."""
    run = RunDir(path)
    run.write_config(
        {
            "name": "t",
            "seed": seed,
            "model": {"depth": depth, "aspect_ratio": 32},
            "rope": {"split": rope, "base": 10000},
            "mlp_lr": {
                "name": mlp,
                "shape_rule": "pr492" if mlp == "pr492_shape_rule" else "none",
                "multipliers": [{"match": "*.c_fc.weight", "value": 2.0}] if mlp == "c_fc_2x" else [],
            },
            "train": {"num_iterations": steps},
            "paths": {"data_dir": data_dir},
            "logger": {"kind": "none"},
        }
    )
    for step in range(steps + 1):
        base = {"step": step, "tokens": 100 * step, "flops": 1e6 * step, "time_s": 0.5 * step}
        if step:
            run.append_metrics(
                {**base, "train_loss": 5.0 - step, "lr_multiplier": 1.0, "tok_per_s": 200.0, "mfu": None}
            )
        if step in (0, steps):
            run.append_metrics({**base, "val_bpb": final + (steps - step) * 0.1})
    if status is not None:
        summary = {
            "status": status,
            "step": steps,
            "num_iterations": steps,
            "final_val_bpb": final,
            "min_val_bpb": final,
            "tok_per_s": 200.0,
            "mfu": None,
            "train_time_s": 0.5 * steps,
            **(summary_extra or {}),
        }
        run.write_summary(summary)
    return run


@pytest.fixture()
def sweep(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "mlp_lr=c_fc_2x,rope=slice,seed=0", final=1.50, data_dir="/a")
    write_run(root / "mlp_lr=c_fc_2x,rope=slice,seed=1", seed=1, final=1.52, data_dir="/b")
    write_run(
        root / "mlp_lr=none,rope=chunk,seed=0",
        rope="chunk",
        mlp="none",
        status="failed",
        summary_extra={"error": "RuntimeError: boom"},
    )
    write_run(root / "mlp_lr=none,rope=chunk,seed=1", rope="chunk", mlp="none", seed=1, status="diverged")
    write_run(root / "mlp_lr=none,rope=slice,seed=0", mlp="none", status="interrupted")
    write_run(root / "mlp_lr=none,rope=slice,seed=1", mlp="none", seed=1, status=None, final=1.7)
    # Hydra's date/time multirun layout, one level deeper, with a running stub summary.
    stub = write_run(root / "2026-01-01" / "12-00-00" / "3", mlp="pr492_shape_rule", status=None, final=1.8)
    stub.write_summary({"status": "running", "num_iterations": 4})
    # wandb's own files beside a run are not runs.
    (root / "mlp_lr=none,rope=slice,seed=1" / "wandb" / "run-x" / "files").mkdir(parents=True)
    (root / "mlp_lr=none,rope=slice,seed=1" / "wandb" / "run-x" / "files" / "config.yaml").write_text("a: 1\n")
    return root


def test_every_run_is_kept_and_marked(sweep):
    runs = collect_dirs(sweep).runs.set_index("run")
    assert len(runs) == 7
    status = runs["status"].to_dict()
    assert status["sweep/mlp_lr=none,rope=chunk,seed=0"] == "failed"
    assert status["sweep/mlp_lr=none,rope=chunk,seed=1"] == "diverged"
    assert status["sweep/mlp_lr=none,rope=slice,seed=0"] == "interrupted"
    assert status["sweep/mlp_lr=none,rope=slice,seed=1"] == MISSING
    assert status["sweep/2026-01-01/12-00-00/3"] == "running"
    assert runs.loc["sweep/mlp_lr=none,rope=chunk,seed=0", "error"] == "RuntimeError: boom"
    assert "no summary.json" in runs.loc["sweep/mlp_lr=none,rope=slice,seed=1", "note"]


def test_axes_are_the_differing_keys_and_variants_name_them_compactly(sweep):
    collection = collect_dirs(sweep)
    # seed has its own column; paths.* differ but are bookkeeping.
    assert collection.axes == ["rope.split", "mlp_lr.name", "mlp_lr.shape_rule", "mlp_lr.multipliers"]
    assert collection.variant_keys == ["rope.split", "mlp_lr.name"]
    runs = collection.runs.set_index("run")
    assert runs.loc["sweep/mlp_lr=none,rope=chunk,seed=1", "variant"] == "rope.split=chunk mlp_lr.name=none"
    assert runs.loc["sweep/mlp_lr=none,rope=chunk,seed=1", "seed"] == 1
    assert runs.loc["sweep/mlp_lr=none,rope=chunk,seed=1", "depth"] == 4
    assert "paths.data_dir" not in runs.columns


def test_depth_attributes_stay_out_of_the_variant_name(tmp_path):
    write_run(tmp_path / "a", depth=12)
    write_run(tmp_path / "b", depth=24, rope="chunk")
    write_run(tmp_path / "c", depth=24)
    collection = collect_dirs(tmp_path)
    assert collection.axes == ["model.depth", "rope.split"]
    assert collection.variant_keys == ["rope.split"]
    assert collection.depths == [12, 24]


def test_headline_numbers_from_the_summary_absent_keys_nan(sweep):
    runs = collect_dirs(sweep).runs.set_index("run")
    done = runs.loc["sweep/mlp_lr=c_fc_2x,rope=slice,seed=1"]
    assert done["final_val_bpb"] == pytest.approx(1.52)
    assert done["tok_per_s"] == 200.0 and done["train_time_s"] == 2.0
    assert math.isnan(done["mfu"]) and math.isnan(done["core"]) and math.isnan(done["flops"])


def test_runs_without_a_final_summary_show_their_metrics_so_far(sweep):
    runs = collect_dirs(sweep).runs.set_index("run")
    missing = runs.loc["sweep/mlp_lr=none,rope=slice,seed=1"]
    assert math.isnan(missing["final_val_bpb"])  # never called final
    assert missing["last_val_bpb"] == pytest.approx(1.7)
    assert missing["min_val_bpb"] == pytest.approx(1.7)
    assert missing["step"] == 4 and missing["flops"] == 4e6 and missing["train_time_s"] == 2.0
    running = runs.loc["sweep/2026-01-01/12-00-00/3"]
    assert running["last_val_bpb"] == pytest.approx(1.8) and running["num_iterations"] == 4


def test_curves_are_long_with_every_numeric_metric(sweep):
    curves = collect_dirs(sweep).curves
    assert tuple(curves.columns) == CURVE_COLUMNS
    one = curves[curves["run"] == "sweep/mlp_lr=c_fc_2x,rope=slice,seed=0"]
    # 4 train records x 4 metrics (train_loss, lr_multiplier, tok_per_s, mfu) + 2 val records.
    assert len(one) == 4 * 4 + 2
    val = one[one["metric"] == "val_bpb"].sort_values("step")
    assert val["value"].tolist() == pytest.approx([1.9, 1.5])
    assert val["tokens"].tolist() == [0, 400] and val["time_s"].tolist() == [0.0, 2.0]
    assert one.loc[one["metric"] == "mfu", "value"].isna().all()


def test_tables_round_trip_through_parquet_and_csv(sweep, tmp_path):
    collection = collect_dirs(sweep)
    written = save_tables(collection, tmp_path / "out")
    assert set(written) == {"runs.parquet", "runs.csv", "curves.parquet", "curves.csv"}
    runs = pd.read_parquet(written["runs.parquet"])
    pd.testing.assert_frame_equal(runs, collection.runs, check_dtype=False)
    assert len(pd.read_csv(written["curves.csv"])) == len(collection.curves)


def test_a_missing_sweep_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        collect_dirs(tmp_path / "nope")


def test_a_sweep_with_its_own_run_folder_and_two_sweeps_of_one_name_count_each_run_once(sweep, tmp_path):
    import shutil

    single = sweep / "mlp_lr=c_fc_2x,rope=slice,seed=0"
    runs = collect_dirs(sweep, single, sweep).runs
    assert len(runs) == 7 and "sweep/mlp_lr=c_fc_2x,rope=slice,seed=0" in set(runs["run"])
    other = tmp_path / "other" / "sweep"  # another sweep folder also called `sweep`, with a different run
    write_run(other / "mlp_lr=c_fc_2x,rope=slice,seed=0", seed=5)
    collection = collect_dirs(sweep, other)
    assert len(collection.runs) == 8 and collection.runs["run"].is_unique
    assert "other/sweep/mlp_lr=c_fc_2x,rope=slice,seed=0" in set(collection.runs["run"])
    assert collection.notes == []
    shutil.copytree(other, tmp_path / "third" / "sweep")  # a copy: the same run, counted once, said so
    collection = collect_dirs(sweep, other, tmp_path / "third" / "sweep")
    assert len(collection.runs) == 8
    assert collection.notes == [
        "2 folders hold the same run (same config and seed): counted once as "
        "`other/sweep/mlp_lr=c_fc_2x,rope=slice,seed=0`, left out `third/sweep/mlp_lr=c_fc_2x,rope=slice,seed=0`"
    ]


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda run: run.summary_path.write_text('{"status": "comp'), "summary.json unreadable"),
        (lambda run: run.summary_path.write_bytes(b"\xff\xfe"), "summary.json unreadable"),
        (lambda run: run.summary_path.write_text("[1, 2]\n"), "holds a list, not an object"),
        (lambda run: run.config_path.write_text("seed: 0\nmodel: {depth: [4\n"), "config.yaml unreadable"),
        (lambda run: run.config_path.write_text(run.config_path.read_text()[:-9]), "does not end with a newline"),
        (lambda run: run.config_path.write_text("name: t\n"), "no seed, model.depth"),
    ],
)
def test_an_unreadable_run_is_marked_with_its_reason(sweep, damage, reason):
    damage(RunDir(sweep / "mlp_lr=c_fc_2x,rope=slice,seed=1"))
    collection = collect_dirs(sweep)
    runs = collection.runs.set_index("run")
    row = runs.loc["sweep/mlp_lr=c_fc_2x,rope=slice,seed=1"]
    assert row["status"] == "unreadable" and reason in row["note"]
    assert len(runs) == 7
    assert "mlp_lr.name" in collection.axes and "train.num_iterations" not in collection.axes


# issue 26 item 9: no single run sinks a report ------------------------------------------------
@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda run: _edit_summary(run, param_counts="1.2M"), 'summary.json unreadable: param_counts="1.2M" is not'),
        (lambda run: _edit_summary(run, core_tasks=[0.1, 0.2]), "summary.json unreadable: core_tasks=[0.1, 0.2] is"),
        (lambda run: _edit_summary(run, status=3), "summary.json unreadable: status=3 is not a string"),
        (
            lambda run: run.config_path.write_text(run.config_path.read_text().replace("depth: 4", "depth: four")),
            "config.yaml unreadable: model.depth='four' is not an integer",
        ),
    ],
    ids=["param_counts-text", "core_tasks-list", "status-number", "depth-word"],
)
def test_a_summary_or_config_of_the_wrong_types_marks_the_run_unreadable(sweep, damage, reason):
    damage(RunDir(sweep / "mlp_lr=c_fc_2x,rope=slice,seed=1"))
    collection = collect_dirs(sweep)
    row = collection.runs.set_index("run").loc["sweep/mlp_lr=c_fc_2x,rope=slice,seed=1"]
    assert row["status"] == "unreadable" and reason in row["note"]
    assert collection.depths == [4] and len(collection.runs) == 7


@pytest.mark.parametrize("line", ["[1, 2, 3]", "null", '"text"'])
def test_a_metrics_line_that_is_json_but_not_an_object_is_named_and_the_rest_is_built(sweep, line):
    run = RunDir(sweep / "mlp_lr=c_fc_2x,rope=slice,seed=1")
    records = run.metrics_path.read_text().splitlines()
    run.metrics_path.write_text("\n".join([records[0], line, *records[1:]]) + "\n")
    collection = collect_dirs(sweep)
    row = collection.runs.set_index("run").loc["sweep/mlp_lr=c_fc_2x,rope=slice,seed=1"]
    assert f"{run.metrics_path}:2: metrics line is a JSON" in row["note"] and "not an object" in row["note"]
    assert row["status"] == "completed" and row["final_val_bpb"] == 1.52  # the summary still counts
    assert "sweep/mlp_lr=c_fc_2x,rope=slice,seed=1" not in set(collection.curves["run"])
    assert len(collection.runs) == 7


def _edit_summary(run: RunDir, **values) -> None:
    run.summary_path.write_text(json.dumps({**json.loads(run.summary_path.read_text()), **values}))


def test_run_folders_reached_by_symbolic_links_are_followed_once_and_broken_links_listed(sweep, tmp_path):
    storage = tmp_path / "storage"
    (sweep / "mlp_lr=c_fc_2x,rope=slice,seed=1").rename(storage)
    (sweep / "mlp_lr=c_fc_2x,rope=slice,seed=1").symlink_to(storage)  # a run moved to other storage
    (sweep / "loop").symlink_to(sweep)  # a link back up the tree
    (sweep / "gone").symlink_to(tmp_path / "unmounted")
    collection = collect_dirs(sweep)
    runs = collection.runs.set_index("run")
    assert runs.loc["sweep/mlp_lr=c_fc_2x,rope=slice,seed=1", "status"] == "completed"
    assert runs.loc["sweep/gone", "status"] == "unreadable"
    assert f"a symbolic link to {tmp_path / 'unmounted'}, which does not exist" in runs.loc["sweep/gone", "note"]
    assert len(runs) == 8 and not collection.notes  # each run once, whatever the links


# issue 26 item 11: memory bounded by the sweep, not by its files ------------------------------
def test_curves_keep_every_evaluation_and_thin_long_training_records_by_a_power_of_two(tmp_path, monkeypatch):
    from harness.results import collect as collect_module

    monkeypatch.setattr(collect_module, "MAX_TRAIN_POINTS", 16)
    run = write_run(tmp_path / "sweep" / "long", steps=100, status="running")
    for step in (25, 50, 75):
        run.append_metrics({"step": step, "tokens": 100 * step, "flops": 0, "time_s": 0, "val_bpb": 2.0 - step / 100})
    collection = collect_dirs(tmp_path / "sweep")
    curves = collection.curves
    # every evaluation record, exactly
    val = curves[curves["metric"] == "val_bpb"]
    assert list(val["step"]) == [0, 100, 25, 50, 75] and list(val["value"]) == [11.5, 1.5, 1.75, 1.5, 1.25]
    # training records: steps 1..100 are 100 > 16, so every 8th step (100 / 8 = 12 <= 16 < 100 / 4) and the last
    loss = curves[curves["metric"] == "train_loss"]
    assert list(loss["step"]) == [*range(8, 100, 8), 100]
    assert list(loss["value"]) == [5.0 - s for s in [*range(8, 100, 8), 100]]
    # the numbers a running run shows come from every record, not the thinned ones
    row = collection.runs.iloc[0]
    assert row["step"] == 100 and row["tok_per_s"] == 200.0 and row["last_val_bpb"] == 1.25


def test_the_note_says_which_number_is_compared_when_an_evaluation_measured_another(tmp_path):
    evaluations = [
        {"step": 4, "val_bpb": 1.61, "val_tokens": 128, "filled": []},
        {"step": 4, "core": 0.2, "core_max_per_task": -1, "filled": ["core"]},
    ]
    write_run(tmp_path / "r" / "a", final=1.5, summary_extra={"evaluations": evaluations, "core": 0.2})
    (run,) = collect_dirs(tmp_path / "r").runs.to_dict("records")
    assert run["final_val_bpb"] == 1.5  # training's, the number compared
    assert run["note"] == (
        "final_val_bpb 1.5000 is training's; harness.evaluate measured 1.6100 at step 4 (val_tokens 128); "
        "core is harness.evaluate's (training recorded none)"
    )


def test_runs_of_one_config_on_different_data_are_not_compared_as_one(tmp_path):
    write_run(tmp_path / "r" / "on_a", summary_extra={"data_fingerprint": "aaaa"}, final=1.5)
    write_run(tmp_path / "r" / "on_b", summary_extra={"data_fingerprint": "bbbb"}, final=1.9)
    collection = collect_dirs(tmp_path / "r")
    assert collection.notes == []  # not "two folders hold the same run"
    assert "data.fingerprint" in collection.axes
    runs = collection.runs.set_index("run")
    assert runs.loc["r/on_a", "data.fingerprint"] == "aaaa" and runs.loc["r/on_b", "data.fingerprint"] == "bbbb"
    assert runs.loc["r/on_a", "variant"] != runs.loc["r/on_b", "variant"]
