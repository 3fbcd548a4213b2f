"""How a run ended: the `Summary` schema, the one writer of summary.json, and the status policy.

summary.json is written here and nowhere else: by training (a `running` stub when it starts, the
full summary when it ends), by `harness.evaluate` (its numbers added to the run's), by the
torchrun launcher (a worker that died before writing its own) and by a sweep's job that its config
refused. Its statuses, and what each means for a re-run (harness.run.decision):

- completed: trained to the horizon; skipped on a re-run.
- diverged: stopped on a non-finite or runaway loss; skipped unless sweep.retry_failed=true.
- failed: the config or the code raised; skipped unless sweep.retry_failed=true.
- interrupted: stopped by a signal or by its machine (I/O error, full disk, out of memory, a lost
  rank: `is_environment_fault`); resumed from its newest valid checkpoint on a re-run.
- running: being trained, or killed without a word; resumed like interrupted.

This module decides nothing about training; it records and classifies how training ended.
"""

from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import torch

from harness.errors import RunStopped
from harness.loggers import run_labels
from harness.provenance import provenance
from harness.results.rundir import RunDir

if TYPE_CHECKING:  # a type only: the writer stays importable without the model and data code
    from harness.run.spec import RunSpec

Status = Literal["running", "completed", "failed", "diverged", "interrupted"]


class _Absent:
    """A key the summary does not hold (a stub written at the start has no step, no val bpb)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass
class Summary:
    """summary.json, key by key. A field left ABSENT is not written (a key a file never had stays
    out of it); keys this schema does not know (a newer or older harness's) are kept in `extra`
    and written back, so a file reads and writes the same both ways."""

    status: Status | Any = ABSENT
    error: str | None | Any = ABSENT  # one line: what stopped the run
    # the run's arithmetic (harness.run.spec) and where it ran
    num_iterations: int | Any = ABSENT
    grad_accum_steps: int | Any = ABSENT
    flops_per_token: float | Any = ABSENT
    param_counts: dict | Any = ABSENT
    device: str | Any = ABSENT
    world_size: int | Any = ABSENT
    # provenance (harness.provenance)
    git_commit: str | None | Any = ABSENT
    git_dirty: bool | None | Any = ABSENT
    versions: dict | Any = ABSENT
    # progress and results
    step: int | Any = ABSENT
    tokens: int | Any = ABSENT
    flops: float | Any = ABSENT
    final_val_bpb: float | None | Any = ABSENT  # only when the run reached its horizon
    last_val_bpb: float | None | Any = ABSENT
    min_val_bpb: float | None | Any = ABSENT
    core: float | None | Any = ABSENT
    core_tasks: dict | Any = ABSENT  # centered accuracy per task
    train_time_s: float | Any = ABSENT
    wall_time_s: float | Any = ABSENT
    tok_per_s: float | None | Any = ABSENT
    mfu: float | None | Any = ABSENT
    peak_memory_gib: float | Any = ABSENT  # rank 0's: CUDA max allocated, or the process's peak RSS on CPU
    tokenizer: str | Any = ABSENT  # its digest: a checkpoint is refused with another
    # what the run was trained on (harness.run.build.RunData.fingerprint): a re-run on other data
    # is refused; absent in runs written before it was recorded (unknown, recorded on resume)
    data_fingerprint: str | Any = ABSENT
    earlier_versions: list | Any = ABSENT  # a run resumed under other library versions: those before
    started_at: str | Any = ABSENT
    ended_at: str | Any = ABSENT
    evaluation: dict | Any = ABSENT  # the last harness.evaluate before `evaluations` (older files)
    # every harness.evaluate, in order: what it measured and how (step, val_tokens, CORE settings,
    # `filled`: the headline numbers it supplied because training recorded none)
    evaluations: list | Any = ABSENT
    tags: list | Any = ABSENT  # logger.tags: bookkeeping, as the researcher labelled the run
    notes: str | Any = ABSENT  # logger.notes: free text
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> Summary:
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)

    def to_json(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **{k: v for k, v in values.items() if v is not ABSENT}}

    def get(self, key: str, default: Any = None) -> Any:
        """A key's value as `dict.get` would give it from the file."""
        return self.to_json().get(key, default)

    def update(self, **values) -> Summary:
        for key, value in values.items():
            setattr(self, key, value)
        return self


def read_summary(rundir: RunDir) -> Summary | None:
    data = rundir.read_summary()
    return None if data is None else Summary.from_json(data)


def write_summary(rundir: RunDir, summary: Summary) -> None:
    """The one writer of summary.json (atomically replaced; its status must be one of Status)."""
    rundir.write_summary(summary.to_json())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def with_provenance(**values) -> Summary:
    """A summary stamped with the code and library versions that wrote it."""
    return Summary.from_json({**provenance(), **values})


# the status policy -----------------------------------------------------------------------------------
def is_environment_fault(error: BaseException) -> bool:
    """Faults of the machine, not of the config or the code: the run is resumable (`interrupted`)."""
    faults: tuple[type[BaseException], ...] = (OSError, MemoryError, RunStopped, torch.cuda.OutOfMemoryError)
    dist_error = getattr(torch.distributed, "DistError", None)  # a lost rank (torch >= 2.2)
    if dist_error is not None:
        faults += (dist_error,)
    return isinstance(error, faults)


def describe_fault(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: {error}"
    return f"{type(error).__name__}: {error}"


def ended_by(error: BaseException) -> tuple[Status, str]:
    """The status and error line of a run that raised `error`: a stop request or the machine's fault
    leaves it resumable (interrupted), anything else is the config's or the code's (failed)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt"
    if is_environment_fault(error):
        return "interrupted", describe_fault(error)
    return "failed", f"{type(error).__name__}: {error}"


def record_config_failure(rundir: RunDir, config: dict, message: str) -> None:
    """In a sweep, a job rejected by its config still gets a run directory the report can show;
    a directory that already holds a run keeps its record exactly as it is."""
    if rundir.exists() or rundir.summary_path.exists():
        return
    with contextlib.suppress(Exception):
        rundir.write_config(config)
    write_summary(rundir, with_provenance(status="failed", error=f"ConfigError: {message}", ended_at=now()))


def stopped_on_request(summary: Summary | None) -> bool:
    """Whether rank 0 recorded a stop by signal (interrupted, no error): a launcher's failure then
    is that stop, not a fault."""
    return summary is not None and summary.status == "interrupted" and not summary.get("error")


def record_worker_failure(rundir: RunDir, summary: Summary | None, rank: int, message: str, killed: bool) -> None:
    """A launcher's worker failed before rank 0's own summary named the cause (or was killed by a
    signal, `killed`): the summary says so, unless it already records a divergence."""
    summary = summary or Summary()
    if summary.status == "diverged":
        return
    # A rank killed by a signal (OOM killer, lost node) is the machine's fault: resumable, as interrupted.
    status = "interrupted" if killed or summary.status == "interrupted" else "failed"
    if summary.ended_at is ABSENT:
        summary.ended_at = now()
    write_summary(rundir, summary.update(status=status, error=f"rank {rank}: {message}"))


def carry_over(before: Summary | None, summary: Summary) -> Summary:
    """A resumed run's summary keeps what its earlier attempts recorded: the library versions they
    ran under (a mixed run's provenance) and the evaluations of its checkpoints."""
    if before is None:
        return summary
    earlier = list(before.earlier_versions) if isinstance(before.earlier_versions, list) else []
    if isinstance(before.versions, dict) and before.versions != summary.versions and before.versions not in earlier:
        earlier.append(before.versions)
    if earlier:
        summary.earlier_versions = earlier
    if before.evaluations is not ABSENT:
        summary.evaluations = before.evaluations
    return summary


def started_summary(spec: RunSpec, status: Status, **values) -> Summary:
    """The facts of a run known before its first step (its arithmetic, where it runs, provenance)."""
    return with_provenance(
        num_iterations=spec.num_iterations,
        grad_accum_steps=spec.grad_accum,
        flops_per_token=spec.flops_per_token,
        param_counts=spec.param_counts,
        device=torch.cuda.get_device_name(spec.device) if spec.device.type == "cuda" else "cpu",
        world_size=spec.dist.world_size,
        status=status,
        **run_labels(spec.config["logger"]),
        **values,
    )
