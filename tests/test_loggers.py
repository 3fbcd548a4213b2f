"""Loggers: none imports nothing, wandb is optional, offline wandb writes its files locally."""

import os
import sys

import pytest

from harness.cli import compose
from harness.errors import ConfigError
from harness.loggers import NullLogger, WandbLogger, build_logger

WANDB_OFFLINE = {
    "kind": "wandb",
    "mode": "offline",
    "project": "ablate-test",
    "entity": None,
    "group": None,
    "tags": ["test"],
    "dir": None,
}


def build(cfg, tmp_path, rank=0):
    return build_logger(
        cfg,
        run_dir=tmp_path / "run",
        run_name="rope=chunk,seed=1",
        group="smoke",
        config={"rope": {"split": "chunk"}, "seed": 1},
        rank=rank,
    )


def test_logger_none_never_imports_wandb(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    logger = build({"kind": "none"}, tmp_path)
    logger.log({"step": 1, "train_loss": 2.0})
    logger.summary({"status": "completed"})
    logger.finish("completed")
    assert isinstance(logger, NullLogger)
    assert "wandb" not in sys.modules


def test_missing_wandb_is_a_config_error_unless_disabled(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if not installed
    with pytest.raises(ConfigError, match="needs the wandb package"):
        build(WANDB_OFFLINE, tmp_path)
    with pytest.raises(ConfigError, match="needs the wandb package"):
        build(WANDB_OFFLINE, tmp_path, rank=3)  # every rank fails alike, so no rank waits on a dead one
    assert isinstance(build({**WANDB_OFFLINE, "mode": "disabled"}, tmp_path), NullLogger)


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a rank other than 0 started a wandb run")

    import wandb

    monkeypatch.setattr(wandb, "init", refuse)
    assert isinstance(build(WANDB_OFFLINE, tmp_path, rank=1), NullLogger)


def test_bad_kind_or_mode_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"logger.kind='mlflow' is not one of: none, wandb, tensorboard, many"):
        build({"kind": "mlflow"}, tmp_path)
    with pytest.raises(ConfigError, match=r"logger.mode='later' is not one of: online, offline, disabled"):
        build({**WANDB_OFFLINE, "mode": "later"}, tmp_path)


def test_offline_wandb_writes_its_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = build(WANDB_OFFLINE, tmp_path)
    assert isinstance(logger, WandbLogger)
    assert logger.run.name == "rope=chunk,seed=1" and logger.run.group == "smoke"
    assert logger.run.config["rope"]["split"] == "chunk"
    for step in range(3):
        logger.log({"step": step, "train_loss": 3.0 - step, "mfu": None})
    logger.summary({"status": "completed", "final_val_bpb": 1.2, "core": None})
    logger.finish("completed")
    files = list((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_logger_configs_compose():
    cfg = compose(["logger=wandb", "paths.runs_dir=/tmp/runs"])
    assert cfg.logger.kind == "wandb" and cfg.logger.mode == "online" and cfg.logger.project == "ablate"
    assert cfg.logger.dir in ("/tmp/runs/wandb", os.environ.get("WANDB_DIR"))
    assert compose([]).logger.kind == "none"
