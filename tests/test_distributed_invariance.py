"""The same run gives the same numbers on 1, 2 or 4 ranks, and resumes on another number of ranks.

Real training processes: one rank in this process, 2 and 4 ranks started by torch's elastic launch
(gloo on CPU), the real loader, validation and CORE (the fixture bundle). With the same device batch
every micro-batch holds the same rows whatever the world size (harness/data/loader.py), so what
differs is only the order of the float32 gradient sums (accumulated over micro-steps on one rank,
reduce-scattered over ranks): losses agree to rtol 1e-5 over these steps, as with fixed batches in
tests/test_distributed_train.py. Validation scores the same rows on every world size, summed in
float64, so val bpb agrees to 1e-6 relative; CORE counts right answers and agrees exactly.
Weights are not compared element by element: AdamW (eps 1e-10) turns the rounding noise in the tiny
gradients of rarely seen embedding rows into LR-sized steps of either sign, so such rows differ by
up to ~5e-3 after 6 steps between uninterrupted runs on 1 and 2 ranks, while every loss agrees.

A killed run is a run directory whose newest checkpoint is older than its metrics and whose
summary still says `running`; here it is made from a finished run by removing its last checkpoint,
and resumed with another world size: the optimizer state is re-sharded on load.
"""

import shutil
from pathlib import Path

import pytest
import torch

from harness.cli import compose
from harness.launch.torchrun import elastic_run
from harness.results.rundir import RunDir
from harness.run.session import run_training
from harness.run.spec import resolve_run

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "core_bundle"
STEPS, EVERY = 6, 3
RUN_ARGS = [
    "experiment=smoke",
    "rope=slice",
    "mlp_lr=c_proj_2x",
    f"train.num_iterations={STEPS}",
    "train.device_batch_size=4",  # 2,048 tokens = 16 rows x 128: 4 micro-batches on 1 rank, 2 on 2, 1 on 4
    f"train.checkpoint_every={EVERY}",
    "train.keep_checkpoints=10",
    f"eval.val_every={EVERY}",
    "eval.val_tokens=4096",  # 32 rows: 8 per rank at 4 ranks
    "eval=core",
    f"eval.core.bundle_dir={FIXTURE}",
    f"eval.core.every={STEPS}",
    "eval.core.max_per_task=-1",
    "data.corpus_bytes=400000",  # a tenth of the smoke corpus: the tokenizer trains in about a second
]


def train(run_dir: str) -> None:
    """One run in the calling process (the single rank, or one worker of several)."""
    run_training(resolve_run(compose(RUN_ARGS)), Path(run_dir))


def train_here(run_dir: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the launcher gives each worker: the same float32 sums in a matmul
    try:
        train(str(run_dir))
    finally:
        torch.set_num_threads(threads)


def train_on(world_size: int, run_dir: Path) -> None:
    if world_size == 1:
        train_here(run_dir)
    else:
        elastic_run(train, (str(run_dir),), nproc_per_node=world_size, start_method="forkserver")


def kill_after_first_checkpoint(source: Path, target: Path) -> RunDir:
    """A copy of a finished run as SIGKILL after step EVERY's checkpoint would have left it."""
    shutil.copytree(source, target)
    rundir = RunDir(target)
    last = rundir.checkpoint_path(STEPS)
    for path in rundir.checkpoints_dir.glob(f"{last.stem}*"):
        path.unlink()
    assert rundir.latest_checkpoint() == rundir.checkpoint_path(EVERY)
    rundir.write_summary({**rundir.read_summary(), "status": "running"})
    return rundir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("worldsize")
    for world_size in (1, 2, 4):
        train_on(world_size, root / f"w{world_size}")
    for saved, resumed in ((2, 1), (1, 2)):
        killed = kill_after_first_checkpoint(root / f"w{saved}", root / f"w{saved}-to-w{resumed}")
        train_on(resumed, killed.path)
    return {path.name: RunDir(path) for path in root.iterdir()}


def curve(rundir: RunDir, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rundir.read_metrics() if key in r]


def assert_curves_close(actual: RunDir, expected: RunDir, key: str, rtol: float) -> None:
    got, want = curve(actual, key), curve(expected, key)
    assert [s for s, _ in got] == [s for s, _ in want], key
    torch.testing.assert_close(
        torch.tensor([v for _, v in got], dtype=torch.float64),
        torch.tensor([v for _, v in want], dtype=torch.float64),
        rtol=rtol,
        atol=0,
        msg=f"{actual.path.name} vs {expected.path.name}: {key}",
    )


def core_counts(rundir: RunDir) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith("core_acc/")} for r in rundir.read_metrics() if "core" in r]


def test_world_size_and_split_are_recorded(runs):
    for name, world_size, accum in (("w1", 1, 4), ("w2", 2, 2), ("w4", 4, 1), ("w2-to-w1", 1, 4), ("w1-to-w2", 2, 2)):
        summary = runs[name].read_summary()
        assert summary["status"] == "completed", name
        assert (summary["world_size"], summary["grad_accum_steps"]) == (world_size, accum), name


@pytest.mark.parametrize("world_size", [2, 4])
def test_validation_and_core_score_the_same_set_on_every_world_size(runs, world_size):
    one, other = runs["w1"], runs[f"w{world_size}"]
    ((step, bpb_one),) = curve(one, "val_bpb")[:1]
    ((_, bpb_other),) = curve(other, "val_bpb")[:1]
    assert step == 0  # before any update: the same model, so only the set of rows can differ
    assert bpb_other == pytest.approx(bpb_one, rel=1e-6, abs=0)
    assert core_counts(other) == core_counts(one) and core_counts(one)


@pytest.mark.parametrize("world_size", [2, 4])
def test_loss_history_is_the_same_on_every_world_size(runs, world_size):
    one, other = runs["w1"], runs[f"w{world_size}"]
    assert [s for s, _ in curve(one, "train_loss")] == list(range(1, STEPS + 1))
    assert_curves_close(other, one, "train_loss", rtol=1e-5)
    assert_curves_close(other, one, "val_bpb", rtol=1e-5)


@pytest.mark.parametrize("saved,resumed", [(2, 1), (1, 2)])
def test_a_run_killed_on_one_world_size_resumes_on_another(runs, saved, resumed):
    continued = runs[f"w{saved}-to-w{resumed}"]
    assert [s for s, _ in curve(continued, "train_loss")] == list(range(1, STEPS + 1))
    # the steps before the checkpoint are the killed run's own records, kept as they were
    assert curve(continued, "train_loss")[:EVERY] == curve(runs[f"w{saved}"], "train_loss")[:EVERY]
    for uninterrupted in (runs[f"w{saved}"], runs[f"w{resumed}"]):
        assert_curves_close(continued, uninterrupted, "train_loss", rtol=1e-5)
        assert_curves_close(continued, uninterrupted, "val_bpb", rtol=1e-5)
    assert core_counts(continued)[-1] == core_counts(runs["w1"])[-1]
