"""What names a run: the config keys that never do, and the folder a run's overrides name.

A run's directory, runs/<name>/<overrides>, is its identity (harness.results.rundir). Bookkeeping
keys (`is_bookkeeping`) say how a run is named, launched, logged or where its files live, not what
it computes: the same sweep run on two machines with their data in different folders is one set of
runs. This module is the one list of them; it is used by the resume check (harness.run.decision),
the report's ablation axes (harness.results.collect) and, through a test that holds
configs/config.yaml's `override_dirname.exclude_keys` to it, the folder name (Hydra reads that YAML
list before any of our code runs, so it cannot import this one). What does not move with them: a
checkpoint is still refused when its tokenizer differs, and `name=...` keeps sweeps on really
different data apart. This module reads no files and builds nothing.
"""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig, OmegaConf

LOCATION_KEYS = (
    "paths.runs_dir",
    "paths.results_dir",
    "paths.data_dir",
    "data.path",  # data=local: the folder or file of text
    "data.val_path",
    "data.dir",  # data=fineweb: the shards and tokenizer
    "data.cache_dir",  # data=builtin, local: tokenizer and tokenized documents
    "data.base_url",
    "eval.core.bundle_dir",
    "eval.core.bundle_url",
    "logger.dir",
)

# Whole config sections of bookkeeping: where files live, how the run is launched and logged, what
# a re-invoked sweep does, and how the report will test the sweep (configs/config.yaml's `stats`).
# `hydra` is Hydra's own (never in a saved config.yaml; the report sees it in a multirun's overrides).
BOOKKEEPING_SECTIONS = ("paths", "logger", "launcher", "sweep", "stats", "hydra")
# Single keys of bookkeeping: the sweep's name and experiment file (the folder already says them),
# how a re-invocation treats the run (train.resume), which steps are profiled (train.profile.steps),
# what a study optimizes, and where data lives.
BOOKKEEPING_KEYS = ("name", "experiment", "train.resume", "train.profile.steps", "optimized_metric", *LOCATION_KEYS)


def is_bookkeeping(key: str) -> bool:
    """Whether a flattened config key (`train.resume`, `logger.mode`) leaves what a run computes alone."""
    return key in BOOKKEEPING_KEYS or key.split(".", 1)[0] in BOOKKEEPING_SECTIONS


def location_keys(cfg: DictConfig) -> set[str]:
    """LOCATION_KEYS and whatever else takes its value from paths.* or the environment: keys that
    say where files live in this config (an experiment may point a key of its own at paths.data_dir)."""
    unresolved = flatten(OmegaConf.to_container(cfg, resolve=False))
    derived = {k for k, v in unresolved.items() if isinstance(v, str) and ("${paths." in v or "${oc.env" in v)}
    return derived | set(LOCATION_KEYS)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} as {"a.b": 1}: the keys the resume check and the report compare."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# A run with no override of its experiment's config: a folder of its own beside the sweep's, not
# the sweep's root (where the report would count it as one more run of the default variant).
DEFAULTS_RUN_SUFFIX = "-defaults"
# The same inside a multirun, where every job is a subfolder of the sweep.
DEFAULTS_JOB_DIR = "defaults"
RESOLVER = "ablate.run_dir"


# Filesystems cap a folder name at 255 bytes; a long override set is cut below that and made unique
# again by a hash of the whole (the run's config.yaml still says every override).
MAX_DIRNAME_BYTES = 200


def run_dir_name(name: str, override_dirname: str, multirun: bool = False) -> str:
    """`<name>/<overrides>` for a single run; `<overrides>` for a job below the sweep's folder."""
    override_dirname = fit_dirname(override_dirname)
    if multirun:
        return override_dirname or DEFAULTS_JOB_DIR
    return f"{name}/{override_dirname}" if override_dirname else f"{name}{DEFAULTS_RUN_SUFFIX}"


def register_resolvers() -> None:
    """${ablate.run_dir:name,override_dirname[,multirun]} for hydra.run.dir and hydra.sweep.subdir
    (configs/config.yaml); Hydra resolves them in every process that starts a job, each of which
    imports the harness first."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(
            RESOLVER, lambda name, dirname, multirun=False: run_dir_name(str(name), str(dirname), bool(multirun))
        )


def fit_dirname(dirname: str) -> str:
    """`dirname` if it fits in MAX_DIRNAME_BYTES, else its head and 12 hex digits of its SHA-256."""
    raw = dirname.encode()
    if len(raw) <= MAX_DIRNAME_BYTES:
        return dirname
    head = raw[: MAX_DIRNAME_BYTES - 13].decode("utf-8", errors="ignore")
    return f"{head}-{hashlib.sha256(raw).hexdigest()[:12]}"
