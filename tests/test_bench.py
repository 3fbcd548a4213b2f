"""`python -m harness.bench` runs end to end on CPU at tiny sizes and writes the keys its readers
need. Timings are not checked: on a CPU they mean nothing, and a benchmark is not a test."""

import json

import pytest

from harness import bench

# What `python -m harness.plan --throughput FILE` and the PERFORMANCE.md tables read.
THROUGHPUT_KEYS = {
    "model_depth",
    "window_pattern",
    "sequence_len",
    "tok_per_s",
    "gpu_name",
    "world_size",
    "flops_per_token",
    "mfu",
    "matmul_tflops",
    "mfu_vs_matmul",
    "peak_memory_gib",
    "attention",
    "rope_split",
    "command",
    "date",
    "torch_version",
}
TINY = ["train.device_batch_size=2", "train.total_batch_tokens=256", "data.vocab_size=256"]


def test_throughput_smoke_writes_the_plan_keys(tmp_path, capsys):
    out, trace = tmp_path / "throughput.json", tmp_path / "trace.json"
    argv = ["throughput", *TINY, "--device", "cpu", "--steps", "1", "--warmup", "0", "--out", str(out)]
    bench.main([*argv, "--profile", str(trace)])
    record = json.loads(out.read_text())
    assert THROUGHPUT_KEYS <= set(record)
    assert record["model_depth"] == 4 and record["window_pattern"] == "SSSL"  # the CPU default, model=tiny
    assert record["tok_per_s"] > 0 and len(record["step_times_s"]) == 1
    assert record["mfu"] is None and record["gpu_name"] == "cpu"  # no datasheet peak for a CPU
    assert record["command"].startswith("python -m harness.bench throughput")
    printed = capsys.readouterr().out
    assert "tok/s" in printed and "CPU float32: only checks the code path" in printed
    assert "traceEvents" in trace.read_text()  # a Chrome trace

    from harness.plan import load_throughputs

    assert load_throughputs(out)[0]["tok_per_s"] == record["tok_per_s"]


def test_rope_smoke_times_every_split_it_can(tmp_path, capsys):
    out = tmp_path / "rope.json"
    argv = ["rope", "--device", "cpu", "--depths", "12", "--batch", "1", "--seq-len", "16"]
    bench.main([*argv, "--iters", "1", "--warmup", "0", "--out", str(out)])
    record = json.loads(out.read_text())
    assert {r["split"] for r in record["results"]} == {"slice", "chunk"}
    assert "fused" in record["skipped"]  # CUDA only
    for r in record["results"]:
        assert r["shape"] == [1, 16, 6, 128]
        assert {"forward_ms", "backward_ms", "forward_backward_ms", "floor_backward_ms"} <= set(r)
    assert "bwd/floor" in capsys.readouterr().out


def test_rope_traffic_at_d12_shapes():
    """B=32, T=2048, 6 heads of 128 in bf16: 50.3M elements per tensor, q and k both."""
    n = 32 * 2048 * 6 * 128
    rows = n // 128
    tables = 2 * 2048 * 64 * 4
    traffic = bench.rope_traffic_bytes(32, 2048, 6, 128, element_size=2)
    assert traffic["forward"] == 2 * (4 * n + 4 * rows) + tables
    assert traffic["backward"] == 2 * (6 * n + 4 * rows) + tables
    # ~0.2 ms at 3 TB/s, the figure in the recipe notes
    assert 0.19e-3 < traffic["backward"] / 3e12 < 0.21e-3


def test_cpu_defaults_fill_only_unnamed_keys():
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench.cpu_defaults([], cpu) == ["model=tiny", "train=smoke", "data.vocab_size=2048"]
    assert bench.cpu_defaults(["model=d12"], cpu) == ["train=smoke", "data.vocab_size=2048"]
    assert bench.cpu_defaults([], cuda) == []


@pytest.mark.parametrize(
    "argv,message",
    [
        (["rope", "--device", "cpu", "--splits", "twist"], "--splits 'twist' is not one of: slice, chunk, fused"),
        (["throughput", "model=d13", "--device", "cpu"], "model=d13 is not an option"),
    ],
)
def test_user_mistakes_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
