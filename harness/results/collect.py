"""Sweep collection: what a set of runs left behind, as two tables.

`runs` has one row per run: its identity (variant, depth, seed, status), every ablation axis as
its own column, and the headline numbers of its summary (final and min val bpb, CORE and each
CORE task, tok/s, MFU, training time, total FLOPs). `curves` is long: one row per (run, step,
metric) with the step's tokens, FLOPs and training time, for plotting against any of them.

Axes are found, not declared: every flattened config key whose value differs between runs,
except the seed (its own column) and bookkeeping keys that do not change what a run computes
(paths, logger, launcher, sweep, name; the same keys Hydra keeps out of a run's folder name).
`data.seed` follows `seed` unless set (configs/data/): where it equals the seed in every run, or is
the same in every run, it is no axis; where some runs hold it fixed and others let it follow, it is
an axis whose value is `${seed}` for a run that follows (a fixed run whose data.seed happens to equal
its seed computes the same thing, and is the same run). `noise_sources` says which the seeds varied.
A config group chosen as a whole (`mlp_lr=c_fc_2x`) changes several keys at once; the variant's
name keeps only the keys that are not implied by another (`mlp_lr.name` implies
`mlp_lr.shape_rule`), and leaves out keys implied by the depth (depth is a dimension of its own).

Runs are never dropped: a run without summary.json has status `missing` and shows what its
metrics say so far; failed, diverged and interrupted runs keep their status; a run whose
summary.json or config.yaml cannot be read (truncated, not JSON/YAML) has status `unreadable`
with the reason, and the rest of the report is built. Statistics use completed runs only, and
say how many others there were.

A run is counted once. The same folder reached twice (a sweep and one of its own run folders,
or one folder named twice) is one run; two folders holding the same run identity (every config
key that changes what a run computes, the seed included: a copied sweep, say) are one run too,
the completed or furthest one kept. Either is said in `Collection.notes`. Two sweeps whose
folders share a name get run names that tell them apart.
"""

from __future__ import annotations

import json
import math
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness.errors import ConfigError
from harness.identity import is_bookkeeping
from harness.results.rundir import RunDir, broken_links, find_run_dirs

MISSING = "missing"
COMPLETED = "completed"
UNREADABLE = "unreadable"
DEPTH_KEY = "model.depth"
# A recipe sets keys in many groups; where they vary only with it, the recipe's name is the variant.
RECIPE_KEY = "recipe.name"
SEED_KEY = "seed"
DATA_SEED_KEY = "data.seed"
FOLLOWS_SEED = "${seed}"  # data.seed's value as an axis, for a run whose data order follows its seed
NAME_KEY = "name"
DATA_KEY = "data.fingerprint"  # an axis only when runs were trained on different data

CURVE_INDEX = ("step", "tokens", "flops", "time_s")
CURVE_COLUMNS = ("run", *CURVE_INDEX, "metric", "value")
SUMMARY_NUMBERS = (
    "step",
    "num_iterations",
    "tokens",
    "flops",
    "final_val_bpb",
    "last_val_bpb",
    "min_val_bpb",
    "core",
    "tok_per_s",
    "mfu",
    "peak_memory_gib",
    "train_time_s",
    "wall_time_s",
    "params",
    "flops_per_token",
    "world_size",
    "grad_accum_steps",
)
HEADLINE = 8  # SUMMARY_NUMBERS[:HEADLINE] come before the CORE task columns
SUMMARY_TEXT = ("device", "git_commit", "error", "started_at", "ended_at", "tags", "notes")
# What a run's tok/s depends on besides the model: runs that differ in one of these are not
# compared for speed (compare.py). Missing values (older runs) are unknown, not different.
SPEED_CONTEXT = ("device", "world_size", "device_batch_size", "total_batch_tokens", "grad_accum_steps")
BATCH_KEYS = {"device_batch_size": "train.device_batch_size", "total_batch_tokens": "train.total_batch_tokens"}
CORE_PREFIX = "core/"
# The curves table keeps every evaluation record (val bpb, CORE: the numbers compared) exactly, and
# at most this many training records per run: past it, those at steps that are multiples of k (the
# smallest power of two that fits) and the last. Recipe runs log at most ~40k steps and are kept
# whole; a runaway metrics.jsonl (GBs) then costs the report a bounded amount of memory.
MAX_TRAIN_POINTS = 2**16
EVAL_KEYS = ("val_bpb", "core")
# summary.json keys that hold mappings of numbers; anything else there is a damaged summary.
SUMMARY_MAPPINGS = ("param_counts", "core_tasks")


@dataclass
class RunRecord:
    """One run as read from its source (a run directory or a wandb run), before tabulation."""

    run: str
    source: str
    config: dict
    summary: dict | None
    metrics: Iterable[dict]  # a list, or a run directory's metrics.jsonl read anew on each pass
    problem: str = ""
    unreadable: str = ""  # why summary.json or config.yaml could not be read; the run is `unreadable`


@dataclass
class Collection:
    """The two tables plus what was learned about the sweep's shape while building them."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    axes: list[str]
    variant_keys: list[str]
    configs: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # duplicates left out, and why

    @property
    def core_tasks(self) -> list[str]:
        return [c for c in self.runs.columns if c.startswith(CORE_PREFIX)]

    @property
    def depths(self) -> list[int]:
        return sorted(int(d) for d in self.runs["depth"].dropna().unique())

    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == COMPLETED]


# reading -----------------------------------------------------------------------------------
def load_run_dirs(*roots: str | os.PathLike) -> list[RunRecord]:
    """Every run directory under the roots (any depth, Hydra multirun layout included), each
    folder once however many roots reach it; run names unique even when two roots share a name."""
    found: dict[Path, tuple[Path, RunDir]] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise ConfigError(f"sweep directory {str(root)!r} does not exist")
        for run_dir in find_run_dirs(root):
            relative = run_dir.path.relative_to(root)
            if "wandb" in relative.parts:  # wandb's own files/config.yaml, not a run of ours
                continue
            # The first root that reaches a folder names it (a sweep before one of its own runs).
            found.setdefault(run_dir.path.resolve(), (root, run_dir))
    names = _run_names({path: (root, run_dir.path) for path, (root, run_dir) in found.items()})
    records = [_read_run_dir(names[path], run_dir) for path, (_, run_dir) in found.items()]
    return records + [_broken_link(Path(root), link) for root in roots for link in broken_links(root)]


def _broken_link(root: Path, link: Path) -> RunRecord:
    """A link whose folder is gone (storage unmounted, say): listed as unreadable, not left out."""
    name = f"{root.name}/{link.relative_to(root).as_posix()}"
    reason = f"skipped: a symbolic link to {os.readlink(link)}, which does not exist"
    return RunRecord(name, str(link), {}, None, [], unreadable=reason)


def _run_names(found: dict[Path, tuple[Path, Path]]) -> dict[Path, str]:
    """`<root name>/<path below the root>`; where two folders would get one name, more of the
    root's parents are prepended until the names differ (two sweeps both called `smoke`)."""

    def name(root: Path, path: Path, parents: int) -> str:
        relative = path.relative_to(root)  # as found below the root, through any symbolic link
        root = root.resolve()
        prefix = Path(*root.parts[max(len(root.parts) - 1 - parents, 1) :]) if parents else Path(root.name)
        return prefix.as_posix() if relative == Path(".") else f"{prefix.as_posix()}/{relative.as_posix()}"

    names = {path: name(root, run, 0) for path, (root, run) in found.items()}
    for parents in range(1, 64):
        counts = Counter(names.values())
        clashing = [p for p, n in names.items() if counts[n] > 1]
        if not clashing:
            break
        for path in clashing:
            names[path] = name(*found[path], parents)
    else:  # only if two resolved paths still print alike, which they cannot; keep them apart anyway
        names = {path: path.as_posix() for path in found}
    return names


class MetricsFile:
    """A run's metrics.jsonl as an iterable that reads the file line by line on each pass."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir

    def __iter__(self) -> Iterator[dict]:
        return self.run_dir.iter_metrics()


def _read_run_dir(run: str, run_dir: RunDir) -> RunRecord:
    unreadable = []
    config, config_problem = _read_config(run_dir)
    if config_problem:
        unreadable.append(config_problem)
    summary, summary_problem = _read_summary(run_dir)
    if summary_problem:
        unreadable.append(summary_problem)
    return RunRecord(run, str(run_dir.path), config, summary, MetricsFile(run_dir), "", "; ".join(unreadable))


def _read_config(run_dir: RunDir) -> tuple[dict, str]:
    """The config, or {} and why not. The harness writes config.yaml with a final newline, so a
    file without one was cut short even when what is left still parses."""
    try:
        text = run_dir.config_path.read_bytes()
        config = run_dir.read_config()
    except (OSError, ValueError, yaml.YAMLError) as e:
        return {}, f"config.yaml unreadable: {_one_line(e)}"
    if not isinstance(config, dict):
        return {}, f"config.yaml unreadable: holds a {type(config).__name__}, not a mapping"
    if not text.endswith(b"\n"):
        return {}, "config.yaml unreadable: it does not end with a newline (cut short?)"
    flat = flatten(config)
    missing = [key for key in (SEED_KEY, DEPTH_KEY) if key not in flat]
    if missing:
        return {}, f"config.yaml unreadable: no {', '.join(missing)} (cut short?)"
    wrong = [f"{key}={flat[key]!r}" for key in (SEED_KEY, DEPTH_KEY) if not _is_integer(flat[key])]
    if wrong:
        return {}, f"config.yaml unreadable: {', '.join(wrong)} is not an integer"
    return config, ""


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_summary(run_dir: RunDir) -> tuple[dict | None, str]:
    try:
        summary = run_dir.read_summary()
    except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"summary.json unreadable: {_one_line(e)}"
    if summary is not None and not isinstance(summary, dict):
        return None, f"summary.json unreadable: holds a {type(summary).__name__}, not an object"
    wrong = _summary_type_error(summary or {})
    if wrong:
        return None, f"summary.json unreadable: {wrong}"
    return summary, ""


def _summary_type_error(summary: dict) -> str:
    """What in a summary has the wrong type to be read (hand-edited, or another tool's), or ''."""
    status = summary.get("status")
    if status is not None and not isinstance(status, str):
        return f"status={status!r} is not a string"
    for key in SUMMARY_MAPPINGS:
        value = summary.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(v is None or isinstance(v, (int, float)) for v in value.values()):
            return f"{key}={_short(value)} is not an object of numbers"
    return ""


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; lists become JSON text so that every value is comparable."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, sort_keys=True)
        else:
            flat[name] = value
    return flat


# the sweep's shape -------------------------------------------------------------------------
def ablation_axes(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Flattened keys whose value differs across runs, in config order, bookkeeping excluded."""
    keys: dict[str, None] = {}
    for flat in configs:
        keys.update(dict.fromkeys(flat))
    axes = []
    for key in keys:
        if _bookkeeping(key):
            continue
        if len({_hashable(flat.get(key, "<absent>")) for flat in configs}) > 1:
            axes.append(key)
    return axes


def data_order_view(flats: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The configs as the axes see them: `data.seed` dropped where it follows the seed in every run
    or is one value in every run, else `${seed}` in the runs where it equals the seed."""
    values = [(flat.get(SEED_KEY), flat[DATA_SEED_KEY]) for flat in flats if DATA_SEED_KEY in flat]
    follows_everywhere = all(_same_seed(seed, data) for seed, data in values)
    if follows_everywhere or len({_hashable(data) for _, data in values}) <= 1:
        return [{k: v for k, v in flat.items() if k != DATA_SEED_KEY} for flat in flats]
    return [
        {**flat, DATA_SEED_KEY: FOLLOWS_SEED} if _same_seed(flat.get(SEED_KEY), flat.get(DATA_SEED_KEY)) else flat
        for flat in flats
    ]


def _same_seed(seed: Any, data_seed: Any) -> bool:
    return seed is not None and _hashable(seed) == _hashable(data_seed)


def noise_sources(flats: Sequence[dict[str, Any]]) -> str:
    """Which sources of run-to-run noise the seeds varied, from the runs' configs: the seed sets
    the initialisation; the data order too where data.seed follows it."""
    values = [(flat.get(SEED_KEY), flat.get(DATA_SEED_KEY)) for flat in flats]
    if not values:
        return "no readable configs"
    follows = [_same_seed(seed, data) for seed, data in values]
    if all(data is None for _, data in values):
        return "initialisation (the runs' configs have no data.seed)"
    if all(follows):
        return "initialisation and data order (data.seed follows seed)"
    fixed = sorted({str(data) for (_, data), f in zip(values, follows, strict=True) if not f})
    if len({_hashable(data) for _, data in values}) <= 1:
        return f"initialisation only (data.seed fixed at {fixed[0] if fixed else values[0][1]} in every run)"
    if len({_hashable(seed) for seed, _ in values}) <= 1:
        return f"data order only (seed fixed at {values[0][0]}, data.seed varied)"
    return (
        f"initialisation in every run; data order only in the {sum(follows)} of {len(values)} runs whose "
        f"data.seed follows seed (the others hold it at {', '.join(fixed)})"
    )


def _bookkeeping(key: str) -> bool:
    """Keys that are no ablation axis: harness.identity's bookkeeping, and the seed (a replicate)."""
    return key == SEED_KEY or is_bookkeeping(key)


def run_identity(flat: dict[str, Any]) -> str:
    """What a run computes: every key that is not bookkeeping, and the seed. Two folders with the
    same identity hold the same run (a copy, or the same sweep reached twice)."""
    kept = {k: _hashable(v) for k, v in flat.items() if not _bookkeeping(k) or k == SEED_KEY}
    return json.dumps(kept, sort_keys=True, default=str)


def variant_keys(configs: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[str]:
    """The axes that name a variant: those not fixed by the depth and not implied by a key of
    their own group that varies more (`mlp_lr.name` implies `mlp_lr.shape_rule`)."""
    table = pd.DataFrame([{k: _hashable(flat.get(k)) for k in (*axes, DEPTH_KEY)} for flat in configs])
    free = [k for k in axes if k != DEPTH_KEY and not _implied_by(table, k, [DEPTH_KEY])]
    if RECIPE_KEY in free:
        free = [k for k in free if k == RECIPE_KEY or not _implied_by(table, k, [RECIPE_KEY, DEPTH_KEY])]
    kept: list[str] = []
    for group in dict.fromkeys(k.split(".")[0] for k in free):
        members = sorted((k for k in free if k.split(".")[0] == group), key=lambda k: -table[k].nunique())
        for key in members:
            same_group = [k for k in kept if k.split(".")[0] == group]
            # A fractional number is set on its own (a searched LR), not chosen with a group's option:
            # in a search every trial's values are unique, so one key would "imply" the other.
            if not same_group or _fractional(table[key]) or not _implied_by(table, key, same_group):
                kept.append(key)
    return [k for k in axes if k in kept]


def _fractional(values: pd.Series) -> bool:
    return any(isinstance(v, float) and math.isfinite(v) and not v.is_integer() for v in values)


def _implied_by(table: pd.DataFrame, key: str, by: list[str]) -> bool:
    return bool((table.groupby(by, dropna=False)[key].nunique(dropna=False) <= 1).all())


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def variant_label(flat: dict[str, Any], keys: Sequence[str], digits: int | None = None) -> str:
    return " ".join(f"{k}={_format_value(flat.get(k), digits)}" for k in keys)


def _format_value(value: Any, digits: int | None = None) -> str:
    """`digits`: significant digits of a fractional number (a searched 0.012345678901234567 reads 0.01235)."""
    if digits is not None and isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        return f"{value:.{digits}g}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _label_digits(flats: Sequence[dict[str, Any]], keys: Sequence[str]) -> int | None:
    """The fewest significant digits (4 to 8) at which fractional values still name the variants
    apart, so that a search's trials read `optim.muon.lr=0.01235`; None (every digit) if none do."""
    exact = {variant_label(f, keys) for f in flats}
    for digits in range(4, 9):
        if len({variant_label(f, keys, digits) for f in flats}) == len(exact):
            return digits
    return None


# tables ------------------------------------------------------------------------------------
def collect(records: Iterable[RunRecord]) -> Collection:
    """Build the runs and curves tables from records of any source, each run once."""
    records, notes = deduplicate(sorted(records, key=lambda r: r.run))
    digests = {r.run: _digest(r) for r in records}
    configs = {r.run: flatten(r.config) for r in records if r.config}
    # The axes see data.seed as "follows the seed" or a fixed value; configs keep what each run wrote.
    axis_configs = dict(zip(configs, data_order_view(list(configs.values())), strict=True))
    _data_as_axis(records, axis_configs)
    flats = list(axis_configs.values())
    axes = ablation_axes(flats)
    keys = variant_keys(flats, axes) if flats else []
    fallback_name = "/".join(sorted({str(f.get(NAME_KEY, "run")) for f in flats}))
    digits = _label_digits(flats, keys)
    rows = []
    for record in records:
        flat = axis_configs.get(record.run, {})
        row = {
            "run": record.run,
            "name": flat.get(NAME_KEY),
            "variant": (variant_label(flat, keys, digits) if keys else fallback_name) if flat else UNREADABLE,
            "depth": flat.get(DEPTH_KEY),
            "seed": flat.get(SEED_KEY),
            "status": UNREADABLE if record.unreadable else (record.summary or {}).get("status") or MISSING,
        }
        row.update({axis: flat.get(axis) for axis in axes})
        row.update(_headline_numbers(record, digests[record.run]))
        row.update({column: flat.get(key) for column, key in BATCH_KEYS.items()})
        row["note"] = _note(record)
        row["path"] = record.source
        rows.append(row)
    runs = _tidy(pd.DataFrame(rows, columns=_run_columns(rows, axes)))
    return Collection(runs, _curves(digests), axes, keys, configs, notes)


def deduplicate(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[str]]:
    """One record per run identity (readable configs only): the completed one, else the one that
    got furthest, else the first by name. Returns the records kept and a note per duplicate."""
    groups: dict[tuple, list[RunRecord]] = {}
    kept: list[RunRecord] = []
    for record in records:
        if record.config and not record.unreadable:
            # Runs of one config on other data are other runs (summary.json's data_fingerprint).
            identity = (run_identity(flatten(record.config)), _data_fingerprint(record))
            groups.setdefault(identity, []).append(record)
        else:
            kept.append(record)
    notes = []
    for group in groups.values():
        best = min(group, key=_preference)
        kept.append(best)
        others = [r.run for r in group if r is not best]
        if others:
            notes.append(
                f"{len(group)} folders hold the same run (same config and seed): counted once as `{best.run}`, "
                f"left out {', '.join(f'`{o}`' for o in others)}"
            )
    return sorted(kept, key=lambda r: r.run), notes


def _data_fingerprint(record: RunRecord) -> str | None:
    value = (record.summary or {}).get("data_fingerprint")
    return value if isinstance(value, str) else None


def _data_as_axis(records: Sequence[RunRecord], axis_configs: dict[str, dict]) -> None:
    """Runs trained on different data (data locations are kept out of configs' identity) are
    never compared as if the data were the same: the data fingerprint becomes an axis of its own
    (runs written before fingerprints existed show `unknown`)."""
    fingerprints = {r.run: _data_fingerprint(r) for r in records}
    if len({f for f in fingerprints.values() if f is not None}) > 1:
        for run, flat in axis_configs.items():  # new dicts: the configs keep what each run wrote
            axis_configs[run] = {**flat, DATA_KEY: fingerprints.get(run) or "unknown"}


def _preference(record: RunRecord) -> tuple:
    summary = record.summary or {}
    step = _number(summary.get("step"))
    return (summary.get("status") != COMPLETED, -(step if math.isfinite(step) else -1), record.run)


def _run_columns(rows: list[dict], axes: list[str]) -> list[str]:
    tasks = sorted({k for row in rows for k in row if k.startswith(CORE_PREFIX)})
    head = ["run", "name", "variant", "depth", "seed", "status", *axes]
    tail = [*SUMMARY_NUMBERS[HEADLINE:], *BATCH_KEYS, *SUMMARY_TEXT, "note", "path"]
    return [*head, *SUMMARY_NUMBERS[:HEADLINE], *tasks, *tail]


def _headline_numbers(record: RunRecord, digest: MetricsDigest) -> dict[str, Any]:
    """From summary.json, absent keys NaN. A run with no summary yet, or only the stub a run
    writes when it starts, shows what its metrics say so far (never a `final_val_bpb`)."""
    summary = record.summary or {}
    numbers = digest.numbers() if summary.get("status", "running") == "running" else {}
    for key in SUMMARY_NUMBERS:
        value = _number(summary.get(key))
        if math.isfinite(value) or key not in numbers:
            numbers[key] = value
    numbers["params"] = _number((summary.get("param_counts") or {}).get("total", numbers["params"]))
    for task, value in (summary.get("core_tasks") or {}).items():
        numbers[f"{CORE_PREFIX}{task}"] = _number(value)
    numbers.update({key: summary.get(key) for key in SUMMARY_TEXT})
    if isinstance(numbers["tags"], list):  # logger.tags, one cell: "rope, first-try"
        numbers["tags"] = ", ".join(str(tag) for tag in numbers["tags"])
    return numbers


class MetricsDigest:
    """One pass over a run's metrics: what the report needs of them, in memory bounded by
    MAX_TRAIN_POINTS whatever the file's size. Curve points (_curve_point): evaluation records
    all, training records thinned (see MAX_TRAIN_POINTS) by doubling the step stride whenever
    twice the limit has gathered."""

    def __init__(self, run: str, numbers: bool = True):
        self.run = run
        self.keeps_numbers = numbers  # only a run without a final summary needs them (8 bytes a record)
        self.evals: list[tuple] = []
        self.train: list[tuple] = []
        self.stride = 1
        self.last: dict = {}
        self.last_train: tuple | None = None
        self.speeds: dict[str, array] = {"tok_per_s": array("d"), "mfu": array("d")}
        self.val: list[float] = []
        self.core: dict = {}
        self.peak_memory_gib = math.nan  # the highest a record shows (each record's is the peak so far)

    def add(self, position: int, record: dict) -> None:
        self.last = record
        for key, seen in self.speeds.items() if self.keeps_numbers else ():
            if key in record:
                seen.append(_number(record[key]))
        if self.keeps_numbers and "peak_memory_gib" in record:
            self.peak_memory_gib = float(np.fmax(self.peak_memory_gib, _number(record["peak_memory_gib"])))
        if "val_bpb" in record:
            self.val.append(_number(record["val_bpb"]))
        if "core" in record:
            self.core = {k: _number(v) for k, v in record.items() if k == "core" or k.startswith(CORE_PREFIX)}
        point = _curve_point(position, record)
        if any(key in record for key in EVAL_KEYS):
            self.evals.append(point)
            return
        step = record.get("step")
        self.last_train = (step if _is_integer(step) else position, point)
        if self.last_train[0] % self.stride == 0:
            self.train.append(self.last_train)
            if len(self.train) > 2 * MAX_TRAIN_POINTS:
                self.stride *= 2
                self.train = [(k, p) for k, p in self.train if k % self.stride == 0]

    def points(self) -> list[tuple]:
        """Curve points in file order: training records thinned to at most MAX_TRAIN_POINTS."""
        while len(self.train) > MAX_TRAIN_POINTS:
            self.stride *= 2
            self.train = [(k, p) for k, p in self.train if k % self.stride == 0]
        kept = [p for _, p in self.train]
        if self.last_train is not None and (not self.train or self.train[-1] is not self.last_train):
            kept.append(self.last_train[1])
        return sorted(kept + self.evals, key=lambda p: p[0])  # file order

    def numbers(self) -> dict[str, Any]:
        """What the metrics say so far, for a run without a final summary."""
        numbers: dict[str, Any] = {}
        if not self.last:
            return numbers
        numbers.update({k: _number(self.last.get(k)) for k in ("step", "tokens", "flops")})
        numbers["train_time_s"] = _number(self.last.get("time_s"))
        if self.val:
            numbers["last_val_bpb"] = self.val[-1]
            numbers["min_val_bpb"] = float(np.nanmin(self.val)) if np.isfinite(self.val).any() else math.nan
        for key, seen in self.speeds.items():
            values = np.frombuffer(seen, dtype=np.float64) if len(seen) else np.array([])
            numbers[key] = float(np.nanmedian(values)) if np.isfinite(values).any() else math.nan
        numbers["peak_memory_gib"] = self.peak_memory_gib
        numbers.update(self.core)
        return numbers


def _curve_point(position: int, record: dict) -> tuple:
    """(position in the file, step, tokens, flops, time_s, ((metric, value), ...)): every numeric
    metric (null is a gap, NaN), text and nested values left out."""
    values = tuple(
        (metric, _number(value))
        for metric, value in record.items()
        if metric not in CURVE_INDEX and not isinstance(value, (str, bool, dict, list))
    )
    return (position, *(_number(record.get(k)) for k in CURVE_INDEX), values)


def _digest(record: RunRecord) -> MetricsDigest:
    """Read the record's metrics once; a corrupt line leaves the run without curves, with a note."""
    digest = MetricsDigest(record.run, numbers=(record.summary or {}).get("status", "running") == "running")
    try:
        for position, entry in enumerate(record.metrics):
            digest.add(position, entry)
    except (ValueError, OSError) as e:
        record.problem = str(e)
        return MetricsDigest(record.run)
    return digest


def _note(record: RunRecord) -> str:
    notes = [record.problem] if record.problem else []
    if record.unreadable:
        notes.append(record.unreadable)
    elif record.summary is None:
        notes.append("no summary.json: numbers from metrics so far")
    elif record.summary.get("status") == "running":
        notes.append("running (or killed without a summary): numbers from metrics so far")
    if record.summary and not record.unreadable:
        notes += _evaluation_notes(record.summary)
    return "; ".join(notes)


def _evaluation_notes(summary: dict) -> list[str]:
    """Which number the report compares when harness.evaluate measured another (summary.json's
    `evaluations`): training's, unless training recorded none and the evaluation filled it."""
    evaluations = [e for e in summary.get("evaluations") or [] if isinstance(e, dict)]
    notes = []
    for key, measured, protocol in (("final_val_bpb", "val_bpb", "val_tokens"), ("core", "core", "core_max_per_task")):
        if any(key in (e.get("filled") or []) for e in evaluations):
            notes.append(f"{key} is harness.evaluate's (training recorded none)")
            continue
        trained = _number(summary.get(key))
        measured_values = [(e, _number(e.get(measured))) for e in evaluations]
        other = [e for e, value in measured_values if math.isfinite(value) and value != trained]
        if other and math.isfinite(trained):
            latest = other[-1]
            notes.append(
                f"{key} {trained:.4f} is training's; harness.evaluate measured {_number(latest.get(measured)):.4f} "
                f"at step {latest.get('step')} ({protocol} {latest.get(protocol)})"
            )
    return notes


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """One type per column (numbers, or text), so that parquet and CSV round-trip."""
    for column in runs.columns:
        values = runs[column]
        numeric = values.map(lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
        if numeric.all():
            runs[column] = pd.to_numeric(values, errors="coerce")
        else:
            runs[column] = values.map(lambda v: "" if v is None else _format_value(v)).astype(str)
    for column in ("depth", "seed", "step", "num_iterations", "world_size", "grad_accum_steps"):
        if column in runs and runs[column].notna().all() and pd.api.types.is_numeric_dtype(runs[column]):
            runs[column] = runs[column].astype("int64")
    return runs


def _curves(digests: dict[str, MetricsDigest]) -> pd.DataFrame:
    """The long table, one run at a time into typed arrays (a Python object per cell would cost
    more memory than the points themselves)."""
    parts = []
    for run, digest in digests.items():
        rows = [(*point[1:5], metric, value) for point in digest.points() for metric, value in point[5]]
        if not rows:
            continue
        index = np.array([row[:4] for row in rows], dtype=np.float64).reshape(-1, 4)
        part = {"run": np.full(len(rows), run, dtype=object)}
        part.update({name: index[:, i] for i, name in enumerate(CURVE_INDEX)})
        part["metric"] = np.array([row[4] for row in rows], dtype=object)
        part["value"] = np.array([row[5] for row in rows], dtype=np.float64)
        parts.append(pd.DataFrame(part))
    curves = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in CURVE_COLUMNS})
    curves = curves[list(CURVE_COLUMNS)]
    curves["run"] = curves["run"].astype(str)
    curves["metric"] = curves["metric"].astype(str)
    return curves


# entry points ------------------------------------------------------------------------------
def collect_dirs(*roots: str | os.PathLike) -> Collection:
    return collect(load_run_dirs(*roots))


def save_tables(collection: Collection, out_dir: str | os.PathLike) -> dict[str, Path]:
    """runs and curves as parquet and CSV; returns the written paths by file name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in (("runs", collection.runs), ("curves", collection.curves)):
        for suffix in ("parquet", "csv"):
            path = out_dir / f"{name}.{suffix}"
            if suffix == "parquet":
                table.to_parquet(path, index=False)
            else:
                table.to_csv(path, index=False)
            written[path.name] = path
    return written
