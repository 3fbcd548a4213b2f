"""The recipe's combined optimizer: Muon for the matrices inside the blocks, AdamW for the rest.

What PR #492 is about lives here: where Muon's LR multipliers go. The recipe inferred them from
each matrix's stored shape; this module states them per parameter. `lr_multiplier` applies a
named shape rule (none, the recipe's legacy one, or the PR's flipped one), then explicit
`{match, value}` entries from `configs/mlp_lr/`, so the table printed by `harness.inspect`
and logged to `params.tsv` at the start of every run is exactly what the optimizer uses.

Muon step per stack of same-shape matrices: Nesterov momentum, Polar Express orthogonalization,
NorMuon variance normalization, cautious decoupled weight decay. The multiplier scales the
matrix's effective LR, and therefore its weight decay step (lr x wd), as in the recipe.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from harness.config import LRPlacement, OptimConfig
from harness.distributed import all_gather_flat, reduce_scatter_flat
from harness.errors import ConfigError

# Polar Express (Amsel, Persson, Musco, Gower 2025) coefficients (a, b, c) for five iterations.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# Parameters trained by Muon: every matrix inside the transformer blocks.
MUON_PREFIX = "transformer.h."


# LR placement ------------------------------------------------------------------------------
def shape_rule_multiplier(shape: tuple[int, ...], rule: str) -> float:
    """The multiplier a shape rule infers from a stored (out_features, in_features) weight."""
    rows, cols = shape[-2], shape[-1]
    if rule == "none":
        return 1.0
    if rule == "legacy":  # the recipe: boost tall matrices (c_fc, 4d x d, gets 2x)
        return max(1.0, rows / cols) ** 0.5
    if rule == "pr492":  # PR #492: boost wide matrices (mlp.c_proj 2x, and ve_gate too)
        return max(1.0, cols / rows) ** 0.5
    raise ConfigError(f"mlp_lr.shape_rule={rule!r} is not one of: none, legacy, pr492")


def muon_lr_multipliers(named_shapes: dict[str, tuple[int, ...]], placement: LRPlacement) -> dict[str, float]:
    """Multiplier per Muon parameter: the shape rule, replaced by the last explicit entry matching
    the name. An entry that matches no parameter is a typo and an error."""
    multipliers = {name: shape_rule_multiplier(shape, placement.shape_rule) for name, shape in named_shapes.items()}
    for i, entry in enumerate(placement.multipliers):
        matched = fnmatch.filter(named_shapes, entry.match)
        if not matched:
            raise ConfigError(
                f"mlp_lr.multipliers[{i}].match={entry.match!r} matches no Muon parameter "
                f"(names look like {next(iter(named_shapes), '?')})"
            )
        for name in matched:
            multipliers[name] = entry.value
    return multipliers


@dataclass(frozen=True)
class ParamRow:
    """One parameter's line of the LR table: everything the optimizer does with it."""

    name: str
    shape: tuple[int, ...]
    optimizer: str  # "muon" | "adamw"
    base_lr: float  # the group's LR after batch and model-width scaling
    multiplier: float  # Muon LR placement multiplier (1 for AdamW)
    betas: tuple[float, float] | None
    weight_decay: float

    @property
    def lr(self) -> float:
        """Peak effective LR (the schedule multiplies it by at most 1)."""
        return self.base_lr * self.multiplier

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def parameter_table(
    model: torch.nn.Module, optim: OptimConfig, placement: LRPlacement, total_batch_tokens: int
) -> list[ParamRow]:
    """Assign every parameter of the GPT to an optimizer, LR, multiplier, betas and decay."""
    config = model.config
    batch_scale = (total_batch_tokens / optim.reference_batch_tokens) ** 0.5
    width_scale = (config.n_embd / optim.adamw.reference_model_dim) ** -0.5
    adam = optim.adamw
    if optim.muon.weight_decay_rule == "horizon":  # 92d63d4: constant T_epoch (harness/recipe.py)
        muon_wd = optim.muon.weight_decay * optim.muon.weight_decay_horizon_scale
    else:  # 348fbb3: 0.2 x (12 / depth)^2
        muon_wd = optim.muon.weight_decay * (12 / config.n_layer) ** 2
    smear_names = {"smear_gate.weight", "smear_lambda", "backout_lambda"}
    named = dict(model.named_parameters())
    muon_shapes = {n: tuple(p.shape) for n, p in named.items() if n.startswith(MUON_PREFIX)}
    multipliers = muon_lr_multipliers(muon_shapes, placement)
    rows = []
    for name, p in named.items():
        shape = tuple(p.shape)
        if name in multipliers:
            rows.append(ParamRow(name, shape, "muon", optim.muon.lr * batch_scale, multipliers[name], None, muon_wd))
            continue
        if name in smear_names:  # a fixed LR: no width or batch scaling (92d63d4)
            rows.append(ParamRow(name, shape, "adamw", adam.smear_lr, 1.0, adam.smear_betas, adam.smear_weight_decay))
            continue
        # Per-group betas and weight decay fall back to the shared ones where unset (348fbb3).
        if name == "lm_head.weight":
            lr, betas, wd = adam.unembedding_lr * width_scale, adam.unembedding_betas, adam.unembedding_weight_decay
        elif name == "transformer.wte.weight":
            lr, betas, wd = adam.embedding_lr * width_scale, adam.embedding_betas, adam.embedding_weight_decay
        elif name.startswith("value_embeds."):
            lr = adam.embedding_lr * width_scale * adam.value_embedding_lr_scale
            betas, wd = adam.value_embedding_betas, adam.value_embedding_weight_decay
        elif name == "resid_lambdas":
            lr, betas, wd = adam.scalar_lr * 0.01, adam.betas, adam.resid_weight_decay
        elif name == "x0_lambdas":
            lr, betas, wd = adam.scalar_lr, adam.x0_betas, adam.x0_weight_decay
        else:
            raise AssertionError(f"parameter {name} has no optimizer assignment")
        betas = adam.betas if betas is None else betas
        wd = adam.weight_decay if wd is None else wd
        rows.append(ParamRow(name, shape, "adamw", lr * batch_scale, 1.0, betas, wd))
    return rows


def format_parameter_table(rows: list[ParamRow]) -> str:
    """Tab-separated, one line per parameter: the table `harness.inspect` prints and runs log."""
    lines = ["name\tshape\toptimizer\tbase_lr\tmultiplier\teffective_lr\tbetas\tweight_decay"]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        betas = "" if r.betas is None else f"{r.betas[0]},{r.betas[1]}"
        lines.append(
            f"{r.name}\t{shape}\t{r.optimizer}\t{r.base_lr:.6g}\t{r.multiplier:.6g}\t{r.lr:.6g}\t{betas}\t{r.weight_decay:.6g}"
        )
    return "\n".join(lines) + "\n"


# A parameter's layer index in its name (transformer.h.3.mlp.c_fc.weight). The LR table a run prints,
# harness.inspect's table and the float8 listing fold the per-layer copies of a parameter by it.
LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_pattern(name: str) -> str:
    """The name with its layer index as `*`: transformer.h.*.mlp.c_fc.weight."""
    return LAYER_INDEX.sub(".*.", name)


def summarize_parameter_table(rows: list[ParamRow]) -> str:
    """The table collapsed over layers (transformer.h.*.mlp.c_fc.weight x 12): what a run prints."""
    groups: dict[tuple, list[ParamRow]] = {}
    for r in rows:
        pattern = layer_pattern(r.name)
        groups.setdefault((pattern, r.shape, r.optimizer, r.base_lr, r.multiplier, r.betas, r.weight_decay), []).append(
            r
        )
    lines = []
    for (pattern, shape, optimizer, base_lr, multiplier, betas, wd), members in groups.items():
        count = f" x{len(members)}" if len(members) > 1 else ""
        betas_text = "" if betas is None else f" betas {betas[0]},{betas[1]}"
        lines.append(
            f"  {pattern}{count}  {'x'.join(map(str, shape))}  {optimizer}  lr {base_lr:.6g} x {multiplier:.4g} = "
            f"{base_lr * multiplier:.6g}{betas_text}  wd {wd:.4g}"
        )
    return "\n".join(lines)


# the update math ----------------------------------------------------------------------------
def equilibrate_rows(X: Tensor) -> Tensor:
    """MuonEq (arXiv 2603.28254): rescale every row to the mean row norm ||X||_F / sqrt(rows), so the
    spectrum entering orthogonalization is better conditioned. Norms in at least float32 (bf16 rows
    would lose the scale they are equalized to), X keeps its dtype."""
    wide = X.to(torch.promote_types(X.dtype, torch.float32))
    target = wide.norm(dim=(-2, -1), keepdim=True) / X.size(-2) ** 0.5
    row_norm = wide.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return X * (target / row_norm).to(X.dtype)


def rescale_to_orthogonal_norm(update: Tensor) -> Tensor:
    """Muon+ (arXiv 2602.21545): set each matrix's Frobenius norm to sqrt(min(rows, cols)), that of an
    exactly semi-orthogonal matrix, undoing Polar Express's under-convergence."""
    target = min(update.size(-2), update.size(-1)) ** 0.5
    norm = update.to(torch.promote_types(update.dtype, torch.float32)).norm(dim=(-2, -1), keepdim=True)
    norm = norm.clamp_min(1e-6)
    return update * (target / norm).to(update.dtype)


def polar_express(
    G: Tensor, steps: int, dtype: torch.dtype, norm_headroom: float = 1.02, row_equilibration: bool = False
) -> Tensor:
    """Approximately orthogonalize each matrix of a (N, rows, cols) stack: U V^T with singular
    values pushed into a band around 1 rather than exactly 1 (enough for Muon, and cheap)."""
    X = G.to(dtype)
    if row_equilibration:
        X = equilibrate_rows(X)
    # The headroom (348fbb3 1.02, 92d63d4 1.01) keeps the spectral norm safely under 1 (the Frobenius
    # norm bounds it from above).
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * norm_headroom + 1e-6)
    tall = X.size(-2) > X.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        if tall:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


def normalize_variance(update: Tensor, second_moment: Tensor, beta2: Tensor) -> Tensor:
    """NorMuon: divide each row (tall or square) or column (wide) by the root of an EMA of its
    mean square, then restore the stack's Frobenius norms so only the shape of the update changes."""
    update = update.float()
    reduce_dim = -1 if update.size(-2) >= update.size(-1) else -2
    second_moment.lerp_(update.square().mean(dim=reduce_dim, keepdim=True), 1 - beta2)
    scaled = update * second_moment.clamp_min(1e-10).rsqrt()
    norm_ratio = update.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
    return scaled * norm_ratio


def muon_update(
    grads: Tensor,
    params: Tensor,
    momentum_buffer: Tensor,
    second_moment: Tensor,
    momentum: Tensor,
    lrs: Tensor,
    weight_decay: Tensor,
    beta2: Tensor,
    ns_steps: int,
    ortho_dtype: torch.dtype,
    norm_headroom: float = 1.02,
    row_equilibration: bool = False,
    norm_rescale: bool = False,
) -> None:
    """One Muon step on a stack of same-shape matrices, in place on `params` and the buffers.
    `lrs` is (N, 1, 1): each matrix's LR with its placement multiplier already applied.
    `row_equilibration` (MuonEq), `norm_headroom` and `norm_rescale` (Muon+) are 92d63d4's pieces."""
    momentum_buffer.lerp_(grads, 1 - momentum)
    nesterov = grads.lerp(momentum_buffer, momentum)
    update = polar_express(nesterov, ns_steps, ortho_dtype, norm_headroom, row_equilibration)
    if norm_rescale:  # on the update back in the parameters' dtype, as 92d63d4 does
        update = rescale_to_orthogonal_norm(update.to(params.dtype))
    update = normalize_variance(update, second_moment, beta2).to(params.dtype)
    # Cautious weight decay: only shrink coordinates the update already pushes toward zero.
    decay_mask = (update * params) >= 0
    params.sub_(lrs * update + lrs * weight_decay * params * decay_mask)


def muon_stack_update(params: list[Tensor], grads: list[Tensor], *state_and_hyperparameters) -> None:
    """muon_update on the stack of same-shape matrices `params`, written back into each of them.
    Compiled as one function, the stacking and the write-back fuse into the update's first and last
    kernels instead of being separate passes over the stack."""
    stacked = torch.stack(params)
    muon_update(torch.stack(grads), stacked, *state_and_hyperparameters)
    torch._foreach_copy_(params, list(stacked.unbind(0)))


def adamw_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr: Tensor,
    beta1: Tensor,
    beta2: Tensor,
    eps: Tensor,
    weight_decay: Tensor,
) -> None:
    """Bias-corrected AdamW with decoupled weight decay, computed in float32 whatever the storage."""
    p, g = param.float(), grad.float()
    m, v = exp_avg.float(), exp_avg_sq.float()
    p.mul_(1 - lr * weight_decay)
    m.lerp_(g, 1 - beta1)
    v.lerp_(g.square(), 1 - beta2)
    denom = (v / (1 - beta2**step)).sqrt() + eps
    p.add_(-(lr / (1 - beta1**step)) * m / denom)
    param.copy_(p)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)


@functools.cache
def compiled_updates():
    """muon_update, muon_stack_update and adamw_update under torch.compile (optim.compile): each becomes a few fused
    kernels instead of dozens of eager passes over the tensors (on CPU the eager step is mostly
    elementwise memory traffic). One graph per tensor shape (dynamic=False, as the reference); the
    hyperparameters arrive as 0-D tensors so a new LR or step does not recompile."""
    updates = (muon_update, muon_stack_update, adamw_update)
    return tuple(torch.compile(update, dynamic=False, fullgraph=True) for update in updates)


def step_count(step: int, compiled: bool) -> int | Tensor:
    """AdamW's step for its bias correction: a 0-D tensor for the compiled update (a Python int would
    be baked into the graph and recompile every step), the int itself for the eager one."""
    return torch.tensor(float(step)) if compiled else step


# the optimizer ---------------------------------------------------------------------------------
class MuonAdamW(torch.optim.Optimizer):
    """Single-process combined optimizer. Groups: one AdamW group per parameter role, one Muon
    group per matrix shape (stacked so a shape's matrices are orthogonalized in one batch).

    Each group carries `initial_lr`; the training loop sets `lr` (and Muon's `momentum` and
    `weight_decay`) from the schedules before every step.
    """

    def __init__(
        self,
        params_by_name: dict[str, Tensor],
        rows: list[ParamRow],
        optim: OptimConfig,
        ortho_dtype: torch.dtype,
        compile: bool = False,
    ):
        groups = []
        adam_groups: dict[tuple, list] = defaultdict(list)
        muon_groups: dict[tuple, list[ParamRow]] = defaultdict(list)
        for row in rows:
            if row.optimizer == "adamw":
                adam_groups[(row.base_lr, row.betas, row.weight_decay)].append(row)
            else:
                muon_groups[row.shape].append(row)
        for (lr, betas, wd), members in adam_groups.items():
            groups.append(
                dict(
                    kind="adamw",
                    params=[params_by_name[r.name] for r in members],
                    names=[r.name for r in members],
                    lr=lr,
                    initial_lr=lr,
                    betas=betas,
                    eps=optim.adamw.eps,
                    weight_decay=wd,
                )
            )
        for members in muon_groups.values():
            groups.append(
                dict(
                    kind="muon",
                    params=[params_by_name[r.name] for r in members],
                    names=[r.name for r in members],
                    lr=members[0].base_lr,
                    initial_lr=members[0].base_lr,
                    multipliers=[r.multiplier for r in members],
                    momentum=optim.muon.momentum,
                    beta2=optim.muon.beta2,
                    weight_decay=members[0].weight_decay,
                    initial_weight_decay=members[0].weight_decay,
                    ns_steps=optim.muon.ns_steps,
                    norm_headroom=optim.muon.norm_headroom,
                    row_equilibration=optim.muon.row_equilibration,
                    norm_rescale=optim.muon.norm_rescale,
                )
            )
        super().__init__(groups, defaults={})
        self.ortho_dtype = ortho_dtype
        self.compiled = compile
        updates = compiled_updates() if compile else (muon_update, muon_stack_update, adamw_update)
        self.muon_update, self.muon_stack_update, self.adamw_update = updates

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            else:
                self._step_muon(group)

    def _step_adamw(self, group: dict) -> None:
        beta1, beta2 = (torch.tensor(b) for b in group["betas"])
        lr, eps, wd = (
            torch.tensor(group["lr"]),
            torch.tensor(group["eps"]),
            torch.tensor(group["weight_decay"]),
        )
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = step_count(state["step"], self.compiled)
            self.adamw_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], step, lr, beta1, beta2, eps, wd)

    def _step_muon(self, group: dict) -> None:
        params = group["params"]
        state = self.state[params[0]]  # the stack's buffers live with its first matrix
        if not state:
            stacked_shape = (len(params), *params[0].shape)
            rows, cols = params[0].shape
            state["momentum_buffer"] = torch.zeros(stacked_shape, dtype=params[0].dtype, device=params[0].device)
            factored = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["second_moment"] = torch.zeros(factored, dtype=torch.float32, device=params[0].device)
        multipliers = torch.tensor(group["multipliers"], dtype=params[0].dtype, device=params[0].device)
        self.muon_stack_update(params, [p.grad for p in params], *self._muon_arguments(group, state, multipliers))

    def _muon_arguments(self, group: dict, state: dict, multipliers: Tensor) -> tuple:
        """muon_update's arguments after (grads, params): the stack's buffers and the group's
        hyperparameters, one list for the single-process and the sharded step."""
        return (
            state["momentum_buffer"],
            state["second_moment"],
            torch.tensor(group["momentum"]),
            (group["lr"] * multipliers).view(-1, 1, 1),
            torch.tensor(group["weight_decay"]),
            torch.tensor(group["beta2"]),
            group["ns_steps"],
            self.ortho_dtype,
            group["norm_headroom"],
            group["row_equilibration"],
            group["norm_rescale"],
        )


class DistMuonAdamW(MuonAdamW):
    """Data-parallel version (recipe section 4). No DDP wrapper: each rank accumulates its own
    gradients, and the step averages them while dividing the work. Each Muon stack (padded to a
    multiple of the world size) is reduce-scattered so a rank owns a contiguous chunk of matrices,
    orthogonalizes only those, and all-gathers the results; AdamW tensors whose first dimension
    splits evenly are reduce-scattered by rows the same way, small ones all-reduced and updated
    everywhere. The math per matrix and per element is the single-process step's, so results agree
    up to the order of the gradient sums; optimizer state lives in shards, one per rank.
    """

    def __init__(self, params_by_name, rows, optim, ortho_dtype, world_size: int, rank: int, compile: bool = False):
        super().__init__(params_by_name, rows, optim, ortho_dtype, compile)
        self.world_size, self.rank = world_size, rank

    @torch.no_grad()
    def step(self, closure=None):
        # Launch every reduction first, so communication overlaps the updates that follow.
        reductions = [(group, self._reduce(group)) for group in self.param_groups]
        gathers = [self._update(group, pending) for group, pending in reductions]
        for finish in gathers:
            finish()

    def _shardable(self, p: Tensor) -> bool:
        return p.shape[0] % self.world_size == 0

    def _reduce(self, group: dict) -> list:
        """Start the gradient reductions of a group: (handle, reduced buffer, input kept alive until
        the collective completes) per tensor or stack."""
        if any(p.grad is None for p in group["params"]):
            raise RuntimeError(f"a parameter of {group['names']} has no gradient; every rank must step every parameter")
        if group["kind"] == "muon":
            grads = self._padded_stack([p.grad for p in group["params"]])
            shard = grads.new_empty(grads.shape[0] // self.world_size, *grads.shape[1:])
            return [(reduce_scatter_flat(shard, grads, async_op=True), shard, grads)]
        pending = []
        for p in group["params"]:
            if self._shardable(p):
                shard = p.grad.new_empty(p.shape[0] // self.world_size, *p.shape[1:])
                pending.append((reduce_scatter_flat(shard, p.grad, async_op=True), shard, p.grad))
            else:
                pending.append((dist.all_reduce(p.grad, async_op=True), p.grad, p.grad))
        return pending

    def _padded_stack(self, tensors: list[Tensor]) -> Tensor:
        chunk = math.ceil(len(tensors) / self.world_size)
        stacked = torch.stack(tensors)
        padding = chunk * self.world_size - len(tensors)
        if padding:
            stacked = torch.cat([stacked, stacked.new_zeros(padding, *stacked.shape[1:])])
        return stacked

    def _update(self, group: dict, pending: list):
        """Wait for the group's reductions, update this rank's share, start the gathers; returns
        a function that waits for the gathers and writes the results into the parameters."""
        if group["kind"] == "muon":
            return self._update_muon(group, *pending[0])
        beta1, beta2 = (torch.tensor(b) for b in group["betas"])
        lr, eps, wd = torch.tensor(group["lr"]), torch.tensor(group["eps"]), torch.tensor(group["weight_decay"])
        gathers = []
        for p, (handle, grad, _) in zip(group["params"], pending, strict=True):
            handle.wait()
            grad /= self.world_size
            sharded = self._shardable(p)
            rows = p.shape[0] // self.world_size
            target = p[self.rank * rows : (self.rank + 1) * rows].clone() if sharded else p
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(target)
                state["exp_avg_sq"] = torch.zeros_like(target)
            state["step"] += 1
            step = step_count(state["step"], self.compiled)
            self.adamw_update(target, grad, state["exp_avg"], state["exp_avg_sq"], step, lr, beta1, beta2, eps, wd)
            if sharded:
                gathers.append(all_gather_flat(p, target, async_op=True))

        def finish():
            for handle in gathers:
                handle.wait()

        return finish

    def _update_muon(self, group: dict, handle, grad_shard: Tensor, stacked_grads: Tensor):
        params = group["params"]
        chunk = grad_shard.shape[0]
        owned = range(self.rank * chunk, min((self.rank + 1) * chunk, len(params)))
        state = self.state[params[0]]
        if not state:
            rows, cols = params[0].shape
            state["momentum_buffer"] = grad_shard.new_zeros(grad_shard.shape)
            factored = (chunk, rows, 1) if rows >= cols else (chunk, 1, cols)
            state["second_moment"] = torch.zeros(factored, dtype=torch.float32, device=grad_shard.device)
        # Padding matrices (past the end of the stack) get LR 0 and stay zero.
        multipliers = torch.zeros(chunk, dtype=params[0].dtype, device=params[0].device)
        multipliers[: len(owned)] = torch.tensor([group["multipliers"][i] for i in owned], dtype=multipliers.dtype)
        shard = torch.zeros_like(grad_shard)
        if len(owned):
            shard[: len(owned)] = torch.stack([params[i] for i in owned])
        handle.wait()
        del stacked_grads  # the reduce-scatter's input, no longer needed
        grad_shard /= self.world_size
        self.muon_update(grad_shard, shard, *self._muon_arguments(group, state, multipliers))
        gathered = shard.new_empty(chunk * self.world_size, *shard.shape[1:])
        gather = all_gather_flat(gathered, shard, async_op=True)

        def finish():
            gather.wait()
            torch._foreach_copy_(params, list(gathered[: len(params)].unbind(0)))

        return finish


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there oneDNN's bf16 matmuls
    run 3-5x faster than float32 ones (measured on a Sapphire Rapids VM, experiments/rope_mlp_lr/
    PERFORMANCE.md); elsewhere bf16 is emulated and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_compile(setting, device_type: str, model_compiled: bool) -> bool:
    """optim.compile: auto compiles where the recipe does (CUDA) and on a CPU whose run compiles its
    model anyway (train.compile; the smoke does not, its 60 steps would not pay the compilation back)."""
    if setting == "auto":
        return device_type == "cuda" or model_compiled
    return setting is True


def resolve_ortho_dtype(name: str, device_type: str, compiled: bool) -> torch.dtype:
    """optim.muon.dtype: auto is bf16 where the recipe orthogonalizes in bf16 (its compiled update,
    on CUDA; on a CPU with bf16 units when the update is compiled) and float32 for the eager CPU
    update, so the smoke and the tests' eager references keep their float32 numbers."""
    if name == "auto":
        bf16 = device_type == "cuda" or (compiled and cpu_has_bf16_matmul())
        name = "bfloat16" if bf16 else "float32"
    return getattr(torch, name)


def build_optimizer(
    model: torch.nn.Module,
    optim: OptimConfig,
    placement: LRPlacement,
    total_batch_tokens: int,
    device_type: str,
    world_size: int = 1,
    rank: int = 0,
    model_compiled: bool = False,
) -> tuple[MuonAdamW, list[ParamRow]]:
    """The recipe's optimizer for `model`; the sharded data-parallel one when world_size > 1. Its
    update math is compiled when optim.compile says so (`resolve_compile`), and Muon orthogonalizes
    in optim.muon.dtype (`resolve_ortho_dtype`)."""
    rows = parameter_table(model, optim, placement, total_batch_tokens)
    compile = resolve_compile(optim.compile, device_type, model_compiled)
    ortho_dtype = resolve_ortho_dtype(optim.muon.dtype, device_type, compile)
    params = dict(model.named_parameters())
    if world_size > 1:
        return DistMuonAdamW(params, rows, optim, ortho_dtype, world_size, rank, compile), rows
    return MuonAdamW(params, rows, optim, ortho_dtype, compile), rows
