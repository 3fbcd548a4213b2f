"""Experiment trackers beside the run directory: none, Weights & Biases, TensorBoard, or several.

The run directory is the record; a logger mirrors it somewhere people can browse. The training
loop builds one per process and feeds it exactly what it writes to the run directory:

    logger = build_logger(cfg.logger, run_dir=..., run_name=..., group=..., config=..., rank=...)
    logger.log(record)        # each metrics.jsonl record (has "step")
    logger.summary(summary)   # the summary.json content
    logger.finish(status)

`logger=tensorboard` writes event files into `<run_dir>/tensorboard/` (torch.utils.tensorboard,
as torchtitan does); `logger=many logger.loggers=[wandb,tensorboard]`, or Hydra's list
`logger=[wandb,tensorboard]`, feeds each listed logger the same records, as
lightning-hydra-template's many_loggers does. `logger.tags` and `logger.notes` go
to wandb here and into summary.json (harness.run.outcome) whatever the logger.

Only rank 0 logs; other ranks get a logger that does nothing. wandb is imported only when rank 0
builds a wandb logger in a mode other than `disabled`, tensorboard only when rank 0 builds its
logger, so `logger=none` never touches either and the harness runs without them installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from harness.errors import ConfigError

LOGGER_KINDS = ("none", "wandb", "tensorboard", "many")
# What `logger=many` may list: every kind that logs somewhere.
MANY_KINDS = ("wandb", "tensorboard")
WANDB_MODES = ("online", "offline", "disabled")
TENSORBOARD_DIR = "tensorboard"  # below the run directory
# Hydra's list syntax (`logger=[wandb,tensorboard]`) merges the options into one section whose `kind`
# is the last one's; a key only one option's YAML has says that option was chosen too.
OWN_KEYS = {"wandb": "project", "tensorboard": "flush_secs"}


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


class TensorBoardLogger:
    """TensorBoard event files: each number of a record as a scalar at the record's step, the
    summary as text. The writer opens at the first record, purging what an earlier attempt logged
    at that step or later (a resumed run logs those steps again, as metrics.jsonl is trimmed)."""

    def __init__(self, log_dir: Path, flush_secs: int = 120):
        self.log_dir, self.flush_secs = log_dir, flush_secs
        self.writer = None

    def _writer(self, first_step: int | None):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first_step, flush_secs=self.flush_secs)
        return self.writer

    def log(self, record: dict) -> None:
        step = int(record["step"])
        writer = self._writer(step)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, step)

    def summary(self, summary: dict) -> None:
        text = json.dumps({k: v for k, v in summary.items() if v is not None}, indent=2, sort_keys=True)
        self._writer(None).add_text("summary", f"```\n{text}\n```", int(summary.get("step") or 0))

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


class ManyLogger:
    """Several loggers fed the same records (`logger=many`), each its own copy."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(dict(record))

    def summary(self, summary: dict) -> None:
        for logger in self.loggers:
            logger.summary(dict(summary))

    def finish(self, status: str) -> None:
        for logger in self.loggers:
            logger.finish(status)


def logger_kinds(cfg: Mapping[str, Any]) -> list[str]:
    """The kinds `cfg` asks for: `logger.kind` and any other option chosen with it in Hydra's list
    syntax (OWN_KEYS), or with kind `many` the list `logger.loggers`. Raises ConfigError naming the
    key on an unknown kind, mode, tag list or notes."""
    kind = cfg.get("kind", "none")
    if kind not in LOGGER_KINDS:
        raise ConfigError(f"logger.kind={kind!r} is not one of: {', '.join(LOGGER_KINDS)}")
    kinds = [k for k in MANY_KINDS if k == kind or OWN_KEYS[k] in cfg] if kind != "many" else [kind]
    if kind == "many":
        kinds = list(cfg.get("loggers") or [])
        if not kinds or any(k not in MANY_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ConfigError(
                f"logger.loggers={kinds!r} must list distinct loggers, each one of: {', '.join(MANY_KINDS)}"
            )
    if "wandb" in kinds and cfg.get("mode", "online") not in WANDB_MODES:
        raise ConfigError(f"logger.mode={cfg.get('mode')!r} is not one of: {', '.join(WANDB_MODES)}")
    tags = cfg.get("tags") or []
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"logger.tags={tags!r} must be a list of words, e.g. logger.tags=[rope,first-try]")
    if not isinstance(cfg.get("notes") or "", str):
        raise ConfigError(f"logger.notes={cfg.get('notes')!r} must be text, e.g. logger.notes='why this run'")
    return kinds


def run_labels(cfg: Mapping[str, Any]) -> dict:
    """`logger.tags` and `logger.notes` as summary.json records them, whatever the logger."""
    return {"tags": [str(t) for t in cfg.get("tags") or []], "notes": str(cfg.get("notes") or "")}


def build_logger(cfg: Mapping[str, Any], run_dir: Path, run_name: str, group: str, config: dict, rank: int) -> Logger:
    """The logger `cfg` (the `logger` config section) asks for; a NullLogger off rank 0.

    Checks run on every rank, so a bad logger config or a missing wandb or tensorboard fails the
    whole job at start rather than rank 0 alone.
    """
    loggers = [_build_one(kind, cfg, Path(run_dir), run_name, group, config, rank) for kind in logger_kinds(cfg)]
    loggers = [logger for logger in loggers if not isinstance(logger, NullLogger)]
    if not loggers:
        return NullLogger()
    return loggers[0] if len(loggers) == 1 else ManyLogger(loggers)


def _build_one(kind: str, cfg: Mapping[str, Any], run_dir: Path, run_name: str, group: str, config: dict, rank: int):
    if kind == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "logger=tensorboard needs the tensorboard package (pip install 'ablate[tensorboard]'); "
                "or run with logger=none"
            )
        if rank != 0:
            return NullLogger()
        return TensorBoardLogger(run_dir / TENSORBOARD_DIR, int(cfg.get("flush_secs") or 120))
    mode = cfg.get("mode", "online")
    if mode == "disabled":
        return NullLogger()
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger=wandb needs the wandb package (pip install wandb); or run with logger=none")
    if rank != 0:
        return NullLogger()
    return WandbLogger(_init_wandb(cfg, run_dir, run_name, group, config, mode))


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
        notes=cfg.get("notes") or None,
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
