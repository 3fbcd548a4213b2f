"""Shared test setup: no test reads or writes the user's ~/.cache/ablate.

One data directory per test session, so the builtin corpus's tokenizer and tokenized documents
are built once and shared by every test that trains.
"""

import os

import pytest
import torch

# Triton decides at import whether its jit functions (its own reductions included) run in the CPU
# interpreter. torchao and torch.compile may import Triton before tests/test_rope_fused.py does, so
# without a GPU the interpreter is switched on for the whole session, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def session_data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ablate_data")
    previous = os.environ.get("ABLATE_DATA_DIR")
    os.environ["ABLATE_DATA_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("ABLATE_DATA_DIR", None)
    else:
        os.environ["ABLATE_DATA_DIR"] = previous


@pytest.fixture
def plan_without_memory(monkeypatch):
    """harness.plan with its memory column stubbed (1 GiB, the planned batch fits): for tests of the
    plan's other columns, where the d12-d24 step traces would cost minutes of CI. The estimate itself
    is tested in tests/test_memory.py."""
    from harness import plan

    monkeypatch.setattr(plan, "_peak_memory", lambda run, device_batch, world_size, limit_gib: (1.0, device_batch))
