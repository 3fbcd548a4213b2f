"""harness.memory: the state counted by hand for a tiny parameter table, the storage tracker on a
hand-counted sequence of ops, the traced step against a peak measured on CPU, and the facts the
reference's users know (d24 fits an 80 GB GPU at device batch 16, not 32; d12 fits at 32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from harness import memory, plan
from harness.cli import compose
from harness.optim import ParamRow, parameter_table
from harness.run.spec import resolve_run
from models.gpt import GPT


def row(name, shape, optimizer):
    return ParamRow(name, shape, optimizer, 0.1, 1.0, None if optimizer == "muon" else (0.8, 0.95), 0.0)


def test_state_bytes_by_hand():
    rows = [
        row("transformer.h.0.mlp.c_fc.weight", (8, 2), "muon"),  # three tall matrices: one stack
        row("transformer.h.1.mlp.c_fc.weight", (8, 2), "muon"),
        row("transformer.h.2.mlp.c_fc.weight", (8, 2), "muon"),
        row("transformer.wte.weight", (6, 4), "adamw"),  # rows split over 2 ranks; bf16 on CUDA
        row("resid_lambdas", (3,), "adamw"),  # 3 rows do not split over 2: whole on every rank
    ]
    params, grads, optimizer = memory.state_bytes(rows, "cuda", world_size=2)
    assert params == grads == 3 * 16 * 4 + 24 * 2 + 3 * 4
    # Muon: ceil(3 / 2) = 2 momentum matrices of 16 floats and 2 second-moment rows of 8 floats;
    # AdamW: two moments of the half of wte this rank owns (12 bf16) and of all 3 lambdas.
    assert optimizer == 2 * 16 * 4 + 2 * 8 * 4 + 2 * 12 * 2 + 2 * 3 * 4
    _, _, single = memory.state_bytes(rows, "cpu", world_size=1)
    assert single == 3 * 16 * 4 + 3 * 8 * 4 + 2 * 24 * 4 + 2 * 3 * 4


def test_the_tracker_counts_storages_while_they_live():
    x = torch.ones(1000)  # before the tracker: not counted
    tracker = memory.StoragePeak()
    with tracker:
        y = x * 2  # 4,000 bytes
        z = y + 1  # 8,000 live
        del y  # 4,000
        view = z[:10]  # a view: no new storage
        w = z * view.sum()  # 8,000 again (+ 4 bytes for the sum, freed)
        del z, view, w
    assert tracker.peak == 8004
    assert tracker.live == 0


SMALL = [
    "model=tiny",
    "train=smoke",
    "data.vocab_size=2048",
    "model.aspect_ratio=64",
    "model.sequence_len=256",
    "train.total_batch_tokens=8192",
]
# The step's own peak: /proc's VmHWM, reset to the current RSS just before the step (clear_refs 5), less
# that RSS. Not getrusage's ru_maxrss: Linux carries the peak of the process that exec'd over into it
# (the forking pytest worker's, 1.5 GB late in a CI run, which made this test fail there and nowhere else).
MEASURE = """
import json, sys, torch
from harness.cli import compose
from harness.hardware import proc_status_bytes
from harness.run.build import materialize
from harness.run.spec import resolve_run
plan = resolve_run(compose(json.loads(sys.argv[1])), check_inputs=False, world_size=1)
model = materialize(plan.model, torch.device("cpu"), seed=0)
tokens = torch.randint(0, plan.model.vocab_size, (int(sys.argv[2]), plan.model.sequence_len))
model(tokens[:1], tokens[:1]).backward()  # the first step's one-off allocations, then no grads
model.zero_grad(set_to_none=True)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = proc_status_bytes("VmRSS")
model(tokens, tokens).backward()
print(proc_status_bytes("VmHWM") - before)
"""


# (overrides, device batch): the 32-row case that gives a step of about 1 GB, and a deeper, wider model.
MEASURED_SHAPES = [
    ([], 32),
    (["model.depth=6", "model.aspect_ratio=64"], 8),
]
# glibc's malloc keeps freed heap memory and raises its mmap threshold as large blocks come and go, so a
# process's RSS holds whatever earlier allocations left behind (the same step measured 1,142-1,185 MB
# that way). A fixed threshold of 64 KiB gives every larger block its own mapping, returned to the
# system when freed: RSS then follows the live tensors (957 MB in 4 of 4 runs, 1 or 2 threads).
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("extra, batch", MEASURED_SHAPES)
def test_the_traced_step_matches_the_peak_measured_on_cpu(extra, batch):
    """Method: the step's peak resident memory in a fresh process (peak RSS during one forward and
    backward, less the RSS before it; MEASURE), float32 eager on CPU, large blocks mapped and unmapped one by one
    (MEASURE_ENV), against the estimate's step part. Measured on this 2-core VM: d4 dim 256 at 32 x 256
    tokens, trace 968 MB against 958 MB (+1.1%); d6 dim 384 at 8 x 256, 494 against 455 MB (+8.5%): the
    trace errs on the high side. The bound is 15% either way, so the 35% miss of the unfixed measurement
    fails."""
    overrides = SMALL + extra
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(overrides), str(batch)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **MEASURE_ENV},
    )
    measured_bytes = int(measured.stdout.split()[-1])
    run = resolve_run(compose(overrides), check_inputs=False, world_size=1)
    estimated = memory.traced_step_peak(run.model, batch, autocast_bf16=False, device_type="cpu")
    assert estimated == pytest.approx(measured_bytes, rel=0.15), (estimated, measured_bytes)


def peak_gib(model: str, batch: int) -> float:
    run = resolve_run(compose([f"model={model}", f"train.device_batch_size={batch}"]), check_inputs=False, world_size=1)
    rows = parameter_table(GPT.on_meta(run.model), run.optim, run.placement, run.train.total_batch_tokens)
    return memory.estimate(run.model, rows, batch, "cuda", 1, "auto", compiled=True).peak_gib


@pytest.mark.slow
def test_the_reference_facts_on_an_80_gb_gpu():
    assert peak_gib("d24", 32) > 80
    assert peak_gib("d24", 16) < 80
    assert peak_gib("d12", 32) < 80


def test_the_plan_flags_runs_over_the_gpu_memory_and_writes_the_columns(tmp_path, capsys):
    csv = tmp_path / "plan.csv"
    overrides = ["experiment=smoke", "rope=slice", "mlp_lr=none", "seed=0", "train.device_batch_size=16,8"]
    assert plan.main([*overrides, "--gpu-memory-gib", "0.05", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    import pandas as pd

    table = pd.read_csv(csv)
    assert {"peak_memory_gib", "fits"} <= set(table.columns)
    small, large = sorted(table.itertuples(), key=lambda r: r.device_batch_size)
    assert small.peak_memory_gib < large.peak_memory_gib
    over = table[~table.fits]
    assert len(over) >= 1 and "over --gpu-memory-gib" in out
    with pytest.raises(SystemExit) as exit_info:
        plan.main([*overrides, "--gpu-memory-gib", "0"])
    assert exit_info.value.code == 2
