"""Issue 27, items 6 and 7: the README's benchmark commands work where it says, and a batch-size
error names a device batch that works. Real processes where the item is about a command."""

import subprocess
import sys
from pathlib import Path

import torch

from harness.bench.common import cpu_batch, cpu_defaults
from harness.cli import compose
from harness.config import grad_accum_steps, train_config

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_bench_help_lists_suite():
    result = run("-m", "harness.bench", "--help")
    assert result.returncode == 0 and "{throughput,ab,rope,suite}" in result.stdout
    assert "\n    suite " in result.stdout


def test_a_named_model_on_cpu_gets_a_batch_that_divides():
    """`ablate-bench throughput model=d12` on CPU: train=smoke's 2,048 tokens in rows of 16 cannot hold
    d12's 2,048-token sequences; one row of one sequence does."""
    cpu = torch.device("cpu")
    overrides = ["model=d12", "model.window_pattern=L"]
    defaults = cpu_defaults(overrides, cpu)
    cfg = compose([*defaults, *cpu_batch(overrides, defaults, cpu), *overrides])
    assert cfg.model.sequence_len == 2048  # configs/model/d12.yaml
    train = train_config(cfg)
    assert (train.device_batch_size, train.total_batch_tokens) == (1, 2048)
    assert grad_accum_steps(train, 2048, 1) == 1
    assert cpu_batch(["model=tiny"], cpu_defaults(["model=tiny"], cpu), cpu) == []  # smoke's batch divides
    assert cpu_batch(["model=d12", "train.device_batch_size=2"], [], cpu) == []  # the user chose
    assert cpu_batch(overrides, [], torch.device("cuda")) == []


def test_bench_rope_on_cpu_says_how_long_it_will_take(tmp_path):
    result = run("-m", "harness.bench", "rope", "--device", "cpu", "--depths", "4", "6", "--blocks", "2", "--iters",
                 "1", "--warmup", "0", "--out", str(tmp_path / "rope.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CPU: the first of 2 depths took" in result.stderr
    assert "(24 timed blocks of 1 iterations in all); the rest will take at least" in result.stderr  # 2x2x2x3


def test_a_batch_error_names_a_device_batch_that_divides():
    # d12's recipe batch: 524,288 tokens = 256 rows of 2,048; 48 rows does not divide it, 32 (the
    # largest divisor of 256 up to 48) does.
    assert 524_288 % (48 * 2048) and 524_288 % (32 * 2048) == 0 and all(256 % b for b in range(33, 49))
    result = run("-m", "harness.plan", "model=d12", "train.device_batch_size=48", timeout=300)
    assert result.returncode == 2
    assert result.stderr == (
        "error: train.total_batch_tokens=524288 is not divisible by train.device_batch_size x model.sequence_len "
        "x world_size = 48 x 2048 x 1 = 98304; a device batch that divides it: train.device_batch_size=32 "
        "(8 accumulation step(s))\n"
    )
