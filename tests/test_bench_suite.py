"""`python -m harness.bench suite` at the tiny size on CPU: every case is measured or skipped with its
reason, and the JSON and the Markdown table have the documented format (PERFORMANCE.md). Timings are
not checked: on a CPU they mean nothing."""

from __future__ import annotations

import json

import pytest

from harness import plan
from harness.bench import cli as bench
from harness.bench.suite import CASE_NAMES, Settings, derived_ratios, run_suite
from harness.cli import compose
from harness.run.spec import resolve_run

# The smallest shapes the tiny model takes: one 256-token step; vocab 512 (the launcher case trains a
# real tokenizer, which needs at least 265 ids: bytes and specials).
TINY = ["train.device_batch_size=2", "train.total_batch_tokens=256", "data.vocab_size=512"]
CUDA_ONLY = {"attention_L_flex", "attention_SSSL_flex", "rope_fused"}
RECORD_KEYS = {"benchmark", "device", "gpu_name", "base_overrides", "steps", "warmup_steps", "rounds", "budget_s"}
RECORD_KEYS |= {"cases", "elapsed_s", "ratios", "command", "date", "git_commit", "torch_version"}


@pytest.mark.slow
def test_the_tiny_suite_measures_or_explains_every_case(tmp_path, capsys):
    # optim.compile's compile time on 2 CPU cores is what tests/test_optim_compile.py already pays.
    bench.main(["suite", *TINY, "--device", "cpu", "--tiny", "--skip", "optimizer", "--out-dir", str(tmp_path)])
    (json_path,) = tmp_path.glob("suite-cpu-*.json")
    record = json.loads(json_path.read_text())
    assert RECORD_KEYS <= set(record) and record["benchmark"] == "suite"
    cases = {c["name"]: c for c in record["cases"]}
    assert [c["name"] for c in record["cases"]] == list(CASE_NAMES)
    for name, case in cases.items():
        if name in CUDA_ONLY:
            assert case["status"] == "skipped" and "CUDA" in case["reason"], case
        elif name == "optimizer":
            assert case == {"name": "optimizer", "status": "skipped", "reason": "--skip"}
        else:
            assert case["status"] == "measured", case
    assert cases["matmul"]["matmul_tflops"] > 0
    for name in ("attention_L_sdpa", "attention_L_auto", "attention_SSSL_sdpa", "attention_SSSL_auto"):
        assert cases[name]["tok_per_s"] > 0 and cases[name]["peak_memory_gib"] > 0
    for name, b in (("ab_rope_bf16", "rope=chunk"), ("ab_rope_fp8", "precision=fp8"), ("fp8_vs_bf16", "precision=fp8")):
        assert b in cases[name]["b"] and len(cases[name]["a_step_times_s"]) == len(cases[name]["b_step_times_s"]) == 1
    assert cases["launcher"]["torchrun_over_plain"] > 0
    # The memory case estimates what ablate-plan estimates for the same run (one process, CPU dtypes).
    (shape,) = cases["memory"]["shapes"]
    plan_run = resolve_run(
        compose(["model=tiny", "train=smoke", "data.vocab_size=512", "train.device=cpu", "train.device_batch_size=2"]),
        check_inputs=False,
        world_size=1,
    )
    planned_gib, _ = plan._peak_memory(plan_run, 2, 1, 80.0)
    assert shape["estimated_peak_gib"] == pytest.approx(planned_gib) and shape["measured_peak_gib"] > 0
    assert shape["estimate_error"] == pytest.approx(shape["estimated_peak_gib"] / shape["measured_peak_gib"] - 1)
    assert ratios_key(shape) in record["ratios"]
    ratios = record["ratios"]
    assert ratios["chunk_over_slice_bf16"] == cases["ab_rope_bf16"]["b_over_a"]
    assert ratios["fused_over_slice"] is None and ratios["optimizer_compiled_speedup"] is None

    table = json_path.with_suffix(".md").read_text()
    assert table.startswith("# harness.bench suite: cpu (cpu)")
    assert "| case | result | peak GiB | note |" in table and "| ratio | value |" in table
    for name in CASE_NAMES:
        assert f"| {name} |" in table
    assert "| rope_fused | - | - | skipped: rope=fused" in table
    assert "CPU numbers only check the code path" in capsys.readouterr().out


def ratios_key(shape: dict) -> str:
    return f"memory_{shape['model']}_x{shape['device_batch_size']}_estimated_over_measured"


def test_ratios_are_computed_from_the_cases():
    measured = {"status": "measured"}
    cases = {
        "matmul": {**measured, "matmul_tflops": 500.0},
        "attention_L_auto": {**measured, "tok_per_s": 400_000.0, "flops_per_token": 887_102_208},
        "attention_SSSL_auto": {**measured, "tok_per_s": 390_000.0},
        "ab_rope_bf16": {**measured, "a_tok_per_s": 380_000.0, "b_tok_per_s": 400_000.0, "b_over_a": 1.05},
        "rope_fused": {**measured, "tok_per_s": 420_000.0},
        "optimizer": {"status": "skipped", "compiled_speedup": 3.0},
        "memory": {**measured, "shapes": [{"model": "d24", "device_batch_size": 16, "estimated_peak_gib": 70.0}]},
    }
    cases["memory"]["shapes"][0]["measured_peak_gib"] = 64.0
    ratios = derived_ratios(cases)
    assert ratios["L_auto_mfu_vs_matmul"] == pytest.approx(400_000 * 887_102_208 / 500e12)
    assert ratios["SSSL_auto_over_L_auto"] == pytest.approx(0.975)
    assert ratios["SSSL_flex_over_L_auto"] is None  # not measured
    assert ratios["fused_over_slice"] == pytest.approx(420 / 380) and ratios["fused_over_chunk"] == pytest.approx(1.05)
    assert ratios["optimizer_compiled_speedup"] is None  # a skipped case gives no ratio
    assert ratios["memory_d24_x16_estimated_over_measured"] == pytest.approx(70 / 64)


def test_a_spent_budget_skips_the_case_and_says_why():
    import torch

    settings = Settings(torch.device("cpu"), [], 1, 0, 1, budget_s=0.0, skip=set(), only={"matmul"})
    cases = run_suite(settings, tiny=True, progress=lambda _: None)["cases"]
    assert cases[0]["status"] == "skipped" and cases[0]["reason"].startswith("time budget: ")
    assert all(c["reason"] == "not in --only" for c in cases[1:])
