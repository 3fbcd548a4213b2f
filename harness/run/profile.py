"""An optional profiler window inside a training run (`train.profile.steps=[first,last]`).

torch.profiler records the optimizer steps first..last (numbered as metrics.jsonl numbers them, both
included) and writes one Chrome trace per rank into `<run_dir>/profile/` (open it in
chrome://tracing or Perfetto). The window is bookkeeping (harness.identity): it changes neither the
run's folder nor what the run computes, only how fast the profiled steps go.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from harness.errors import ConfigError

log = logging.getLogger("ablate.train")
PROFILE_DIR = "profile"  # below the run directory


def check_profile(steps: tuple[int, int] | None, num_iterations: int) -> None:
    """`train.profile.steps` must be null or [first, last] with 1 <= first <= last <= the horizon."""
    if steps is None:
        return
    first, last = steps
    if not 1 <= first <= last <= num_iterations:
        raise ConfigError(
            f"train.profile.steps=[{first}, {last}] must be [first, last] with 1 <= first <= last <= "
            f"{num_iterations} (the run's steps), or null"
        )


class StepProfiler:
    """Starts torch.profiler before step `first` and writes its trace after step `last`. A run resumed
    inside the window profiles from its first step after the checkpoint; a run stopped inside it
    writes no trace."""

    def __init__(self, steps: tuple[int, int] | None, run_dir: Path, rank: int, device: torch.device):
        self.steps, self.run_dir, self.rank, self.device = steps, run_dir, rank, device
        self.profiler: torch.profiler.profile | None = None
        self.started_at = 0

    def before_step(self, done: int) -> None:
        """Called with the number of steps done; the coming step is `done + 1`."""
        if self.steps is None or self.profiler is not None or not self.steps[0] <= done + 1 <= self.steps[1]:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.__enter__()
        self.started_at = done + 1

    def after_step(self, done: int) -> None:
        if self.profiler is not None and done >= self.steps[1]:
            self.close()

    def close(self) -> None:
        """Stop and write the trace."""
        if self.profiler is None:
            return
        profiler, self.profiler = self.profiler, None
        profiler.__exit__(None, None, None)
        path = self.run_dir / PROFILE_DIR / f"trace_rank{self.rank}_steps{self.started_at}-{self.steps[1]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(path))
        log.info(f"profile: {path}")
