"""A run's checkpoints: write, verify, load, and what a resumed run restores from them.

Every rank writes its shard (optimizer, data position, RNG), then rank 0 the main file (model,
progress, config) and the manifest, whose presence marks the checkpoint complete. A checkpoint is
verified before use: every file the manifest lists must be there with its size and CRC-32. One
that fails is reported in one line, moved to checkpoints/rejected/ (never deleted) and the next
older one is tried. Files load with `weights_only=True`, so a checkpoint cannot run code. The file
format itself is harness.results.rundir's; this module must not decide whether a run resumes
(harness.run.decision does).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.data.tokenizer import Tokenizer
from harness.distributed import any_rank, gather_to_main
from harness.errors import ConfigError, RunStopped
from harness.reshard import load_rank_shard
from harness.results.rundir import CheckpointRefused, RunDir
from models.gpt import GPT, GPTConfig

log = logging.getLogger("ablate.lifecycle")

REJECTED_DIR = "rejected"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint as loaded on this rank: its main file (model, progress; every rank
    needs it) and this rank's shard (empty past the world size that wrote it: restore re-shards)."""

    path: Path
    main: dict
    shard: dict

    @property
    def world_size(self) -> int:
        return int(self.main["world_size"])


# verifying -------------------------------------------------------------------------------------
def newest_valid_checkpoint(rundir: RunDir) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose files all match its manifest, and one line per newer one that
    does not (logged as it is found)."""
    problems = []
    for checkpoint in reversed(rundir.list_checkpoints()):
        problem = rundir.verify_checkpoint(checkpoint)
        if problem is not None and not rundir.manifest_path(checkpoint).exists():
            problem = verify_by_loading(checkpoint)
        if problem is None:
            return checkpoint, problems
        line = f"checkpoint {checkpoint.parent / checkpoint.stem}: {problem}"
        log.warning(line + "; trying the one before")
        problems.append(line)
    return None, problems


def verify_by_loading(checkpoint: Path) -> str | None:
    """A checkpoint without a manifest: written before manifests existed (or killed after its main
    file, the last of its files, was renamed into place). Its files are whole if each loads, weights
    only: the main file and the shard of every rank it names."""
    try:
        main = RunDir.load_checkpoint(checkpoint)
        for rank in range(int(main.get("world_size", 1))):
            RunDir.load_checkpoint(checkpoint, rank=rank)
    except (CheckpointRefused, OSError, RuntimeError, ValueError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"it has no manifest and does not load ({reason})"
    log.info(f"checkpoint {checkpoint}: no manifest (written before manifests existed); verified by loading it")
    return None


def set_aside_rejected(rundir: RunDir, valid: Path) -> None:
    """Move the checkpoints newer than `valid` (they failed verification) to checkpoints/rejected/:
    out of the way of the resumed run's own, and there for a look at what the disk did."""
    rejected = rundir.checkpoints_dir / REJECTED_DIR
    newer = [p for p in rundir.checkpoints_dir.glob("step_*") if p.is_file() and p.name.split(".")[0] > valid.stem]
    for file in newer:
        rejected.mkdir(exist_ok=True)
        os.replace(file, rejected / file.name)


def checkpoint_for_evaluation(rundir: RunDir) -> Path:
    """The newest valid checkpoint (rank 0 calls this, under the run's lock); newer ones that fail
    verification go to checkpoints/rejected/; none valid is a RunStopped that moves nothing."""
    if not rundir.list_checkpoints():
        raise ConfigError(f"run_dir={rundir.path} has no checkpoint in {rundir.checkpoints_dir}")
    checkpoint, problems = newest_valid_checkpoint(rundir)
    if checkpoint is None:
        raise RunStopped(f"{rundir.checkpoints_dir}: no valid checkpoint to evaluate ({'; '.join(problems)})")
    set_aside_rejected(rundir, checkpoint)  # as a resume does: the newer, damaged ones to rejected/
    return checkpoint


# loading ----------------------------------------------------------------------------------------
def load_for_resume(checkpoint: Path, rank: int, device: torch.device) -> LoadedCheckpoint:
    """The main file and this rank's shard, weights-only. A refusal on any rank stops every rank,
    before anything is written."""
    main, shard, refused = {}, {}, None
    try:
        main = RunDir.load_checkpoint(checkpoint)
        # A rank past the world size that wrote the checkpoint has no shard: restore re-shards (harness/reshard.py).
        shard = RunDir.load_checkpoint(checkpoint, rank=rank) if rank < main["world_size"] else {}
    except (CheckpointRefused, OSError, RuntimeError) as e:
        refused = str(e) if isinstance(e, CheckpointRefused) else f"checkpoint {checkpoint} cannot be loaded ({e})"
    if any_rank(refused is not None, device):
        raise RunStopped(refused or f"checkpoint {checkpoint}: another rank's shard was refused")
    return LoadedCheckpoint(checkpoint, main, shard)


def check_tokenizer(checkpoint: Path, saved_digest: str, tokenizer: Tokenizer) -> None:
    """A checkpoint's token ids mean something only with the tokenizer it was trained with."""
    if saved_digest != tokenizer.digest():
        raise ConfigError(
            f"checkpoint {checkpoint} was trained with tokenizer {saved_digest}, but the current one is "
            f"{tokenizer.digest()}; its token ids would mean other things (point data.* at the run's tokenizer, "
            "or train.resume=never to restart)"
        )


def check_model_shapes(checkpoint: Path, state: dict, config: GPTConfig) -> None:
    """The checkpoint's weights fit the network the config builds: checked before the run directory
    is touched (train.resume=force across a shape-changing default would otherwise rewrite the
    config, then fail loading)."""
    expected = {name: tuple(t.shape) for name, t in GPT.on_meta(config).state_dict().items()}
    saved = {name: tuple(t.shape) for name, t in state.items()}
    differ = sorted(name for name in expected.keys() | saved.keys() if expected.get(name) != saved.get(name))
    if differ:
        first = differ[0]
        raise ConfigError(
            f"checkpoint {checkpoint} does not fit the config's model ({len(differ)} tensors differ, e.g. {first}: "
            f"{saved.get(first)} in the checkpoint, {expected.get(first)} in the config); the run is left as it is "
            "(restore the run's config, use another name=..., or train.resume=never to restart)"
        )


def optimizer_shard(loaded: LoadedCheckpoint, optimizer, world_size: int, rank: int) -> dict:
    """This rank's shard; from another world size the optimizer state is re-sharded (the data
    position is per stream, not per rank)."""
    if loaded.world_size == world_size:
        return loaded.shard
    return load_rank_shard(
        lambda r: RunDir.load_checkpoint(loaded.path, rank=r), loaded.world_size, world_size, rank, optimizer
    )


def rng_state(device: torch.device) -> dict:
    """This process's random generators, as plain values a weights-only load takes back."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": list_tree(random.getstate()),
    }


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate(tuple_tree(state["python"]))


def list_tree(value):
    """random.getstate() as nested lists, and back with tuple_tree: plain containers that every
    torch release's weights-only unpickler takes."""
    return [list_tree(v) for v in value] if isinstance(value, tuple) else value


def tuple_tree(value):
    return tuple(tuple_tree(v) for v in value) if isinstance(value, list) else value


# writing ----------------------------------------------------------------------------------------
def write_checkpoint(
    rundir: RunDir, step: int, dist_info, device: torch.device, shard: dict, main_state, keep_last: int
):
    """Every rank writes its shard, then rank 0 the main file (`main_state()`) and the manifest,
    whose presence marks the checkpoint complete; returns its path on rank 0. A write that fails
    on any rank (a full disk, an I/O error) removes what this checkpoint wrote and raises the
    OSError on every rank; the previous checkpoint is untouched."""
    entry, error, path = None, None, None
    try:
        entry = rundir.save_checkpoint_shard(step, dist_info.rank, shard)
    except OSError as e:
        error = e
    entries = gather_to_main(entry)
    if any_rank(error is not None, device):
        rundir.remove_unfinished_checkpoint(step, dist_info.rank)
        raise error or RunStopped(f"checkpoint step {step}: another rank could not write its shard")
    if dist_info.is_main:
        try:
            path = rundir.save_checkpoint(step, main_state(), keep_last, entries)
        except OSError as e:
            error = e
            for rank in range(dist_info.world_size):
                rundir.remove_unfinished_checkpoint(step, rank)
            rundir.remove_unfinished_checkpoint(step)
    if any_rank(error is not None, device):
        raise error or RunStopped(f"checkpoint step {step}: rank 0 could not write it")
    return path


def trim_metrics(rundir: RunDir, num_records: int, step: int) -> None:
    """On resume: cut what was logged after the checkpoint; say what is missing before it."""
    missing, unreadable = rundir.truncate_metrics(num_records)
    if missing or unreadable:
        log.warning(
            f"{rundir.metrics_path}: of the {num_records} records logged up to checkpoint step {step}, "
            f"{missing} are missing and {unreadable} unreadable (dropped); the rest are kept"
        )
