"""A sweep's report: one folder with the tables, the statistics, the plots and report.md.

    <out_dir>/
      report.md                  everything below, linked, with the comparison and run tables inline
      runs.parquet, runs.csv     one row per run (collect.py)
      curves.parquet, curves.csv one row per (run, step, metric)
      runs.md                    the per-run table: variant, seed, status, final/min val bpb, time, tok/s
      comparison.md, .csv        per depth and variant, against the baseline (compare.py); .tex with latex=True
      spread.csv                 seed-to-seed spread and detectable differences per depth
      interactions.csv           when the sweep crosses two axes: the difference of differences (interactions.py)
      target.csv                 per run: time, tokens and FLOPs to the target val bpb (target.py)
      scale.csv, scale_trend.csv two depths or more: the effect across scale (scale.py)
      plots/*.png, *.svg         (plots.py; scale_effect from scale.py)

report.md opens with the baseline and the rule that chose it (compare.choose_baseline), what the runs
held fixed and their environment; a hyperparameter search (Optuna's optimization_results.yaml in the
sweep folder) gets no baseline, its own plots and the best trial's command.

`python -m harness.report` and the multirun callback both call `build_report`.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from harness.errors import ConfigError
from harness.results.collect import (
    COMPLETED,
    Collection,
    RunRecord,
    collect,
    load_run_dirs,
    noise_sources,
    save_tables,
)
from harness.results.compare import (
    SEARCH,
    BaselineChoice,
    _key_value,
    choose_baseline,
    comparison_markdown,
    comparison_table,
    judge,
    save_comparison,
    save_latex,
    spread_table,
)
from harness.results.equivalence import NO_MARGINS, Margins
from harness.results.interactions import interaction_table, interactions_legend, interactions_markdown
from harness.results.plots import all_plots, save_figure
from harness.results.publish import staged_folder
from harness.results.scale import effect_across_scale
from harness.results.sequential import Design, design_from_configs
from harness.results.stats import ALPHA, POWER
from harness.results.target import add_time_to_target, target_markdown


@dataclass
class Report:
    out_dir: Path
    report_path: Path
    collection: Collection
    comparison: pd.DataFrame
    comparison_markdown: str
    spread: pd.DataFrame
    plots: list[str]
    interactions: pd.DataFrame = field(default_factory=pd.DataFrame)

    def console_text(self) -> str:
        """What a command prints when the report is written: the comparison table, then where the
        plots and the report are."""
        figures = f"{self.out_dir / 'plots'}/ ({len(self.plots)} figures, PNG and SVG)" if self.plots else "none"
        return f"{self.comparison_markdown}\nplots: {figures}\nreport: {self.report_path}"


def build_report(
    roots: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    baseline: str | Sequence[str] | Mapping[str, Any] | None = None,
    wandb_projects: Sequence[str] = (),
    wandb_api: Any = None,
    title: str | None = None,
    command: str | None = None,
    margins: Margins = NO_MARGINS,
    latex: bool = False,
    target_bpb: float | None = None,
) -> Report:
    """Collect the runs under `roots` (and wandb projects), write every table and plot, and report.md.
    `margins`: equivalence margins (equivalence.py); the sequential design is the one the runs declared."""
    records: list[RunRecord] = load_run_dirs(*roots) if roots else []
    for project in wandb_projects:
        from harness.results.wandb_import import load_wandb

        records += load_wandb(project, api=wandb_api)
    sources = [str(r) for r in roots] + [f"wandb:{p}" for p in wandb_projects]
    if not records:
        raise ConfigError(f"no runs found in {', '.join(sources) or 'nothing'} (a run is a folder with config.yaml)")
    out_dir = Path(out_dir)
    collection = collect(records)
    design, design_notes = design_from_configs(collection.configs.values())
    search = search_results(roots)
    if search is not None and baseline is None:
        choice = BaselineChoice({}, SEARCH, "a hyperparameter search: every trial is its own variant")
    else:
        choice = choose_baseline(collection, baseline, composed_defaults())
    # A derived or declared baseline may not apply to foreign runs (a note); one the user named must (an error).
    items = None if choice.rule == SEARCH else choice.items
    table, notes = comparison_table(collection, items, strict=choice.strict, margins=margins, design=design)
    interactions, baselines = pd.DataFrame(), {}
    if not table.empty:
        baselines = {int(r.depth): r.variant for r in table[table["is_baseline"]].itertuples()}
        interactions = interaction_table(collection, baselines, margins, design)
        if not interactions.empty:
            judge(table, interactions, margins, design)  # one Holm family with the comparison table
    table, per_run_target = add_time_to_target(table, collection.runs, collection.curves, baselines, target_bpb)
    markdown = comparison_markdown(table, collection.variant_keys, [*notes, *design_notes])
    spread = spread_table(collection, table)
    report_path = out_dir / "report.md"
    with staged_folder(out_dir) as staging:  # every file replaced at once at the end (publish.py)
        save_tables(collection, staging)
        save_comparison(table, markdown, staging)
        if latex:
            save_latex(table, collection.variant_keys, staging)
        spread.to_csv(staging / "spread.csv", index=False)
        if not interactions.empty:
            interactions.to_csv(staging / "interactions.csv", index=False)
        runs_markdown = runs_table_markdown(collection)
        (staging / "runs.md").write_text(runs_markdown + "\n")
        per_run_target.to_csv(staging / "target.csv", index=False)
        plots = []
        objective = _search_objective(collection) if search is not None else None
        figures = all_plots(collection, baselines, table, objective)
        for plot in tqdm(figures, desc="report: plots", unit="plot", leave=False):
            save_figure(plot.figure, staging / "plots", plot.stem)
            plots.append((plot.stem, plot.title))
        sections = [("Time to target", target_markdown(table, target_bpb is not None))]
        scale = effect_across_scale(collection.runs, baselines)
        if scale is not None:
            scale.scale.to_csv(staging / "scale.csv", index=False)
            scale.trend.to_csv(staging / "scale_trend.csv", index=False)
            sections.insert(0, ("The effect across scale", scale.markdown))
            if scale.figure is not None:
                save_figure(scale.figure, staging / "plots", "scale_effect")
                plots.append(("scale_effect", "the effect across scale: Δ vs training FLOPs"))
        title = title or (Path(roots[0]).name if roots else "wandb")
        header = header_lines(collection, records)
        if search is not None:
            header += search_lines(collection, records, search)
        text = _report_text(
            title, sources, collection, markdown, spread, runs_markdown, plots, choice, command, header, sections
        )
        text = _with_design(text, collection, design, margins, interactions)
        (staging / "report.md").write_text(text)
    stems = [stem for stem, _ in plots]
    return Report(out_dir, report_path, collection, table, markdown, spread, stems, interactions)


def _with_design(text: str, collection: Collection, design: Design, margins: Margins, interactions) -> str:
    """report.md's statistical design (noise sources, looks, margins) under the header, and the
    interactions section after the comparison."""
    done = collection.completed()
    flats = [collection.configs[r] for r in done["run"] if r in collection.configs] or list(collection.configs.values())
    design_lines = [
        f"Noise the seeds varied: {noise_sources(flats)}.",
        "",
        f"Design: {design.text()}. Equivalence margins: "
        + (f"{margins.text()} (--equivalence-margin)." if margins.any else 'none (a null stays "not significant").'),
        "",
    ]
    head, sep, rest = text.partition("\n## ")
    text = head + "\n" + "\n".join(design_lines) + sep + rest if sep else text + "\n".join(design_lines)
    if interactions is None or interactions.empty:
        return text
    section = [
        "## Interactions",
        "",
        interactions_markdown(interactions),
        "",
        interactions_legend(margins),
        "",
        "All numbers in [interactions.csv](interactions.csv).",
        "",
        "",
    ]
    marker = "## What this sweep could detect"
    return text.replace(marker, "\n".join(section) + marker, 1)


# the baseline's defaults, a search's results, the header ------------------------------------
# What report.md's header names as held fixed (when every run agrees) or as an axis.
FIXED_KEYS = {
    "recipe.name": "recipe",
    "data.source": "data",
    "data.vocab_size": "vocabulary",
    "model.depth": "model depth",
    "precision.name": "precision",
    "train.num_iterations": "steps",
    "train.total_batch_tokens": "batch (tokens)",
    "train.device_batch_size": "device batch (rows)",
}


def composed_defaults() -> dict[str, Any]:
    """`ablate-train`'s config with no overrides, flattened: each axis's composed default value.
    Empty when configs/ cannot be composed here (a report of foreign runs still gets a baseline)."""
    from omegaconf import OmegaConf

    from harness.cli import compose
    from harness.results.collect import flatten

    try:
        return flatten(OmegaConf.to_container(compose([]), resolve=True))
    except Exception:  # noqa: BLE001 - any failure to compose only loses the "composed default" rule
        return {}


def search_results(roots: Sequence[str | os.PathLike]) -> dict | None:
    """Optuna's `optimization_results.yaml` in a reported sweep folder (a hyperparameter search), or None."""
    import yaml

    for root in roots:
        path = Path(root) / "optimization_results.yaml"
        if path.is_file():
            try:
                found = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(found, dict):
                return found
    return None


def _search_objective(collection: Collection) -> tuple[str, str]:
    """The search's objective (the runs' `optimized_metric`) and the direction it improves in."""
    from harness.objective import OBJECTIVES

    names = {str(f.get("optimized_metric")) for f in collection.configs.values() if f.get("optimized_metric")}
    name = names.pop() if len(names) == 1 else "final_val_bpb"
    return name, OBJECTIVES.get(name, "minimize")


def header_lines(collection: Collection, records: Sequence[RunRecord] = ()) -> list[str]:
    """What was held fixed (recipe, data, model, precision, batch, steps) or varied, and the
    environment the runs recorded (device, commit, versions), as nanochat's report.md opens."""
    flats = list(collection.configs.values())
    fixed = []
    for key, label in FIXED_KEYS.items():
        values = {str(flat[key]) for flat in flats if key in flat}
        if len(values) == 1:
            fixed.append(f"{label} `{values.pop()}`")
        elif values:
            fixed.append(f"{label} varies ({', '.join(sorted(values))})")
    lines = ["Held fixed: " + "; ".join(fixed) + "." if fixed else "Held fixed: unknown (no readable config)."]
    runs = collection.runs
    devices = sorted({str(d) for d in runs.get("device", pd.Series(dtype=object)).dropna() if str(d)})
    commits = sorted({str(c)[:12] for c in runs.get("git_commit", pd.Series(dtype=object)).dropna() if str(c)})
    versions: set[str] = set()
    for record in records:
        found = (record.summary or {}).get("versions") or {}
        if isinstance(found, dict):
            versions.add(", ".join(f"{k} {v}" for k, v in sorted(found.items()) if v))
    environment = [
        f"device {' / '.join(devices)}" if devices else "device unrecorded",
        f"commit {' / '.join(commits)}" if commits else "commit unrecorded",
        *(sorted(versions) or ["versions unrecorded"]),
    ]
    return [*lines, "", "Environment of the runs: " + "; ".join(environment) + ".", ""]


def search_lines(collection: Collection, records: Sequence[RunRecord], search: dict) -> list[str]:
    """The search's best trial and the command that re-runs it alone, for report.md: the trial's own
    overrides (its `.hydra/overrides.yaml`) with `hydra.mode=RUN`, which finds the trial's run directory."""
    import yaml

    from harness.results.compare import _same

    params = search.get("best_params") or {}
    keys = ", ".join(f"`{k}`" for k in params) or "none recorded"
    lines = [
        "## Hyperparameter search",
        "",
        f"Searched keys: {keys}. Best value of the objective: {_number(search.get('best_value'), '.6g')}, at "
        + (", ".join(f"`{k}={_override_value(v)}`" for k, v in params.items()) or "—")
        + ". The plots `search_objective` (the objective against each searched key) and `search_history` "
        "(the objective trial by trial, with the best so far) are below.",
        "",
    ]
    best = [
        r
        for r in records
        if r.config and all(_same(collection.configs.get(r.run, {}).get(k), v) for k, v in params.items())
    ]
    overrides_file = Path(best[0].source) / ".hydra" / "overrides.yaml" if best else None
    try:
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file else None
    except (OSError, yaml.YAMLError):
        overrides = None
    if not isinstance(overrides, list):
        overrides = [f"{k}={_override_value(v)}" for k, v in params.items()]
    command = " ".join(shlex.quote(str(o)) for o in [*overrides, "hydra.mode=RUN"])
    lines += [
        "The best trial, re-run alone (it finds its run directory, so it is skipped when complete; add "
        "`name=<new>` for a fresh run with these values):",
        "",
        "```bash",
        f"ablate-train {command}",
        "```",
        "",
    ]
    return lines


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# the per-run table -------------------------------------------------------------------------
def runs_table_markdown(collection: Collection) -> str:
    """One row per run: variant keys, depth (when several), seed, status, the headline numbers."""
    runs = collection.runs.sort_values(["depth", "variant", "seed"])
    keys = collection.variant_keys or ["variant"]
    several_depths = len(collection.depths) > 1
    has_core = runs["core"].notna().any()
    has_mfu = runs["mfu"].notna().any()
    has_memory = runs["peak_memory_gib"].notna().any()
    header = [*keys, *(["depth"] if several_depths else []), "seed", "status", "steps", "final val bpb"]
    header += ["min val bpb", *(["CORE"] if has_core else []), "train time", "tok/s", *(["MFU"] if has_mfu else [])]
    header += ["peak memory"] if has_memory else []
    labels = [k for k in ("tags", "notes") if k in runs and runs[k].map(_text).ne("").any()]
    header += labels
    header += ["note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, run in runs.iterrows():
        cells = [_key_value(run[k]) for k in keys] + ([str(run["depth"])] if several_depths else [])
        status = run["status"] if run["status"] == COMPLETED else f"**{run['status']}**"
        cells += [_seed(run["seed"]), status, _steps(run), _number(run["final_val_bpb"], ".4f")]
        cells += [_number(run["min_val_bpb"], ".4f")] + ([_number(run["core"], ".4f")] if has_core else [])
        cells += [_duration(run["train_time_s"]), _number(run["tok_per_s"], ",.0f")]
        cells += [_number(run["mfu"], ".1%")] if has_mfu else []
        cells += [_memory(run["peak_memory_gib"])] if has_memory else []
        cells += [_text(run[k]).replace("|", "\\|") for k in labels]
        cells += [_note(run)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed(seed: Any) -> str:
    """An unreadable config has no seed: a dash, not `nan`."""
    if _finite(seed):
        return str(int(seed))
    return "—" if isinstance(seed, float) or seed in (None, "") else str(seed)


def _steps(run: pd.Series) -> str:
    step, total = run["step"], run["num_iterations"]
    if not _finite(step):
        return "—"
    return f"{int(step)}/{int(total)}" if _finite(total) else str(int(step))


def _note(run: pd.Series) -> str:
    parts = [str(run[k]) for k in ("error", "note") if str(run.get(k, "")) not in ("", "nan")]
    return "; ".join(parts).replace("|", "\\|")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if _finite(value) else "—"


def _text(value: Any) -> str:
    """A text cell: empty for a run that recorded none (NaN in a column no run filled)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def _memory(gib: Any) -> str:
    return f"{gib:.2f} GiB" if _finite(gib) else "—"


def _duration(seconds: Any) -> str:
    if not _finite(seconds):
        return "—"
    if seconds < 180:
        return f"{seconds:.1f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


# report.md ---------------------------------------------------------------------------------
def _report_text(
    title, sources, collection, comparison_md, spread, runs_md, plots, choice, command, header, sections=()
) -> str:
    runs = collection.runs
    counts = runs["status"].value_counts()
    status_line = ", ".join(f"{n} {status}" for status, n in counts.items())
    baseline_text = "none" if choice.rule == SEARCH else f"`{choice.text()}`"
    lines = [
        f"# Sweep report: {title}",
        "",
        f"{len(runs)} runs ({status_line}) from {', '.join(f'`{s}`' for s in sources)}, "
        f"{len(collection.depths)} depth(s), {runs['variant'].nunique()} variant(s). "
        f"Axes: {', '.join(f'`{a}`' for a in collection.variant_keys) or 'none'}. "
        f"Baseline: {baseline_text}, {choice.reason}.",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC" + (f" by `{command}`." if command else "."),
        "",
        *header,
    ]
    incomplete = runs[runs["status"] != COMPLETED]
    if len(incomplete):
        lines += [
            "## Runs that did not complete",
            "",
            "Kept in every table and plot (dotted curves), left out of the statistics.",
            "",
        ]
        lines += ["| run | status | step | last val bpb | error / note |", "|---|---|---|---|---|"]
        for _, run in incomplete.iterrows():
            last = _number(run["last_val_bpb"], ".4f")
            lines.append(f"| `{run['run']}` | {run['status']} | {_steps(run)} | {last} | {_note(run) or '—'} |")
        lines.append("")
    lines += ["## Comparison with the baseline", "", comparison_md.strip(), ""]
    lines += ["## What this sweep could detect", "", *_power_text(spread), ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body, ""]
    lines += ["## Every run", "", runs_md, ""]
    lines += ["## Plots", ""]
    for stem, plot_title in plots:
        lines += [
            f"### {plot_title}",
            "",
            f"![{plot_title}](plots/{stem}.png)",
            "",
            f"[PNG](plots/{stem}.png) · [SVG](plots/{stem}.svg)",
            "",
        ]
    lines += [
        "## Files",
        "",
        "- [runs.csv](runs.csv) / runs.parquet: one row per run, every axis a column",
        "- [curves.csv](curves.csv) / curves.parquet: one row per (run, step, metric)",
        "- [comparison.csv](comparison.csv) / [comparison.md](comparison.md): the comparison tables",
        "- [runs.md](runs.md): the per-run table; [spread.csv](spread.csv): seed-to-seed spread",
        "- [target.csv](target.csv): per run, time, tokens and FLOPs to the target val bpb",
        "",
    ]
    return "\n".join(lines)


def _power_text(spread: pd.DataFrame) -> list[str]:
    if spread.empty:
        return [
            "No variant has two completed seeds, so the seed-to-seed spread is unknown: no difference can be "
            'tested, and "no significant difference" means nothing yet. Run at least two seeds.'
        ]
    alpha = float(spread["alpha"].iloc[0]) if "alpha" in spread else ALPHA
    level = f"α = {alpha:.2g} (two-sided)"
    if alpha < ALPHA:
        level = (
            f"α = {ALPHA}/{round(ALPHA / alpha)} = {alpha:.2g} (two-sided; Holm's first step over the report's "
            f"{round(ALPHA / alpha)} tests, the level the verdicts use, so a verdict finds such a difference at least "
            f"{POWER:.0%} of the time)"
        )
    lines = [
        f"Smallest true difference the sweep's design would detect with {POWER:.0%} power at {level}, "
        "from the seed-to-seed spread pooled over the variants of each depth. A true difference "
        'below it would likely come out "not significant": that verdict is not evidence of no difference.',
        "",
        "| depth | metric | seeds per variant | sd within a variant | detectable Δ, unpaired | "
        "sd of per-seed differences | detectable Δ, paired by seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in spread.itertuples():
        metric = "val bpb" if row.metric == "val_bpb" else "CORE"
        lines.append(
            f"| {row.depth} | {metric} | {row.seeds} | {_number(row.sd, '.4f')} | "
            f"{_number(row.mdd_unpaired, '.4f')} | {_number(row.paired_sd, '.4f')} | {_number(row.mdd_paired, '.4f')} |"
        )
    lines += [
        "",
        "More seeds shrink these quickly: `python -m harness.plan <overrides> --spread-from <this sweep> "
        "--detect 0.002` says how many seeds a chosen difference needs.",
    ]
    return lines
