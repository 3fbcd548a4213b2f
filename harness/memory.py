"""Peak memory per GPU of one training step, estimated before launch and without a GPU.

Two parts, added:
- **State that lives through the step**, counted from the parameter shapes: the parameters in
  their storage dtypes (float32 masters; the embedding tables in bf16 on CUDA, as `materialize`
  stores them), their gradients (same dtype), and the optimizer state as `DistMuonAdamW` shards it
  over the world size: AdamW's two moments for every non-Muon tensor (split by rows when the first
  dimension divides evenly, else whole on every rank), Muon's momentum for ceil(N / world) matrices
  of each same-shape stack, and its factored float32 second moment.
- **What the step allocates on top**, traced: one forward and backward of the real model at the
  device batch and sequence length run under torch's FakeTensorMode (shapes and dtypes only: no
  memory, no compute), with bf16 autocast where the run would use it, while a dispatch mode adds up
  the bytes of every storage the ops create and frees them when the last reference goes. Its peak
  (activations saved for backward, the float32 logits, the gradients as they accumulate) is what the
  step needs beyond the parameters and optimizer state. The optimizer step's own temporaries (one
  Muon stack at a time) are smaller than that at every recipe size and are not traced.

The trace runs the CPU kernels (CUDA tensors cannot be faked on a CPU-only build). Attention is
traced with the fused kernels that keep only the output and its log-sum-exp (as flash and
FlexAttention on a GPU do). With `train.compile` the traced step is the one torch.compile partitions
(what backward recomputes is not saved; on d24 at device batch 16 that is 61.5 GiB against eager's
71.0); Inductor's fusion inside each graph only lowers it further. float8 (`precision=fp8`) is counted
as bf16: it saves its matmul inputs in 8 bits, so this is an upper bound. Validated on CPU against the
process's measured peak (`tests/test_memory.py`, malloc made to return every large block: the trace is
1-9% above the measured RSS at four small shapes); on a GPU, `python -m harness.bench suite --only memory`
compares it with the CUDA allocator's peak at d12 and d24, whose fragmentation is not modelled.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from harness.optim import ParamRow
from models.gpt import GPT, GPTConfig

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by part; `peak` is what the step needs at its highest point."""

    params: int
    grads: int
    optimizer: int
    step_peak: int  # traced: activations and gradients at the step's highest point

    @property
    def peak(self) -> int:
        # Gradients are part of the traced peak (backward creates them), so they are not added twice.
        return self.params + self.optimizer + self.step_peak

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB


# the state that lives through the step -------------------------------------------------------
def stored_dtype(name: str, device_type: str) -> torch.dtype:
    """The dtype `harness.run.build.materialize` stores a parameter in: embedding tables bf16 on CUDA."""
    if device_type == "cuda" and (name == "transformer.wte.weight" or name.startswith("value_embeds.")):
        return torch.bfloat16
    return torch.float32


def state_bytes(rows: list[ParamRow], device_type: str, world_size: int) -> tuple[int, int, int]:
    """(params, grads, optimizer state) in bytes on one rank, as DistMuonAdamW shards the state."""
    params = optimizer = 0
    stacks: dict[tuple[int, ...], list[ParamRow]] = {}
    for row in rows:
        size = row.numel * stored_dtype(row.name, device_type).itemsize
        params += size
        if row.optimizer == "muon":
            stacks.setdefault(row.shape, []).append(row)
            continue
        shardable = world_size > 1 and row.shape[0] % world_size == 0
        optimizer += 2 * (size // world_size if shardable else size)  # exp_avg and exp_avg_sq
    for shape, members in stacks.items():
        chunk = math.ceil(len(members) / world_size)
        rows_, cols = shape
        optimizer += chunk * rows_ * cols * 4  # momentum, in the (float32) parameters' dtype
        optimizer += chunk * (rows_ if rows_ >= cols else cols) * 4  # factored second moment, float32
    return params, params, optimizer


# what the step allocates on top ---------------------------------------------------------------
class StoragePeak(TorchDispatchMode):
    """Adds up the bytes of the storages ops create, less those whose last reference is gone; keeps the
    highest total. Storages that exist before the mode starts (the parameters) are not counted."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key = id(storage)
        if key in self._seen and self._seen[key]() is storage:
            return
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)

        def freed(_, key=key, size=size):
            self.live -= size
            self._seen.pop(key, None)

        self._seen[key] = weakref.ref(storage, freed)


def fake_model(config: GPTConfig, device_type: str) -> GPT:
    """The model with fake parameters in the run's storage dtypes; call inside a FakeTensorMode."""
    model = GPT(config)
    model.init_weights()  # fills the rotary tables; the (fake) values are never read
    if device_type == "cuda":  # as `harness.run.build.materialize` stores them (Module.to cannot swap fakes)
        for table in [model.transformer.wte, *model.value_embeds.values()]:
            table.weight = torch.nn.Parameter(table.weight.detach().to(torch.bfloat16))
    return model


def traced_step_peak(
    config: GPTConfig, device_batch: int, autocast_bf16: bool, device_type: str, compiled: bool = False
) -> int:
    """Peak bytes one forward and backward allocates beyond the parameters (see the module docstring).
    `compiled`: the step as torch.compile partitions it (AOTAutograd's min-cut partitioner, which
    recomputes cheap elementwise results in backward instead of saving them), its graphs run on
    the fake tensors; otherwise the eager step."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = StoragePeak()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = fake_model(config, device_type)
        tokens = torch.zeros(device_batch, config.sequence_len, dtype=torch.long)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    if compiled:
        step_model = torch.compile(model, backend=_tracked_partition_backend(tracker), dynamic=False)
        with autocast:
            loss = step_model(tokens, tokens)
        loss.backward()
        torch._dynamo.reset()  # the graphs hold fake tensors of this trace
        return tracker.peak
    with tracker:
        with autocast:
            loss = model(tokens, tokens)
        loss.backward()
    return tracker.peak


def _tracked_partition_backend(tracker: StoragePeak):
    """A torch.compile backend that partitions forward and backward as Inductor's does and runs each
    graph as it is (no kernels to build), under `tracker`."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    def tracked(graph_module, _example_inputs):
        def run(args):
            with tracker:
                return graph_module(*args)

        run._boxed_call = True
        return run

    return aot_autograd(fw_compiler=tracked, bw_compiler=tracked, partition_fn=min_cut_rematerialization_partition)


@functools.cache
def _cached_step_peak(config: GPTConfig, device_batch: int, autocast_bf16: bool, device_type: str, compiled: bool):
    return traced_step_peak(config, device_batch, autocast_bf16, device_type, compiled)


def estimate(
    config: GPTConfig,
    rows: list[ParamRow],
    device_batch: int,
    device_type: str,
    world_size: int,
    dtype: str,
    compiled: bool = False,
) -> MemoryEstimate:
    """Peak memory per device of a training step (`dtype` as train.dtype: auto is bf16 on CUDA;
    `compiled` as train.compile)."""
    autocast_bf16 = dtype == "bfloat16" or (dtype == "auto" and device_type == "cuda")
    params, grads, optimizer = state_bytes(rows, device_type, world_size)
    step_peak = _cached_step_peak(config, device_batch, autocast_bf16, device_type, compiled)
    return MemoryEstimate(params=params, grads=grads, optimizer=optimizer, step_peak=step_peak)


def largest_fitting_batch(
    config: GPTConfig,
    rows: list[ParamRow],
    device_batch: int,
    device_type: str,
    world_size: int,
    dtype: str,
    compiled: bool,
    limit_bytes: float,
) -> int:
    """The largest power-of-two device batch below `device_batch` whose estimate fits under
    `limit_bytes` (0 if not even 1 does). The step's peak grows linearly with the batch (activations)
    above a constant (gradients), so two traces place the guess; traces then confirm it."""

    def peak(batch: int) -> int:
        return estimate(config, rows, batch, device_type, world_size, dtype, compiled).peak

    one, full = peak(1), peak(device_batch)
    per_row = (full - one) / max(device_batch - 1, 1)
    guess = 1 + (limit_bytes - one) / per_row if per_row > 0 else device_batch
    batch = 2 ** int(math.floor(math.log2(guess))) if guess >= 1 else 0
    batch = min(batch, device_batch // 2)
    while batch >= 1 and peak(batch) > limit_bytes:
        batch //= 2
    return batch
