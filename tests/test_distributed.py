"""Data-parallel pieces against the single-process reference, with two CPU processes (gloo)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness.cli import compose
from harness.config import lr_placement, model_config, optim_config
from harness.optim import DistMuonAdamW, MuonAdamW, build_optimizer
from models.gpt import GPT

WORLD = 2
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_model(mlp_lr: str, depth: int, *extra: str):
    cfg = compose(["model=tiny", f"model.depth={depth}", f"mlp_lr={mlp_lr}", *extra])
    torch.manual_seed(0)
    model = GPT(model_config(cfg))
    model.init_weights()
    for p in model.parameters():  # nonzero everywhere, so every update rule is exercised
        p.data.normal_(0, 0.1)
    return model, cfg


def rank_gradients(model, rank: int, step: int) -> dict:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


VARIANTS = [(mlp_lr, depth) for mlp_lr in ("c_fc_2x", "c_proj_2x", "none", "pr492_shape_rule") for depth in (4, 3)]
# optim.compile=true on the sharded path: one variant (compiling is slow on CPU), with padded stacks.
COMPILED = ("pr492_shape_rule", 3)


def _distributed_worker(rank, port, out_dir):
    """Every variant in one process group: starting processes is the slow part on CPU."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    for mlp_lr, depth, *extra in [*VARIANTS, (*COMPILED, "optim.compile=true")]:
        model, cfg = fresh_model(mlp_lr, depth, *extra)
        opt, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cpu", WORLD, rank)
        assert isinstance(opt, DistMuonAdamW) and opt.compiled == bool(extra)
        for step in range(STEPS):
            grads = rank_gradients(model, rank, step)
            for n, p in model.named_parameters():
                p.grad = grads[n]
            opt.step()
        if rank == 0:
            torch.save(model.state_dict(), f"{out_dir}/{mlp_lr}-{depth}{'-compiled' if extra else ''}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("dist")
    mp.spawn(_distributed_worker, args=(free_port(), str(out_dir)), nprocs=WORLD)
    return out_dir


@pytest.mark.parametrize(  # depth 3: stacks of odd length, padded across ranks
    "mlp_lr,depth,compiled", [(*v, False) for v in VARIANTS] + [(*COMPILED, True)]
)
def test_sharded_step_equals_single_process_step_on_the_averaged_gradients(
    distributed_results, mlp_lr, depth, compiled
):
    """The compiled sharded step against the eager single-process one: the same result within float tolerance."""
    model, cfg = fresh_model(mlp_lr, depth)
    opt, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cpu")
    assert type(opt) is MuonAdamW
    for step in range(STEPS):
        per_rank = [rank_gradients(model, r, step) for r in range(WORLD)]
        for n, p in model.named_parameters():
            p.grad = sum(g[n] for g in per_rank) / WORLD
        opt.step()
    distributed = torch.load(distributed_results / f"{mlp_lr}-{depth}{'-compiled' if compiled else ''}.pt")
    for n, p in model.state_dict().items():
        torch.testing.assert_close(distributed[n], p, rtol=1e-5, atol=1e-6, msg=n)
