"""The optimizer against independent references: shape rules recomputed from shapes, a float64
SVD for Polar Express, a per-matrix float64 Muon step, and torch.optim.AdamW."""

import io
import math

import pytest
import torch

from harness.cli import compose
from harness.config import LRMultiplier, LRPlacement, lr_placement, model_config, optim_config, train_config
from harness.errors import ConfigError
from harness.optim import (
    POLAR_EXPRESS_COEFFS,
    adamw_update,
    build_optimizer,
    parameter_table,
    polar_express,
    summarize_parameter_table,
)
from models.gpt import GPT

MLP_LR_CHOICES = ["c_fc_2x", "c_proj_2x", "none", "pr492_shape_rule"]


def table_for(overrides):
    cfg = compose(overrides)
    model = GPT.on_meta(model_config(cfg))
    rows = parameter_table(model, optim_config(cfg), lr_placement(cfg), train_config(cfg).total_batch_tokens)
    return {r.name: r for r in rows}


def expected_multiplier(choice: str, name: str, shape: tuple[int, int]) -> float:
    rows, cols = shape
    if choice == "c_fc_2x":  # the recipe's legacy rule
        return math.sqrt(max(1.0, rows / cols))
    if choice == "pr492_shape_rule":  # the PR: 1 if rows/cols >= 1 else (rows/cols)^-0.5
        return 1.0 if rows / cols >= 1 else (rows / cols) ** -0.5
    if choice == "c_proj_2x":
        return 2.0 if name.endswith("mlp.c_proj.weight") else 1.0
    return 1.0


@pytest.mark.parametrize("model", ["tiny", "d12", "d24"])
@pytest.mark.parametrize("choice", MLP_LR_CHOICES)
def test_muon_multipliers_match_the_rule_on_every_matrix(model, choice):
    table = table_for([f"model={model}", f"mlp_lr={choice}"])
    muon = {n: r for n, r in table.items() if r.optimizer == "muon"}
    assert muon, "no Muon parameters"
    for name, row in muon.items():
        assert row.multiplier == pytest.approx(expected_multiplier(choice, name, row.shape)), name
    for row in table.values():
        if row.optimizer == "adamw":
            assert row.multiplier == 1.0


def test_named_placements_at_d12():
    c_fc, c_proj, gate, attn = (
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.h.1.attn.ve_gate.weight",
        "transformer.h.0.attn.c_q.weight",
    )
    expected = {
        "c_fc_2x": (2.0, 1.0, 1.0),
        "c_proj_2x": (1.0, 2.0, 1.0),
        "none": (1.0, 1.0, 1.0),
        "pr492_shape_rule": (1.0, 2.0, math.sqrt(32 / 6)),  # 2.31x on the gate at d12
    }
    for choice, (fc, proj, g) in expected.items():
        table = table_for(["model=d12", f"mlp_lr={choice}"])
        assert (table[c_fc].multiplier, table[c_proj].multiplier) == (fc, proj)
        assert table[gate].multiplier == pytest.approx(g)
        assert table[attn].multiplier == 1.0
        assert table[c_proj].lr == pytest.approx(0.02 * proj)
    gate_d24 = table_for(["model=d24", "mlp_lr=pr492_shape_rule"])["transformer.h.1.attn.ve_gate.weight"]
    assert gate_d24.multiplier == pytest.approx(1.633, abs=1e-3)


def test_adamw_lrs_weight_decay_and_scaling():
    table = table_for(["model=d24"])
    width = (1536 / 768) ** -0.5
    assert table["lm_head.weight"].lr == pytest.approx(0.004 * width)
    assert table["transformer.wte.weight"].lr == pytest.approx(0.3 * width)
    assert table["value_embeds.1.weight"].lr == pytest.approx(0.3 * width)
    assert table["resid_lambdas"].lr == pytest.approx(0.005)
    assert table["x0_lambdas"].lr == pytest.approx(0.5) and table["x0_lambdas"].betas == (0.96, 0.95)
    assert table["transformer.h.0.attn.c_q.weight"].weight_decay == pytest.approx(0.2 * (12 / 24) ** 2)
    # a quarter of the reference batch halves every LR
    quarter = table_for(["model=d24", "train.total_batch_tokens=131072"])
    assert quarter["lm_head.weight"].lr == pytest.approx(0.5 * 0.004 * width)
    assert quarter["transformer.h.0.attn.c_q.weight"].lr == pytest.approx(0.5 * 0.02)


def test_explicit_multiplier_that_matches_nothing_is_an_error():
    cfg = compose(["model=tiny"])
    placement = LRPlacement("typo", "none", (LRMultiplier("*.mlp.cfc.weight", 2.0),))
    with pytest.raises(ConfigError, match=r"mlp_lr.multipliers\[0\].match='\*.mlp.cfc.weight' matches no Muon"):
        parameter_table(GPT.on_meta(model_config(cfg)), optim_config(cfg), placement, 2048)


def random_with_singular_values(rows, cols, smallest, generator):
    u, _ = torch.linalg.qr(torch.randn(rows, rows, dtype=torch.float64, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, dtype=torch.float64, generator=generator))
    k = min(rows, cols)
    s = torch.logspace(0, math.log10(smallest), k, dtype=torch.float64)
    return u[:, :k] @ torch.diag(s) @ v[:, :k].T, u[:, :k], v[:, :k]


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (64, 256)])
def test_polar_express_is_near_orthogonal_against_float64_svd(shape):
    g = torch.Generator().manual_seed(0)
    matrix, u, v = random_with_singular_values(*shape, smallest=0.01, generator=g)
    out = polar_express(matrix[None].float(), 5, torch.float32)[0].double()
    singular_values = torch.linalg.svdvals(out)
    # five Polar Express steps push every singular value into a band around 1 ...
    assert singular_values.min() > 0.85 and singular_values.max() < 1.15
    # ... without turning the singular vectors: U^T out V is diagonal
    rotated = u.T @ out @ v
    off_diagonal = rotated - torch.diag(rotated.diagonal())
    assert off_diagonal.abs().max() < 1e-4


def reference_muon_step(p, g, momentum_buffer, second_moment, momentum, lr, wd, beta2):
    """One Muon step on one matrix in float64, written from the recipe's description."""
    momentum_buffer = momentum * momentum_buffer + (1 - momentum) * g
    update = (1 - momentum) * g + momentum * momentum_buffer
    transposed = update.shape[0] > update.shape[1]
    x = update.T if transposed else update
    x = x / (x.norm() * 1.02 + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    x = x.T if transposed else x
    dim = 1 if x.shape[0] >= x.shape[1] else 0
    second_moment = beta2 * second_moment + (1 - beta2) * (x**2).mean(dim=dim, keepdim=True)
    scaled = x / second_moment.sqrt()
    scaled = scaled * x.norm() / scaled.norm()
    decay = (scaled * p >= 0).double()
    # where update x param is within float32 rounding of zero, the sign test can go either way
    ambiguous = (scaled * p).abs() < 1e-6
    return p - lr * scaled - lr * wd * p * decay, momentum_buffer, second_moment, ambiguous


def test_muon_step_matches_a_per_matrix_float64_reference():
    cfg = compose(["model=tiny", "mlp_lr=pr492_shape_rule"])
    torch.manual_seed(0)
    model = GPT(model_config(cfg))
    model.init_weights()
    for p in model.parameters():  # nonzero everywhere, so cautious decay has both signs
        p.data.normal_(0, 0.1)
    optimizer, rows = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cpu")
    multipliers = {r.name: r.multiplier for r in rows}
    params = dict(model.named_parameters())
    names = [n for n in params if n.startswith("transformer.h.") and n.endswith((".c_fc.weight", ".ve_gate.weight"))]
    state = {
        n: (params[n].detach().double().clone(), torch.zeros_like(params[n], dtype=torch.float64), None) for n in names
    }
    ambiguous = {n: torch.zeros_like(params[n], dtype=torch.bool) for n in names}
    for group in optimizer.param_groups:
        group["lr"], group["momentum"], group["weight_decay"] = 0.03, 0.9, 0.1
    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        optimizer.step()
        for n in names:
            p, buf, second = state[n]
            rows_, cols_ = p.shape
            if second is None:
                second = torch.zeros((rows_, 1) if rows_ >= cols_ else (1, cols_), dtype=torch.float64)
            *state[n], flips = reference_muon_step(
                p, grads[n].double(), buf, second, 0.9, 0.03 * multipliers[n], 0.1, 0.95
            )
            ambiguous[n] |= flips
    for n in names:
        clear = ~ambiguous[n]
        assert clear.float().mean() > 0.99  # nearly every element is checked
        torch.testing.assert_close(params[n].detach().double()[clear], state[n][0][clear], rtol=1e-4, atol=1e-5)


def test_adamw_update_matches_torch_adamw():
    torch.manual_seed(0)
    p_ours = torch.randn(5, 7)
    p_ref = p_ours.clone().requires_grad_(True)
    reference = torch.optim.AdamW([p_ref], lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    exp_avg, exp_avg_sq = torch.zeros_like(p_ours), torch.zeros_like(p_ours)
    for step in range(1, 6):
        grad = torch.randn(5, 7)
        p_ref.grad = grad.clone()
        reference.step()
        adamw_update(
            p_ours,
            grad,
            exp_avg,
            exp_avg_sq,
            step,
            torch.tensor(0.01),
            torch.tensor(0.8),
            torch.tensor(0.95),
            torch.tensor(1e-10),
            torch.tensor(0.1),
        )
    torch.testing.assert_close(p_ours, p_ref.detach(), rtol=1e-5, atol=1e-6)


def test_optimizer_state_round_trips_through_state_dict():
    cfg = compose(["model=tiny"])
    torch.manual_seed(0)
    model = GPT(model_config(cfg))
    model.init_weights()
    opt, _ = build_optimizer(model, optim_config(cfg), lr_placement(cfg), 2048, "cpu")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    clone = GPT(model_config(cfg))
    clone.load_state_dict(model.state_dict())
    opt2, _ = build_optimizer(clone, optim_config(cfg), lr_placement(cfg), 2048, "cpu")
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)  # as a checkpoint does: no tensors shared with `opt`
    saved.seek(0)
    opt2.load_state_dict(torch.load(saved))
    grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for m, o in ((model, opt), (clone, opt2)):
        for n, p in m.named_parameters():
            p.grad = grads[n].clone()
        o.step()
    for (n, a), b in zip(model.named_parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("model", ["tiny", "d12", "d20"])
def test_legacy_shape_rule_equals_the_explicit_c_fc_placement(model):
    cfg = compose([f"model={model}", "mlp_lr=c_fc_2x"])
    meta = GPT.on_meta(model_config(cfg))
    legacy = LRPlacement("legacy", "legacy", ())
    rule_rows = parameter_table(meta, optim_config(cfg), legacy, 524288)
    explicit_rows = parameter_table(meta, optim_config(cfg), lr_placement(cfg), 524288)
    for rule_row, explicit_row in zip(rule_rows, explicit_rows, strict=True):
        assert rule_row.multiplier == pytest.approx(explicit_row.multiplier), rule_row.name
        if rule_row.optimizer == "muon":
            expected = expected_multiplier("c_fc_2x", rule_row.name, rule_row.shape)
            assert rule_row.multiplier == pytest.approx(expected), rule_row.name


def test_the_console_table_collapses_layers_and_keeps_each_distinct_multiplier():
    cfg = compose(["model=d12", "mlp_lr=pr492_shape_rule"])
    rows = parameter_table(GPT.on_meta(model_config(cfg)), optim_config(cfg), lr_placement(cfg), 524288)
    lines = summarize_parameter_table(rows).splitlines()
    c_proj = [line for line in lines if "mlp.c_proj" in line]
    assert c_proj == ["  transformer.h.*.mlp.c_proj.weight x12  768x3072  muon  lr 0.02 x 2 = 0.04  wd 0.2"]
    gate = [line for line in lines if "ve_gate" in line]
    # sqrt(32 / 6) = 2.3094: the PR's rule boosts the value-embedding gates too
    assert gate == ["  transformer.h.*.attn.ve_gate.weight x6  6x32  muon  lr 0.02 x 2.309 = 0.046188  wd 0.2"]
    assert len(lines) == 12  # 2 scalars, wte, lm_head, value embeds, 7 block matrices
