"""`python -m harness.bench` runs end to end on CPU at tiny sizes and writes the keys its readers
need. Timings are not checked: on a CPU they mean nothing, and a benchmark is not a test."""

import json

import pytest

from harness.bench import cli as bench
from harness.bench.common import cpu_defaults
from harness.bench.rope import ROPE_KINDS, rope_traffic_bytes, time_interleaved

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
    bench.main([*argv, "--blocks", "3", "--iters", "2", "--warmup", "0", "--out", str(out)])
    record = json.loads(out.read_text())
    assert {r["split"] for r in record["results"]} == {"slice", "chunk"}
    assert "fused" in record["skipped"]  # CUDA only
    assert record["reference_split"] == "slice" and record["blocks"] == 3
    for r in record["results"]:
        assert r["shape"] == [1, 16, 6, 128]
        assert {"forward_ms", "backward_ms", "forward_backward_ms", "floor_backward_ms"} <= set(r)
        assert len(r["forward_backward_block_ms"]) == 3
        assert r["forward_backward_ms"] == pytest.approx(sum(r["forward_backward_block_ms"]) / 3)
    chunk = next(r for r in record["results"] if r["split"] == "chunk")
    slice_ = next(r for r in record["results"] if r["split"] == "slice")
    ratio = sum(chunk["backward_block_ms"]) / sum(slice_["backward_block_ms"])
    assert chunk["backward_delta_pct"] == pytest.approx(100 * (ratio - 1))
    low, high = chunk["backward_ci_low_pct"], chunk["backward_ci_high_pct"]  # null: unbounded on a noisy machine
    assert (low is None or low <= chunk["backward_delta_pct"]) and (high is None or chunk["backward_delta_pct"] <= high)
    assert "forward_backward_delta_pct" not in slice_  # the reference
    printed = capsys.readouterr().out
    assert "bwd/floor" in printed and "fwd+bwd vs slice [95% CI]" in printed


def test_rope_splits_take_turns_block_by_block():
    calls = []
    cases = {s: {k: (lambda _, s=s, k=k: calls.append((s, k)), None) for k in ROPE_KINDS} for s in "abc"}
    import torch

    time_interleaved(cases, torch.device("cpu"), blocks=3, iters=1, warmup=0)
    order = [s for s, k in calls if k == "forward"]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_rope_traffic_at_d12_shapes():
    """B=32, T=2048, 6 heads of 128 in bf16: 50.3M elements per tensor, q and k both."""
    n = 32 * 2048 * 6 * 128
    rows = n // 128
    tables = 2 * 2048 * 64 * 4
    traffic = rope_traffic_bytes(32, 2048, 6, 128, element_size=2)
    assert traffic["forward"] == 2 * (4 * n + 4 * rows) + tables
    assert traffic["backward"] == 2 * (6 * n + 4 * rows) + tables
    # ~0.2 ms at 3 TB/s, the figure in the recipe notes
    assert 0.19e-3 < traffic["backward"] / 3e12 < 0.21e-3


def test_cpu_defaults_fill_only_unnamed_keys():
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cpu_defaults([], cpu) == ["model=tiny", "train=smoke", "data.vocab_size=2048"]
    assert cpu_defaults(["model=d12"], cpu) == ["train=smoke", "data.vocab_size=2048"]
    assert cpu_defaults([], cuda) == []


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


@pytest.fixture()
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads than cores spin against each other
    and make a tiny step 20x slower and far noisier."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ab(tmp_path, a, b, *options):
    out = tmp_path / "ab.json"
    bench.main(["ab", a, b, *TINY, "--device", "cpu", *options, "--out", str(out)])
    return json.loads(out.read_text())


def test_ab_a_against_itself_holds_zero_in_its_interval(tmp_path, one_thread, capsys):
    # A 95% interval misses 0 in 5% of A/A runs by design; a second independent try fails with it
    # only 0.25% of the time, while an interval that is biased or too narrow fails both.
    for _ in range(2):
        record = _ab(tmp_path, "", "", "--blocks", "8", "--steps-per-block", "2", "--warmup", "1")
        low, high = record["ci_low_pct"], record["ci_high_pct"]  # null: unbounded (noise swamped the signal)
        if (low is None or low <= 0) and (high is None or 0 <= high):
            break
    assert (low is None or low <= 0) and (high is None or 0 <= high), record
    assert record["verdict"] == "no difference detected"
    assert len(record["block_times_a_s"]) == len(record["block_times_b_s"]) == 8
    assert record["order"] == "ABBAABBAABBAABBA"  # interleaved, each pair of blocks in both orders
    assert record["config_a"]["resolved"] == record["config_b"]["resolved"]
    assert record["device"] == "cpu" and record["command"].startswith("python -m harness.bench ab")
    assert "B vs A step time" in capsys.readouterr().out


def test_ab_finds_a_deeper_model_slower_and_its_statistics_are_the_paired_t(tmp_path, one_thread):
    from scipy import stats

    # 8 blocks of 2 steps: with 4 of 1 (its first form), one block slowed by a neighbouring process
    # (CI, 2026-12-06: +259%, p 0.0004) left the baseline's mean too uncertain for a bounded ratio interval.
    record = _ab(tmp_path, "rope=slice", "rope=chunk model.depth=8", "--blocks", "8", "--steps-per-block", "2")
    a, b = (record[f"block_times_{s}_s"] for s in "ab")
    assert record["ci_low_pct"] > 0 and record["verdict"] == "B slower"
    assert record["delta_pct"] == pytest.approx(100 * (sum(b) / sum(a) - 1))
    assert record["p_value"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert record["config_b"]["model_depth"] == 8 and record["config_b"]["rope_split"] == "chunk"
    assert record["config_a"]["model_depth"] == 4 and record["config_a"]["rope_split"] == "slice"
    assert record["config_b"]["overrides"][-2:] == ["model.depth=8", "train.device=cpu"]


def test_ab_needs_two_blocks(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["ab", "", "", "--blocks", "1"])
    assert exit_info.value.code == 2
    assert "--blocks must be at least 2" in capsys.readouterr().err
