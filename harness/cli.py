"""What every command-line entry shares: composing the config, expanding a sweep into its jobs,
and turning user mistakes into one line on stderr with exit code 2.

Hydra reports a bad override only when the job that uses it starts, with exit code 1 and a
multi-line message. The harness composes every job of a sweep first (`expand_sweep`), so a typo
in job 7 of 16 stops the command before job 1 trains.
"""

from __future__ import annotations

import functools
import itertools
import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import USAGE_EXIT_CODE, ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The composed config for one job, as `python -m harness.train <overrides>` would see it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=with_hydra)
            # Resolve now: interpolation errors (a missing env var, a typo in ${...}) surface here.
            OmegaConf.to_container(cfg if not with_hydra else _without_hydra(cfg), resolve=True)
            return cfg
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_composition_message(str(e))) from None


def _without_hydra(cfg: DictConfig) -> DictConfig:
    copy = cfg.copy()
    with_struct = OmegaConf.is_struct(copy)
    OmegaConf.set_struct(copy, False)
    copy.pop("hydra", None)
    OmegaConf.set_struct(copy, with_struct)
    return copy


def _missing_option_message(e: MissingConfigException) -> str:
    first = str(e).splitlines()[0]
    # "In 'config': Could not find 'model/d13'" -> "model=d13 is not an option; choose from ..."
    if "Could not find '" in first and e.options:
        missing = first.split("Could not find '", 1)[1].rstrip("'")
        group, _, option = missing.rpartition("/")
        return f"{group}={option} is not an option; choose from: {', '.join(sorted(e.options))}"
    return first


def _composition_message(text: str) -> str:
    first = text.splitlines()[0]
    # "Could not override 'train.foo'." -> name the unknown key and how to see the real ones
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        return f"{key} is not a config key (python -m harness.train --help lists the keys)"
    if first.startswith("Error parsing override '"):
        override = first.split("'")[1]
        return f"cannot parse override {override!r}: expected key=value (or group=option)"
    return first


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job a multirun with these overrides launches, as Hydra's basic
    sweeper builds them: the experiment's `hydra.sweeper.params` first, then the command line,
    one entry per key (a later one replaces an earlier one), and the product of the sweeps."""
    parser = OverridesParser.create()
    try:
        command_line = parser.parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(_composition_message(str(e))) from None
    cfg = compose([o.input_line for o in command_line if not o.is_sweep_override()], with_hydra=True)
    swept = cfg.hydra.sweeper.params
    params = OmegaConf.to_container(swept, resolve=False) if swept else {}
    from_config = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
    choices: dict[str, list[str]] = {}
    for override in [*from_config, *command_line]:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [override.input_line]
    return [list(job) for job in itertools.product(*choices.values())]


def check_jobs(jobs: list[list[str]], check):
    """`check(job)` for every job of a sweep, in order; a ConfigError names the job it came from."""
    results = []
    for i, job in enumerate(jobs):
        try:
            results.append(check(job))
        except ConfigError as e:
            where = f"job {i + 1}/{len(jobs)} ({' '.join(job)}): " if len(jobs) > 1 else ""
            raise ConfigError(f"{where}{e}") from None
    return results


def exit_on_config_error(fn):
    """Run `fn`; a ConfigError becomes `error: <line>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(USAGE_EXIT_CODE)

    return wrapper


# Groups every run composes (configs/config.yaml's defaults list); deleting one (~model) leaves a
# config no command can run.
REQUIRED_GROUPS = ("model", "rope", "mlp_lr", "optim", "data", "train", "eval", "logger", "launcher")
# Sections whose keys the code reads one by one, so an added key (+model.foo=1) would be ignored
# without a word; train, optim, mlp_lr and eval refuse unknown keys when they are converted.
FREE_SECTIONS = ("model", "rope", "data", "paths", "sweep", "logger")
# Keys the code reads with a default, so a run may add them although no YAML file sets them.
OPTIONAL_KEYS = ("model.rotary_cache_len", "ve_gate_channels")


def check_overrides(overrides: list[str]) -> None:
    """Refuse a deleted group (~model) and an added key nothing reads (+foo=1, +model.foo=1)."""
    for override in overrides:
        if override.startswith("~") and override[1:].split("=")[0] in REQUIRED_GROUPS:
            group = override[1:].split("=")[0]
            options = ", ".join(sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")))
            raise ConfigError(f"{override} deletes the {group} group, which every run needs; choose one of: {options}")
    added = [o for o in overrides if o.startswith("+") and not o.startswith("++")]
    for override in added:
        key = override[1:].split("=", 1)[0]
        section, _, name = key.rpartition(".")
        if key in OPTIONAL_KEYS or (section and section not in FREE_SECTIONS) or key.startswith("hydra"):
            continue
        base = compose([o for o in overrides if o != override])
        node = OmegaConf.select(base, section) if section else base
        if isinstance(node, DictConfig) and name not in node:
            optional = (k.rpartition(".")[2] for k in OPTIONAL_KEYS if k.rpartition(".")[0] == section)
            allowed = sorted({*map(str, node.keys()), *optional})
            raise ConfigError(f"unknown key {key}; allowed: {', '.join(allowed)}")
