"""`rope.split=fused`: rotary embedding followed by RMSNorm as one Triton kernel each way.

The model computes z = RMSNorm(R_t x) for every head vector x of q and k, with R_t the rotary
rotation at position t (`models/rotary.py`). The slice and chunk modes leave that to
torch.compile; here one forward kernel reads x once and writes z and the per-row reciprocal
RMS, and one backward kernel reads the incoming gradient, z and that reciprocal RMS and writes
dx. Arithmetic is float32 whatever the storage dtype, with F.rms_norm's default epsilon
(float32's machine epsilon for float32, bfloat16 and float16 inputs).

Backward algebra, per row of D = 2 * HALF channels, with r = 1 / sqrt(mean(y^2) + eps):
    dL/dy = r * (g - z * mean(g * z))          (g = dL/dz; y = z / r, so y is never stored)
    dL/dx = R_t^T dL/dy                        (the rotation is orthogonal: rotate back)
Saving the output z rather than the input x costs nothing extra: attention saves z for its own
backward anyway, so the only new activation is r, one float32 per row (1/64 of z in bf16).

Bytes per tensor of N elements of e bytes, N / D rows (memory-traffic floors, used by
`python -m harness.bench rope`):
    forward:  read x, write z, write r          2 N e + 4 N / D
    backward: read g, read z, read r, write dx  3 N e + 4 N / D
plus the cos/sin tables (T x HALF float32 each), read once and then served from cache.

Kernels are specialised at import: with TRITON_INTERPRET=1 set before this module is first
imported, Triton's CPU interpreter runs them on CPU tensors (how the tests check them without a
GPU). Block sizes are untuned first choices: 16 rows per program, 4 warps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# F.rms_norm's default for float32, bfloat16 and float16 inputs: its float32 accumulator's epsilon.
RMS_NORM_EPS = torch.finfo(torch.float32).eps
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_ROWS = 16
NUM_WARPS = 4


@triton.jit
def _forward_kernel(
    X, COS, SIN, Z, RSTD,
    n_rows, seq_len, n_heads,
    stride_xb, stride_xt, stride_xh, stride_table,
    eps,
    HALF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = (rows < n_rows)[:, None]
    head, position, batch = rows % n_heads, (rows // n_heads) % seq_len, rows // (n_heads * seq_len)
    cols = tl.arange(0, HALF)[None, :]
    x_row = X + (batch * stride_xb + position * stride_xt + head * stride_xh)[:, None]
    x1 = tl.load(x_row + cols, mask=in_range, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + HALF + cols, mask=in_range, other=0.0).to(tl.float32)
    table = position[:, None] * stride_table + cols
    cos = tl.load(COS + table, mask=in_range, other=0.0)
    sin = tl.load(SIN + table, mask=in_range, other=0.0)
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    rstd = tl.rsqrt((tl.sum(y1 * y1, axis=1) + tl.sum(y2 * y2, axis=1)) / (2 * HALF) + eps)
    z_row = Z + rows[:, None] * (2 * HALF)
    tl.store(z_row + cols, (y1 * rstd[:, None]).to(Z.dtype.element_ty), mask=in_range)
    tl.store(z_row + HALF + cols, (y2 * rstd[:, None]).to(Z.dtype.element_ty), mask=in_range)
    tl.store(RSTD + rows, rstd, mask=rows < n_rows)


@triton.jit
def _backward_kernel(
    G, Z, RSTD, COS, SIN, DX,
    n_rows, seq_len, n_heads,
    stride_gb, stride_gt, stride_gh, stride_table,
    HALF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = (rows < n_rows)[:, None]
    head, position, batch = rows % n_heads, (rows // n_heads) % seq_len, rows // (n_heads * seq_len)
    cols = tl.arange(0, HALF)[None, :]
    g_row = G + (batch * stride_gb + position * stride_gt + head * stride_gh)[:, None]
    g1 = tl.load(g_row + cols, mask=in_range, other=0.0).to(tl.float32)
    g2 = tl.load(g_row + HALF + cols, mask=in_range, other=0.0).to(tl.float32)
    z_row = Z + rows[:, None] * (2 * HALF)
    z1 = tl.load(z_row + cols, mask=in_range, other=0.0).to(tl.float32)
    z2 = tl.load(z_row + HALF + cols, mask=in_range, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + rows, mask=rows < n_rows, other=0.0)[:, None]
    mean_gz = ((tl.sum(g1 * z1, axis=1) + tl.sum(g2 * z2, axis=1)) / (2 * HALF))[:, None]
    dy1 = rstd * (g1 - z1 * mean_gz)
    dy2 = rstd * (g2 - z2 * mean_gz)
    table = position[:, None] * stride_table + cols
    cos = tl.load(COS + table, mask=in_range, other=0.0)
    sin = tl.load(SIN + table, mask=in_range, other=0.0)
    dx_row = DX + rows[:, None] * (2 * HALF)
    tl.store(dx_row + cols, (dy1 * cos - dy2 * sin).to(DX.dtype.element_ty), mask=in_range)
    tl.store(dx_row + HALF + cols, (dy1 * sin + dy2 * cos).to(DX.dtype.element_ty), mask=in_range)


def _check(x: torch.Tensor, cos: torch.Tensor) -> None:
    if x.dim() != 4 or x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"fused rotary expects (B, T, H, D) in {SUPPORTED_DTYPES}, got {tuple(x.shape)} {x.dtype}")
    half = x.shape[-1] // 2
    if x.shape[-1] % 2 or half & (half - 1):
        raise ValueError(f"fused rotary needs a head dimension of twice a power of two, got {x.shape[-1]}")
    if cos.dim() != 4 or cos.shape[1] < x.shape[1] or cos.shape[-1] != half:
        raise ValueError(f"rotary tables {tuple(cos.shape)} do not cover x of shape {tuple(x.shape)}")


def _table(t: torch.Tensor) -> torch.Tensor:
    """(1, T', 1, HALF) -> a (T', HALF) float32 view with unit stride along HALF."""
    t = t[0, :, 0, :].float()
    return t if t.stride(-1) == 1 else t.contiguous()


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("ablate::rotary_rms_norm", mutates_args=())
def rotary_rms_norm_forward(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z = RMSNorm(rotary(x)) (B, T, H, D) contiguous, and 1 / RMS per row (B, T, H) float32."""
    _check(x, cos)
    x = _unit_last_stride(x)
    B, T, H, D = x.shape
    cos, sin = _table(cos), _table(sin)
    z = x.new_empty((B, T, H, D))
    rstd = x.new_empty((B, T, H), dtype=torch.float32)
    n_rows = B * T * H
    grid = (triton.cdiv(n_rows, BLOCK_ROWS),)
    _forward_kernel[grid](
        x, cos, sin, z, rstd,
        n_rows, T, H,
        x.stride(0), x.stride(1), x.stride(2), cos.stride(0),
        RMS_NORM_EPS,
        HALF=D // 2, BLOCK=BLOCK_ROWS, num_warps=NUM_WARPS,
    )  # fmt: skip
    return z, rstd


@rotary_rms_norm_forward.register_fake
def _(x, cos, sin):
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("ablate::rotary_rms_norm_backward", mutates_args=())
def rotary_rms_norm_backward(
    grad: torch.Tensor, z: torch.Tensor, rstd: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """dL/dx (B, T, H, D) contiguous, from dL/dz, the forward's z (contiguous) and 1 / RMS."""
    grad = _unit_last_stride(grad)
    B, T, H, D = z.shape
    cos, sin = _table(cos), _table(sin)
    dx = z.new_empty((B, T, H, D))
    n_rows = B * T * H
    grid = (triton.cdiv(n_rows, BLOCK_ROWS),)
    _backward_kernel[grid](
        grad, z, rstd, cos, sin, dx,
        n_rows, T, H,
        grad.stride(0), grad.stride(1), grad.stride(2), cos.stride(0),
        HALF=D // 2, BLOCK=BLOCK_ROWS, num_warps=NUM_WARPS,
    )  # fmt: skip
    return dx


@rotary_rms_norm_backward.register_fake
def _(grad, z, rstd, cos, sin):
    return z.new_empty(z.shape)


class RotaryRMSNorm(torch.autograd.Function):
    """Autograd for the two kernels; gradients flow to x only (the tables are constants)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        z, rstd = torch.ops.ablate.rotary_rms_norm(x, cos, sin)
        ctx.save_for_backward(z, rstd, cos, sin)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, rstd, cos, sin = ctx.saved_tensors
        return torch.ops.ablate.rotary_rms_norm_backward(grad, z, rstd, cos, sin), None, None


def fused_rotary_rms_norm(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RMSNorm(rotary(x)) for x (B, T, H, D), with cos and sin tables (1, >= T, 1, D / 2)."""
    return RotaryRMSNorm.apply(x, cos, sin)
