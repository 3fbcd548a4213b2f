"""Attention backends against an explicit-mask float64 reference: query i sees keys i-w..i.

FlexAttention runs eagerly on CPU for the forward only (PyTorch has no CPU backward for it), so
the CPU tests check values; gradients and the compiled kernel are checked on CUDA (marked gpu).
"""

import math
import warnings

import pytest
import torch

from models.attention import ATTENTION_BACKENDS, causal_window_attention, resolve_backend, sliding_window_mask
from models.gpt import GPT, GPTConfig

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _quiet_eager_flex():
    # Eager FlexAttention warns on every call that it is unfused; that is the point on CPU.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


def reference_attention(q, k, v, window):
    """Softmax over an explicit boolean mask, written out; q, k, v (B, T, H, D)."""
    T = q.shape[1]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    visible = (i - j >= 0) & (i - j <= window)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)


def random_qkv(B, T, H, D, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g, dtype=torch.float64).to(device, dtype) for _ in range(3)]


def test_backend_names():
    assert set(ATTENTION_BACKENDS) == {"sdpa", "flex", "auto"}


@pytest.mark.parametrize("window", [0, 3, 7, 15, 100])
def test_flex_matches_naive_float64(window):
    """The same loop-over-queries reference as the SDPA test in test_model.py."""
    B, T, H, D = 2, 16, 2, 8
    q, k, v = random_qkv(B, T, H, D, seed=3)
    got = causal_window_attention(q, k, v, window, "flex")
    expected = torch.empty_like(q)
    for i in range(T):
        keys = [j for j in range(T) if 0 <= i - j <= window]
        s = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, keys]) / math.sqrt(D)
        expected[:, i] = torch.einsum("bhj,bjhd->bhd", s.softmax(-1), v[:, keys])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("window", [1, 127, 128, 129, 200, 298, 299])
def test_flex_across_block_boundaries(window):
    """FlexAttention tiles 128 x 128; a length that is not a multiple of 128 and windows on either
    side of a tile edge exercise its partial and fully masked tiles."""
    q, k, v = random_qkv(1, 300, 2, 16, seed=window)
    got = causal_window_attention(q, k, v, window, "flex")
    torch.testing.assert_close(got, reference_attention(q, k, v, window))


@pytest.mark.parametrize("window", [5, 31, 64])
def test_all_backends_agree_on_cpu(window):
    q, k, v = random_qkv(2, 64, 2, 16, seed=window)
    outputs = {b: causal_window_attention(q, k, v, window, b) for b in ATTENTION_BACKENDS}
    torch.testing.assert_close(outputs["flex"], outputs["sdpa"])
    assert torch.equal(outputs["auto"], outputs["sdpa"])  # auto is SDPA on CPU, bit for bit


def test_auto_picks_flash_causal_for_full_windows_and_flex_for_sliding_ones_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_backend("auto", 1024, 2048, cuda) == "flex"
    assert resolve_backend("auto", 2048, 2048, cuda) == "sdpa"
    assert resolve_backend("auto", 2047, 2048, cuda) == "sdpa"  # i - 2047 .. i is every earlier key
    assert resolve_backend("auto", 1024, 2048, cpu) == "sdpa"
    assert resolve_backend("flex", 2048, 2048, cpu) == "flex"
    with pytest.raises(ValueError, match="attention='fa3' is not one of"):
        resolve_backend("fa3", 1024, 2048, cpu)


def test_block_mask_agrees_with_the_dense_mask():
    from models.attention import cached_mask, sliding_window_block_mask

    T, window = 300, 129
    block_mask = cached_mask(sliding_window_block_mask, T, window, torch.device("cpu"))
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    zero = torch.zeros((), dtype=torch.long)
    from_mask_mod = block_mask.mask_mod(zero, zero, i, j)
    assert torch.equal(from_mask_mod, sliding_window_mask(T, window, torch.device("cpu")))
    assert cached_mask(sliding_window_block_mask, T, window, torch.device("cpu")) is block_mask


def test_models_with_each_backend_give_the_same_logits_on_cpu():
    base = dict(vocab_size=64, n_layer=4, n_embd=64, n_head=2, n_kv_head=2, sequence_len=32)
    models = {}
    for backend in ATTENTION_BACKENDS:
        torch.manual_seed(0)
        models[backend] = GPT(GPTConfig(**base, attention=backend))
        models[backend].init_weights()
        with torch.no_grad():  # non-zero output projections so attention reaches the logits
            for block in models[backend].transformer.h:
                block.attn.c_proj.weight.normal_(0, 0.1)
    idx = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        logits = {b: m(idx) for b, m in models.items()}
    torch.testing.assert_close(logits["flex"], logits["sdpa"], rtol=1e-5, atol=1e-5)
    assert torch.equal(logits["auto"], logits["sdpa"])


def test_compiled_model_is_one_graph_with_flex():
    """Block masks and FlexAttention trace into the model's graph: no graph break per layer."""
    model = GPT(
        GPTConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=16, attention="flex")
    )
    model.init_weights()
    with torch.no_grad():  # CPU FlexAttention has no backward
        explanation = torch._dynamo.explain(model)(torch.zeros(1, 16, dtype=torch.long))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("window", [1024, 2048])
def test_compiled_flex_matches_masked_sdpa_on_cuda_with_gradients(window):
    """bf16 at d12 head shapes; the reference measurement saw a max difference of 0.004."""
    q, k, v = random_qkv(2, 2048, 6, 128, dtype=torch.bfloat16, device="cuda", seed=1)
    outputs, grads = {}, {}
    for backend in ("flex", "sdpa"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = causal_window_attention(*leaves, window, backend)
        out.float().square().sum().backward()
        outputs[backend], grads[backend] = out, [t.grad for t in leaves]
    exact = reference_attention(*(t.double() for t in (q, k, v)), window)
    for backend in ("flex", "sdpa"):
        torch.testing.assert_close(outputs[backend].double(), exact, rtol=2e-2, atol=2e-2)
    for g_flex, g_sdpa in zip(grads["flex"], grads["sdpa"], strict=True):
        scale = g_sdpa.float().abs().max()
        torch.testing.assert_close(g_flex.float() / scale, g_sdpa.float() / scale, rtol=0, atol=2e-2)


@pytest.mark.gpu
@needs_cuda
def test_compiled_model_auto_matches_sdpa_on_cuda():
    base = dict(vocab_size=512, n_layer=4, n_embd=256, n_head=2, n_kv_head=2, sequence_len=512)
    losses = {}
    for backend in ("auto", "sdpa"):
        torch.manual_seed(0)
        model = GPT.on_meta(GPTConfig(**base, attention=backend))
        model.to_empty(device="cuda")
        model.init_weights()
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_proj.weight.normal_(0, 0.05)
        idx = torch.randint(0, 512, (4, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses[backend] = torch.compile(model, dynamic=False)(idx, idx).item()
    assert abs(losses["auto"] - losses["sdpa"]) < 1e-2


def test_the_dense_mask_cache_keeps_only_the_most_recently_used_masks():
    """CORE evaluation brings a new length almost every batch: the cache stays bounded, drops the
    least recently used mask first, and what it returns is still the right mask."""
    from models import attention

    cpu = torch.device("cpu")
    attention._MASKS.clear()
    size = attention.MASK_CACHE_SIZE
    kept = attention.cached_mask(sliding_window_mask, 40, 5, cpu)  # used again below, so it stays
    for length in range(41, 41 + 3 * size):
        mask = attention.cached_mask(sliding_window_mask, length, 5, cpu)
        i, j = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
        assert torch.equal(mask, (i - j >= 0) & (i - j <= 5))
        assert attention.cached_mask(sliding_window_mask, 40, 5, cpu) is kept
        assert len(attention._MASKS) <= size
    last = 41 + 3 * size - 1
    assert [key[1] for key in attention._MASKS] == [*range(last - size + 2, last + 1), 40]
    assert attention.cached_mask(sliding_window_mask, 41, 5, cpu) is not None  # rebuilt after eviction
    assert (sliding_window_mask.__name__, 41, 5, cpu) in attention._MASKS
