"""Rotary position embeddings, with the head-dimension split as an ablation axis.

PR #492's first claim is that taking the two halves of the head dimension with `chunk` instead
of slicing lets torch.compile emit a faster backward kernel. The model applies rotary and then
QK RMSNorm (`rotate_and_normalize`); every mode computes that same function:
- `slice`, `chunk`: PyTorch ops, left to torch.compile to fuse.
- `fused`: one hand-written Triton kernel for the forward and one for the backward
  (`models/rope_triton.py`). Needs the optional `triton` package and CUDA tensors (or Triton's
  CPU interpreter, TRITON_INTERPRET=1, for tests); `fused_unavailable_reason` says what is missing.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F

SPLITS = ("slice", "chunk", "fused")


def rotary_tables(seq_len: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (1, seq_len, 1, head_dim // 2), float32.

    Channel pair j rotates at frequency base^(-2j / head_dim), so the first channels turn fastest.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float32, device=device) * 2 / head_dim))
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def split_halves(x: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "slice":
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]
    if split == "chunk":
        x1, x2 = x.chunk(2, dim=-1)
        return x1, x2
    raise ValueError(f"rope.split={split!r} is not one of {SPLITS}")


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, split: str) -> torch.Tensor:
    """Rotate each (x1[j], x2[j]) channel pair of x (B, T, H, D) by -angle(t, j).

    The sign convention (rotation by -theta) is the recipe's; only relative angles between query
    and key positions reach the attention scores, so either sign trains the same model.
    """
    x1, x2 = split_halves(x, split)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    return torch.cat([y1, y2], dim=-1)


def fused_unavailable_reason(device: torch.device | str) -> str | None:
    """Why `rope.split=fused` cannot run on `device`, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "rope.split=fused needs Triton, which is not installed (pip install -e '.[gpu]')"
    if torch.device(device).type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            f"rope.split=fused runs on CUDA tensors, not {torch.device(device).type} "
            "(or under Triton's interpreter with TRITON_INTERPRET=1, for tests); use rope=slice or rope=chunk"
        )
    return None


def rotate_and_normalize(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, split: str) -> torch.Tensor:
    """RMSNorm(rotary(x)) over the head dimension: what attention applies to q and k."""
    if split != "fused":
        return F.rms_norm(apply_rotary(x, cos, sin, split), (x.size(-1),))
    reason = fused_unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(reason)
    from models.rope_triton import fused_rotary_rms_norm

    return fused_rotary_rms_norm(x, cos, sin)
