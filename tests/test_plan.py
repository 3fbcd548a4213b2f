"""Sweep planning: the runs a multirun would launch, their compute and cost, and seeds needed."""

import json
import subprocess
import sys

import pytest

from harness import plan
from harness.results.synthetic import write_sweep

# nanochat d12 at vocab 32768 (the recipe's reference counts): transformer matrices + lm_head.
D12_SCALING_PARAMS = 84_935_808 + 25_165_824
D12_MATMUL_PARAMS = 286_262_424 - 25_165_824 - 150_994_944 - 24  # total - wte - value embeds - scalars
# SSSL over 12 layers: 9 layers see 1024 keys, 3 (incl. the last) see 2048; 6 heads of 128.
D12_ATTENTION_FLOPS = 12 * 6 * 128 * (9 * 1024 + 3 * 2048)


def test_smoke_experiment_is_sixteen_runs():
    runs = plan.planned(["experiment=smoke"])
    assert len(runs) == 16
    assert {r.overrides.split()[0] for r in runs} == {"rope=slice", "rope=chunk"}
    assert len({r.overrides for r in runs}) == 16
    assert all(r.depth == 4 and r.steps == 60 and r.gpus == 0 and r.estimate == "CPU run" for r in runs)
    assert all(r.tokens == 60 * 2048 for r in runs)  # train/smoke: 60 steps of 2,048 tokens


def test_command_line_sweeps_add_to_and_replace_the_experiments():
    jobs, shared = plan.jobs_and_shared(["experiment=smoke", "seed=0,1,2", "train.num_iterations=30"])
    assert len(jobs) == 24 and shared == ["experiment=smoke", "train.num_iterations=30"]
    jobs, _ = plan.jobs_and_shared(["experiment=smoke", "seed=5", "rope=chunk"])
    assert len(jobs) == 4 and all("seed=5" in job and "rope=chunk" in job for job in jobs)


# The recipe's d12 on FineWeb, every sweep of the experiment pinned to one value: a single run.
D12 = ["experiment=rope_mlp_lr", "model=d12", "rope=slice", "mlp_lr=c_fc_2x", "seed=0"]


def test_d12_recipe_horizon_tokens_and_flops_by_hand():
    (run,) = plan.planned(D12)
    steps = round(10.5 * D12_SCALING_PARAMS / 524_288)  # target_param_data_ratio x scaling params / batch
    assert steps == 2205
    fpt = 6 * D12_MATMUL_PARAMS + D12_ATTENTION_FLOPS
    assert (run.params, run.scaling_params) == (286_262_424, D12_SCALING_PARAMS)
    assert run.flops_per_token == fpt
    assert (run.steps, run.tokens, run.flops) == (steps, steps * 524_288, steps * 524_288 * fpt)
    assert run.gpus == 1
    assert run.gpu_hours == pytest.approx(steps * 524_288 * fpt / (0.45 * 989e12) / 3600)


def test_launcher_size_sets_gpus_and_the_batch_split_is_checked_for_it(capsys):
    """d12 on 8 GPUs of one node: the same GPU-hours, an eighth of the wall-clock. On 4 SLURM nodes of
    8 GPUs the recipe's device batch (32 x 2048 x 32 ranks = 2M tokens) overshoots the 524,288-token
    batch: refused as the training preflight refuses it; device batch 8 fits with no accumulation."""
    (single,) = plan.planned(D12)
    (node,) = plan.planned([*D12, "launcher=torchrun", "launcher.nproc_per_node=8"])
    assert node.gpus == 8 and node.gpu_hours == pytest.approx(single.gpu_hours)
    assert node.hours == pytest.approx(single.gpu_hours / 8)
    assert plan.main([*D12, "launcher=slurm", "launcher.nodes=4"]) == 2
    assert capsys.readouterr().err == (
        "error: train.total_batch_tokens=524288 is not divisible by train.device_batch_size x "
        "model.sequence_len x world_size = 32 x 2048 x 32 = 2097152; a device batch that divides it: "
        "train.device_batch_size=8 (1 accumulation step(s))\n"
    )
    (cluster,) = plan.planned([*D12, "launcher=slurm", "launcher.nodes=4", "train.device_batch_size=8"])
    assert cluster.gpus == 32


def test_measured_throughput_matches_depth_and_window_pattern(tmp_path):
    measured = tmp_path / "throughput.json"
    measured.write_text(
        json.dumps(
            [
                {
                    "model_depth": 12,
                    "window_pattern": "L",
                    "sequence_len": 2048,
                    "tok_per_s": 523_000.0,
                    "gpu_name": "H100",
                    "world_size": 1,
                },
                {
                    "model_depth": 12,
                    "window_pattern": "SSSL",
                    "sequence_len": 2048,
                    "tok_per_s": 8 * 425_000.0,
                    "gpu_name": "H100",
                    "world_size": 8,
                },
            ]
        )
    )
    (run,) = plan.planned(D12, throughput=measured)
    assert run.gpu_hours == pytest.approx(2205 * 524_288 / 425_000.0 / 3600)
    assert "measured 425,000 tok/s/GPU" in run.estimate
    (other,) = plan.planned([*D12, "model=d16"], throughput=measured)  # no d16 measurement: assumed MFU
    assert other.estimate.startswith("assumed MFU 45%")


def test_cli_lists_runs_and_seeds_needed(tmp_path, capsys):
    write_sweep(tmp_path / "earlier", grid={"rope": ("slice", "chunk"), "mlp_lr": ("c_fc_2x",)}, seeds=(0, 1, 2))
    overrides = ["experiment=smoke", "rope=slice", "mlp_lr=c_fc_2x"]
    code = plan.main([*overrides, "--spread-from", str(tmp_path / "earlier"), "--detect", "0.002"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("| `seed=") == 2 and "Total: 2 runs" in out
    seeds_row = next(line for line in out.splitlines() if line.startswith("| 4 | val bpb | 3 |"))
    needed = seeds_row.split("|")[-3:-1]
    assert all(cell.strip().isdigit() and int(cell) >= 2 for cell in needed)


def test_help_and_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--spread-from" in capsys.readouterr().out
    assert plan.main(["model=d13"]) == 2
    assert "model=d13 is not an option" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plan.parse_args(["--detect", "0.002"])  # nothing to take the spread from


def test_the_plan_ends_with_a_total_per_depth(capsys, plan_without_memory):
    """Per depth: the runs' count, tokens and GPU-hours summed by hand from the run rows above it."""
    assert plan.main(["model=d12,d24", "seed=0,1", "optim.muon.lr=0.02,0.03"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("Total: 8 runs")
    runs = plan.planned(["model=d12,d24", "seed=0,1", "optim.muon.lr=0.02,0.03"])
    for depth in (12, 24):
        at_depth = [r for r in runs if r.depth == depth]
        hours = sum(r.gpu_hours for r in at_depth)
        row = next(line for line in lines if line.startswith(f"| {depth} | "))
        assert row.split(" | ")[1:3] == ["4", plan._si(sum(r.tokens for r in at_depth))]
        assert f"| {hours:.2f} |" in row


def test_a_throughput_file_for_another_depth_warns_in_a_real_process(tmp_path, capsys, plan_without_memory):
    """Issue 27: a measurement that matches no planned run is named on stderr, not silently ignored."""
    import subprocess
    import sys
    from pathlib import Path

    measured = tmp_path / "throughput.json"
    measured.write_text(json.dumps({"model_depth": 24, "window_pattern": "SSSL", "tok_per_s": 1e5}))
    command = [sys.executable, "-m", "harness.plan", *D12, "--throughput", str(measured)]
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"warning: --throughput {measured} has no entry for depth 12 pattern SSSL" in result.stderr
    assert "(it has depth 24 pattern SSSL)" in result.stderr and "assumed MFU" in result.stdout
    # A matching file warns of nothing; in this process, whose memory column is stubbed (the d12 trace
    # took 20 s; the real process above keeps it).
    matching = tmp_path / "d12.json"
    matching.write_text(json.dumps({"model_depth": 12, "window_pattern": "SSSL", "tok_per_s": 4e5}))
    assert plan.main([*D12, "--throughput", str(matching)]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "measured 400,000 tok/s/GPU" in captured.out


# issue 26 item 10: a bad estimate input is one line, exit 2 ------------------------------------
@pytest.mark.parametrize(
    "entry,args,message",
    [
        (
            {"model_depth": "twelve", "window_pattern": "L", "tok_per_s": 5e5},
            [],
            "--throughput {path}: model_depth='twelve' must be a positive int",
        ),
        (
            {"model_depth": 12, "window_pattern": "L", "tok_per_s": 0},
            [],
            "--throughput {path}: tok_per_s=0 must be a positive float",
        ),
        ({"model_depth": 12, "window_pattern": "L", "tok_per_s": 5e5}, ["--peak-flops", "0"], None),
    ],
    ids=["depth-word", "zero-tok-per-s", "peak-flops-0"],
)
def test_bad_throughput_files_and_peak_flops_are_one_line_exit_2(tmp_path, entry, args, message):
    measured = tmp_path / "throughput.json"
    measured.write_text(json.dumps([entry]))
    result = subprocess.run(
        [sys.executable, "-m", "harness.plan", "model=d12", "--throughput", str(measured), *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    expected = message.format(path=measured) if message else "--peak-flops=0 must be a positive, finite FLOP/s per GPU"
    assert result.stderr == f"error: {expected}\n"
