"""Bits per byte on a hand-computed example."""

import contextlib
import math

import torch

from harness.eval.bpb import evaluate_bpb


class FixedLosses(torch.nn.Module):
    """A stand-in model whose per-token loss is the target id / 10 nats."""

    def forward(self, inputs, targets, reduction="none"):
        assert reduction == "none"
        return torch.where(targets >= 0, targets.float() / 10, 0.0)


def test_bpb_counts_nats_over_bytes_and_skips_zero_byte_tokens():
    # token ids 0..4 with byte lengths: id 0 is a special token (0 bytes)
    token_bytes = torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)
    targets = torch.tensor([[1, 2, 0, 4], [3, -1, 2, 1]])
    inputs = torch.zeros_like(targets)
    # counted targets: 1,2,4 and 3,2,1 -> nats (0.1+0.2+0.4)+(0.3+0.2+0.1)=1.3, bytes (1+2+4)+(3+2+1)=13
    expected = 1.3 / (math.log(2) * 13)
    got = evaluate_bpb(FixedLosses(), [(inputs, targets)], token_bytes, torch.device("cpu"), contextlib.nullcontext)
    assert abs(got - expected) < 1e-7  # the losses are float32


def test_bpb_sums_over_batches_before_dividing():
    token_bytes = torch.tensor([0, 1, 10], dtype=torch.int32)
    batch_a = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([[1]]))  # 0.1 nats over 1 byte
    batch_b = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([[2]]))  # 0.2 nats over 10 bytes
    got = evaluate_bpb(FixedLosses(), [batch_a, batch_b], token_bytes, torch.device("cpu"), contextlib.nullcontext)
    assert abs(got - 0.3 / (math.log(2) * 11)) < 1e-7
