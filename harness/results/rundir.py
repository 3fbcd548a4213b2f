"""The run directory: the one writer and the one reader of everything a run leaves behind.

A run directory is the identity and the source of truth of a run. Training writes it, the
report, the tests and the resume logic read it, all through this module:

    <run_dir>/
      config.yaml          the fully resolved config, written once at start
      params.tsv           every parameter: name, shape, optimizer, effective LR, multiplier
      metrics.jsonl        one JSON object per line, appended and flushed as it is written
      summary.json         status and headline numbers, replaced atomically
      checkpoints/         step_00000123.pt (model, progress), step_00000123.rank000.pt per rank
                           (optimizer shard, data position, RNG) and step_00000123.manifest.json
                           (each file's size and CRC-32); each written to a temporary name then
                           renamed, the manifest last, so its presence means the checkpoint finished
      attempts/<n>/        an earlier attempt's files, kept when the run was deliberately started over
      run.lock             the lock a process holds while it trains or evaluates the run;
      run.lock.json        who holds it (host, pid, since), while it is held

Every metrics record carries `step`, `tokens`, `flops` and `time_s` (training wall time so far,
evaluation excluded) plus whichever metrics were measured at that step: `train_loss`,
`lr_multiplier`, `tok_per_s`, `mfu` (train records); `val_bpb` (validation records); `core`,
`core/<task>` (centered accuracy) and `core_acc/<task>` (raw accuracy) (CORE records).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
CHECKPOINT_GLOB = "step_" + "[0-9]" * 8 + ".pt"
# Where a deliberate start-over keeps the previous attempt: <run_dir>/attempts/<n>/.
ATTEMPTS_DIR = "attempts"


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`. If anything
    fails (a full disk, an I/O error, a signal) the temporary file is removed and `path` is left as
    it was; an OSError names `path`, since the bare error from write() names no file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; teammates on a shared cluster read runs too
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is out: one call may write fewer bytes than asked."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


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
        """Append one record as a line, so a killed run loses at most that line. A write that fails
        part-way (a full disk) is cut back off the file, so the next append starts a clean line."""
        if "step" not in record:
            raise ValueError(f"metrics record without a step: {record}")
        self.path.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(_json_safe(record), sort_keys=True) + "\n").encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # shrinking needs no space
                raise OSError(e.errno, e.strerror, str(self.metrics_path)) from None
        finally:
            os.close(fd)

    def iter_metrics(self) -> Iterator[dict]:
        """Yield the records in order, reading the file line by line (a long run's file is never
        whole in memory). A torn last line (the run died mid-write) is skipped; a corrupt line
        anywhere else, or a line that is JSON but not an object, is an error naming the line, since
        that is not how appends fail."""
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, "rb") as lines:
            pending: tuple[int, bytes] | None = None  # a line that does not parse: torn if it is the last
            for number, line in enumerate(lines, start=1):
                if pending is not None:
                    raise ValueError(f"{self.metrics_path}:{pending[0]}: corrupt metrics line") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pending = (number, line)
                    continue
                if not isinstance(record, dict):
                    kind = "null" if record is None else type(record).__name__
                    raise ValueError(f"{self.metrics_path}:{number}: metrics line is a JSON {kind}, not an object")
                yield record

    def read_metrics(self) -> list[dict]:
        return list(self.iter_metrics())

    def truncate_metrics(self, num_records: int) -> tuple[int, int]:
        """Keep what was logged before a checkpoint: its first `num_records` lines (every append is
        one line; the checkpoint stores how many existed then). A resumed run drops what was logged
        after it. Returns (missing, unreadable): lines before the checkpoint that are gone, and
        those that are not JSON (dropped), for the caller to report."""
        lines = self.metrics_path.read_bytes().split(b"\n") if self.metrics_path.exists() else []
        if lines and not lines[-1]:
            lines.pop()  # the empty string after the final newline
        before = lines[:num_records]
        kept, unreadable = [], 0
        for line in before:
            try:
                kept.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                unreadable += 1
        missing = num_records - len(before)
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        return missing, unreadable

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
    # A checkpoint is a main file (model, progress), one shard per rank (optimizer state, data
    # position, RNG) and a manifest listing every file's size and CRC-32, written last: a
    # checkpoint without its manifest never finished. Everything in them is tensors and plain
    # Python values, so they load with torch.load(weights_only=True), which cannot run code.
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:08d}.pt"

    @staticmethod
    def shard_path(checkpoint: Path, rank: int) -> Path:
        return checkpoint.with_name(f"{checkpoint.stem}.rank{rank:03d}.pt")

    @staticmethod
    def manifest_path(checkpoint: Path) -> Path:
        return checkpoint.with_name(f"{checkpoint.stem}.manifest.json")

    @staticmethod
    def checkpoint_files(checkpoint: Path) -> list[Path]:
        """Every file of a checkpoint on disk: main file, shards, manifest."""
        return sorted(checkpoint.parent.glob(f"{checkpoint.stem}.*"))

    def list_checkpoints(self) -> list[Path]:
        """Main files of checkpoints, oldest first, whole or not (lifecycle.newest_valid_checkpoint
        tells which are); temporary files never match."""
        return sorted(self.checkpoints_dir.glob(CHECKPOINT_GLOB))

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint whose manifest was written (it may still fail verification)."""
        found = [p for p in self.list_checkpoints() if self.manifest_path(p).exists()]
        return found[-1] if found else None

    def save_checkpoint_shard(self, step: int, rank: int, state: dict) -> dict:
        """One rank's part of checkpoint `step`, written before the main file; returns its
        manifest entry (name, bytes, crc32) for rank 0's manifest."""
        return _save_torch(self.shard_path(self.checkpoint_path(step), rank), state)

    def save_checkpoint(self, step: int, state: dict, keep_last: int, shards: list[dict] | None = None) -> Path:
        """Write the main file, then the manifest (every file's size and CRC-32), then delete all
        but the newest `keep_last` checkpoints with their files. `shards` are the entries
        save_checkpoint_shard returned on each rank; None reads the shard files on disk instead."""
        path = self.checkpoint_path(step)
        if shards is None:
            shards = [file_entry(p) for p in sorted(path.parent.glob(f"{path.stem}.rank*.pt"))]
        main = _save_torch(path, state)
        manifest = {"format": MANIFEST_FORMAT, "step": step, "files": [main, *shards]}
        atomic_write_json(self.manifest_path(path), manifest)
        whole = [p for p in self.list_checkpoints() if self.manifest_path(p).exists()]
        for old in whole[:-keep_last] if keep_last > 0 else []:
            for file in self.checkpoint_files(old):
                file.unlink(missing_ok=True)
        return path

    def remove_unfinished_checkpoint(self, step: int, rank: int | None = None) -> None:
        """After a failed write: the files of checkpoint `step` this process wrote (its shard; with
        rank None, the main file), which no manifest vouches for. A whole checkpoint is never touched."""
        path = self.checkpoint_path(step)
        if self.manifest_path(path).exists():
            return
        target = path if rank is None else self.shard_path(path, rank)
        target.unlink(missing_ok=True)

    def verify_checkpoint(self, path: Path) -> str | None:
        """None if every file the manifest lists is there with its size and CRC-32; otherwise what
        is wrong, naming the file."""
        manifest_path = self.manifest_path(path)
        if not manifest_path.exists():
            return f"{manifest_path.name} is missing (the checkpoint write did not finish)"
        try:
            manifest = json.loads(manifest_path.read_text())
            files = [(str(f["name"]), int(f["bytes"]), int(f["crc32"])) for f in manifest["files"]]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return f"{manifest_path.name} is unreadable"
        if path.name not in {name for name, _, _ in files}:
            return f"{manifest_path.name} does not list {path.name}"
        for name, size, crc in files:
            file = path.parent / Path(name).name
            if not file.exists():
                return f"{name} is missing"
            actual = file.stat().st_size
            if actual != size:
                return f"{name} is {'truncated' if actual < size else 'too long'} ({actual} of {size} bytes)"
            if file_crc32(file) != crc:
                return f"{name} fails its checksum (its bytes changed after it was written)"
        return None

    @staticmethod
    def load_checkpoint(path: Path, rank: int | None = None) -> dict:
        """The main file of a checkpoint, or with `rank` that rank's shard, loaded with
        weights_only=True: tensors and plain values only, so a file from elsewhere cannot run
        code. Anything else is a CheckpointRefused naming the file."""
        import pickle

        import torch

        target = path if rank is None else RunDir.shard_path(path, rank)
        try:
            return torch.load(target, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointRefused(
                f"checkpoint file {target} holds more than tensors and plain values, which a weights-only "
                f"load refuses ({reason}); it was not written by this harness or was altered"
            ) from None


class CheckpointRefused(Exception):
    """A checkpoint file that needs more than a weights-only load: refused, never executed."""


# The manifest's layout; bump when it changes.
MANIFEST_FORMAT = 1
# Bytes per read when checksumming a file: large enough that the loop costs nothing.
CHECKSUM_CHUNK = 16 << 20


def file_entry(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "crc32": file_crc32(path)}


def file_crc32(path: Path) -> int:
    """CRC-32 of a file, read in chunks. CRC-32 (not a cryptographic hash) because it runs at
    ~1.5 GB/s, a fraction of a checkpoint write, and catches what disks and copies do to bytes;
    deliberate tampering is the weights-only load's job."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHECKSUM_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _save_torch(path: Path, state: dict) -> dict:
    """torch.save into memory, checksum those bytes, write them atomically; the manifest entry."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    entry = {"name": path.name, "bytes": len(data), "crc32": zlib.crc32(data)}
    atomic_write_bytes(path, data)
    return entry


def find_run_dirs(*roots: str | os.PathLike) -> list[RunDir]:
    """Every run directory (a folder holding config.yaml) under the roots, at any depth, sorted.
    A run's earlier attempts (<run>/attempts/<n>/) are part of that run, not runs of their own.
    Symbolic links to folders are followed (runs moved to other storage), each folder once, so a
    link back up the tree cannot loop; broken_links lists the links whose target is missing."""
    return [RunDir(p) for p in sorted(_walk_runs(roots)[0])]


def broken_links(*roots: str | os.PathLike) -> list[Path]:
    """Symbolic links under the roots (outside run folders) whose target does not exist."""
    return sorted(_walk_runs(roots)[1])


# Hydra's .hydra/ and wandb's files/ hold config.yaml files of their own.
_NOT_RUNS = {".hydra", "wandb"}


def _walk_runs(roots) -> tuple[set[Path], set[Path]]:
    found: set[Path] = set()
    broken: set[Path] = set()
    visited: set[tuple[int, int]] = set()  # (device, inode) of every folder walked: links cannot loop
    for root in roots:
        for folder, subfolders, files in os.walk(Path(root), followlinks=True):
            here = Path(folder)
            try:
                stat = here.stat()
            except OSError:  # removed while walking (a run being started over, a temporary folder)
                subfolders.clear()
                continue
            if (stat.st_dev, stat.st_ino) in visited:
                subfolders.clear()
                continue
            visited.add((stat.st_dev, stat.st_ino))
            subfolders[:] = sorted(d for d in subfolders if d not in _NOT_RUNS)
            is_run = "config.yaml" in files
            if is_run and not _is_attempt(here):
                found.add(here)
            if not is_run:
                broken.update(here / name for name in (*subfolders, *files) if _is_broken_link(here / name))
    return found, broken


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _is_attempt(path: Path) -> bool:
    return path.parent.name == ATTEMPTS_DIR and (path.parent.parent / "config.yaml").exists()
