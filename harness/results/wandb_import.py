"""Runs logged to a wandb project, read back into the same records as run directories.

`harness.loggers` sends each run's resolved config, every metrics record (keyed by `step`) and its
summary; this reads them through wandb's public API (`wandb.Api().runs("entity/project")`), so a
sweep whose run directories are gone, or live on another machine, still reports. Needs network;
tests pass a stand-in API object.
"""

from __future__ import annotations

from typing import Any

from harness.errors import ConfigError
from harness.results.collect import RunRecord
from harness.results.rundir import STATUSES

# wandb's own run states, for runs whose summary never got our status (killed before the end).
WANDB_STATES = {
    "finished": "completed",
    "crashed": "failed",
    "failed": "failed",
    "killed": "interrupted",
    "running": "running",
}


def load_wandb(project: str, api: Any = None) -> list[RunRecord]:
    """Every run of `entity/project` as a RunRecord named wandb:<entity/project>/<run name>."""
    if project.count("/") != 1:
        raise ConfigError(f"--wandb {project!r} must be ENTITY/PROJECT")
    try:
        runs = list((api or _default_api()).runs(project))
        names = [getattr(run, "name", None) or run.id for run in runs]
        # Two runs with one name (a run restarted under a new id) stay apart, both kept.
        return [
            _record(f"wandb:{project}/{name}" + (f"-{run.id}" if names.count(name) > 1 else ""), run)
            for name, run in zip(names, runs, strict=True)
        ]
    except _unreachable_errors() as e:
        # No login, no network, no such project: wandb's own message, on one line.
        reason = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
        raise ConfigError(
            f"--wandb {project}: cannot read the project ({type(e).__name__}: {reason}); "
            "it needs network and a wandb login (`wandb login` or WANDB_API_KEY)"
        ) from None


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """What wandb raises without a login, a network or the project (its errors, HTTP, sockets)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        import requests
        from wandb.errors import Error as WandbError

        errors += [WandbError, requests.exceptions.RequestException]
    except ImportError:
        pass
    return tuple(errors)


def _default_api() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("--wandb needs the wandb package: pip install wandb") from None
    return wandb.Api()


def _record(name: str, run: Any) -> RunRecord:
    summary = _plain(dict(run.summary))
    status = summary.get("status")
    if status not in STATUSES:
        summary["status"] = WANDB_STATES.get(getattr(run, "state", ""), "running")
    metrics = []
    for row in run.scan_history():
        record = {k: v for k, v in row.items() if not k.startswith("_") and v is not None}
        if "step" in record:
            metrics.append(record)
    metrics.sort(key=lambda r: r["step"])
    source = getattr(run, "url", None) or name
    return RunRecord(name, source, _unwrap_config(dict(run.config)), summary, metrics)


def _plain(value: Any) -> Any:
    """wandb's summary holds its own mapping types; turn them into dicts and drop wandb's `_` keys."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def _unwrap_config(config: dict) -> dict:
    """Older API versions return {key: {"value": ..., "desc": ...}}; newer ones the values."""
    if config and all(isinstance(v, dict) and "value" in v and set(v) <= {"value", "desc"} for v in config.values()):
        config = {k: v["value"] for k, v in config.items()}
    return {k: v for k, v in config.items() if not str(k).startswith("_")}
