"""harness.run.outcome: summary.json's one schema reads and writes a file as it was, both ways, and
the status policy classifies how a run ended."""

from __future__ import annotations

import errno
import json

import pytest

from harness.errors import ConfigError, RunStopped
from harness.results.rundir import RunDir
from harness.run.outcome import ABSENT, Summary, ended_by, read_summary, record_config_failure, write_summary

# A summary as a finished training run writes it, plus a key this schema does not know (a newer
# harness's): every key must come back exactly, and no key may be added.
FINISHED = {
    "status": "completed",
    "error": None,
    "num_iterations": 60,
    "grad_accum_steps": 1,
    "flops_per_token": 1234.0,
    "param_counts": {"total": 10, "scaling": 8},
    "device": "cpu",
    "world_size": 1,
    "git_commit": "abc",
    "git_dirty": False,
    "versions": {"python": "3.11"},
    "step": 60,
    "tokens": 61440,
    "flops": 61440 * 1234.0,
    "final_val_bpb": 2.5,
    "last_val_bpb": 2.5,
    "min_val_bpb": 2.4,
    "core": None,
    "core_tasks": {},
    "train_time_s": 1.5,
    "wall_time_s": 2.0,
    "tok_per_s": 1000.0,
    "mfu": None,
    "tokenizer": "digest",
    "started_at": "2026-01-01T00:00:00+00:00",
    "ended_at": "2026-01-01T00:01:00+00:00",
    "a_future_key": [1, 2],
}


def test_a_summary_file_round_trips_key_for_key(tmp_path):
    rundir = RunDir(tmp_path)
    rundir.summary_path.write_text(json.dumps(FINISHED))
    write_summary(rundir, read_summary(rundir))
    assert json.loads(rundir.summary_path.read_text()) == FINISHED


def test_a_stub_writes_only_the_keys_it_has(tmp_path):
    rundir = RunDir(tmp_path)
    write_summary(rundir, Summary(status="running", step=0))
    assert json.loads(rundir.summary_path.read_text()) == {"status": "running", "step": 0}
    assert read_summary(rundir).final_val_bpb is ABSENT


def test_a_status_outside_the_schema_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        write_summary(RunDir(tmp_path), Summary(status="done"))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KeyboardInterrupt(), ("interrupted", "KeyboardInterrupt")),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            ("interrupted", "the disk is full: [Errno 28] No space left on device"),
        ),
        (RunStopped("no valid checkpoint"), ("interrupted", "RunStopped: no valid checkpoint")),
        (ConfigError("train.foo=1 is bad"), ("failed", "ConfigError: train.foo=1 is bad")),
        (ValueError("a bug"), ("failed", "ValueError: a bug")),
    ],
)
def test_how_a_run_ended_is_its_status_and_one_line(error, expected):
    assert ended_by(error) == expected


def test_a_refused_sweep_job_gets_a_failed_summary_once(tmp_path):
    rundir = RunDir(tmp_path / "run")
    record_config_failure(rundir, {"seed": 0}, "model=d13 is not a model")
    summary = json.loads(rundir.summary_path.read_text())
    assert (summary["status"], summary["error"]) == ("failed", "ConfigError: model=d13 is not a model")
    assert {"git_commit", "versions", "ended_at"} <= set(summary)
    record_config_failure(rundir, {"seed": 1}, "another message")  # a directory holding a run is kept as it is
    assert json.loads(rundir.summary_path.read_text()) == summary
