"""The Hydra app: `python -m harness.train` (ablate-train), its preflight and its exit codes.

    python -m harness.train model=d12 rope=chunk mlp_lr=c_proj_2x     # one run
    python -m harness.train -m experiment=smoke                       # a sweep (Hydra multirun)

Order of work: check every job the command would launch (batch arithmetic, horizon, LR placement,
data and CORE bundle present) before anything heavy (`preflight`); then Hydra runs `main` once per
job, which hands the run to a launcher or to harness.run.session.run_training, and turns how it
ended into one `error:` line and an exit code. One run's life is harness/run/ (its __init__ gives the
reading order); this module must not be imported by any other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import shutil
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.cli import CONFIG_DIR, check_jobs, check_overrides, compose, exit_on_config_error, plan_launch
from harness.distributed import dist_info_from_env, has_rank_env
from harness.errors import USAGE_EXIT_CODE, ConfigError, RunStopped
from harness.launch import launcher_world_size, quiet_other_ranks
from harness.launch.slurm import join_submitit_job
from harness.launch.torchrun import run_on_workers
from harness.objective import chooses_trials, sweep_return
from harness.results.rundir import RunDir
from harness.run.outcome import record_config_failure
from harness.run.session import run_training
from harness.run.spec import RunSpec, resolve_run, resolved_config


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> dict | float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run_name = hydra_cfg.job.override_dirname
    metric = str(cfg.get("optimized_metric"))  # what a sweeper that chooses trials is told (harness.objective)
    # The job's log (<run_dir>/train.log) is appended to by every attempt: each says how it was started.
    logging.getLogger("ablate.train").info(f"command: {command_line()}")
    try:
        if chooses_trials():  # Optuna: this trial's values were not known to the preflight
            check_job(cfg)
        if cfg.launcher.kind == "torchrun" and not has_rank_env():
            return sweep_return(metric, run_on_workers(cfg, run_dir, run_name))  # each worker calls run_training
        join_submitit_job(cfg)  # a SLURM task: its rank, the world size and the rendezvous
        quiet_other_ranks(dist_info_from_env().rank)
        spec = checked_spec(resolved_config(cfg)) or resolve_run(cfg)  # the preflight's, when this process ran it
        return sweep_return(metric, run_training(spec, run_dir, run_name))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        if not multirun:
            remove_unstarted(run_dir, Path(str(cfg.paths.runs_dir)), hydra_cfg.job.name)
            sys.exit(USAGE_EXIT_CODE)
        record_config_failure(RunDir(run_dir), resolved_config(cfg), str(e))
    except RunStopped as e:
        print(f"error: {e}", file=sys.stderr)  # one line; the run directory says interrupted or is untouched
        if not multirun:
            sys.exit(1)
    except KeyboardInterrupt as e:
        # Stopped by Ctrl-C or SIGTERM (checkpointed when the loop was running): one line, no traceback.
        stopped = f" ({e.args[0]})" if e.args else ""
        print(f"interrupted{stopped}; resume with: {command_line()}", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except Exception:
        if not multirun:
            raise
    # In a sweep a failed run is recorded in its summary and the sweep goes on with the next one.
    return sweep_return(metric, None)


# As a shell reports a process ended by SIGINT: the stop was asked for, not a failure of the run.
INTERRUPTED_EXIT_CODE = 130


def command_line() -> str:
    """The command that started this process, to paste again: it resumes the run (or the sweep)."""
    return shlex.join([sys.executable, "-m", "harness.train", *sys.argv[1:]])


def remove_unstarted(run_dir: Path, runs_dir: Path, job_name: str) -> None:
    """A single run refused by a check that needed its data loaded: the folder Hydra made for it goes
    (it holds only Hydra's .hydra/ and job log), and so do parents it leaves empty below runs_dir."""
    run_dir, runs_dir = run_dir.resolve(), runs_dir.resolve()
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} - {".hydra", f"{job_name}.log"}:
        return
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / f"{job_name}.log").unlink(missing_ok=True)
    folder = run_dir
    with contextlib.suppress(OSError):
        while folder != runs_dir and runs_dir in folder.parents:
            folder.rmdir()
            folder = folder.parent


# Hydra's own flags (help, config printing, shell completion): handed over without a preflight.
HYDRA_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--resolve",
    "--package",
    "-p",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
)


def preflight(argv: list[str]) -> None:
    """Compose and check every job the command would launch, before the first one starts."""

    def check(job: list[str]) -> None:
        check_overrides(job)
        check_job(compose(job))

    multirun = any(a in ("-m", "--multirun") for a in argv)
    launch = plan_launch([a for a in argv if not a.startswith("-")], multirun)
    check_distinct_folders(launch.jobs)
    check_jobs(launch.jobs, check)


def check_distinct_folders(jobs: list[list[str]]) -> None:
    """Jobs that differ only in keys kept out of folder names (data.path, say) would share one run
    directory: the second would find the first "already completed" and never train."""
    hydra_cfg = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())["hydra"]
    # name and paths.runs_dir are left out of the job's folder name but are part of its path.
    hidden = set(hydra_cfg["job"]["config"]["override_dirname"]["exclude_keys"]) - {"name", "paths.runs_dir"}
    seen: dict[tuple, dict] = {}
    for number, job in enumerate(jobs, 1):
        values = dict(override.lstrip("+~").partition("=")[::2] for override in job)
        folder = tuple(sorted((k, v) for k, v in values.items() if k not in hidden))
        if folder in seen and seen[folder]["values"] != values:
            first = seen[folder]
            keys = values.keys() | first["values"].keys()
            differ = sorted(k for k in keys if values.get(k) != first["values"].get(k))
            raise ConfigError(
                f"jobs {first['number']} and {number} of the sweep map to one run folder: they differ only in "
                f"{', '.join(differ)}, kept out of folder names; sweep it in separate commands, each with its own "
                "name=..."
            )
        seen.setdefault(folder, {"number": number, "values": values})


def check_job(cfg: DictConfig) -> None:
    """The preflight of one job: its config checked for the world size its launcher will start."""
    world_size = launcher_world_size(cfg)
    spec = resolve_run(cfg, world_size=world_size)
    if world_size is None:  # this process's own ranks: the run that main starts here can reuse it
        _CHECKED[_config_key(spec.config)] = spec


# The specs the preflight resolved in this process for runs that main will train in it, by their
# resolved config: the run reuses its spec and the tokenizer it loaded, rather than resolving again.
_CHECKED: dict[str, RunSpec] = {}


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def checked_spec(config: dict) -> RunSpec | None:
    """The preflight's spec of the job whose resolved config is `config`, once (None when this
    process did not check it: a launcher's worker, a SLURM task, or a config that changed since)."""
    return _CHECKED.pop(_config_key(config), None)


def cli_main() -> None:
    argv = sys.argv[1:]
    if not any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        exit_on_config_error(preflight)(argv)
    main()


if __name__ == "__main__":
    cli_main()
