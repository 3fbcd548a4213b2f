"""The report from a synthetic smoke sweep: the CLI, the multirun callback and a wandb import."""

import contextlib
import io
import json
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness import report as report_cli
from harness.cli import compose
from harness.results import render, wandb_import
from harness.results.callback import ReportCallback
from harness.results.collect import collect
from harness.results.compare import comparison_table, parse_baseline
from harness.results.synthetic import write_sweep
from harness.results.wandb_import import load_wandb

SMOKE_RUNS = 16


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke grid (rope 2 x mlp_lr 4 x seed 2) written as the multirun would, then reported by the CLI."""
    root = tmp_path_factory.mktemp("runs") / "smoke"
    write_sweep(root, statuses={("tiny", "chunk", "none", "1"): "diverged"})
    out = root.parent.parent / "results" / "smoke"
    return root, out


@pytest.fixture(scope="module")
def cli_output(smoke):
    root, out = smoke
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = report_cli.main([str(root), "--out", str(out)])
    return code, printed.getvalue()


def test_cli_writes_every_file_and_prints_the_table(smoke, cli_output):
    _, out = smoke
    code, printed = cli_output
    assert code == 0
    for name in (
        "report.md",
        "runs.csv",
        "runs.parquet",
        "curves.csv",
        "curves.parquet",
        "comparison.md",
        "comparison.csv",
        "runs.md",
        "spread.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "| rope.split | mlp_lr.name | seeds |" in printed
    assert printed.strip().endswith(f"report: {out / 'report.md'}")
    figures = len(list((out / "plots").glob("*.png")))
    assert f"plots: {out / 'plots'}/ ({figures} figures, PNG and SVG)" in printed


def test_the_smoke_tables_have_one_row_per_run_and_per_variant(smoke, cli_output):
    _, out = smoke
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == SMOKE_RUNS
    assert {"variant", "seed", "status", "final_val_bpb", "min_val_bpb", "train_time_s", "tok_per_s"} <= set(runs)
    assert (runs["status"] == "diverged").sum() == 1
    runs_md = (out / "runs.md").read_text().splitlines()
    assert len([line for line in runs_md if line.startswith("| ") and "---" not in line]) == SMOKE_RUNS + 1
    assert any("**diverged**" in line for line in runs_md)
    comparison = pd.read_csv(out / "comparison.csv")
    assert len(comparison) == 8 and comparison["is_baseline"].sum() == 1
    assert comparison.loc[comparison["is_baseline"], "variant"].item() == "rope.split=slice mlp_lr.name=c_fc_2x"


def test_report_links_every_plot_and_table(smoke, cli_output):
    _, out = smoke
    text = (out / "report.md").read_text()
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    # 4 curves (train loss, val bpb x tokens, time: steps and FLOPs only relabel tokens here, issue 27),
    # the difference to the baseline over training, final val bpb, throughput (one depth: no scaling; no CORE)
    assert len(pngs) == 7
    assert all((out / "plots" / p).with_suffix(".svg").stat().st_size > 0 for p in pngs)
    linked = re.findall(r"\]\((plots/[^)]+\.png)\)", text)
    assert sorted({link.removeprefix("plots/") for link in linked}) == pngs
    for section in (
        "## Runs that did not complete",
        "## Comparison with the baseline",
        "## What this sweep could detect",
        "## Every run",
        "## Plots",
    ):
        assert section in text
    assert "| `smoke/mlp_lr=none,rope=chunk,seed=1` | diverged |" in text


def test_help_is_true():
    with pytest.raises(SystemExit) as exit_info:
        report_cli.parse_args(["--help"])
    assert exit_info.value.code == 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert report_cli.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: sweep directory '{tmp_path / 'nope'}' does not exist"


def test_callback_reports_the_sweep_dir_from_the_experiment_wiring(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render, "all_plots", lambda *args, **kwargs: [])  # plots are tested on their own
    runs_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    small = {"rope": ("slice",), "mlp_lr": ("c_fc_2x", "none")}
    write_sweep(runs_dir / "smoke", grid=small)
    overrides = ["experiment=smoke", f"paths.runs_dir={runs_dir}", f"paths.results_dir={results_dir}"]
    cfg = compose(overrides, with_hydra=True)
    callback = instantiate(cfg.hydra.callbacks.report)  # as configs/experiment/smoke.yaml wires it
    assert isinstance(callback, ReportCallback)
    callback.on_multirun_end(config=cfg)
    printed = capsys.readouterr().out
    assert "#### depth 4 (baseline: `mlp_lr.name=c_fc_2x`)" in printed  # rope is fixed here
    assert f"report: {results_dir / 'smoke' / 'report.md'}" in printed
    assert len(pd.read_csv(results_dir / "smoke" / "runs.csv")) == 4


def test_the_callbacks_report_follows_the_sweeps_name(tmp_path, capsys, monkeypatch):
    """`experiment=smoke name=b` is a second sweep of the same experiment: its runs go to runs/b and its
    report to results/b, leaving the first sweep's results/smoke alone."""
    monkeypatch.setattr(render, "all_plots", lambda *args, **kwargs: [])
    runs_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    first_report = results_dir / "smoke" / "report.md"
    first_report.parent.mkdir(parents=True)
    first_report.write_text("the first sweep's report")
    write_sweep(runs_dir / "b", grid={"rope": ("slice",), "mlp_lr": ("c_fc_2x", "none")})
    cfg = compose(
        ["experiment=smoke", "name=b", f"paths.runs_dir={runs_dir}", f"paths.results_dir={results_dir}"],
        with_hydra=True,
    )
    assert cfg.hydra.sweep.dir == str(runs_dir / "b")
    instantiate(cfg.hydra.callbacks.report).on_multirun_end(config=cfg)
    assert f"report: {results_dir / 'b' / 'report.md'}" in capsys.readouterr().out
    assert len(pd.read_csv(results_dir / "b" / "runs.csv")) == 4
    assert first_report.read_text() == "the first sweep's report"
    assert sorted(p.name for p in results_dir.iterdir()) == ["b", "smoke"]


def test_callback_with_nothing_to_report_says_so(tmp_path, capsys):
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "empty")}}})
    (tmp_path / "empty").mkdir()
    ReportCallback(str(tmp_path / "out"), baseline=["rope.split=slice"]).on_multirun_end(config=cfg)
    assert "report not written: no runs found" in capsys.readouterr().out


class FakeRun(SimpleNamespace):
    def scan_history(self):
        return iter(self.history)


class FakeApi:
    """Stands in for wandb.Api(): `runs(path)` yields objects with config, summary, history."""

    def __init__(self, runs):
        self._runs = runs
        self.asked = []

    def runs(self, path):
        self.asked.append(path)
        return self._runs


def fake_run(name, rope, seed, final, state="finished", status="completed"):
    history = [
        {
            "_step": i,
            "_runtime": 1.0 * i,
            "step": step,
            "tokens": 10 * step,
            "flops": 1e3 * step,
            "time_s": 0.1 * step,
            "train_loss": 3.0 - 0.1 * step,
        }
        for i, step in enumerate(range(1, 4))
    ]
    history.append({"_step": 9, "step": 3, "tokens": 30, "flops": 3e3, "time_s": 0.3, "val_bpb": final})
    summary = {"_wandb": {"runtime": 3}, "final_val_bpb": final, "tok_per_s": 100.0}
    if status:
        summary["status"] = status
    config = {
        "seed": {"value": seed},
        "model": {"value": {"depth": 12}},
        "rope": {"value": {"split": rope}},
        "_wandb": {"value": {}},
    }
    return FakeRun(id=f"id{name}", name=name, state=state, config=config, summary=summary, history=history)


def test_wandb_runs_land_in_the_same_tables(tmp_path):
    api = FakeApi(
        [
            fake_run("rope=slice,seed=0", "slice", 0, 1.00),
            fake_run("rope=slice,seed=1", "slice", 1, 1.02),
            fake_run("rope=chunk,seed=0", "chunk", 0, 1.01),
            fake_run("rope=chunk,seed=1", "chunk", 1, 1.04),
            fake_run("rope=chunk,seed=2", "chunk", 2, 1.5, state="crashed", status=None),
        ]
    )
    collection = collect(load_wandb("me/ablate", api=api))
    assert api.asked == ["me/ablate"]
    runs = collection.runs.set_index("run")
    assert len(runs) == 5 and collection.variant_keys == ["rope.split"]
    assert runs.loc["wandb:me/ablate/rope=chunk,seed=2", "status"] == "failed"  # from wandb's state
    assert runs.loc["wandb:me/ablate/rope=slice,seed=1", "final_val_bpb"] == 1.02
    curves = collection.curves
    one = curves[curves["run"] == "wandb:me/ablate/rope=slice,seed=0"]
    assert sorted(one["metric"].unique()) == ["train_loss", "val_bpb"]  # wandb's _step/_runtime dropped
    assert len(one) == 4
    table, _ = comparison_table(collection, parse_baseline(["rope.split=slice"]))
    chunk = table.set_index("variant").loc["rope.split=chunk"]
    assert chunk["val_bpb_test"] == "paired" and chunk["n_seeds"] == 2


def test_report_cli_takes_a_wandb_project(tmp_path, monkeypatch):
    api = FakeApi([fake_run("rope=slice,seed=0", "slice", 0, 1.0)])
    monkeypatch.setattr(render, "all_plots", lambda *args, **kwargs: [])
    monkeypatch.setattr(wandb_import, "_default_api", lambda: api)
    with contextlib.redirect_stdout(io.StringIO()):
        assert report_cli.main(["--wandb", "me/ablate", "--out", str(tmp_path / "out")]) == 0
    assert api.asked == ["me/ablate"]
    assert "wandb:me/ablate" in (tmp_path / "out" / "report.md").read_text()


def test_one_unreadable_run_never_sinks_the_report(tmp_path, capsys):
    """A truncated summary.json and a truncated config.yaml: both runs marked `unreadable` with the
    reason in the runs table, the comparison notes and the list of runs that did not complete."""
    root = tmp_path / "smoke"
    write_sweep(root)
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    summary, config = runs[0] / "summary.json", runs[1] / "config.yaml"
    summary.write_text(summary.read_text()[:50])
    config.write_text(config.read_text()[:200])
    out = tmp_path / "report"
    assert report_cli.main([str(root), "--out", str(out)]) == 0
    runs_md, comparison_md, report_md = ((out / f).read_text() for f in ("runs.md", "comparison.md", "report.md"))
    assert runs_md.count("| **unreadable** |") == 2
    for text in (runs_md, report_md):
        assert "summary.json unreadable" in text and "config.yaml unreadable" in text
    assert "summary.json unreadable" in comparison_md and "config.yaml unreadable" in comparison_md
    assert "1 unreadable" in comparison_md  # counted in its variant's row
    table = pd.read_csv(out / "comparison.csv")
    assert table["n_seeds"].sum() == SMOKE_RUNS - 2
    assert set(table["seeds"].dropna().astype(str)) <= {"0,1", "0", "1"}  # integers, though one run has no seed
    assert "## Runs that did not complete" in report_md


# issue 26 items 9 and 10: no single run sinks a report; a report over a file is one line ---------
def damage_runs(root):
    """The issue's damaged runs, one each, and a run moved to other storage behind a link."""
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    summary = json.loads((runs[0] / "summary.json").read_text())
    (runs[0] / "summary.json").write_text(json.dumps({**summary, "param_counts": "1.2M"}))
    summary = json.loads((runs[1] / "summary.json").read_text())
    (runs[1] / "summary.json").write_text(json.dumps({**summary, "core_tasks": [0.1, 0.2]}))
    with open(runs[2] / "metrics.jsonl", "a") as f:
        f.write("[1, 2, 3]\nnull\n{}\n")
    config = runs[3] / "config.yaml"
    config.write_text(re.sub(r"depth: \d+", "depth: four", config.read_text()))
    moved = root.parent / "storage" / runs[4].name
    moved.parent.mkdir()
    runs[4].rename(moved)
    runs[4].symlink_to(moved)
    return runs


def test_damaged_runs_of_every_kind_never_sink_the_report_process(tmp_path):
    root = tmp_path / "smoke"
    write_sweep(root)
    runs = damage_runs(root)
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "harness.report", str(root), "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "runs.csv").set_index("run")
    assert len(table) == SMOKE_RUNS
    unreadable = table[table["status"] == "unreadable"]
    assert sorted(unreadable.index) == sorted(f"smoke/{r.name}" for r in (runs[0], runs[1], runs[3]))
    assert 'param_counts="1.2M" is not an object of numbers' in unreadable.loc[f"smoke/{runs[0].name}", "note"]
    assert "model.depth='four' is not an integer" in unreadable.loc[f"smoke/{runs[3].name}", "note"]
    assert "metrics line is a JSON list, not an object" in table.loc[f"smoke/{runs[2].name}", "note"]
    assert table.loc[f"smoke/{runs[4].name}", "status"] == "completed"  # followed through its link


def test_a_report_killed_midway_leaves_the_previous_report_whole(tmp_path):
    """A SIGKILL while plots are written (an injected kill at the third figure): report.md and every
    table are still the previous report's, byte for byte; the next report replaces them all."""
    root = tmp_path / "smoke"
    write_sweep(root)
    out = tmp_path / "report"
    assert subprocess.run([sys.executable, "-m", "harness.report", str(root), "--out", str(out)]).returncode == 0
    before = report_files(out)
    write_sweep(root, seeds=(0, 1, 2))  # a new seed: every table changes
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_THIRD_FIGURE, str(root), "--out", str(out)], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert report_files(out) == before
    assert subprocess.run([sys.executable, "-m", "harness.report", str(root), "--out", str(out)]).returncode == 0
    assert len(pd.read_csv(out / "runs.csv")) == SMOKE_RUNS * 3 // 2
    assert f"{SMOKE_RUNS * 3 // 2} runs ({SMOKE_RUNS * 3 // 2} completed)" in (out / "report.md").read_text()
    assert not list(out.glob(".staging-*"))  # the killed report's staging folder is cleared


def report_files(out):
    """Every file of the report folder by path, its staging folder aside."""
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".staging-" not in str(p)}


KILL_AT_THIRD_FIGURE = """
import os, signal, sys
from harness import report
from harness.results import render
figures = []
def save_figure(*args, **kwargs):
    figures.append(args)
    if len(figures) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
real, render.save_figure = render.save_figure, save_figure
report.main(sys.argv[1:])
"""


def test_report_out_naming_an_existing_file_is_one_line(tmp_path):
    root = tmp_path / "smoke"
    write_sweep(root, seeds=(0,))
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    result = subprocess.run(
        [sys.executable, "-m", "harness.report", str(root), "--out", str(taken)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: --out {taken} is a file; give a folder for the report (report.md, tables and plots)\n"
    )
    assert taken.read_text() == "mine\n"
