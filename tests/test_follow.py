"""launcher=submitit_local on the smoke experiment: its batch plans for the launcher's ranks, and the
console follows each job's log while the jobs run in submitit's processes."""

from __future__ import annotations

import io
import pickle

import pytest

from harness.cli import compose
from harness.errors import ConfigError
from harness.launch import launcher_world_size
from harness.launch.follow import FollowJobLogs, JobLogFollower
from harness.run.spec import resolve_run


def planned(*overrides: str):
    cfg = compose(["experiment=smoke", "launcher=submitit_local", *overrides])
    return resolve_run(cfg, check_inputs=False, world_size=launcher_world_size(cfg))


def test_the_smoke_experiment_plans_for_submitit_locals_default_tasks():
    """Before, two tasks by default: 2,048 tokens do not divide into 16 rows x 128 x 2 ranks."""
    plan = planned()
    assert plan.dist.world_size == 1 and plan.grad_accum == 1
    assert planned("launcher.nproc_per_node=2", "train.device_batch_size=8").dist.world_size == 2
    with pytest.raises(ConfigError, match="train.total_batch_tokens=2048"):
        planned("launcher.nproc_per_node=2")


def test_the_follower_prints_new_complete_lines_prefixed_with_the_run_folder(tmp_path):
    sweep = tmp_path / "smoke"
    first = sweep / "rope=slice,seed=0" / "train.log"
    first.parent.mkdir(parents=True)
    first.write_text("an earlier run's line\n")  # a resumed sweep: not printed again
    (sweep / ".submitit" / "123").mkdir(parents=True)
    out = io.StringIO()
    follower = JobLogFollower(sweep, out)
    with first.open("a") as f:
        f.write("step 1\nstep 2 (half")
    second = sweep / "rope=chunk,seed=0" / "train.log"
    second.parent.mkdir()
    second.write_text("step 1 of another job\n")
    (sweep / ".submitit" / "123" / "x.log").write_text("submitit's own file\n")
    follower.poll()
    assert out.getvalue().splitlines() == ["[rope=chunk,seed=0] step 1 of another job", "[rope=slice,seed=0] step 1"]
    with first.open("a") as f:
        f.write(" done)\n")
    follower.poll()
    assert out.getvalue().splitlines()[-1] == "[rope=slice,seed=0] step 2 (half done)"
    follower.poll()
    assert len(out.getvalue().splitlines()) == 3


def test_the_callback_pickles_into_submitits_jobs_without_its_thread(tmp_path):
    """The submitit launcher pickles Hydra's callbacks into every job (a thread cannot be pickled)."""
    from omegaconf import OmegaConf

    callback = FollowJobLogs(poll_s=0.01)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    callback.on_multirun_start(config)
    try:
        copy = pickle.loads(pickle.dumps(callback))
    finally:
        callback.on_multirun_end(config)
    assert copy.poll_s == 0.01 and copy._thread is None
    assert not callback._thread.is_alive()
