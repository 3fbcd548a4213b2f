"""The model and its training step, built the one way training, `harness.bench` and
`harness.evaluate` share: storage dtypes, init, precision conversion, compilation, optimizer step.

Builders take the typed `RunSpec` (or a GPTConfig and a device) and return objects; they must not
read the run directory, log metrics or decide anything about a run's life.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from harness.data import build_tokenizer, val_batches
from harness.data.tokenizer import Tokenizer
from harness.distributed import broadcast_parameters, gather_to_main
from harness.optim import build_optimizer
from harness.precision import convert_for_training
from harness.run.spec import RunSpec
from models.gpt import GPT, GPTConfig


def autocast_for(device: torch.device, dtype: str):
    """A context factory: bf16 autocast on CUDA (the recipe), plain float32 on CPU."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def materialize(config: GPTConfig, device: torch.device, seed: int) -> GPT:
    """The network on `device` with the recipe's init (seeded) and the recipe's storage dtypes."""
    model = GPT.on_meta(config)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()
    if device.type == "cuda":
        # The recipe keeps embedding tables in bf16 on the GPU (half the memory and traffic).
        model.transformer.wte.to(torch.bfloat16)
        model.value_embeds.to(torch.bfloat16)
    return model


def build_model(spec: RunSpec) -> GPT:
    model = materialize(spec.model, spec.device, spec.seed)
    convert_for_training(model, spec.precision, spec.device)  # precision=fp8: float8 Linear layers, before compile
    broadcast_parameters(model)  # every rank starts from rank 0's weights, whatever its RNG did
    return model


def compile_for_training(model: GPT, spec: RunSpec):
    """torch.compile when train.compile is set (on CPU too: the smoke turns it off, its steps are too few
    to pay back the compilation); the eager model otherwise."""
    if spec.train.compile:
        return torch.compile(model, dynamic=False)
    return model


def optimizer_step(
    step_model, model: GPT, optimizer, batches, grad_accum: int, device: torch.device, autocast
) -> torch.Tensor:
    """Accumulate gradients over `grad_accum` micro-batches, then step; returns the mean loss
    (a device tensor, so no host sync happens here)."""
    total = torch.zeros((), device=device)
    for _ in range(grad_accum):
        inputs, targets = next(batches)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            loss = step_model(inputs, targets)
        (loss / grad_accum).backward()
        total += loss.detach()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return total / grad_accum


@dataclass
class TrainingStep:
    """A spec's model, compiled step and optimizer (this rank's shard); given `batches`, `step()`
    takes one optimizer step as the trainer does and returns the loss after the trainer's host sync."""

    spec: RunSpec
    model: GPT
    step_model: Callable
    optimizer: torch.optim.Optimizer
    param_rows: list
    autocast: Callable
    batches: Iterator | None = None

    @property
    def compiled(self) -> bool:
        return self.step_model is not self.model

    def step(self) -> float:
        spec = self.spec
        loss = optimizer_step(
            self.step_model, self.model, self.optimizer, self.batches, spec.grad_accum, spec.device, self.autocast
        )
        return loss.item()  # the trainer's per-step host sync, kept for a like-for-like step


def build_training_step(spec: RunSpec) -> TrainingStep:
    """The model (build_model), its compiled step, the optimizer (this rank's shard) and autocast:
    the one builder of a training step, for the trainer and every benchmark."""
    model = build_model(spec)
    step_model = compile_for_training(model, spec)
    optimizer, param_rows = build_optimizer(
        model,
        spec.optim,
        spec.placement,
        spec.train.total_batch_tokens,
        spec.device.type,
        spec.dist.world_size,
        spec.dist.rank,
        model_compiled=spec.train.compile,
    )
    return TrainingStep(spec, model, step_model, optimizer, param_rows, autocast_for(spec.device, spec.train.dtype))


@dataclass
class RunData:
    """The tokenizer and this rank's validation batches: loading them is the last data check."""

    tokenizer: Tokenizer
    val_batches: list

    @classmethod
    def load(cls, spec: RunSpec) -> RunData:
        tokenizer = spec.tokenizer or build_tokenizer(spec.data)  # the preflight's, when it loaded one
        batches = val_batches(
            spec.data,
            tokenizer,
            spec.train.device_batch_size,
            spec.model.sequence_len,
            spec.evals.val_tokens,
            spec.dist.rank,
            spec.dist.world_size,
        )
        return cls(tokenizer, batches)

    def fingerprint(self) -> str | None:
        """What the run is trained on, on rank 0 (None elsewhere; every rank must call it): the
        tokenizer's digest (BPE trained on the training split, so another training text gives another
        tokenizer) and a digest of the validation rows (the held-out text itself). Both are in
        memory already, so it costs one hash of eval.val_tokens tokens, and neither depends on the
        world size or the batch size; file listings would miss a folder rewritten in place."""
        rows = [
            hashlib.sha256(inputs.numpy().tobytes() + targets.numpy().tobytes()).hexdigest()
            for batch_inputs, batch_targets in self.val_batches
            for inputs, targets in zip(batch_inputs.cpu(), batch_targets.cpu(), strict=True)
            if bool((targets >= 0).any())  # the padding of a last batch is not data
        ]
        every_rank = gather_to_main({"rows": rows})
        if every_rank is None:
            return None
        digest = hashlib.sha256(self.tokenizer.digest().encode())
        for entry in every_rank:  # rank order: the rows' order, whatever the world size
            for row in entry["rows"]:
                digest.update(row.encode())
        return digest.hexdigest()[:16]
