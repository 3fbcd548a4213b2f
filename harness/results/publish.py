"""Writing a report folder so that a kill mid-report never leaves a mix of old and new files.

Every file of a report is written into a hidden staging folder inside the report folder, then moved
into place by rename (atomic on one filesystem), report.md last. The old report.md is removed before
the first move, so a report.md present always describes the tables and plots beside it; a kill
during the moves (milliseconds) leaves no report.md, and re-running the report completes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import ConfigError

STAGING_PREFIX = ".staging-"
REPORT_NAME = "report.md"


@contextlib.contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A folder to write the report into; on leaving the block without an error its files replace
    those of `out_dir`. On an error (or a kill) `out_dir` keeps the previous report, untouched."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    except OSError as e:
        raise ConfigError(f"report folder {out_dir} is not writable ({e.strerror})") from None
    _remove_abandoned(out_dir)
    try:
        yield staging
        publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out_dir: Path) -> None:
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    report = [p for p in files if p == staging / REPORT_NAME]
    (out_dir / REPORT_NAME).unlink(missing_ok=True)
    for file in [p for p in files if p not in report] + report:
        target = out_dir / file.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, target)


def _remove_abandoned(out_dir: Path) -> None:
    """Staging folders of reports that were killed: their process is gone."""
    for folder in out_dir.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name.removeprefix(STAGING_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True
