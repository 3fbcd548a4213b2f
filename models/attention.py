"""Causal attention with a per-layer sliding window.

A window w means query position i sees key positions i - w .. i (w + 1 keys including itself),
the convention of Flash Attention's `window_size=(w, 0)`. A window at least as long as the
sequence is plain causal attention and takes SDPA's fused causal path; shorter windows need an
explicit mask on the SDPA path, built once per (length, window, device) and cached.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

ATTENTION_BACKENDS = ("sdpa",)


@lru_cache(maxsize=32)
def sliding_window_mask(seq_len: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend to key j: 0 <= i - j <= window."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    distance = i - j
    return (distance >= 0) & (distance <= window)


def causal_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, backend: str = "sdpa"
) -> torch.Tensor:
    """q, k, v: (B, T, H, D) -> (B, T, H, D)."""
    seq_len = q.shape[1]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if window >= seq_len - 1:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        mask = sliding_window_mask(seq_len, window, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)
