"""Training progress on the console while a multirun's jobs run in other processes.

submitit's executors start each job as a process whose output goes to files (the local executor's
to <sweep>/.submitit/<job id>/), so `launcher=submitit_local` showed nothing until the sweep ended.
This Hydra callback follows each job's own log, <run dir>/<job name>.log (Hydra's file handler,
written by rank 0 only), and prints every new line prefixed with the job's run folder:

    [mlp_lr=none,rope=slice,seed=0] [..][ablate.train][INFO] - step    10/60 ( 16.7%) | loss 6.9 ...

Wired in configs/launcher/submitit_local.yaml. Lines already in a log when the sweep starts (a
resumed sweep's earlier runs) are not printed again.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# submitit's own folder of pickles and task outputs, inside the sweep directory.
SUBMITIT_DIR = ".submitit"


class JobLogFollower:
    """Prints what the *.log files below `root` gain, one complete line at a time."""

    def __init__(self, root: Path, out: TextIO | None = None):
        self.root = root
        self.out = out or sys.stdout
        self._offsets = {path: path.stat().st_size for path in self.logs()}
        self._partial: dict[Path, bytes] = {}

    def logs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.rglob("*.log") if SUBMITIT_DIR not in p.relative_to(self.root).parts)

    def poll(self) -> None:
        for path in self.logs():
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self._offsets[path] = self._offsets.get(path, 0) + len(data)
            *lines, rest = (self._partial.pop(path, b"") + data).split(b"\n")
            if rest:
                self._partial[path] = rest
            prefix = path.parent.relative_to(self.root).as_posix()
            for line in lines:
                print(f"[{prefix}] {line.decode('utf-8', errors='replace')}", file=self.out, flush=True)


class FollowJobLogs(Callback):
    """Follows the sweep's job logs in a thread from the first job's submission to the sweep's end."""

    def __init__(self, poll_s: float = 0.5) -> None:
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._follower: JobLogFollower | None = None

    # The submitit launcher pickles itself, Hydra's callbacks included, into every job: a job gets
    # the settings, never the sweep process's thread.
    def __getstate__(self) -> dict:
        return {"poll_s": self.poll_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._follower = JobLogFollower(Path(str(config.hydra.sweep.dir)))
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, daemon=True, name="follow-job-logs")
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._follower.poll()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._follower.poll()  # what the last job wrote after the previous poll
