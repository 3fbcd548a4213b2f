"""Experiment trackers beside the run directory: none, or Weights & Biases.

The run directory is the record; a logger mirrors it somewhere people can browse. The training
loop builds one per process and feeds it exactly what it writes to the run directory:

    logger = build_logger(cfg.logger, run_dir=..., run_name=..., group=..., config=..., rank=...)
    logger.log(record)        # each metrics.jsonl record (has "step")
    logger.summary(summary)   # the summary.json content
    logger.finish(status)

Only rank 0 logs; other ranks get a logger that does nothing. wandb is imported only when rank 0
builds a wandb logger in a mode other than `disabled`, so `logger=none` never touches it and
the harness runs without the package installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from harness.errors import ConfigError

LOGGER_KINDS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


class Logger(Protocol):
    def log(self, record: dict) -> None: ...

    def summary(self, summary: dict) -> None: ...

    def finish(self, status: str) -> None: ...


class NullLogger:
    """Logs nothing: `logger=none`, wandb's disabled mode, and every rank but 0."""

    def log(self, record: dict) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class WandbLogger:
    """One wandb run. Every metric is plotted against our `step`, not wandb's own counter, so a
    resumed run that logs a step again lands on the same x."""

    def __init__(self, run: Any):
        self.run = run
        run.define_metric("step")
        run.define_metric("*", step_metric="step")

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if v is not None})

    def summary(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


def build_logger(cfg: Mapping[str, Any], run_dir: Path, run_name: str, group: str, config: dict, rank: int) -> Logger:
    """The logger `cfg` (the `logger` config section) asks for; a NullLogger off rank 0.

    Checks run on every rank, so a bad logger config or a missing wandb fails the whole job at
    start rather than rank 0 alone.
    """
    kind = cfg.get("kind", "none")
    if kind not in LOGGER_KINDS:
        raise ConfigError(f"logger.kind={kind!r} is not one of: {', '.join(LOGGER_KINDS)}")
    if kind == "none":
        return NullLogger()
    mode = cfg.get("mode", "online")
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode={mode!r} is not one of: {', '.join(WANDB_MODES)}")
    if mode == "disabled":
        return NullLogger()
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger=wandb needs the wandb package (pip install wandb); or run with logger=none")
    if rank != 0:
        return NullLogger()
    return WandbLogger(_init_wandb(cfg, Path(run_dir), run_name, group, config, mode))


def _init_wandb(cfg: Mapping[str, Any], run_dir: Path, run_name: str, group: str, config: dict, mode: str):
    try:
        import wandb
    except ImportError:
        raise ConfigError("logger=wandb needs the wandb package (pip install wandb); or run with logger=none") from None
    directory = Path(cfg.get("dir") or os.environ.get("WANDB_DIR") or run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    online = mode == "online"
    return wandb.init(
        project=cfg.get("project") or "ablate",
        entity=cfg.get("entity") or None,
        group=cfg.get("group") or group,
        name=run_name,
        tags=list(cfg.get("tags") or []),
        config=config,
        dir=str(directory),
        mode=mode,
        # Online, the id follows the run directory, so a resumed run continues its wandb run.
        id=run_id(run_dir) if online else None,
        resume="allow" if online else None,
    )


def run_id(run_dir: Path) -> str:
    """A wandb run id that is the same every time this run directory is (re)started."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
