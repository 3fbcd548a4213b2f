"""The nanochat-recipe GPT (as of PR #492's base): shapes, forward pass, initialisation, counting.

Per layer: x <- resid_lambda * x + x0_lambda * x0, then pre-norm attention and ReLU^2 MLP.
Attention has rotary (split mode is an ablation axis) followed by QK RMSNorm, per-layer sliding
windows, and on alternating layers a value embedding mixed into v through a sigmoid gate.
Untied embedding and unembedding, logits soft-capped at 15, no biases, RMSNorm without weights.

Build big models on the meta device (`GPT.on_meta`) to count them without memory; call
`to_empty(device=...)` and `init_weights()` to materialise one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import ATTENTION_BACKENDS, causal_window_attention
from models.rotary import SPLITS, rotary_tables, rotate_and_normalize

VOCAB_PAD_MULTIPLE = 64


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 32768
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 6
    n_kv_head: int = 6
    sequence_len: int = 2048
    window_pattern: str = "SSSL"
    rope_split: str = "slice"
    rope_base: float = 10000.0
    # Rotary tables cover this many positions; 0 means ten times sequence_len (room for long evals).
    rotary_cache_len: int = 0
    ve_gate_channels: int = 32
    logit_softcap: float = 15.0
    attention: str = "sdpa"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head_dim={self.n_embd // self.n_head} must be even (rotary rotates channel pairs)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={self.attention!r} is not one of {ATTENTION_BACKENDS}")
        if self.rope_split not in SPLITS:
            raise ValueError(f"rope_split={self.rope_split!r} is not one of {SPLITS}")
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise ValueError(f"window_pattern={self.window_pattern!r} must be a non-empty string of S and L")
        if self.sequence_len > self.rotary_positions:
            raise ValueError(f"sequence_len={self.sequence_len} exceeds rotary_cache_len={self.rotary_cache_len}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def rotary_positions(self) -> int:
        return self.rotary_cache_len or 10 * self.sequence_len

    def has_value_embedding(self, layer: int) -> bool:
        """Alternating layers, always including the last one."""
        return layer % 2 == (self.n_layer - 1) % 2

    def window_sizes(self) -> list[int]:
        """Left window per layer: S = half the context, L = all of it; the last layer is always L."""
        pattern = self.window_pattern.upper()
        sizes = [
            self.sequence_len // 2 if pattern[i % len(pattern)] == "S" else self.sequence_len
            for i in range(self.n_layer)
        ]
        sizes[-1] = self.sequence_len
        return sizes


def config_from_depth(depth: int, aspect_ratio: int, head_dim: int, **kwargs) -> GPTConfig:
    """The recipe's sizing: model_dim = depth * aspect_ratio rounded up to a multiple of head_dim."""
    model_dim = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    n_head = model_dim // head_dim
    return GPTConfig(n_layer=depth, n_embd=model_dim, n_head=n_head, n_kv_head=n_head, **kwargs)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.rope_split = config.rope_split
        self.attention_backend = config.attention
        kv_dim = config.n_kv_head * config.head_dim
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels = config.ve_gate_channels
        self.ve_gate = (
            nn.Linear(config.ve_gate_channels, config.n_kv_head, bias=False)
            if config.has_value_embedding(layer)
            else None
        )

    def forward(self, x, value_embedding, cos, sin, window: int):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if value_embedding is not None:
            # Gate in (0, 2), exactly 1 at init (zero gate weights).
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = v + gate[..., None] * value_embedding.view_as(v)
        q = rotate_and_normalize(q, cos, sin, self.rope_split)
        k = rotate_and_normalize(k, cos, sin, self.rope_split)
        if self.n_kv_head != self.n_head:
            repeat = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
        y = causal_window_attention(q, k, v, window, self.attention_backend)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, value_embedding, cos, sin, window: int):
        x = x + self.attn(rms_norm(x), value_embedding, cos, sin, window)
        return x + self.mlp(rms_norm(x))


def _embedding(num: int, dim: int) -> nn.Embedding:
    """An embedding without PyTorch's default init: init_weights sets every parameter, and the
    default normal_ would load Python meta kernels under GPT.on_meta (a second of start-up)."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        vocab, kv_dim = config.padded_vocab_size, config.n_kv_head * config.head_dim
        self.transformer = nn.ModuleDict(
            {
                "wte": _embedding(vocab, config.n_embd),
                "h": nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, vocab, bias=False)
        self.value_embeds = nn.ModuleDict(
            {str(i): _embedding(vocab, kv_dim) for i in range(config.n_layer) if config.has_value_embedding(i)}
        )
        self.resid_lambdas = nn.Parameter(torch.empty(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.empty(config.n_layer))
        self.windows = config.window_sizes()
        # Placeholders of the tables' shape; init_weights computes them on the real device. (Computing
        # them here would run Python meta kernels under GPT.on_meta: a second of start-up for nothing.)
        table_shape = (1, config.rotary_positions, 1, config.head_dim // 2)
        self.register_buffer("cos", torch.empty(table_shape), persistent=False)
        self.register_buffer("sin", torch.empty(table_shape), persistent=False)

    @classmethod
    def on_meta(cls, config: GPTConfig) -> GPT:
        with torch.device("meta"):
            return cls(config)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter and buffer's initial value, in one place."""
        n_embd = self.config.n_embd
        # Uniform(-s, s) with s = sqrt(3) / sqrt(n_embd) has std 1 / sqrt(n_embd), like Normal's.
        s = math.sqrt(3) / math.sqrt(n_embd)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -s, s)
            # Zero output projections: every block starts as the identity on the residual stream.
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for embedding in self.value_embeds.values():
            nn.init.uniform_(embedding.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        device = self.lm_head.weight.device
        cos, sin = rotary_tables(self.config.rotary_positions, self.config.head_dim, self.config.rope_base, device)
        self.cos, self.sin = cos, sin

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """Logits (B, T, vocab) in float32 when targets is None, else the cross-entropy loss
        (targets of -1 are ignored; reduction 'none' gives per-token losses of shape (B, T))."""
        B, T = idx.shape
        if T > self.cos.shape[1]:
            raise ValueError(f"sequence of {T} tokens exceeds the rotary cache of {self.cos.shape[1]}")
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = rms_norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            value_embedding = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, value_embedding, cos, sin, self.windows[i])
        x = rms_norm(x)
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        cap = self.config.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=reduction
        )
        return loss.view(B, T) if reduction == "none" else loss

    # counting ---------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameters by role. 'matrices' are the weights inside the transformer blocks."""
        counts = {
            "wte": self.transformer.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()),
            "lm_head": self.lm_head.weight.numel(),
            "matrices": sum(p.numel() for p in self.transformer.h.parameters()),
            "scalars": self.resid_lambdas.numel() + self.x0_lambdas.numel(),
        }
        total = sum(p.numel() for p in self.parameters())
        if total != sum(counts.values()):
            raise AssertionError(f"{total - sum(counts.values())} parameters belong to no role")
        counts["total"] = total
        # Chinchilla-style horizon counts what the tokens flow through: matrices and the unembedding.
        counts["scaling"] = counts["matrices"] + counts["lm_head"]
        return counts

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x (parameters that do matmuls) + attention scores and values.

        Embedding lookups and the per-layer scalars cost no matmuls. Each layer's attention does
        QK^T and AV, 2 matmuls x 2 FLOPs x 3 (forward + backward) over min(window, T) keys.
        """
        counts = self.parameter_counts()
        matmul_params = counts["total"] - counts["wte"] - counts["value_embeds"] - counts["scalars"]
        T, head_dim, n_head = self.config.sequence_len, self.config.head_dim, self.config.n_head
        attention = sum(12 * n_head * head_dim * min(window, T) for window in self.windows)
        return 6 * matmul_params + attention
