"""Issue 27: a hyperparameter search's report (every searched key a column with a readable label,
the objective against each key, the optimisation history, the best trial's command) and
`ablate-report --latex`."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.results.collect import collect_dirs
from harness.results.plots import search_figures
from harness.results.synthetic import run_config, write_run, write_sweep

REPO = Path(__file__).resolve().parents[1]
# Optuna's log-uniform draws, as it writes them: 17-18 significant digits.
TRIALS = [
    (0.012345678901234567, 0.34567890123456789),
    (0.041234567890123456, 0.08765432109876543),
    (0.0071234567890123456, 0.61234567890123456),
    (0.021234567890123456, 0.27654321098765432),
]


def objective(lr: float, embedding_lr: float) -> float:
    """A bowl around the recipe's values (0.02, 0.3) in log space."""
    return 1.6 + 0.05 * np.log(lr / 0.02) ** 2 + 0.02 * np.log(embedding_lr / 0.3) ** 2


def write_search(root: Path) -> dict:
    rng = np.random.default_rng(0)
    for i, (lr, embedding_lr) in enumerate(TRIALS):
        config = copy.deepcopy(run_config("tiny", name=root.name))
        config["optim"]["muon"]["lr"] = lr
        config["optim"]["adamw"]["embedding_lr"] = embedding_lr
        config["stats"]["baseline"] = None
        overrides = ["hparams_search=smoke", f"optim.muon.lr={lr!r}", f"optim.adamw.embedding_lr={embedding_lr!r}"]
        run = write_run(root / ",".join(sorted(overrides[1:])), config, objective(lr, embedding_lr), 9000.0, rng)
        summary = run.read_summary()
        summary["started_at"] = f"2026-12-05T17:0{i}:00+00:00"  # the trials' order
        run.write_summary(summary)
        (run.path / ".hydra").mkdir()
        (run.path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    best = min(TRIALS, key=lambda t: objective(*t))
    results = {
        "name": "optuna",
        "best_params": {"optim.muon.lr": best[0], "optim.adamw.embedding_lr": best[1]},
        "best_value": float(objective(*best)),
    }
    (root / "optimization_results.yaml").write_text(yaml.safe_dump(results))
    return results


def test_a_search_report_has_every_key_readable_labels_its_plots_and_the_best_command(tmp_path):
    root, out = tmp_path / "runs" / "hparams_smoke", tmp_path / "results" / "hparams_smoke"
    best = write_search(root)
    command = [sys.executable, "-m", "harness.report", str(root), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = pd.read_csv(out / "runs.csv")
    assert {"optim.muon.lr", "optim.adamw.embedding_lr"} <= set(runs.columns)
    assert "optim.muon.lr=0.01235 optim.adamw.embedding_lr=0.3457" in set(runs["variant"])
    comparison = pd.read_csv(out / "comparison.csv")
    assert not comparison["is_baseline"].any()  # every trial is its own variant
    assert "| optim.muon.lr | optim.adamw.embedding_lr |" in result.stdout
    assert "| 0.01235 | 0.3457 |" in result.stdout  # not Optuna's 18 digits
    for stem in ("search_objective", "search_history"):
        assert (out / "plots" / f"{stem}.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    lr, embedding_lr = best["best_params"]["optim.muon.lr"], best["best_params"]["optim.adamw.embedding_lr"]
    expected = f"ablate-train hparams_search=smoke optim.muon.lr={lr!r} optim.adamw.embedding_lr={embedding_lr!r}"
    assert expected + " hydra.mode=RUN" in report
    assert "Baseline: none, a hyperparameter search" in report


def test_the_search_plots_are_the_objective_per_key_and_the_best_so_far(tmp_path):
    write_search(tmp_path / "search")
    objective_plot, history = search_figures(collect_dirs(tmp_path / "search"), "final_val_bpb")
    axes = objective_plot.figure.axes
    assert [ax.get_xlabel() for ax in axes] == ["optim.muon.lr", "optim.adamw.embedding_lr"]
    assert axes[0].get_xscale() == "log"  # 0.0071 .. 0.041: 5.8x, past plots.LOG_SPAN
    values = collect_dirs(tmp_path / "search").runs.sort_values("started_at")["final_val_bpb"].to_numpy()
    best_so_far = [line for line in history.figure.axes[0].get_lines()][0]
    assert list(best_so_far.get_ydata()) == pytest.approx(np.minimum.accumulate(values))


def test_latex_writes_the_comparison_table_beside_the_markdown(tmp_path):
    root, out = tmp_path / "runs" / "smoke", tmp_path / "results" / "smoke"
    write_sweep(root)
    command = [sys.executable, "-m", "harness.report", str(root), "--out", str(out), "--latex"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    tex = (out / "comparison.tex").read_text()
    assert (out / "comparison.md").exists()
    assert tex.count(r"\begin{tabular}") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 1 + 8  # the header and one row per variant
    table = pd.read_csv(out / "comparison.csv")
    baseline = table[table["is_baseline"]].iloc[0]
    assert rows[1].startswith(r"slice & c\_fc\_2x & 2 & " + f"{baseline['val_bpb_mean']:.4f}")
    assert "_" not in tex.replace(r"\_", "")  # every underscore escaped
    assert "Δ" not in tex and r"$\Delta$" in tex
