"""The run directory: the one writer and the one reader of everything a run leaves behind.

A run directory is the identity and the source of truth of a run. Training writes it, the
report, the tests and the resume logic read it, all through this module:

    <run_dir>/
      config.yaml          the fully resolved config, written once at start
      params.tsv           every parameter: name, shape, optimizer, effective LR, multiplier
      metrics.jsonl        one JSON object per line, appended and flushed as it is written
      summary.json         status and headline numbers, replaced atomically
      checkpoints/         step_00000123.pt (model, progress) and step_00000123.rank000.pt per rank
                           (optimizer shard, data position); each written to a temporary name then
                           renamed, the main file last, so its presence means the checkpoint is whole

Every metrics record carries `step`, `tokens`, `flops` and `time_s` (training wall time so far,
evaluation excluded) plus whichever metrics were measured at that step: `train_loss`,
`lr_multiplier`, `tok_per_s`, `mfu` (train records); `val_bpb` (validation records); `core`,
`core/<task>` (centered accuracy) and `core_acc/<task>` (raw accuracy) (CORE records).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
CHECKPOINT_GLOB = "step_" + "[0-9]" * 8 + ".pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; teammates on a shared cluster read runs too
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n")


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: a diverged run's loss is written as null rather than invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


class RunDir:
    """Reads and writes one run directory. Creating the object touches nothing on disk."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def params_path(self) -> Path:
        return self.path / "params.tsv"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    # config -------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        with open(self.config_path) as f:
            return yaml.safe_load(f) or {}

    def exists(self) -> bool:
        return self.config_path.exists()

    # metrics ------------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        """Append one record as a line and flush it, so a killed run loses at most that line."""
        if "step" not in record:
            raise ValueError(f"metrics record without a step: {record}")
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_json_safe(record), sort_keys=True)
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()

    def iter_metrics(self) -> Iterator[dict]:
        """Yield the records in order. A torn last line (the run died mid-write) is skipped;
        a corrupt line anywhere else is an error, since that is not how appends fail."""
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    return
                raise ValueError(f"{self.metrics_path}:{i + 1}: corrupt metrics line") from None

    def read_metrics(self) -> list[dict]:
        return list(self.iter_metrics())

    def truncate_metrics(self, num_records: int) -> None:
        """Keep the first `num_records` records: a resumed run drops what was logged after the
        checkpoint it continues from (the checkpoint stores how many records existed then)."""
        kept = self.read_metrics()[:num_records]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    # summary ------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        status = summary.get("status")
        if status not in STATUSES:
            raise ValueError(f"summary status {status!r} is not one of {STATUSES}")
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict | None:
        if not self.summary_path.exists():
            return None
        with open(self.summary_path) as f:
            return json.load(f)

    def status(self) -> str | None:
        summary = self.read_summary()
        return None if summary is None else summary.get("status")

    # checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:08d}.pt"

    @staticmethod
    def shard_path(checkpoint: Path, rank: int) -> Path:
        return checkpoint.with_name(f"{checkpoint.stem}.rank{rank:03d}.pt")

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints (main files), oldest first; temporary files never match."""
        return sorted(self.checkpoints_dir.glob(CHECKPOINT_GLOB))

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def save_checkpoint_shard(self, step: int, rank: int, state: dict) -> None:
        """One rank's part of checkpoint `step`; every rank writes its own before the main file."""
        _save_torch(self.shard_path(self.checkpoint_path(step), rank), state)

    def save_checkpoint(self, step: int, state: dict, keep_last: int) -> Path:
        """Write the main file atomically (after all shards), then delete all but the newest
        `keep_last` checkpoints with their shards."""
        path = self.checkpoint_path(step)
        _save_torch(path, state)
        for old in self.list_checkpoints()[:-keep_last] if keep_last > 0 else []:
            for shard in old.parent.glob(f"{old.stem}.rank*.pt"):
                shard.unlink(missing_ok=True)
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def load_checkpoint(path: Path, rank: int | None = None) -> dict:
        """The main file of a checkpoint, or with `rank` that rank's shard."""
        import torch

        target = path if rank is None else RunDir.shard_path(path, rank)
        return torch.load(target, map_location="cpu", weights_only=False)


def _save_torch(path: Path, state: dict) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def find_run_dirs(*roots: str | os.PathLike) -> list[RunDir]:
    """Every run directory (a folder holding config.yaml) under the roots, at any depth, sorted."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if (root / "config.yaml").exists():
            found.add(root)
        # Hydra's .hydra/ and wandb's files/ hold config.yaml files of their own.
        found.update(p.parent for p in root.rglob("config.yaml") if not {".hydra", "wandb"} & set(p.parts))
    return [RunDir(p) for p in sorted(found)]
