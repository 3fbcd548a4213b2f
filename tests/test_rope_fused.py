"""The fused Triton rotary + QK RMSNorm kernels against independent float64 references.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, which must be set
before models.rope_triton is first imported); the whole module is skipped when Triton is not
installed (it is an optional extra: pip install -e '.[gpu]').

Tolerances. The kernels compute in float32: each output is a rotation (2 products) scaled by a
reciprocal RMS that sums D squares, so the forward's relative error is a few units of float32
roundoff (u = 6e-8) times at most D = 32 here, under 2e-6; the backward adds one more D-term
dot product. rtol = atol = 1e-5 (outputs and gradients are O(1)) leaves 5x headroom and still
catches any wrong term, sign, transposition or epsilon, which all move values by 1e-3 or more.
"""

import importlib.util
import math
import os

import pytest
import torch

from models.gpt import GPT, GPTConfig
from models.rotary import rotary_tables, rotate_and_normalize

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed (optional: pip install -e '.[gpu]')", allow_module_level=True)

INTERPRET = not torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(INTERPRET, reason="needs a CUDA device")
EPS = torch.finfo(torch.float32).eps  # F.rms_norm's default for float32 and bfloat16 inputs


def _import_kernels():
    """Import Triton and the kernels, under the interpreter when there is no GPU. Triton decides
    at import which of its functions (its own reductions included) are interpreted."""
    previous = os.environ.get("TRITON_INTERPRET")
    if INTERPRET:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import models.rope_triton as kernels
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return kernels


KERNELS = _import_kernels()


@pytest.fixture
def interpreter(monkeypatch):
    """CPU tensors through Triton's interpreter; skipped on a CUDA machine (the gpu tests run there)."""
    from triton.runtime.interpreter import InterpretedFunction

    if not INTERPRET:
        pytest.skip("CUDA present: the kernels are checked on the GPU instead")
    if not isinstance(KERNELS._forward_kernel, InterpretedFunction):
        pytest.skip("Triton was imported before TRITON_INTERPRET could be set")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RMSNorm(rotary(x)) in float64 from the definitions: channel pair (j, j + D/2) as a complex
    number times exp(-i angle), with the given (float32) tables so that their rounding, which every
    mode shares (1e-4 of an angle near position 2047), is not counted against the kernels; then
    x / sqrt(mean(x^2) + eps). tests/test_model.py checks the tables against exact angles."""
    half = x.shape[-1] // 2
    T = x.shape[1]
    rotation = torch.complex(cos[:, :T].double(), -sin[:, :T].double())
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * rotation.to(x.device)
    y = torch.cat([z.real, z.imag], dim=-1)
    return y / torch.sqrt(y.square().mean(-1, keepdim=True) + EPS)


def tables(T: int, D: int, cache: int | None = None):
    """The model's float32 tables, longer than T as in the model (it slices a 10x cache)."""
    cos, sin = rotary_tables(cache or 4 * T, D, 10000.0)
    return cos[:, :T], sin[:, :T]


def fused_value_and_grad(x: torch.Tensor, weight: torch.Tensor, cos, sin):
    leaf = x.clone().requires_grad_(True)
    z = rotate_and_normalize(leaf, cos, sin, "fused")
    (z * weight).sum().backward()
    return z.detach(), leaf.grad


@pytest.mark.parametrize("shape", [(2, 8, 3, 16), (1, 37, 2, 32)])  # 37 x 2 rows: a partial last block
def test_forward_and_backward_match_float64(interpreter, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    weight = torch.randn(shape)
    cos, sin = tables(shape[1], shape[-1])
    z, grad = fused_value_and_grad(x, weight, cos, sin)
    x64 = x.double().requires_grad_(True)
    z64 = reference(x64, cos, sin)
    (z64 * weight.double()).sum().backward()
    torch.testing.assert_close(z, z64.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, x64.grad.float(), rtol=1e-5, atol=1e-5)


def test_epsilon_is_rms_norms_default(interpreter):
    """Tiny inputs (mean square 1e-7, comparable to eps) make the epsilon visible in the output."""
    torch.manual_seed(1)
    x = 3e-4 * torch.randn(1, 4, 2, 16)
    cos, sin = tables(4, 16)
    z, _ = fused_value_and_grad(x, torch.ones_like(x), cos, sin)
    torch.testing.assert_close(z, reference(x, cos, sin).float(), rtol=1e-5, atol=1e-6)
    assert z.square().mean(-1).max() < 0.9  # visibly shrunk: an epsilon-free norm would give 1


def test_gradient_matches_central_differences(interpreter):
    """gradcheck-style, on the kernels alone: d/dh <w, f(x + h v)> at h = 0 equals <grad, v>.
    In float32 with h = 1e-2 the truncation error is O(h^2) ~ 1e-4 of the value and the rounding
    error u * |<w, f>| / h ~ 1e-4, so the two agree to 1e-3 relative; a wrong gradient is off by O(1)."""
    torch.manual_seed(2)
    x, w = torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2, 16)
    cos, sin = tables(6, 16)
    _, grad = fused_value_and_grad(x, w, cos, sin)
    h = 1e-2
    for seed in range(3):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        plus = (rotate_and_normalize(x + h * v, cos, sin, "fused") * w).sum()
        minus = (rotate_and_normalize(x - h * v, cos, sin, "fused") * w).sum()
        numeric, analytic = (plus - minus).item() / (2 * h), (grad * v).sum().item()
        assert math.isclose(numeric, analytic, rel_tol=1e-3, abs_tol=1e-3)


def test_non_contiguous_input_and_gradient(interpreter):
    """Attention hands back gradients in its own layout; the kernels read any strides over B, T, H."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 16).transpose(1, 2)  # (B, T, H, D) with T and H strides swapped
    w = torch.randn(2, 3, 8, 16).transpose(1, 2)
    cos, sin = tables(8, 16)
    z, grad = fused_value_and_grad(x, w, cos, sin)
    z_c, grad_c = fused_value_and_grad(x.contiguous(), w.contiguous(), cos, sin)
    assert not x.is_contiguous()
    torch.testing.assert_close(z, z_c, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_c, rtol=0, atol=0)


def test_bfloat16_storage_is_as_close_as_the_eager_modes(interpreter):
    """In bf16 the fused kernel (float32 inside) is no further from float64 than slice is."""
    torch.manual_seed(4)
    x = torch.randn(2, 8, 3, 32).bfloat16()
    cos, sin = tables(8, 32)
    exact = reference(x, cos, sin)
    fused = rotate_and_normalize(x, cos, sin, "fused")
    eager = rotate_and_normalize(x, cos, sin, "slice")
    assert fused.dtype == torch.bfloat16
    fused_err, eager_err = (fused.double() - exact).abs().max(), (eager.double() - exact).abs().max()
    assert fused_err <= eager_err + 2**-8  # within one bf16 rounding at magnitude 1


def test_model_with_fused_rope_matches_slice(interpreter):
    """The whole network: same loss and gradients as rope.split=slice (float32, CPU interpreter)."""
    base = dict(vocab_size=64, n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=16)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    results = {}
    for split in ("slice", "fused"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**base, rope_split=split))
        model.init_weights()
        with torch.no_grad():  # non-zero output projections so q and k reach the loss
            for block in model.transformer.h:
                block.attn.c_proj.weight.normal_(0, 0.1)
        loss = model(idx, idx)
        loss.backward()
        results[split] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["fused"][0], results["slice"][0], rtol=1e-5, atol=1e-6)
    for name, grad in results["slice"][1].items():
        torch.testing.assert_close(results["fused"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_matches_float64_on_cuda(dtype):
    """d12 head shapes on the GPU (hardware rsqrt, real memory layout), compiled as in training."""
    torch.manual_seed(6)
    B, T, H, D = 4, 2048, 6, 128
    x = torch.randn(B, T, H, D, device="cuda").to(dtype)
    w = torch.randn(B, T, H, D, device="cuda").to(dtype)
    cos, sin = rotary_tables(T, D, 10000.0, device="cuda")
    outputs = {}
    for split in ("fused", "slice"):
        leaf = x.clone().requires_grad_(True)
        fn = torch.compile(lambda t, s=split: rotate_and_normalize(t, cos, sin, s), dynamic=False)
        z = fn(leaf)
        z.backward(w)
        outputs[split] = (z.double(), leaf.grad.double())
    x64 = x.double().requires_grad_(True)
    z64 = reference(x64, cos, sin)
    z64.backward(w.double())
    exact = (z64.detach(), x64.grad)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got, want in zip(outputs["fused"], exact, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # and no further from exact than the compiled slice mode, up to one rounding of the output
    margin = tol / 4 if dtype == torch.float32 else 2**-5  # a bf16 step at magnitudes 4 to 8
    for i in range(2):
        fused_err = (outputs["fused"][i] - exact[i]).abs().max()
        slice_err = (outputs["slice"][i] - exact[i]).abs().max()
        assert fused_err <= slice_err + margin


def test_compiled_model_is_one_graph_with_fused_rope(interpreter):
    """torch.compile traces the custom ops and the autograd Function without a graph break."""
    model = GPT(
        GPTConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=16, rope_split="fused")
    )
    model.init_weights()
    explanation = torch._dynamo.explain(model)(torch.zeros(1, 16, dtype=torch.long))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
