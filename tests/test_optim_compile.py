"""optim.compile: the compiled Muon and AdamW updates against the eager ones, every parameter group,
over steps whose LR, momentum and weight decay change (as the schedules change them), without a
recompilation after the first step. Tiny shapes: compiling on 2 CPU cores is the slow part."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from harness.cli import compose
from harness.config import lr_placement, model_config, optim_config
from harness.errors import ConfigError
from harness.optim import adamw_update, build_optimizer, cpu_has_bf16_matmul, muon_stack_update
from models.gpt import GPT

STEPS = 3


def model_and_optimizer(compile_setting: str, device_type: str = "cpu"):
    # depth 2: every kind of group (square, tall and wide Muon stacks, the value-embedding gate; the
    # AdamW embeddings, lm_head and both scalar vectors) with the fewest shapes to compile.
    # float32 on both sides: the compiled update must compute the eager one's math (auto would pick
    # bf16 for the compiled one on a CPU with bf16 units).
    cfg = compose(["experiment=smoke", "model.depth=2", f"optim.compile={compile_setting}", "optim.muon.dtype=float32"])
    torch.manual_seed(0)
    model = GPT(model_config(cfg))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():  # nonzero everywhere, so every update rule is exercised
            p.normal_(0, 0.1)
    optimizer, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, device_type)
    return model, optimizer


def set_hyperparameters(optimizer, step: int) -> None:
    """What the schedules do between steps: a compiled graph must read these, not bake them in."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * (1.0 - 0.2 * step)
        if group["kind"] == "muon":
            group["momentum"] = 0.85 + 0.03 * step
            group["weight_decay"] = group["initial_weight_decay"] * (1.0 - 0.3 * step)


def test_the_compiled_step_equals_the_eager_step_for_every_group():
    eager_model, eager = model_and_optimizer("false")
    compiled_model, compiled = model_and_optimizer("true")
    assert eager.muon_stack_update is muon_stack_update and eager.adamw_update is adamw_update
    assert compiled.muon_stack_update is not muon_stack_update and compiled.adamw_update is not adamw_update
    graphs = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        grads = {n: torch.randn(p.shape, generator=g) for n, p in eager_model.named_parameters()}
        for model, optimizer in ((eager_model, eager), (compiled_model, compiled)):
            for n, p in model.named_parameters():
                p.grad = grads[n].clone()
            set_hyperparameters(optimizer, step)
            optimizer.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1:] == [graphs[0]] * (STEPS - 1), f"recompiled after step 1: {graphs}"
    compiled_params = dict(compiled_model.named_parameters())
    for group in eager.param_groups:
        for name, p in zip(group["names"], group["params"], strict=True):
            torch.testing.assert_close(compiled_params[name], p, rtol=1e-5, atol=1e-6, msg=f"{group['kind']} {name}")
    for eager_state, compiled_state in zip(eager.state.values(), compiled.state.values(), strict=True):
        for key, value in eager_state.items():
            torch.testing.assert_close(compiled_state[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_auto_compiles_on_cuda_and_with_a_compiled_model_and_bad_values_are_refused():
    _, on_cpu = model_and_optimizer("auto")
    assert not on_cpu.compiled and on_cpu.ortho_dtype == torch.float32
    cfg = compose(["experiment=smoke", "model.depth=2"])
    model = GPT.on_meta(model_config(cfg))  # built on meta: nothing runs, only the choices are checked
    on_cuda, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cuda")
    assert on_cuda.compiled and on_cuda.ortho_dtype == torch.bfloat16
    with_model, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cpu", model_compiled=True)
    assert with_model.compiled
    assert with_model.ortho_dtype == (torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32)
    with pytest.raises(ConfigError, match=r"optim.compile='maybe' is not one of: auto, true, false"):
        optim_config(compose(["experiment=smoke", "optim.compile=maybe"]))
