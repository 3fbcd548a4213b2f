"""The report knows each run's ranks x accumulation and marks a comparison that mixes them."""

from harness.results.collect import collect_dirs
from harness.results.compare import comparison_markdown, comparison_table, parse_baseline
from harness.results.rundir import RunDir

BASELINE = {"rope.split": "slice"}


def write_run(root, rope: str, seed: int, world_size: int, accum: int) -> None:
    run = RunDir(root / f"rope={rope},seed={seed}")
    run.write_config({"seed": seed, "model": {"depth": 12}, "rope": {"split": rope}})
    run.append_metrics({"step": 0, "tokens": 0, "flops": 0, "time_s": 0.0, "val_bpb": 3.0})
    summary = {"status": "completed", "final_val_bpb": 0.85 + seed / 100, "tok_per_s": 1000.0 * world_size}
    run.write_summary({**summary, "world_size": world_size, "grad_accum_steps": accum})


def test_runs_record_ranks_and_accumulation_and_a_mixed_comparison_is_marked(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "slice", seed, 8, 1)
        write_run(tmp_path, "chunk", seed, 4 if seed == 0 else 8, 2 if seed == 0 else 1)
    collection = collect_dirs(tmp_path)
    assert sorted(zip(collection.runs["world_size"], collection.runs["grad_accum_steps"], strict=True)) == [
        (4, 2),
        (8, 1),
        (8, 1),
        (8, 1),
    ]
    table, notes = comparison_table(collection, parse_baseline(BASELINE))
    by_variant = table.set_index("variant")
    assert by_variant.loc["rope.split=slice", "launch"] == "8x1"
    assert by_variant.loc["rope.split=chunk", "launch"] == "4x2, 8x1"
    assert notes == [
        "depth 12: runs on different ranks x accumulation (4x2, 8x1); val bpb and CORE compare (the data order "
        "and validation set do not depend on the world size), tok/s does not: its cells name each variant's "
        "ranks x accumulation"
    ]
    markdown = comparison_markdown(table, ["rope.split"], notes)
    assert "| 8,000 (8x1 ranks x accum) |" in markdown and "| 6,000 (4x2, 8x1 ranks x accum) |" in markdown


def test_one_launch_everywhere_is_not_marked(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "slice", seed, 2, 2)
        write_run(tmp_path, "chunk", seed, 2, 2)
    table, notes = comparison_table(collect_dirs(tmp_path), parse_baseline(BASELINE))
    assert notes == [] and not table["mixed_launch"].any()
    assert "ranks x accum" not in comparison_markdown(table, ["rope.split"], notes)
