"""The whole training loop data-parallel: two processes started by torch's elastic launch (gloo, one
micro-batch each) reach the losses and weights of one process accumulating two micro-batches over
the same global batches, for every LR placement.

The real loader gives every world size the same global batches (tests/test_distributed_invariance.py
runs it on 1, 2 and 4 ranks); here, for every LR placement at once, both paths read one fixed random
global batch per step through `harness.data.build_train_loader` (the trainer looks it up when it
opens the loader): rank r of W, at micro-step m of A, gets rows [(r*A + m)*B, (r*A + m + 1)*B) of
the step's batch, as the real loader does.

Both paths use one intra-op thread (the launcher gives each worker one). With a different thread
count the float32 sums inside the matmuls run in another order, and AdamW (eps 1e-10) turns the
rounding noise in near-zero gradients (embedding rows of unseen tokens) into full-size updates.
"""

import pytest
import torch

import harness.data
from harness.cli import compose
from harness.launch.torchrun import elastic_run
from harness.results.rundir import RunDir
from harness.run.session import run_training
from harness.run.spec import resolve_run

pytestmark = pytest.mark.slow

STEPS = 3
MLP_LR = ("c_fc_2x", "c_proj_2x", "none", "pr492_shape_rule")
# total batch 2,048 tokens = 8 rows x 128 tokens x 2: two micro-steps on one rank, one on each of two
RUN_ARGS = ["experiment=smoke", f"train.num_iterations={STEPS}", "train.device_batch_size=8", "eval.val_tokens=2048"]


class GlobalBatchLoader:
    """Serves this rank's rows of a fixed random global batch per optimizer step."""

    def __init__(self, vocab_size: int, batch_size: int, seq_len: int, rank: int, world_size: int, total_rows: int):
        self.vocab_size, self.batch_size, self.seq_len = vocab_size, batch_size, seq_len
        self.rank, self.total_rows = rank, total_rows
        self.accum = total_rows // (batch_size * world_size)
        self.served = 0

    def __iter__(self):
        return self

    def __next__(self):
        step, micro = divmod(self.served, self.accum)
        self.served += 1
        rows = torch.randint(
            0, self.vocab_size, (self.total_rows, self.seq_len + 1), generator=torch.Generator().manual_seed(step)
        )
        first = (self.rank * self.accum + micro) * self.batch_size
        mine = rows[first : first + self.batch_size]
        return mine[:, :-1].contiguous(), mine[:, 1:].contiguous()

    def state_dict(self) -> dict:
        return {"served": self.served}


def global_batch_loader(data, tok, batch_size, seq_len, rank, world_size, state=None, *, rows_per_step):
    return GlobalBatchLoader(data.vocab_size, batch_size, seq_len, rank, world_size, rows_per_step)


def config(runs_dir, mlp_lr: str):
    return compose([*RUN_ARGS, f"mlp_lr={mlp_lr}", f"paths.runs_dir={runs_dir}"])


def train(runs_dir: str, mlp_lr: str) -> None:
    """One run in the calling process (the single rank, or one worker of two). One run per process,
    as in real use: a process group is set up and torn down once per process."""
    run_training(resolve_run(config(runs_dir, mlp_lr)), RunDir(runs_dir).path / mlp_lr)


def worker(runs_dir: str, mlp_lr: str) -> None:
    harness.data.build_train_loader = global_batch_loader
    train(runs_dir, mlp_lr)


def history(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in run.read_metrics() if "train_loss" in r]


@pytest.mark.parametrize("mlp_lr", MLP_LR)
def test_two_ranks_equal_one_rank_accumulating_the_same_global_batches(tmp_path, monkeypatch, mlp_lr):
    monkeypatch.setattr(harness.data, "build_train_loader", global_batch_loader)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(str(tmp_path / "one"), mlp_lr)  # first: builds the tokenizer cache the workers then share
    finally:
        torch.set_num_threads(threads)
    elastic_run(worker, (str(tmp_path / "two"), mlp_lr), nproc_per_node=2, start_method="forkserver")

    one, two = RunDir(tmp_path / "one" / mlp_lr), RunDir(tmp_path / "two" / mlp_lr)
    assert (one.read_summary()["world_size"], one.read_summary()["grad_accum_steps"]) == (1, 2)
    assert (two.read_summary()["world_size"], two.read_summary()["grad_accum_steps"]) == (2, 1)
    steps_one, losses_one = zip(*history(one), strict=True)
    steps_two, losses_two = zip(*history(two), strict=True)
    assert steps_one == steps_two == tuple(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor(losses_two), torch.tensor(losses_one), rtol=1e-5, atol=0, msg=mlp_lr)
    weights_one = RunDir.load_checkpoint(one.checkpoint_path(STEPS))["model"]
    weights_two = RunDir.load_checkpoint(two.checkpoint_path(STEPS))["model"]
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=1e-4, atol=1e-5, msg=f"{mlp_lr} {name}")
