"""The nanochat-recipe GPT: shapes, forward pass, initialisation, counting.

Per layer: x <- resid_lambda * x + x0_lambda * x0, then pre-norm attention and ReLU^2 MLP.
Attention has rotary (split mode is an ablation axis) followed by QK RMSNorm, per-layer sliding
windows, and on alternating layers a value embedding mixed into v through a sigmoid gate.
Untied embedding and unembedding, logits soft-capped at 15, no biases, RMSNorm without weights.

Where two nanochat recipes differ, the difference is a named field of `GPTConfig` whose default
is the January 2026 recipe (348fbb3, PR #492's base); `configs/recipe/*.yaml` set them. The July
2026 recipe (92d63d4) adds the smear of the previous token's embedding and the backout of the
middle block's output, and changes gates, scales, windows and init (see each field).

Build big models on the meta device (`GPT.on_meta`) to count them without memory; call
`to_empty(device=...)` and `init_weights()` to materialise one.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.attention import ATTENTION_BACKENDS, causal_window_attention
from models.rotary import SPLITS, rotary_tables, rotate_and_normalize

VOCAB_PAD_MULTIPLE = 64
WINDOW_ROUNDINGS = ("down", "up")
# The GPTConfig fields a recipe sets (configs/recipe/*.yaml, under model.); the rest is sizing.
RECIPE_FEATURES = (
    "ve_gate_channels",
    "ve_gate_range",
    "ve_gate_init_max",
    "qk_scale",
    "short_window_divisor",
    "short_window_multiple",
    "short_window_rounding",
    "smear_channels",
    "smear_lambda_init",
    "smear_gate_init_max",
    "backout",
    "backout_lambda_init",
    "wte_init_std",
    "c_fc_init_scale",
    "resid_lambda_init",
    "x0_lambda_init",
    "cast_weights_per_matmul",
)


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
    logit_softcap: float = 15.0
    attention: str = "sdpa"
    # --- recipe features; the defaults are nanochat 348fbb3, configs/recipe/ sets them ---
    # Value-embedding gate: range * sigmoid(Linear(first ve_gate_channels channels -> n_kv_head)),
    # weights ~ U(0, ve_gate_init_max) (0: zeros, every gate starts at exactly range / 2).
    ve_gate_channels: int = 32
    ve_gate_range: float = 2.0
    ve_gate_init_max: float = 0.0
    # q and k are multiplied by this after QK RMSNorm (92d63d4: 1.2 each, sharper attention at the
    # same 1/sqrt(head_dim) softmax scale).
    qk_scale: float = 1.0
    # Short window S = sequence_len / short_window_divisor rounded (down | up) to a multiple of
    # short_window_multiple. 348fbb3: T // 2; 92d63d4: ceil(T / 4 / 128) * 128 (FA3's tile), 512 at T 2048.
    short_window_divisor: int = 2
    short_window_multiple: int = 1
    short_window_rounding: str = "down"
    # Smear (0 = off): x_t += smear_lambda * sigmoid(smear_gate(x_t[:smear_channels])) * x_{t-1} on the
    # normed embedding, a cheap bigram path. The lambda starts at smear_lambda_init (0: off at start).
    smear_channels: int = 0
    smear_lambda_init: float = 0.0
    smear_gate_init_max: float = 0.02
    # Backout: subtract backout_lambda x (output of block n_layer // 2) before the final norm, taking
    # the mid-depth features back out of what the unembedding sees.
    backout: bool = False
    backout_lambda_init: float = 0.2
    # Init scales: wte ~ N(0, wte_init_std); c_fc ~ U(+-c_fc_init_scale * s), s = sqrt(3 / n_embd).
    wte_init_std: float = 1.0
    c_fc_init_scale: float = 1.0
    # Per-layer lambdas ramp linearly from (first layer, last layer); equal ends are a constant.
    resid_lambda_init: tuple[float, float] = (1.0, 1.0)
    x0_lambda_init: tuple[float, float] = (0.1, 0.1)
    # Precision without autocast (92d63d4): the forward switches any outer autocast off, runs in the
    # embedding table's dtype (the harness stores it in bf16 on CUDA, float32 on CPU) and casts each
    # Linear's float32 weight to it per matmul. Off: the caller's autocast decides (348fbb3).
    cast_weights_per_matmul: bool = False

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
        if self.short_window_rounding not in WINDOW_ROUNDINGS:
            raise ValueError(f"short_window_rounding={self.short_window_rounding!r} is not one of {WINDOW_ROUNDINGS}")
        if self.short_window_divisor <= 0 or self.short_window_multiple <= 0:
            raise ValueError("short_window_divisor and short_window_multiple must be positive")
        if not 0 < self.ve_gate_channels <= self.n_embd:
            raise ValueError(f"ve_gate_channels={self.ve_gate_channels} must be in 1..n_embd={self.n_embd}")
        if not 0 <= self.smear_channels <= self.n_embd:
            raise ValueError(f"smear_channels={self.smear_channels} must be in 0..n_embd={self.n_embd}")
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

    @property
    def short_window(self) -> int:
        T, divisor, multiple = self.sequence_len, self.short_window_divisor, self.short_window_multiple
        if self.short_window_rounding == "down":
            return T // (divisor * multiple) * multiple
        return -(-T // (divisor * multiple)) * multiple  # ceil(T / divisor / multiple), in integers

    @property
    def backout_layer(self) -> int | None:
        """The block whose output the backout subtracts (the middle one), or None without backout."""
        return self.n_layer // 2 if self.backout else None

    def window_sizes(self) -> list[int]:
        """Left window per layer: S = `short_window`, L = all of the context; the last layer is always L."""
        pattern = self.window_pattern.upper()
        short, long = self.short_window, self.sequence_len
        sizes = [short if pattern[i % len(pattern)] == "S" else long for i in range(self.n_layer)]
        sizes[-1] = self.sequence_len
        return sizes


def config_from_depth(depth: int, aspect_ratio: int, head_dim: int, **kwargs) -> GPTConfig:
    """The recipe's sizing: model_dim = depth * aspect_ratio rounded up to a multiple of head_dim."""
    model_dim = math.ceil(depth * aspect_ratio / head_dim) * head_dim
    n_head = model_dim // head_dim
    return GPTConfig(n_layer=depth, n_embd=model_dim, n_head=n_head, n_kv_head=n_head, **kwargs)


class CastLinear(nn.Linear):
    """A Linear whose (float32 master) weight is cast to the activation's dtype for each matmul: how
    92d63d4 replaces autocast, so the optimizer keeps full-precision weights while the matmuls run in
    the dtype the embeddings are stored in (bf16 on CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def linear(config: GPTConfig, in_features: int, out_features: int, bias: bool = False) -> nn.Linear:
    cls = CastLinear if config.cast_weights_per_matmul else nn.Linear
    return cls(in_features, out_features, bias=bias)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.rope_split = config.rope_split
        self.attention_backend = config.attention
        kv_dim = config.n_kv_head * config.head_dim
        self.c_q = linear(config, config.n_embd, config.n_embd, bias=False)
        self.c_k = linear(config, config.n_embd, kv_dim, bias=False)
        self.c_v = linear(config, config.n_embd, kv_dim, bias=False)
        self.c_proj = linear(config, config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels, self.ve_gate_range = config.ve_gate_channels, config.ve_gate_range
        self.qk_scale = config.qk_scale
        self.ve_gate = (
            linear(config, config.ve_gate_channels, config.n_kv_head, bias=False)
            if config.has_value_embedding(layer)
            else None
        )

    def forward(self, x, value_embedding, cos, sin, window: int):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if value_embedding is not None:
            # Gate in (0, ve_gate_range); with zero gate weights exactly half of it at init.
            gate = self.ve_gate_range * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = v + gate[..., None] * value_embedding.to(v.dtype).view_as(v)
        q = rotate_and_normalize(q, cos, sin, self.rope_split)
        k = rotate_and_normalize(k, cos, sin, self.rope_split)
        if self.qk_scale != 1.0:  # skipped at 1 so the default recipe runs the very same kernels
            q, k = q * self.qk_scale, k * self.qk_scale
        if self.n_kv_head != self.n_head:
            repeat = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
        y = causal_window_attention(q, k, v, window, self.attention_backend)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = linear(config, config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = linear(config, 4 * config.n_embd, config.n_embd, bias=False)

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


def _fill_ramp(lambdas: torch.Tensor, first: float, last: float) -> None:
    """Linear from `first` at layer 0 to `last` at the last layer (a constant when they are equal)."""
    n = lambdas.numel()
    for i in range(n):
        lambdas[i] = first - (first - last) * i / max(n - 1, 1)


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
        self.lm_head = linear(config, config.n_embd, vocab, bias=False)
        self.value_embeds = nn.ModuleDict(
            {str(i): _embedding(vocab, kv_dim) for i in range(config.n_layer) if config.has_value_embedding(i)}
        )
        self.resid_lambdas = nn.Parameter(torch.empty(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.empty(config.n_layer))
        # The July 2026 features exist only when enabled, so the default recipe's parameter list,
        # state dict and optimizer groups are unchanged.
        if config.smear_channels:
            self.smear_gate = linear(config, config.smear_channels, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.empty(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.empty(1))
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
        """Every parameter and buffer's initial value, in one place.

        The RNG draws come in one order for both recipes (wte, lm_head, per block c_q c_k c_v c_fc,
        smear_gate, value embeddings, ve_gates, the reference 92d63d4's order); zero and constant
        inits draw nothing, so with the default features the stream is 348fbb3's.
        """
        config = self.config
        # Uniform(-s, s) with s = sqrt(3) / sqrt(n_embd) has std 1 / sqrt(n_embd), like Normal's.
        s = math.sqrt(3) / math.sqrt(config.n_embd)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=config.wte_init_std)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(linear.weight, -s, s)
            fc_bound = config.c_fc_init_scale * s
            nn.init.uniform_(block.mlp.c_fc.weight, -fc_bound, fc_bound)
            # Zero output projections: every block starts as the identity on the residual stream.
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        if config.smear_channels:
            nn.init.uniform_(self.smear_gate.weight, 0.0, config.smear_gate_init_max)
            self.smear_lambda.fill_(config.smear_lambda_init)
        if config.backout:
            self.backout_lambda.fill_(config.backout_lambda_init)
        for embedding in self.value_embeds.values():
            nn.init.uniform_(embedding.weight, -s, s)
        for block in self.transformer.h:
            if block.attn.ve_gate is None:
                continue
            if config.ve_gate_init_max:  # 92d63d4: small positive weights, gates start a little above 1.5
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, config.ve_gate_init_max)
            else:
                nn.init.zeros_(block.attn.ve_gate.weight)
        _fill_ramp(self.resid_lambdas, *config.resid_lambda_init)
        _fill_ramp(self.x0_lambdas, *config.x0_lambda_init)
        device = self.lm_head.weight.device
        cos, sin = rotary_tables(self.config.rotary_positions, self.config.head_dim, self.config.rope_base, device)
        self.cos, self.sin = cos, sin

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """Logits (B, T, vocab) in float32 when targets is None, else the cross-entropy loss
        (targets of -1 are ignored; reduction 'none' gives per-token losses of shape (B, T))."""
        with self._precision(idx):
            return self._forward(idx, targets, reduction)

    def logits_at(self, idx: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """forward(idx)[rows, positions] without the rest: float32 logits (N, vocab) at N (row,
        position) pairs. The blocks run on all of idx, the unembedding and soft cap only on those N
        positions, which is most of the work saved when few are read (CORE reads its answer spans:
        under 1% of the positions, against a (B, T, vocab) float32 tensor for the full logits).
        The matmul over fewer rows may round differently in the last bit from forward's."""
        with self._precision(idx):
            return self.unembed(self.hidden_states(idx)[rows, positions])

    def _precision(self, idx: torch.Tensor):
        """The precision switch forward and logits_at run under: 92d63d4's model casts its weights to
        the activations' dtype per matmul (CastLinear), so autocast is off inside it; the January
        model runs under whatever autocast its caller set."""
        if self.config.cast_weights_per_matmul:
            return torch.autocast(idx.device.type, enabled=False)
        return contextlib.nullcontext()

    def _forward(self, idx: torch.Tensor, targets: torch.Tensor | None, reduction: str):
        B, T = idx.shape
        logits = self.unembed(self.hidden_states(idx))
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1, reduction=reduction
        )
        return loss.view(B, T) if reduction == "none" else loss

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final normed hidden states (B, T, n_embd), what the unembedding reads: forward's first
        half, without its precision switch (forward and logits_at apply it)."""
        T = idx.size(1)
        if T > self.cos.shape[1]:
            raise ValueError(f"sequence of {T} tokens exceeds the rotary cache of {self.cos.shape[1]}")
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = rms_norm(self.transformer.wte(idx))
        if self.config.smear_channels:
            x = self.smear(x)
        x0 = x
        backout_layer, x_backout = self.config.backout_layer, None
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            value_embedding = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, value_embedding, cos, sin, self.windows[i])
            if i == backout_layer:
                x_backout = x
        if x_backout is not None:
            x = x - self.backout_lambda.to(x.dtype) * x_backout
        return rms_norm(x)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Soft-capped float32 logits (..., vocab) of final hidden states (..., n_embd): forward's
        second half (the padded vocabulary cut back to vocab_size)."""
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)

    def smear(self, x: torch.Tensor) -> torch.Tensor:
        """x_t += smear_lambda * sigmoid(smear_gate(x_t[:C])) * x_{t-1} for t >= 1, from the pre-smear
        x_{t-1}; position 0 is unchanged and document boundaries are not masked (as in 92d63d4)."""
        channels = self.config.smear_channels
        gate = self.smear_lambda.to(x.dtype) * torch.sigmoid(self.smear_gate(x[:, 1:, :channels]))
        return torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)

    # counting ---------------------------------------------------------------------------
    def scalar_parameters(self) -> list[nn.Parameter]:
        """The parameters that are neither matrices in the blocks nor embedding/unembedding tables."""
        scalars = [self.resid_lambdas, self.x0_lambdas]
        if self.config.smear_channels:
            scalars += [self.smear_gate.weight, self.smear_lambda]
        if self.config.backout:
            scalars.append(self.backout_lambda)
        return scalars

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by role. 'matrices' are the weights inside the transformer blocks; 'scalars'
        the per-layer lambdas and, in 92d63d4, the smear gate and the smear and backout lambdas."""
        counts = {
            "wte": self.transformer.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()),
            "lm_head": self.lm_head.weight.numel(),
            "matrices": sum(p.numel() for p in self.transformer.h.parameters()),
            "scalars": sum(p.numel() for p in self.scalar_parameters()),
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

        Embedding lookups and the per-layer lambdas cost no matmuls; the smear gate (a Linear,
        though counted with the scalars) does, as 92d63d4 counts it. Each layer's attention does
        QK^T and AV, 2 matmuls x 2 FLOPs x 3 (forward + backward) over min(window, T) keys.
        """
        counts = self.parameter_counts()
        matmul_params = counts["matrices"] + counts["lm_head"]
        if self.config.smear_channels:
            matmul_params += self.smear_gate.weight.numel()
        T, head_dim, n_head = self.config.sequence_len, self.config.head_dim, self.config.n_head
        attention = sum(12 * n_head * head_dim * min(window, T) for window in self.windows)
        return 6 * matmul_params + attention
