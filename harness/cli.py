"""What every command-line entry shares: composing the config, expanding a sweep into its jobs,
and turning user mistakes into one line on stderr with exit code 2.

Hydra reports a bad override only when the job that uses it starts, with exit code 1 and a
multi-line message. The harness composes every job of a sweep first (`expand_sweep`), so a typo
in job 7 of 16 stops the command before job 1 trains. The jobs are Hydra's own: the multirun's
config is composed as `hydra.main` composes it, and the basic sweeper's `split_arguments` expands
it (comma lists, range, glob, choice). A sweeper that picks its trials as it goes (Optuna) cannot
be expanded ahead: its search space is checked up front and each trial's config as it launches.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import USAGE_EXIT_CODE, ConfigError
from harness.identity import DEFAULTS_RUN_SUFFIX, LOCATION_KEYS, register_resolvers
from harness.objective import BASIC_SWEEPER, check_objective

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_NAME = "config"
register_resolvers()  # configs/config.yaml names run folders with ${ablate.run_dir:...}
OPTUNA_SWEEPER_MODULE = "hydra_plugins.hydra_optuna_sweeper."
# Config groups that Hydra plugins add when they are installed.
PLUGIN_HINTS = {"hydra/sweeper/optuna": "the Optuna sweeper is not installed: pip install -e '.[optuna]'"}


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Hydra's and OmegaConf's composition errors as one-line ConfigErrors."""
    try:
        yield
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e)) from None
    except (HydraException, OmegaConfBaseException) as e:
        # Hydra wraps OmegaConf's errors in an exception without a message of its own.
        raise ConfigError(_composition_message(str(e) or str(e.__cause__))) from None


@contextlib.contextmanager
def _config_loader() -> Iterator:
    """Hydra's config loader over configs/, the one `hydra.main` uses."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"), _one_line_errors():
        yield GlobalHydra.instance().config_loader()


def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The composed config for one job, as `python -m harness.train <overrides>` would see it."""
    with _config_loader():
        cfg = hydra_compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=with_hydra)
        # Resolve now: interpolation errors (a missing env var, a typo in ${...}) surface here.
        OmegaConf.to_container(cfg if not with_hydra else _without_hydra(cfg), resolve=True)
        return cfg


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
        hint = f" ({PLUGIN_HINTS[missing]})" if missing in PLUGIN_HINTS else ""
        return f"{group}={option} is not an option; choose from: {', '.join(sorted(e.options))}{hint}"
    return first


def _composition_message(text: str) -> str:
    first = (text.splitlines() or ["cannot compose the config"])[0]
    # "Could not override 'train.foo'." -> name the unknown key and how to see the real ones
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        return f"{key} is not a config key (python -m harness.train --help lists the keys)"
    if first.startswith("Error parsing override '"):
        override = first.split("'")[1]
        return f"cannot parse override {override!r}: expected key=value (or group=option)"
    if first.startswith("Ambiguous value for argument '"):
        override = first.split("'")[1]
        return f"{override} is a sweep: add -m (--multirun) to launch one run per value, or quote the value"
    return first


# sweeps --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """What a training command line launches, as known before anything starts.

    `jobs` are the override lists of every job when they are known up front: the one run, or
    every job of the basic sweeper. A sweeper that picks its trials from the results so far
    (`chooses_trials`) has none until it runs; each trial is checked as it launches."""

    jobs: list[list[str]]
    sweeper: str | None = None

    @property
    def chooses_trials(self) -> bool:
        return self.sweeper is not None and self.sweeper != BASIC_SWEEPER


def plan_launch(arguments: list[str], multirun: bool = False) -> Launch:
    """The jobs `harness.train <arguments>` launches: one run, or a multirun when -m is given or
    the config sets `hydra.mode: MULTIRUN` (an hparams_search file does), expanded by its sweeper."""
    with _config_loader() as loader:
        # As hydra.main decides the mode: the config composed for a multirun, sweeps left unchecked.
        master = _multirun_config(loader, arguments, validate_sweeps=False)
        if not (multirun or master.hydra.mode == RunMode.MULTIRUN):
            return Launch([list(master.hydra.overrides.task)])
        master = _multirun_config(loader, arguments, validate_sweeps=True)
        sweeper = str(master.hydra.sweeper.get("_target_", BASIC_SWEEPER))
        overrides = _sweep_overrides(master, loader)
        _check_sweeps_have_values(overrides, loader)
        if sweeper == BASIC_SWEEPER:
            return Launch(_basic_sweeper_jobs(overrides), sweeper)
        if sweeper.startswith(OPTUNA_SWEEPER_MODULE):
            _check_optuna_search_space(overrides)
        fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
        searched = {o.get_key_element(): _representatives(o) for o in overrides if o.is_sweep_override()}
        direction = master.hydra.sweeper.get("direction", "minimize")
    check_objective(_check_searched_keys_compose(fixed, searched), direction)
    return Launch([], sweeper)


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job `harness.train -m <overrides>` launches, as Hydra's basic
    sweeper builds them: the experiment's `hydra.sweeper.params` first, then the command line,
    one entry per key (a later one replaces an earlier one), and the product of the sweeps."""
    launch = plan_launch(overrides, multirun=True)
    if launch.chooses_trials:
        raise ConfigError(
            f"hydra.sweeper={launch.sweeper} picks its trials as it runs, so its jobs cannot be listed ahead; "
            "fix the searched keys to one value each to see one trial"
        )
    return launch.jobs


def _multirun_config(loader, arguments: list[str], validate_sweeps: bool) -> DictConfig:
    return loader.load_configuration(
        config_name=CONFIG_NAME,
        overrides=list(arguments),
        run_mode=RunMode.MULTIRUN,
        validate_sweep_overrides=validate_sweeps,
    )


def _sweep_overrides(master: DictConfig, loader) -> list[Override]:
    """What the sweeper receives, parsed as it parses it: `hydra.sweeper.params`, then the
    command line's task overrides (Hydra's own keys stay out of the jobs, as in a multirun)."""
    params = master.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(master.hydra.overrides.task)
    # The config loader lets glob() list a config group's options.
    return OverridesParser.create(config_loader=loader).parse_overrides(lines)


def _check_sweeps_have_values(overrides: list[Override], loader) -> None:
    """A sweep over nothing (a glob that matches no option) would launch no job at all, silently."""
    for override in overrides:
        if override.is_discrete_sweep() and not list(override.sweep_string_iterator()):
            key = override.get_key_element()
            options = loader.get_group_options(key)
            allowed = f"; the options of {key} are: {', '.join(sorted(options))}" if options else ""
            raise ConfigError(f"{override.input_line} sweeps over no value{allowed}")


def _basic_sweeper_jobs(overrides: list[Override]) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        # Without a batch size the sweeper puts every job in one batch.
        (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    except HydraException as e:
        # "BasicSweeper does not support sweep type : INTERVAL_SWEEP" -> name the override
        unsupported = [o.input_line for o in overrides if o.is_sweep_override() and not o.is_discrete_sweep()]
        raise ConfigError(
            f"{', '.join(unsupported) or e}: Hydra's basic sweeper enumerates only comma lists, range(), glob() "
            "and choice(); interval() needs a sweeper that samples, e.g. hydra/sweeper=optuna"
        ) from None
    return jobs


def _check_searched_keys_compose(fixed: list[str], searched: dict[str, list[str]]) -> DictConfig:
    """Up front, what holds for every trial of a sweeper that picks them: every searched key composes
    (the key exists; each option of a searched group exists) at every choice and at the ends of its
    range. Whether a trial's values train (types, batch arithmetic, LR placement) is checked as that
    trial launches."""
    first = [f"{key}={values[0]}" for key, values in searched.items()]
    cfg = compose(fixed + first)
    for i, (key, values) in enumerate(searched.items()):
        for value in values[1:]:
            compose(fixed + first[:i] + [f"{key}={value}"] + first[i + 1 :])
    return cfg


def _check_optuna_search_space(overrides: list[Override]) -> None:
    # The plugin's own translation of overrides into distributions: what it rejects, it rejects here.
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    for override in overrides:
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            # The plugin parses overrides without a config loader, so a glob cannot list the options.
            raise ConfigError(f"{override.input_line}: the Optuna sweeper cannot expand glob(); use choice(a,b,...)")
        try:
            create_params_from_overrides([override.input_line])
        except Exception as e:  # the plugin raises assertions, ValueError, NotImplementedError, Hydra errors
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(
                f"{override.input_line}: the Optuna sweeper searches choice(), range() and interval() ({reason})"
            ) from None


def _representatives(override: Override) -> list[str]:
    """Values that stand for a searched key's range: every choice, the ends of a range or interval."""
    value = override.value()
    if override.is_interval_sweep():
        return [str(value.start), str(value.end)]
    values = list(override.sweep_string_iterator())
    return values if override.is_choice_sweep() else [values[0], values[-1]]


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
    """Refuse a deleted group (~model), an added key nothing reads (+foo=1, +model.foo=1) and a
    value that would put the run's folder outside paths.runs_dir."""
    check_run_location(overrides)
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


# Filesystems cap one folder name at 255 bytes; a single run's folder is `<name>-defaults`.
MAX_NAME_BYTES = 255 - len(DEFAULTS_RUN_SUFFIX)


def check_run_location(overrides: list[str]) -> None:
    """`name=` and every value that becomes part of a run's folder name (all but the location keys,
    which Hydra keeps out of it) must leave the folder inside paths.runs_dir: no `..` component."""
    for override in overrides:
        key, assigned, value = override.lstrip("+~").partition("=")
        if not assigned or key in LOCATION_KEYS or key.startswith(("hydra.", "paths.")):
            continue
        parts = value.split("/")
        if ".." in parts:
            raise ConfigError(
                f"{key}={_shown(value)} would put the run folder outside paths.runs_dir ('..' in a folder name); "
                "choose a value without '..'"
            )
        if key == "name":
            _check_name(value, parts)


def _check_name(value: str, parts: list[str]) -> None:
    if not value.strip() or value.startswith("/") or "." in parts or "" in parts:
        raise ConfigError(f"name={value!r} must be a relative folder name (runs go to paths.runs_dir/<name>)")
    longest = max(len(part.encode()) for part in parts)
    if longest > MAX_NAME_BYTES:
        raise ConfigError(
            f"name={_shown(value)} is {longest} bytes; a folder name holds at most {MAX_NAME_BYTES} "
            f"(255 less the {DEFAULTS_RUN_SUFFIX!r} a single run adds)"
        )


def _shown(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else f"{value[:limit]}..."
