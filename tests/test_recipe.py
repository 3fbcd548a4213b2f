"""The July 2026 recipe (nanochat 92d63d4) against independent references: the fact sheet's measured
numbers (../shared/reference/nanochat-recipe-2026-07.md), hand-derived counts, and float64 eager
re-implementations written here, apart from the model's and the optimizer's code."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.cli import compose
from harness.config import lr_placement, model_config, num_iterations, optim_config, train_config
from harness.inspect import describe
from harness.optim import (
    equilibrate_rows,
    muon_update,
    parameter_table,
    polar_express,
    rescale_to_orthogonal_norm,
)
from harness.schedules import lr_multiplier, muon_momentum, weight_decay_multiplier
from models.gpt import GPT, GPTConfig

NEW = "recipe=nanochat_2026_07"

# Fact sheet section 1 and 5: (wte, value_embeds, lm_head, matrices, scalars, total, scaling,
# FLOPs/token, batch, steps, warmdown steps, Muon wd at step 0).
FACTS = {
    "d12": (25165824, 150994944, 25165824, 84935088, 50, 286261730, 110100912, 759696048, 524288, 2520, 1638, 0.28),
    "d16": (
        33554432,
        268435456,
        33554432,
        201327360,
        58,
        536871738,
        234881792,
        1585451664,
        524288,
        5376,
        3494,
        0.13125,
    ),
    "d20": (
        *(41943040, 419430400, 41943040, 393217200, 66, 896533746, 435160240),
        *(2886212784, 1048576, 4980, 3237, 0.100188),
    ),
    "d24": (
        *(50331648, 603979776, 50331648, 679478976, 74, 1384122122, 729810624),
        *(4775225616, 1048576, 8352, 5429, 0.059738),
    ),
}


def plan_of(*overrides):
    cfg = compose([NEW, *overrides])
    model = GPT.on_meta(model_config(cfg))
    train, optim = train_config(cfg), optim_config(cfg)
    rows = parameter_table(model, optim, lr_placement(cfg), train.total_batch_tokens)
    return cfg, model, train, optim, {r.name: r for r in rows}


# --- numbers of the fact sheet, through harness.inspect -----------------------------------------
@pytest.mark.parametrize("depth", list(FACTS))
def test_inspect_prints_the_fact_sheets_counts_flops_and_horizon(depth):
    wte, ve, head, matrices, scalars, total, scaling, fpt, batch, steps, warmdown, wd = FACTS[depth]
    text = describe([NEW, f"model={depth}"])
    for role, count in [
        ("wte", wte),
        ("value_embeds", ve),
        ("lm_head", head),
        ("matrices", matrices),
        ("scalars", scalars),
        ("total", total),
        ("scaling", scaling),
    ]:
        assert f"  {role:<13} {count:>15,}" in text, role
    assert f"FLOPs per token: {fpt:,}" in text
    assert f"horizon: {steps:,} steps x {batch:,} tokens" in text
    assert f"warmdown {warmdown:,} steps to 0.05" in text
    assert f"= {wd:.6f} at step 0, cosine to 0" in text


@pytest.mark.parametrize("depth,steps,wd", [("d20", 9960, 0.070843), ("d24", 16704, 0.042241)])
def test_a_forced_batch_lengthens_the_horizon_and_rescales_weight_decay(depth, steps, wd):
    _, model, train, optim, rows = plan_of(f"model={depth}", "train.total_batch_tokens=524288")
    assert num_iterations(train, model.parameter_counts()["scaling"], model.flops_per_token()) == steps
    assert rows["transformer.h.0.attn.c_q.weight"].weight_decay == pytest.approx(wd, abs=5e-7)


def test_the_speedrun_horizon_d24_ratio_8():
    _, model, train, _, _ = plan_of("model=d24", "train.target_param_data_ratio=8")
    assert train.total_batch_tokens == 1048576
    assert num_iterations(train, model.parameter_counts()["scaling"], model.flops_per_token()) == 5568


# --- hand-derived counts per feature ------------------------------------------------------------
def test_parameter_counts_and_flops_per_feature_by_hand():
    """Tiny sizes where every term can be written out: dim 64, 2 heads of 32, 4 layers, T 128."""
    base = dict(vocab_size=256, n_layer=4, n_embd=64, n_head=2, n_kv_head=2, sequence_len=128)
    plain = GPT.on_meta(GPTConfig(**base)).parameter_counts()
    featured = GPTConfig(**base, smear_channels=24, backout=True, ve_gate_channels=12)
    counts = GPT.on_meta(featured).parameter_counts()
    ve_layers = 2  # layers 1 and 3
    # ve_gate: n_kv_head x channels per value-embedding layer, 32 -> 12 channels.
    assert counts["matrices"] == plain["matrices"] - ve_layers * 2 * (32 - 12)
    # smear gate 24 weights + smear lambda + backout lambda join the scalars.
    assert counts["scalars"] == plain["scalars"] + 24 + 1 + 1 == 2 * 4 + 26
    assert counts["scaling"] == counts["matrices"] + 256 * 64
    # FLOPs: 6 x (block matrices + lm_head + smear gate) + 12 x heads x head_dim x window per layer.
    # Short window: ceil(128 / 4 / 128) x 128 = 128 (a whole tile), so every layer sees all 128 keys.
    windowed = GPTConfig(**base, short_window_divisor=4, short_window_multiple=128, short_window_rounding="up")
    assert windowed.window_sizes() == [128, 128, 128, 128]
    model = GPT.on_meta(featured)
    attention = sum(12 * 2 * 32 * w for w in featured.window_sizes())
    assert featured.window_sizes() == [64, 64, 64, 128]  # the January rule, T // 2
    assert model.flops_per_token() == 6 * (counts["matrices"] + 256 * 64 + 24) + attention


@pytest.mark.parametrize(
    "T,divisor,multiple,rounding,expected",
    [(2048, 4, 128, "up", 512), (2048, 2, 1, "down", 1024), (1000, 4, 128, "up", 256), (129, 2, 1, "down", 64)],
)
def test_short_window_rule(T, divisor, multiple, rounding, expected):
    config = GPTConfig(
        sequence_len=T,
        short_window_divisor=divisor,
        short_window_multiple=multiple,
        short_window_rounding=rounding,
    )
    assert config.short_window == expected


# --- every per-parameter LR at d12, fact sheet section 4 --------------------------------------------
def test_every_d12_parameter_gets_the_fact_sheets_lr_betas_and_decay():
    _, model, _, _, rows = plan_of("model=d12")
    adamw = {
        "lm_head.weight": (0.008, (0.8, 0.96), 0.01),
        "transformer.wte.weight": (0.3, (0.8, 0.995), 0.001),
        "resid_lambdas": (0.005, (0.8, 0.95), 0.05),
        "x0_lambdas": (0.5, (0.96, 0.95), 0.0),
        "smear_gate.weight": (0.2, (0.8, 0.95), 0.0),
        "smear_lambda": (0.2, (0.8, 0.95), 0.0),
        "backout_lambda": (0.2, (0.8, 0.95), 0.0),
    }
    adamw.update({f"value_embeds.{i}.weight": (0.15, (0.8, 0.995), 0.01) for i in (1, 3, 5, 7, 9, 11)})
    names = {n for n, _ in model.named_parameters()}
    assert names == set(rows)
    for name in names:
        row = rows[name]
        if name in adamw:
            lr, betas, wd = adamw[name]
            assert (row.optimizer, row.betas) == ("adamw", betas), name
            assert row.lr == pytest.approx(lr, rel=1e-12) and row.weight_decay == wd, name
        else:
            assert name.startswith("transformer.h.") and row.optimizer == "muon", name
            expected = 0.04 if name.endswith("mlp.c_fc.weight") else 0.02  # c_fc 2x (tall 4d x d)
            assert row.lr == pytest.approx(expected, rel=1e-12), name
            assert row.weight_decay == pytest.approx(0.28, rel=1e-12), name


def test_d24_first_step_lrs():
    _, _, _, _, rows = plan_of("model=d24")
    assert rows["lm_head.weight"].lr == pytest.approx(0.008)
    assert rows["transformer.wte.weight"].lr == pytest.approx(0.3)
    assert rows["value_embeds.23.weight"].lr == pytest.approx(0.15)
    assert rows["resid_lambdas"].lr == pytest.approx(0.00707107, rel=1e-6)
    assert rows["x0_lambdas"].lr == pytest.approx(0.7071068, rel=1e-6)
    assert rows["smear_lambda"].lr == 0.2
    assert rows["transformer.h.0.attn.c_q.weight"].lr == pytest.approx(0.028284, rel=1e-5)
    assert rows["transformer.h.0.mlp.c_fc.weight"].lr == pytest.approx(0.056569, rel=1e-5)


@pytest.mark.parametrize("depth,heads,expected", [("d12", 6, math.sqrt(2)), ("d24", 12, 1.0)])
def test_pr492_shape_rule_reads_the_new_gates_shape(depth, heads, expected):
    """ve_gate is (n_head, 12): wide below 12 heads, square at d24; the flipped rule boosts cols/rows."""
    _, _, _, _, rows = plan_of(f"model={depth}", "mlp_lr=pr492_shape_rule")
    gate = rows["transformer.h.1.attn.ve_gate.weight"]
    assert gate.shape == (heads, 12)
    assert gate.multiplier == pytest.approx(expected)
    assert rows["transformer.h.0.mlp.c_proj.weight"].multiplier == pytest.approx(2.0)
    assert rows["transformer.h.0.mlp.c_fc.weight"].multiplier == 1.0


def reference_muon_multiplier(shape: tuple[int, ...]) -> float:
    """92d63d4 nanochat/optim.py, written out: the Muon LR of a stacked group is
    lr x max(1, shape[-2] / shape[-1])^0.5, on the stored (out, in) shape."""
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


def test_d26_gate_is_tall_and_the_recipes_default_boosts_it():
    """Fact sheet section 4: ve_gate (n_head x 12) is tall above 12 heads, 1.041x at d26 under the
    reference's rule, which the recipe's default placement (c_fc_2x) applies as legacy_shape_rule does."""
    for placement in ("legacy_shape_rule", "c_fc_2x"):
        _, model, _, _, rows = plan_of("model=d26", f"mlp_lr={placement}")
        assert model.parameter_counts()["scaling"] == 918423532
        gate = rows["transformer.h.1.attn.ve_gate.weight"]
        assert gate.shape == (13, 12) and gate.multiplier == pytest.approx(math.sqrt(13 / 12)) == pytest.approx(
            1.0408, abs=5e-5
        )
        assert rows["transformer.h.0.mlp.c_fc.weight"].multiplier == 2.0


@pytest.mark.parametrize("recipe", ["nanochat_2026_01", "nanochat_2026_07"])
@pytest.mark.parametrize("depth", [4, 12, 20, 24, 26, 28, 32, 40])
def test_the_default_placement_is_the_references_shape_rule_at_every_depth(recipe, depth):
    cfg = compose([f"recipe={recipe}", f"model.depth={depth}"])
    model = GPT.on_meta(model_config(cfg))
    rows = parameter_table(model, optim_config(cfg), lr_placement(cfg), train_config(cfg).total_batch_tokens)
    muon = [r for r in rows if r.optimizer == "muon"]
    assert muon and all(r.multiplier == pytest.approx(reference_muon_multiplier(r.shape), rel=1e-12) for r in muon)


def test_individual_keys_override_the_recipe():
    cfg = compose([NEW, "model=d24", "model.qk_scale=1.0", "optim.muon.norm_rescale=false", "rope.base=10000"])
    config = model_config(cfg)
    assert (config.qk_scale, config.rope_base, config.smear_channels, config.n_layer) == (1.0, 10000.0, 24, 24)
    assert optim_config(cfg).muon.norm_rescale is False


def test_the_default_recipe_is_the_dataclass_defaults():
    """configs/recipe/nanochat_2026_01.yaml sets every feature to the value GPTConfig defaults to."""
    config = model_config(compose(["model=d12"]))
    sizing = dict(n_layer=12, n_embd=768, n_head=6, n_kv_head=6)
    assert config == GPTConfig(**sizing, rope_split="slice", attention="auto")


# --- schedules, fact sheet section 5 ---------------------------------------------------------------
def test_lr_momentum_and_weight_decay_schedules_at_the_fact_sheets_steps():
    lrm = dict(num_iterations=2520, warmup_ratio=0.0, warmdown_ratio=0.65, final_lr_frac=0.05, warmup_steps=40)
    assert lr_multiplier(0, **lrm) == pytest.approx(0.025)
    assert lr_multiplier(39, **lrm) == 1.0
    assert lr_multiplier(2519, **lrm) == pytest.approx(0.05 + 0.95 / 1638, rel=1e-12)  # 0.05058
    assert lr_multiplier(2520 - 1638, **lrm) == 1.0
    momentum = dict(warmup_momentum=0.85, momentum=0.97, warmup_steps=400, warmdown_momentum=0.90)
    schedule = dict(num_iterations=2520, warmdown_ratio=0.65)
    assert muon_momentum(0, **momentum, **schedule) == 0.85
    assert muon_momentum(200, **momentum, **schedule) == pytest.approx(0.91)
    assert muon_momentum(881, **momentum, **schedule) == 0.97
    assert muon_momentum(882 + 819, **momentum, **schedule) == pytest.approx(0.935)
    # A warmdown that starts inside the momentum warm-up: the warm-up wins (N - W = 21 < 400).
    assert muon_momentum(30, **momentum, num_iterations=60, warmdown_ratio=0.65) == pytest.approx(0.859)
    assert 0.28 * weight_decay_multiplier(1260, 2520, "cosine") == pytest.approx(0.14)
    assert weight_decay_multiplier(0, 2520, "cosine") == 1.0


# --- the new block elements against float64 eager references written here ----------------------------
def reference_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The 92d63d4 forward in float64, written from the fact sheet's section 2 with explicit loops
    and masks, sharing only the weights with the module under test."""
    c = model.config
    W = {n: p.detach().double() for n, p in model.named_parameters()}
    B, T = idx.shape
    D, H = c.n_embd, c.n_head
    hd = D // H

    def norm(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(torch.float64).eps)

    x = norm(W["transformer.wte.weight"][idx])
    smeared = x.clone()
    for t in range(1, T):  # x_t += lambda sigmoid(gate . x_t[:24]) x_{t-1}
        g = torch.sigmoid(x[:, t, :24] @ W["smear_gate.weight"][0])
        smeared[:, t] = x[:, t] + W["smear_lambda"][0] * g[:, None] * x[:, t - 1]
    x = x0 = smeared
    inv_freq = c.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None]
    cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]

    def rotate(z):
        z1, z2 = z[..., : hd // 2], z[..., hd // 2 :]
        return torch.cat([z1 * cos + z2 * sin, -z1 * sin + z2 * cos], -1)

    short = math.ceil(T / 4 / 128) * 128
    windows = [short if ch == "S" else T for ch in ("SSSL" * c.n_layer)[: c.n_layer]]
    windows[-1] = T
    cached = None
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        x = W["resid_lambdas"][i] * x + W["x0_lambdas"][i] * x0
        h = norm(x)
        q = (h @ W[p + "attn.c_q.weight"].T).view(B, T, H, hd)
        k = (h @ W[p + "attn.c_k.weight"].T).view(B, T, H, hd)
        v = (h @ W[p + "attn.c_v.weight"].T).view(B, T, H, hd)
        if f"value_embeds.{i}.weight" in W:
            gate = 3 * torch.sigmoid(h[..., :12] @ W[p + "attn.ve_gate.weight"].T)
            v = v + gate[..., None] * W[f"value_embeds.{i}.weight"][idx].view(B, T, H, hd)
        q, k = norm(rotate(q)) * 1.2, norm(rotate(k)) * 1.2
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(hd)
        distance = torch.arange(T)[:, None] - torch.arange(T)[None, :]
        visible = (distance >= 0) & (distance <= windows[i])
        att = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        y = torch.einsum("bhij,bjhd->bihd", att, v).reshape(B, T, D)
        x = x + y @ W[p + "attn.c_proj.weight"].T
        hidden = F.relu(norm(x) @ W[p + "mlp.c_fc.weight"].T) ** 2
        x = x + hidden @ W[p + "mlp.c_proj.weight"].T
        if i == c.n_layer // 2:
            cached = x
    x = norm(x - W["backout_lambda"][0] * cached)
    logits = x @ W["lm_head.weight"].T
    return 15 * torch.tanh(logits[..., : c.vocab_size] / 15)


def small_new_model(seed: int = 0) -> GPT:
    cfg = compose([NEW, "model=tiny", "data.vocab_size=96", "model.head_dim=32", "model.sequence_len=600"])
    model = GPT(model_config(cfg))
    torch.manual_seed(seed)
    model.init_weights()
    with torch.no_grad():  # move every parameter off its init so zero projections and lambdas matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.double()


def test_the_new_forward_equals_a_float64_eager_reference():
    model = small_new_model()
    assert model.config.window_sizes() == [256, 256, 256, 600]  # ceil(600 / 4 / 128) x 128
    idx = torch.randint(0, 96, (2, 600), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(idx)
    expected = reference_forward(model, idx)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("feature", ["smear_lambda", "backout_lambda"])
def test_each_new_scalar_changes_the_output(feature):
    """A zeroed smear or backout lambda is the model without that term; a reference test that cannot
    tell them apart would pass for the wrong model."""
    model = small_new_model()
    idx = torch.randint(0, 96, (1, 600), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(idx)
        getattr(model, feature).zero_()
        after = model(idx)
    assert (before - after).abs().max() > 1e-4


def test_init_matches_the_fact_sheets_measurements_at_d12():
    cfg = compose([NEW, "model=d12"])
    model = GPT(model_config(cfg))
    torch.manual_seed(42)
    model.init_weights()
    s = math.sqrt(3 / 768)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.79992, abs=5e-4)
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, abs=1e-5)
    fc = model.transformer.h[0].mlp.c_fc.weight
    assert fc.abs().max().item() <= 0.4 * s and fc.std().item() == pytest.approx(0.01443, abs=1e-4)
    assert model.transformer.h[0].attn.c_q.weight.std().item() == pytest.approx(0.0361, abs=2e-4)
    gates = torch.stack([b.attn.ve_gate.weight for b in model.transformer.h if b.attn.ve_gate is not None])
    assert 0 <= gates.min() and gates.max() <= 0.02 and gates.mean().item() == pytest.approx(0.01, abs=0.0015)
    assert 0 <= model.smear_gate.weight.min() and model.smear_gate.weight.max() <= 0.02
    # The RNG order (wte, lm_head, blocks, smear_gate, value embeddings, ve_gates) is the reference's:
    # the fact sheet's measured means of these small draws come out to its printed digits.
    assert round(model.smear_gate.weight.mean().item(), 4) == 0.0128
    assert round(model.smear_gate.weight.std().item(), 4) == 0.0061
    means = [round(g.mean().item(), 4) for g in gates]
    assert (min(means), max(means)) == (0.0088, 0.0106)
    assert model.transformer.wte.weight.mean().item() == pytest.approx(6e-5, abs=5e-6)
    assert (model.smear_lambda.item(), model.backout_lambda.item()) == (0.0, pytest.approx(0.2))
    resid = [1.15 - 0.10 * i / 11 for i in range(12)]
    x0 = [0.20 - 0.15 * i / 11 for i in range(12)]
    torch.testing.assert_close(model.resid_lambdas, torch.tensor(resid), rtol=0, atol=1e-7)
    torch.testing.assert_close(model.x0_lambdas, torch.tensor(x0), rtol=0, atol=1e-7)
    assert model.transformer.h[0].attn.c_proj.weight.abs().max() == 0


# --- the new Muon pieces against direct float64 computations ---------------------------------------
def test_muoneq_gives_every_row_the_mean_row_norm():
    X = torch.randn(3, 7, 5, dtype=torch.float64) * torch.rand(3, 7, 1, dtype=torch.float64) * 10
    got = equilibrate_rows(X)
    for m in range(3):
        target = math.sqrt(sum(float(v) ** 2 for v in X[m].flatten()) / 7)
        for r in range(7):
            row = X[m, r]
            expected = row * (target / math.sqrt(sum(float(v) ** 2 for v in row)))
            torch.testing.assert_close(got[m, r], expected, rtol=1e-12, atol=0)


def test_muon_plus_sets_the_norm_of_a_semi_orthogonal_matrix():
    X = torch.randn(2, 6, 9, dtype=torch.float64)
    got = rescale_to_orthogonal_norm(X)
    for m in range(2):
        frob = math.sqrt(sum(float(v) ** 2 for v in X[m].flatten()))
        torch.testing.assert_close(got[m], X[m] * math.sqrt(6) / frob, rtol=1e-12, atol=0)


def reference_polar_express(G: torch.Tensor, headroom: float) -> torch.Tensor:
    from harness.optim import POLAR_EXPRESS_COEFFS as COEFFS  # the published constants, not code

    X = G.double() * 1
    rows = X.shape[0]
    frob = X.pow(2).sum().sqrt()
    X = torch.stack([X[r] * (frob / math.sqrt(rows)) / X[r].pow(2).sum().sqrt() for r in range(rows)])
    X = X / (X.pow(2).sum().sqrt() * headroom + 1e-6)
    for a, b, c in COEFFS:
        if X.shape[0] > X.shape[1]:
            A = X.T @ X
            X = a * X + X @ (b * A + c * A @ A)
        else:
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
    return X


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8)])
def test_polar_express_with_muoneq_and_headroom_equals_a_float64_reference(shape):
    G = torch.randn(2, *shape, dtype=torch.float64)
    got = polar_express(G, 5, torch.float64, norm_headroom=1.01, row_equilibration=True)
    for m in range(2):
        torch.testing.assert_close(got[m], reference_polar_express(G[m], 1.01), rtol=1e-10, atol=1e-12)


def test_a_muon_step_with_every_new_piece_equals_a_float64_reference():
    """Nesterov -> MuonEq -> PE (1.01) -> Muon+ -> NorMuon (beta2 0.9) -> cautious decay, by hand."""
    torch.manual_seed(0)
    g, p = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    # NorMuon's statistics are float32 in the optimizer (its state dtype); the rest runs in float64 here.
    buf, second = torch.randn(2, 4, 6, dtype=torch.float64), torch.rand(2, 1, 6, dtype=torch.float32)
    lr, wd, mom, beta2 = 0.02, 0.28, 0.9, 0.9
    expected = []
    for m in range(2):
        b = buf[m] + (g[m] - buf[m]) * (1 - mom)
        nesterov = g[m] + (b - g[m]) * mom
        X = reference_polar_express(nesterov, 1.01)
        X = X * math.sqrt(4) / X.pow(2).sum().sqrt()  # Muon+: wide 4 x 6 -> sqrt(4)
        v = second[m].double() * beta2 + X.pow(2).mean(dim=0, keepdim=True) * (1 - beta2)  # per column (wide)
        scaled = X / v.clamp_min(1e-10).sqrt()
        update = scaled * X.pow(2).sum().sqrt() / scaled.pow(2).sum().sqrt()
        mask = (update * p[m]) >= 0
        expected.append(p[m] - lr * update - lr * wd * p[m] * mask)
    params = p.clone()
    muon_update(
        g.clone(),
        params,
        buf.clone(),
        second.clone(),
        torch.tensor(mom),
        torch.full((2, 1, 1), lr, dtype=torch.float64),
        torch.tensor(wd),
        torch.tensor(beta2),
        5,
        torch.float64,
        norm_headroom=1.01,
        row_equilibration=True,
        norm_rescale=True,
    )
    torch.testing.assert_close(params, torch.stack(expected), rtol=1e-5, atol=1e-7)


# --- precision: float32 masters cast per matmul, no autocast -------------------------------------------
def test_cast_weights_run_in_the_embedding_dtype_whatever_the_outer_autocast():
    """92d63d4 on CUDA: bf16 embedding tables, float32 Linear weights cast per matmul, no autocast.
    Emulated on CPU with bf16 tables; an outer autocast (what the harness wraps the default recipe
    in) must change nothing, and the optimizer must see float32 weights and gradients."""
    model = small_new_model().float()
    assert isinstance(model.lm_head, torch.nn.Linear) and type(model.lm_head).__name__ == "CastLinear"
    model.transformer.wte.to(torch.bfloat16)
    model.value_embeds.to(torch.bfloat16)
    seen = []
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    idx = torch.randint(0, 96, (1, 600), generator=torch.Generator().manual_seed(3))
    plain = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.float16):
        wrapped = model(idx, idx)
    assert torch.equal(plain, wrapped)
    assert seen[0] == (torch.bfloat16, torch.bfloat16)
    plain.backward()
    fc = model.transformer.h[0].mlp.c_fc.weight
    assert fc.dtype == fc.grad.dtype == torch.float32
    # bf16 compute stays close to the float64 function of the same weights.
    reference = F.cross_entropy(reference_forward(model.double(), idx).view(-1, 96), idx.view(-1))
    assert plain.item() == pytest.approx(reference.item(), rel=2e-2)


def test_cast_weights_in_float32_are_the_plain_model():
    model = small_new_model().float()
    plain_config = model_config(
        compose(
            [
                NEW,
                "model=tiny",
                "data.vocab_size=96",
                "model.head_dim=32",
                "model.sequence_len=600",
                "model.cast_weights_per_matmul=false",
            ]
        )
    )
    plain = GPT(plain_config)
    plain.load_state_dict(model.state_dict())
    plain.cos, plain.sin = model.cos, model.sin
    idx = torch.randint(0, 96, (1, 600), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model(idx), plain(idx))


def test_a_recipe_sweep_is_reported_by_the_recipes_name():
    """The July recipe changes keys in model, rope, optim, train and eval; the report's variant is
    the recipe's name plus what varies on its own, not one key per group."""
    from omegaconf import OmegaConf

    from harness.results.collect import ablation_axes, flatten, variant_keys

    flats = [
        flatten(OmegaConf.to_container(compose(["experiment=smoke", f"recipe={r}", f"rope={s}"]), resolve=True))
        for r in ("nanochat_2026_01", "nanochat_2026_07")
        for s in ("slice", "chunk")
    ]
    assert variant_keys(flats, ablation_axes(flats)) == ["rope.split", "recipe.name"]
