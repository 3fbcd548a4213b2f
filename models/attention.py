"""Causal attention with a per-layer sliding window, on one of three backends.

A window w means query position i sees key positions i - w .. i (w + 1 keys including itself),
the convention of Flash Attention's `window_size=(w, 0)`. A window at least as long as the
sequence is plain causal attention.

Backends (`model.attention`):
- `sdpa`: PyTorch's scaled_dot_product_attention. Full windows take its fused causal path; a
  shorter window needs an explicit (T, T) boolean mask, which rules out the Flash kernel and
  falls back to a dense masked kernel (2.5x slower than flash causal on an H100 at d12 shapes).
- `flex`: FlexAttention with a block mask for every layer. Tiles the window excludes are skipped,
  so a half-context window costs about what it saves. Compiled on CUDA (eager FlexAttention
  materialises the full score matrix, and on CPU it has no backward: use it there for inference
  and tests only).
- `auto`: what is fastest per layer on the reference H100: SDPA's flash causal kernel for full
  windows, FlexAttention for sliding ones on CUDA; SDPA everywhere on CPU (where it can train).

All three compute the same function; they differ in rounding and speed only.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

ATTENTION_BACKENDS = ("sdpa", "flex", "auto")


def _is_full(window: int, seq_len: int) -> bool:
    return window >= seq_len - 1


# Masks by (kind, length, window, device), built on first use, least recently used dropped first.
# Training needs one or two (one length, one sliding window); CORE evaluation brings a new length
# almost every batch, and an unbounded cache grew by ~330 MiB over 3k examples. Eight covers
# training's masks plus the few evaluation lengths in flight.
MASK_CACHE_SIZE = 8
_MASKS: OrderedDict[tuple, torch.Tensor | BlockMask] = OrderedDict()


def _compiling() -> bool:
    """torch.compiler.is_compiling() imports torch._dynamo on its first call (a second of start-up);
    nothing can be compiling before that module is loaded, so look there first."""
    return "torch._dynamo" in sys.modules and torch.compiler.is_compiling()


def cached_mask(build, seq_len: int, window: int, device: torch.device):
    """`build(seq_len, window, device)`, once per key in eager mode. Under torch.compile the build is
    traced into the graph instead (a Python cache cannot be): a few small kernels per forward that
    read only positions, cheap next to attention (common-subexpression elimination may also merge
    identical layers' copies; TORCH_LOGS=output_code shows what remains)."""
    if _compiling():
        return build(seq_len, window, device)
    key = (build.__name__, seq_len, window, device)
    if key in _MASKS:
        _MASKS.move_to_end(key)
        return _MASKS[key]
    mask = _MASKS[key] = build(seq_len, window, device)
    while len(_MASKS) > MASK_CACHE_SIZE:
        _MASKS.popitem(last=False)
    return mask


def sliding_window_mask(seq_len: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend to key j: 0 <= i - j <= window."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    distance = i - j
    return (distance >= 0) & (distance <= window)


@lru_cache(maxsize=1)
def _compiled_flex_attention():
    # Built on first use: importing torch.compile costs seconds that CPU-only commands need not pay.
    # Default dynamism: shapes that vary between calls (evaluation batches) turn dynamic after one
    # recompile instead of using up the recompile limit.
    return torch.compile(flex_attention)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """Compiling is what turns FlexAttention into a fused kernel: inside a compiled model the model's
    graph holds it already; called eagerly on CUDA it goes through its own compiled wrapper."""
    if q.device.type != "cuda" or _compiling():
        return flex_attention(q, k, v, block_mask=block_mask)
    return _compiled_flex_attention()(q, k, v, block_mask=block_mask)


def sliding_window_block_mask(seq_len: int, window: int, device: torch.device) -> BlockMask:
    """FlexAttention's block-sparse form of `sliding_window_mask`, shared by every head and batch row."""

    def visible(batch, head, q_idx, kv_idx):
        distance = q_idx - kv_idx
        return (distance >= 0) & (distance <= window)

    return create_block_mask(visible, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


def resolve_backend(backend: str, window: int, seq_len: int, device: torch.device) -> str:
    """The concrete backend ('sdpa' or 'flex') a layer uses; `auto` decides per layer and device."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention={backend!r} is not one of {ATTENTION_BACKENDS}")
    if backend == "auto":
        return "flex" if device.type == "cuda" and not _is_full(window, seq_len) else "sdpa"
    return backend


def causal_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, backend: str = "sdpa"
) -> torch.Tensor:
    """q, k, v: (B, T, H, D) -> (B, T, H, D)."""
    seq_len = q.shape[1]
    backend = resolve_backend(backend, window, seq_len, q.device)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if backend == "flex":
        out = _flex(q, k, v, cached_mask(sliding_window_block_mask, seq_len, window, q.device))
    elif _is_full(window, seq_len):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        mask = cached_mask(sliding_window_mask, seq_len, window, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)
