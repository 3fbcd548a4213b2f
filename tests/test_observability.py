"""What a run tells about itself besides its numbers: peak memory in every step record and the
summary, TensorBoard event files, several loggers at once, a profiler window, and tags and notes
recorded in summary.json, runs.csv and the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import compose
from harness.errors import ConfigError
from harness.hardware import GIB, maxrss_bytes
from harness.identity import is_bookkeeping
from harness.loggers import ManyLogger, NullLogger, TensorBoardLogger, WandbLogger, build_logger, logger_kinds
from harness.results.collect import collect_dirs
from harness.results.render import runs_table_markdown
from harness.results.rundir import RunDir, find_run_dirs
from harness.run.decision import config_differences
from harness.run.spec import resolved_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="/proc: Linux only")
def test_a_child_process_reports_its_own_peak_not_its_parents():
    """A process started from one that held 1.5 GB: getrusage's ru_maxrss says 1.5 GB (Linux carries the
    parent's peak across exec), peak_memory_bytes says what the child itself held (Python and torch)."""
    hog = bytearray(1_500_000_000)
    hog[::4096] = b"\x01" * len(range(0, len(hog), 4096))  # touch every page: resident
    child = (
        "import resource, sys, torch; from harness.hardware import peak_memory_bytes, maxrss_bytes; "
        "print(peak_memory_bytes(torch.device('cpu')), "
        "maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sys.platform))"
    )
    output = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True, cwd=REPO)
    own, inherited = map(int, output.stdout.split())
    del hog
    assert inherited >= 1_500_000_000 > 1_000_000_000 > own > 10_000_000


def test_maxrss_is_kib_on_linux_and_bytes_on_macos():
    # getrusage(2) on Linux: ru_maxrss in kilobytes (1024 bytes); macOS reports bytes.
    assert maxrss_bytes(1536, "linux") == 1536 * 1024 == 1_572_864
    assert maxrss_bytes(1_572_864, "darwin") == 1_572_864


# loggers -------------------------------------------------------------------------------------
def build(cfg, tmp_path, rank=0):
    return build_logger(cfg, run_dir=tmp_path, run_name="run", group="g", config={"seed": 1}, rank=rank)


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files, read back by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metrics_scalars(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """The numbers of metrics.jsonl records, per key, as TensorBoard should hold them."""
    scalars: dict[str, list] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars.setdefault(key, []).append((record["step"], value))
    return scalars


def assert_same_scalars(read: dict, expected: dict) -> None:
    assert sorted(read) == sorted(expected)
    for key, points in expected.items():
        assert [s for s, _ in read[key]] == [s for s, _ in points], key
        # TensorBoard stores float32: compare at its precision
        assert [v for _, v in read[key]] == pytest.approx([v for _, v in points], rel=1e-6), key


RECORDS = [
    {"step": 0, "tokens": 0, "flops": 0.0, "time_s": 0.0, "val_bpb": 3.25},
    {"step": 1, "tokens": 2048, "flops": 1.5e12, "time_s": 0.5, "train_loss": 9.1, "mfu": None, "peak_memory_gib": 0.7},
    {"step": 2, "tokens": 4096, "flops": 3.0e12, "time_s": 1.0, "train_loss": 8.4, "mfu": None, "peak_memory_gib": 0.8},
]


def test_tensorboard_logger_writes_every_number_of_every_record(tmp_path):
    logger = build({"kind": "tensorboard"}, tmp_path)
    assert isinstance(logger, TensorBoardLogger)
    for record in RECORDS:
        logger.log(dict(record))
    logger.summary({"status": "completed", "step": 2, "tags": ["a"], "notes": "why"})
    logger.finish("completed")
    assert_same_scalars(tensorboard_scalars(tmp_path / "tensorboard"), metrics_scalars(RECORDS))
    assert isinstance(build({"kind": "tensorboard"}, tmp_path / "rank1", rank=1), NullLogger)
    assert not (tmp_path / "rank1").exists()


def test_a_resumed_run_replaces_what_tensorboard_had_after_the_checkpoint(tmp_path):
    first = build({"kind": "tensorboard"}, tmp_path)
    for record in RECORDS:
        first.log(dict(record))
    first.finish("interrupted")
    again = build({"kind": "tensorboard"}, tmp_path)  # resumed at step 1: logs 1 and 2 again
    redone = [{**r, "train_loss": r["train_loss"] - 1} for r in RECORDS[1:]]
    for record in redone:
        again.log(dict(record))
    again.finish("completed")
    points = tensorboard_scalars(tmp_path / "tensorboard")["train_loss"]
    assert [s for s, _ in points] == [1, 2] and [v for _, v in points] == pytest.approx([8.1, 7.4])


class Recorder:
    def __init__(self):
        self.records, self.summaries, self.finished = [], [], []

    def log(self, record):
        self.records.append(record)
        record["mutated"] = True  # a logger that changes its record must not change another's

    def summary(self, summary):
        self.summaries.append(summary)

    def finish(self, status):
        self.finished.append(status)


def test_many_loggers_receive_identical_records():
    one, two = Recorder(), Recorder()
    many = ManyLogger([one, two])
    for record in RECORDS:
        many.log(record)
    many.summary({"status": "completed"})
    many.finish("completed")
    expected = [{**r, "mutated": True} for r in RECORDS]
    assert one.records == two.records == expected
    assert "mutated" not in RECORDS[0]
    assert one.summaries == two.summaries == [{"status": "completed"}]
    assert one.finished == two.finished == ["completed"]


def test_logger_many_builds_each_listed_logger(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose(["logger=many", "logger.mode=offline", f"logger.dir={tmp_path / 'wandb'}"]).logger
    assert list(cfg.loggers) == ["wandb", "tensorboard"] and cfg.project == "ablate"
    logger = build(cfg, tmp_path)
    assert isinstance(logger, ManyLogger)
    assert [type(x) for x in logger.loggers] == [WandbLogger, TensorBoardLogger]
    for record in RECORDS:
        logger.log(record)
    logger.finish("completed")
    assert_same_scalars(tensorboard_scalars(tmp_path / "tensorboard"), metrics_scalars(RECORDS))
    assert list((tmp_path / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    for choice in ("[wandb,tensorboard]", "[tensorboard,wandb]"):  # Hydra's list of options
        listed = build(compose([f"logger={choice}", "logger.mode=disabled"]).logger, tmp_path / "listed")
        assert isinstance(listed, TensorBoardLogger)  # wandb chosen too, but disabled
        assert logger_kinds(compose([f"logger={choice}"]).logger) == ["wandb", "tensorboard"]
    assert logger_kinds(compose(["logger=tensorboard"]).logger) == ["tensorboard"]
    assert logger_kinds(compose(["logger=wandb"]).logger) == ["wandb"]
    only = compose(["logger=many", "logger.loggers=[tensorboard]"]).logger
    assert isinstance(build(only, tmp_path / "one"), TensorBoardLogger)
    assert isinstance(build(only, tmp_path / "one", rank=2), NullLogger)


@pytest.mark.parametrize(
    "override, message",
    [
        ("logger.loggers=[]", r"logger.loggers=\[\] must list distinct loggers, each one of: wandb, tensorboard"),
        ("logger.loggers=[none]", r"logger.loggers=\['none'\] must list"),
        ("logger.loggers=[tensorboard,tensorboard]", r"must list distinct loggers"),
        ("logger.tags=oops", r"logger.tags='oops' must be a list of words"),
    ],
)
def test_bad_logger_lists_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        build(compose(["logger=many", override]).logger, tmp_path)


def test_tags_and_notes_compose_with_every_logger_and_stay_out_of_the_run_identity():
    for logger in ("none", "wandb", "tensorboard", "many"):
        cfg = compose([f"logger={logger}", "logger.tags=[rope,first]", "logger.notes=why not"])
        assert list(cfg.logger.tags) == ["rope", "first"] and cfg.logger.notes == "why not"
    plain = compose([])
    labelled = compose(["logger=tensorboard", "logger.tags=[rope]", "logger.notes=x", "train.profile.steps=[2,3]"])
    assert config_differences(resolved_config(plain), resolved_config(labelled), set()) == []
    assert is_bookkeeping("train.profile.steps") and is_bookkeeping("logger.notes")
    overrides = ["train.profile.steps=[2,3]", "logger=many", "logger.notes=x", "logger.loggers=[wandb]"]
    folder = compose(overrides, with_hydra=True)
    assert folder.hydra.run.dir == compose([], with_hydra=True).hydra.run.dir


def test_a_profile_window_outside_the_run_is_one_line(tmp_path):
    from harness.run.spec import resolve_run

    for steps in ("[0,2]", "[3,2]", "[2,999]"):
        cfg = compose(["experiment=smoke", "train.num_iterations=8", f"train.profile.steps={steps}"])
        with pytest.raises(ConfigError, match=r"train.profile.steps=\[.*\] must be \[first, last\] with 1 <= first"):
            resolve_run(cfg, check_inputs=False)


def test_runs_csv_takes_the_peak_from_the_summary_or_else_from_the_metrics_so_far(tmp_path):
    from harness.results.compare import comparison_table
    from harness.results.synthetic import run_config

    for seed, summary in ((0, {"status": "completed", "peak_memory_gib": 1.5}), (1, None)):
        run = RunDir(tmp_path / "sweep" / f"seed={seed}")
        run.write_config(run_config(seed=seed))
        for step, peak in ((1, 0.25), (2, 0.75), (3, 0.5)):  # the highest record, not the last
            run.append_metrics({"step": step, "train_loss": 3.0, "peak_memory_gib": peak})
        if summary:
            run.write_summary(summary)
    collection = collect_dirs(tmp_path / "sweep")
    peaks = collection.runs.set_index("seed")["peak_memory_gib"].to_dict()
    assert peaks == {0: 1.5, 1: 0.75}
    table, _ = comparison_table(collection, {}, strict=False)
    assert table["peak_memory_gib_mean"].tolist() == [1.5]  # completed runs only


# real trainings ---------------------------------------------------------------------------------
STEPS = 6
TINY = [
    "experiment=smoke",
    f"train.num_iterations={STEPS}",
    "train.checkpoint_every=100",
    "eval.val_every=3",
    "eval.val_tokens=2048",
    "data.corpus_bytes=400000",  # a tenth of the smoke corpus: the tokenizer trains in about a second
]


def vm_hwm_bytes() -> int:
    """This process's peak resident set as the kernel reports it in /proc/self/status (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_each_step_and_the_summary_carry_the_peak_memory(tmp_path):
    from harness.run.session import run_training
    from harness.run.spec import resolve_run

    summary = run_training(resolve_run(compose(TINY)), tmp_path / "run")
    measured = vm_hwm_bytes()  # taken after the run: at least any peak the run read
    assert summary["status"] == "completed"
    steps = [r for r in RunDir(tmp_path / "run").read_metrics() if "train_loss" in r]
    peaks = [r["peak_memory_gib"] * GIB for r in steps]
    assert len(peaks) == STEPS and all(p > 0 for p in peaks)
    assert peaks == sorted(peaks)  # a peak never falls
    peak = summary["peak_memory_gib"] * GIB
    assert peaks[-1] <= peak <= measured
    # The same peak, not a unit off: torch alone keeps well over half of it resident.
    assert peak >= 0.5 * measured


@pytest.mark.slow
def test_a_real_run_logs_to_tensorboard_profiles_its_window_and_records_tags_and_notes(tmp_path):
    command = [
        sys.executable,
        "-m",
        "harness.train",
        *TINY,
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        "logger=tensorboard",
        "logger.tags=[rope,first-try]",
        "logger.notes='does the split matter?'",
        "train.profile.steps=[2,3]",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (rundir,) = find_run_dirs(tmp_path / "runs")
    # tags, notes, the logger and the profile window are bookkeeping: no part of the folder's name
    assert rundir.path.name == ",".join(sorted(o for o in TINY if o != "experiment=smoke"))

    records = rundir.read_metrics()
    assert all(r["peak_memory_gib"] > 0 for r in records if "train_loss" in r)
    assert_same_scalars(tensorboard_scalars(rundir.path / "tensorboard"), metrics_scalars(records))

    (trace,) = (rundir.path / "profile").glob("*.json")
    assert trace.name == "trace_rank0_steps2-3.json"
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("ph") == "X" and e.get("name", "").startswith("aten::") for e in events)

    summary = rundir.read_summary()
    assert summary["tags"] == ["rope", "first-try"] and summary["notes"] == "does the split matter?"
    assert summary["peak_memory_gib"] > 0
    runs = collect_dirs(tmp_path / "runs").runs
    (row,) = runs.to_dict("records")
    assert row["tags"] == "rope, first-try" and row["notes"] == "does the split matter?"
    assert row["peak_memory_gib"] == summary["peak_memory_gib"]
    table = runs_table_markdown(collect_dirs(tmp_path / "runs"))
    assert "| peak memory | tags | notes |" in table and "| rope, first-try | does the split matter? |" in table
