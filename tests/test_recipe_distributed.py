"""The July recipe's optimizer (MuonEq, Muon+, per-group AdamW, the smear group) sharded over two CPU
processes equals the single-process step on the averaged gradients, as the January one does."""

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.config import lr_placement, optim_config
from harness.optim import DistMuonAdamW, MuonAdamW, build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_distributed as distributed  # noqa: E402  (the January test's rendezvous, models and gradients)
from test_distributed import join_group, rank_gradients  # noqa: E402

WORLD, STEPS = 2, 3
DEPTHS = (4, 3)  # depth 3: stacks of odd length, padded across ranks


def fresh_model(depth: int):
    return distributed.fresh_model("pr492_shape_rule", depth, "recipe=nanochat_2026_07")


def _worker(rank, out_dir):
    join_group(rank, out_dir)
    for depth in DEPTHS:
        model, cfg = fresh_model(depth)
        opt, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cpu", WORLD, rank)
        assert isinstance(opt, DistMuonAdamW)
        for step in range(STEPS):
            grads = rank_gradients(model, rank, step)
            for n, p in model.named_parameters():
                p.grad = grads[n]
            opt.step()
        if rank == 0:
            torch.save(model.state_dict(), f"{out_dir}/{depth}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dist07")
    mp.spawn(_worker, args=(str(out_dir),), nprocs=WORLD)
    return out_dir


@pytest.mark.parametrize("depth", DEPTHS)
def test_sharded_july_step_equals_the_single_process_step(distributed_results, depth):
    model, cfg = fresh_model(depth)
    opt, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cpu")
    assert type(opt) is MuonAdamW
    assert {g["row_equilibration"] for g in opt.param_groups if g["kind"] == "muon"} == {True}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(STEPS):
        per_rank = [rank_gradients(model, r, step) for r in range(WORLD)]
        for n, p in model.named_parameters():
            p.grad = sum(g[n] for g in per_rank) / WORLD
        opt.step()
    distributed = torch.load(distributed_results / f"{depth}.pt")
    for n, p in model.state_dict().items():
        torch.testing.assert_close(distributed[n], p, rtol=1e-5, atol=1e-6, msg=n)
    assert not torch.equal(start["smear_lambda"], model.smear_lambda.detach())
