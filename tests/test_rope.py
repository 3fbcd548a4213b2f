"""rope.split=fused without its requirements fails with one clear line (no Triton needed here)."""

import importlib.util

import pytest
import torch

from models.rotary import SPLITS, fused_unavailable_reason, rotary_tables, rotate_and_normalize


def test_every_mode_is_a_choice_whatever_is_installed():
    # Listed even without Triton, so configs/rope/fused.yaml composes everywhere; running it is what fails.
    assert SPLITS == ("slice", "chunk", "fused")


def test_fused_without_triton_names_the_missing_package(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "triton" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    reason = fused_unavailable_reason("cuda")
    assert reason is not None and "needs Triton" in reason and "pip install" in reason


def test_fused_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("without Triton the missing package is reported first")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cos, sin = rotary_tables(8, 16, 10000.0)
    with pytest.raises(RuntimeError, match="rope.split=fused runs on CUDA tensors, not cpu"):
        rotate_and_normalize(torch.randn(1, 8, 2, 16), cos, sin, "fused")


def test_slice_and_chunk_normalize_after_rotating():
    torch.manual_seed(0)
    cos, sin = rotary_tables(8, 16, 10000.0)
    x = torch.randn(2, 8, 3, 16)
    for split in ("slice", "chunk"):
        z = rotate_and_normalize(x, cos, sin, split)
        torch.testing.assert_close(z.square().mean(-1), torch.ones(2, 8, 3))
