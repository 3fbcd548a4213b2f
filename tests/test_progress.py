"""Progress on the long stretches a new user waits through: tokenizer training on first use, the rope
benchmark, building a report. Each writes a tqdm bar to stderr whose count is checked by hand."""

import re

from harness import bench
from harness.data.tokenizer import MIN_VOCAB_SIZE, Tokenizer
from harness.results.render import build_report
from harness.results.synthetic import write_sweep


def final_count(stderr: str, desc: str) -> str:
    """The last state of the bar named `desc` (tqdm redraws it with carriage returns)."""
    states = [s for s in re.split(r"[\r\n]", stderr) if s.startswith(desc)]
    assert states, f"no {desc!r} bar in {stderr!r}"
    return states[-1]


def test_tokenizer_training_counts_the_characters_it_reads(capsys):
    texts = ["def f(x):\n    return x + 1\n" * 20, "class A:\n    pass\n" * 50, "print('hello')\n" * 5]
    Tokenizer.train(texts, MIN_VOCAB_SIZE + 40, doc_cap=400, max_chars=10_000)
    read = min(len(texts[0]), 400) + min(len(texts[1]), 400) + len(texts[2])  # each cropped to doc_cap
    assert read == 400 + 400 + 75
    bar = final_count(capsys.readouterr().err, f"tokenizer {MIN_VOCAB_SIZE + 40}: text read")
    assert re.match(rf"tokenizer {MIN_VOCAB_SIZE + 40}: text read: {read}char ", bar), bar


def test_the_rope_benchmark_counts_its_depths(tmp_path, capsys):
    argv = ["rope", "--device", "cpu", "--depths", "12", "16", "--batch", "1", "--seq-len", "16"]
    bench.main([*argv, "--iters", "1", "--warmup", "0", "--out", str(tmp_path / "rope.json")])
    # one step per depth, every split timed at it (interleaved)
    assert "| 2/2 [" in final_count(capsys.readouterr().err, "rope")


def test_building_a_report_counts_its_plots(tmp_path, capsys):
    write_sweep(tmp_path / "runs" / "smoke", grid={"rope": ("slice", "chunk"), "mlp_lr": ("c_fc_2x",)})
    report = build_report([tmp_path / "runs" / "smoke"], tmp_path / "out")
    assert len(report.plots) > 1
    bar = final_count(capsys.readouterr().err, "report: plots")
    assert f"| {len(report.plots)}/{len(report.plots)} [" in bar, bar
