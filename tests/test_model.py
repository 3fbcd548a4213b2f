"""The network against independent references: float64 complex rotation, a naive masked
attention, parameter counts published by the recipe and derived by hand."""

import math

import pytest
import torch

from models.attention import causal_window_attention
from models.gpt import GPT, GPTConfig, config_from_depth
from models.rotary import apply_rotary, rotary_tables


def tiny_config(**overrides) -> GPTConfig:
    base = dict(vocab_size=100, n_layer=3, n_embd=64, n_head=2, n_kv_head=2, sequence_len=16)
    return GPTConfig(**{**base, **overrides})


def test_slice_and_chunk_give_identical_values_and_gradients():
    torch.manual_seed(0)
    cos, sin = rotary_tables(16, 32, 10000.0)
    x = torch.randn(2, 16, 3, 32, dtype=torch.float32)
    outputs, grads = [], []
    for split in ("slice", "chunk"):
        xi = x.clone().requires_grad_(True)
        y = apply_rotary(xi, cos, sin, split)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outputs.append(y.detach())
        grads.append(xi.grad)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("split", ["slice", "chunk"])
def test_rotary_matches_complex_rotation_in_float64(split):
    """Pair channel j with channel j + D/2 as a complex number; the recipe rotates it by -angle."""
    torch.manual_seed(1)
    T, D, base = 12, 16, 10000.0
    x = torch.randn(1, T, 2, D, dtype=torch.float64)
    cos, sin = rotary_tables(T, D, base)
    got = apply_rotary(x, cos.double(), sin.double(), split)
    half = D // 2
    freqs = torch.tensor([base ** (-2 * j / D) for j in range(half)], dtype=torch.float64)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None, :]
    z = torch.complex(x[..., :half], x[..., half:]) * torch.exp(-1j * angles)[None, :, None, :]
    expected = torch.cat([z.real, z.imag], dim=-1)
    # the tables are built in float32, so agreement is to float32 precision
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_rotary_preserves_norm_and_relative_angles():
    torch.manual_seed(2)
    cos, sin = rotary_tables(8, 8, 100.0)
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64).expand(1, 8, 1, 8)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64).expand(1, 8, 1, 8)
    rq, rk = (
        apply_rotary(q, cos.double(), sin.double(), "slice"),
        apply_rotary(k, cos.double(), sin.double(), "slice"),
    )
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    scores = (rq[0, :, 0, None, :] * rk[0, None, :, 0, :]).sum(-1)  # (Tq, Tk)
    # the same offset gives the same score wherever it sits
    torch.testing.assert_close(scores[5, 3], scores[4, 2], rtol=0, atol=1e-6)
    torch.testing.assert_close(scores[7, 7], scores[0, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("window", [0, 3, 7, 15, 100])
def test_sliding_window_attention_matches_naive_float64(window):
    torch.manual_seed(3)
    B, T, H, D = 2, 16, 2, 8
    q, k, v = (torch.randn(B, T, H, D, dtype=torch.float64) for _ in range(3))
    got = causal_window_attention(q, k, v, window)
    expected = torch.empty_like(q)
    for i in range(T):
        keys = [j for j in range(T) if 0 <= i - j <= window]
        s = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, keys]) / math.sqrt(D)
        expected[:, i] = torch.einsum("bhj,bjhd->bhd", s.softmax(-1), v[:, keys])
    torch.testing.assert_close(got, expected)


def test_window_sizes_follow_the_pattern_and_end_full():
    cfg = tiny_config(n_layer=6, sequence_len=2048, window_pattern="SSSL")
    assert cfg.window_sizes() == [1024, 1024, 1024, 2048, 1024, 2048]


def test_value_embeddings_sit_on_alternating_layers_including_the_last():
    assert [i for i in range(12) if tiny_config(n_layer=12).has_value_embedding(i)] == [1, 3, 5, 7, 9, 11]
    assert [i for i in range(5) if tiny_config(n_layer=5).has_value_embedding(i)] == [0, 2, 4]


@pytest.mark.parametrize(
    "depth,total,matrices,value_embeds",
    [(12, 286_262_424, 84_935_808, 150_994_944), (24, 1_384_124_976, 679_481_856, 603_979_776)],
)
def test_parameter_counts_equal_the_recipe(depth, total, matrices, value_embeds):
    counts = GPT.on_meta(config_from_depth(depth, 64, 128, vocab_size=32768)).parameter_counts()
    assert counts["total"] == total
    assert counts["matrices"] == matrices
    assert counts["value_embeds"] == value_embeds


@pytest.mark.parametrize("depth", [16, 20])
def test_parameter_counts_follow_the_sizing_rule(depth):
    """d16 and d20 from the recipe's formulas, written out independently of the model code."""
    dim = depth * 64  # already a multiple of 128 at these depths
    heads, vocab = dim // 128, 32768
    ve_layers = depth // 2
    matrices = depth * (4 * dim * dim + 8 * dim * dim) + ve_layers * 32 * heads
    expected_total = 2 * vocab * dim + ve_layers * vocab * dim + matrices + 2 * depth
    counts = GPT.on_meta(config_from_depth(depth, 64, 128, vocab_size=vocab)).parameter_counts()
    assert counts["matrices"] == matrices
    assert counts["total"] == expected_total


def test_vocab_is_padded_and_logits_cut_back():
    cfg = tiny_config(vocab_size=100)
    model = GPT(cfg)
    model.init_weights()
    assert model.transformer.wte.weight.shape[0] == 128
    logits = model(torch.randint(0, 100, (2, 16)))
    assert logits.shape == (2, 16, 100)
    assert logits.abs().max() <= cfg.logit_softcap


@pytest.mark.parametrize("cast_weights_per_matmul", [False, True])
def test_logits_at_are_the_forward_logits_at_those_positions(cast_weights_per_matmul):
    """logits_at unembeds only the (row, position) pairs asked for: forward's logits there, float32,
    under an outer bf16 autocast too (which the cast-per-matmul recipe switches off in both)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=100, cast_weights_per_matmul=cast_weights_per_matmul))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # non-zero projections, so every block matters
    idx = torch.randint(0, 100, (3, 16))
    rows, positions = torch.tensor([0, 0, 2, 1, 2]), torch.tensor([0, 15, 7, 7, 15])
    with torch.no_grad():
        full, picked = model(idx), model.logits_at(idx, rows, positions)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full_bf16, picked_bf16 = model(idx), model.logits_at(idx, rows, positions)
    assert picked.shape == (5, 100) and picked.dtype == torch.float32
    torch.testing.assert_close(picked, full[rows, positions], rtol=0, atol=1e-5)
    assert picked_bf16.dtype == torch.float32
    torch.testing.assert_close(picked_bf16, full_bf16[rows, positions], rtol=0, atol=1e-2)


def test_initialisation_follows_the_recipe():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=256, n_head=2, n_kv_head=2, vocab_size=4096))
    model.init_weights()
    block = model.transformer.h[0]
    s = math.sqrt(3 / 256)
    assert block.attn.c_q.weight.abs().max() <= s
    assert abs(block.mlp.c_fc.weight.std().item() - 1 / 16) < 0.003
    assert torch.count_nonzero(block.attn.c_proj.weight) == 0
    assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
    assert abs(model.transformer.wte.weight.std().item() - 1.0) < 0.01
    assert abs(model.lm_head.weight.std().item() - 0.001) < 0.0001
    assert torch.all(model.resid_lambdas == 1.0) and torch.all(model.x0_lambdas == 0.1)
    gated = model.transformer.h[0 if model.config.has_value_embedding(0) else 1].attn.ve_gate
    assert torch.count_nonzero(gated.weight) == 0


def test_fresh_model_predicts_near_uniform():
    """Zero output projections and a 0.001-std unembedding: initial loss is about ln(vocab)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=512))
    model.init_weights()
    idx = torch.randint(0, 512, (4, 16))
    loss = model(idx, idx)
    assert abs(loss.item() - math.log(512)) < 0.05


def test_per_token_losses_and_ignore_index():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    model.init_weights()
    idx = torch.randint(0, 100, (2, 16))
    targets = idx.clone()
    targets[0, :4] = -1
    per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (2, 16)
    assert torch.all(per_token[0, :4] == 0)
    logits = model(idx)
    manual = torch.nn.functional.cross_entropy(logits[1], targets[1], reduction="none")
    torch.testing.assert_close(per_token[1], manual)


def test_too_long_sequence_is_rejected():
    model = GPT(tiny_config(rotary_cache_len=16))
    model.init_weights()
    with pytest.raises(ValueError, match="exceeds the rotary cache"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="sequence_len=32 exceeds rotary_cache_len=16"):
        tiny_config(sequence_len=32, rotary_cache_len=16)


def test_flops_per_token_by_hand():
    """6 x matmul params + 12 x heads x head_dim x window per layer (recipe section 5)."""
    cfg = tiny_config(n_layer=2, sequence_len=16, window_pattern="L", vocab_size=128)
    model = GPT.on_meta(cfg)
    dim = 64
    matmul_params = 2 * 12 * dim * dim + 1 * 32 * 2 + 128 * dim  # blocks + one ve_gate + lm_head
    assert model.flops_per_token() == 6 * matmul_params + 2 * 12 * 2 * 32 * 16
