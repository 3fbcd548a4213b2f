"""`python -m harness.evaluate`: a run directory written here with RunDir (a tiny model's
checkpoint on the builtin corpus) is scored again, and its summary and metrics gain the numbers.
And CORE during training: a smoke run on the fixture bundle records every task where it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.cli import compose
from harness.config import model_config
from harness.data.config import data_config
from harness.errors import USAGE_EXIT_CODE
from harness.evaluate import main
from harness.results.rundir import RunDir
from models.gpt import GPT

FIXTURE = Path(__file__).parent / "fixtures" / "core_bundle"
STEP = 60


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    """A resolved run config; its builtin-corpus cache (tokenizer, documents) serves every test here."""
    return run_config(tmp_path_factory.mktemp("data"))


def run_config(data_dir: Path) -> dict:
    cfg = compose(
        [
            "experiment=smoke",
            f"paths.data_dir={data_dir}",
            "eval=core",
            f"eval.core.bundle_dir={FIXTURE}",
            "eval.core.max_per_task=-1",
            "eval.val_tokens=4096",
            "data.corpus_bytes=400000",  # a tenth of the smoke corpus: the tokenizer trains in about a second
        ]
    )
    return OmegaConf.to_container(cfg, resolve=True)


def trained_weights(config: dict, seed: int) -> dict:
    """A stand-in for a trained model: the recipe's init, then every matrix perturbed."""
    torch.manual_seed(seed)
    model = GPT(model_config(OmegaConf.create(config)))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(0.05 * torch.randn_like(p))
    return model.state_dict()


def make_run(path: Path, config: dict, seed: int = 0, **checkpoint_extra) -> RunDir:
    rundir = RunDir(path)
    rundir.write_config(config)
    from harness.data import build_tokenizer

    state = {
        "step": STEP,
        "model": trained_weights(config, seed),
        "train_state": {"train_time_s": 12.5},
        "tokenizer": build_tokenizer(data_config(OmegaConf.create(config))).digest(),  # as training records it
    }
    rundir.save_checkpoint(STEP, {**state, **checkpoint_extra}, keep_last=2)
    rundir.write_summary({"status": "completed", "step": STEP, "num_iterations": STEP, "core": None})
    return rundir


def reference_scores(rundir: RunDir) -> tuple[float, object]:
    """The same numbers computed directly from the checkpoint, outside harness.evaluate."""
    from harness.data import build_tokenizer, val_batches
    from harness.eval.bpb import evaluate_bpb
    from harness.eval.core import evaluate_core, load_bundle

    cfg = OmegaConf.create(rundir.read_config())
    model = GPT(model_config(cfg))
    model.init_weights()
    model.load_state_dict(RunDir.load_checkpoint(rundir.latest_checkpoint())["model"])
    model.eval()
    tok = build_tokenizer(data_config(cfg))
    batches = val_batches(data_config(cfg), tok, cfg.train.device_batch_size, cfg.model.sequence_len, 4096, 0, 1)
    cpu = torch.device("cpu")
    import contextlib

    bpb = evaluate_bpb(model, batches, tok.token_bytes(), cpu, contextlib.nullcontext)
    return bpb, evaluate_core(model, tok, load_bundle(FIXTURE), device=cpu)


def test_evaluate_scores_the_checkpoint_and_updates_summary_and_metrics(tmp_path, config, capsys):
    rundir = make_run(tmp_path / "run", config)
    rundir.append_metrics({"step": STEP, "tokens": 1, "flops": 1, "time_s": 12.5, "val_bpb": 9.0})
    main([f"run_dir={rundir.path}"])
    bpb, core = reference_scores(rundir)

    records = rundir.read_metrics()
    assert len(records) == 2
    record = records[-1]
    flops_per_token = GPT.on_meta(model_config(OmegaConf.create(rundir.read_config()))).flops_per_token()
    assert record["step"] == STEP and record["tokens"] == STEP * 2048 and record["time_s"] == 12.5
    assert record["flops"] == STEP * 2048 * flops_per_token
    assert record["val_bpb"] == pytest.approx(bpb, rel=1e-6)
    assert {k: v for k, v in record.items() if k.startswith("core")} == pytest.approx(core.to_record())

    summary = rundir.read_summary()
    assert summary["status"] == "completed"
    assert summary["final_val_bpb"] == record["val_bpb"]
    assert summary["core"] == pytest.approx(core.core)
    assert summary["core_tasks"] == pytest.approx({label: t["centered"] for label, t in core.tasks.items()})
    (evaluation,) = summary["evaluations"]
    assert evaluation["filled"] == ["final_val_bpb", "core"]  # training recorded neither
    assert evaluation["step"] == STEP and evaluation["checkpoint"] == f"step_{STEP:08d}.pt"
    assert evaluation["core_max_per_task"] == -1 and evaluation["core_examples"] == 23
    assert evaluation["val_tokens"] == 4096
    assert f"step {STEP} | val_bpb {record['val_bpb']:.4f} | core {record['core']:.4f}" in capsys.readouterr().out


def test_weights_come_from_the_checkpoint(tmp_path, config):
    """Two runs differing only in their weights score differently; a bpb-only pass leaves CORE alone."""
    first, second = make_run(tmp_path / "a", config, seed=0), make_run(tmp_path / "b", config, seed=1)
    for rundir in (first, second):
        main([f"run_dir={rundir.path}", "core=false"])
    a, b = first.read_metrics()[-1], second.read_metrics()[-1]
    assert a["val_bpb"] != b["val_bpb"]
    assert "core" not in a and first.read_summary()["core"] is None
    assert reference_scores(first)[0] == pytest.approx(a["val_bpb"], rel=1e-6)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "error: run_dir=PATH is required (python -m harness.evaluate --help)"),
        (["run_dir"], "error: 'run_dir' is not KEY=VALUE (python -m harness.evaluate --help)"),
        (["run_dir={run}", "bpb=false", "core=false"], "error: bpb=false and core=false leave nothing to evaluate"),
        (["run_dir={run}", "core=maybe"], "error: core='maybe' must be true or false"),
        (["run_dir={run}", "device=cpu"], "error: device is not an option; use run_dir, bpb, core or a config key"),
        (["run_dir={missing}"], "error: run_dir={missing} has no config.yaml; it is not a run directory"),
        (["run_dir={run}", "eval.val_tokenz=3"], "error: eval.val_tokenz is not a key of the run's config {run}/"),
        (["run_dir={run}", "eval.core.bundle_dir={missing}"], "error: eval.core.bundle_dir={missing} does not exist"),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, config, capsys, arguments, message):
    run = make_run(tmp_path / "run", config).path
    capsys.readouterr()  # making the run may train a tokenizer (its progress bar is the fixture's output, not main's)
    missing = tmp_path / "missing"
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(run=run, missing=missing) for a in arguments])
    assert exit_info.value.code == USAGE_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith(message.format(run=run, missing=missing))
    assert err.count("\n") == 1


def test_a_run_without_checkpoint_or_with_another_tokenizer_is_refused(tmp_path, config, capsys):
    rundir = RunDir(tmp_path / "fresh")
    rundir.write_config(config)
    with pytest.raises(SystemExit):
        main([f"run_dir={rundir.path}"])
    assert capsys.readouterr().err == f"error: run_dir={rundir.path} has no checkpoint in {rundir.checkpoints_dir}\n"

    other = make_run(tmp_path / "other", config, tokenizer="0123456789abcdef")
    with pytest.raises(SystemExit):
        main([f"run_dir={other.path}", "core=false"])
    assert "was trained with tokenizer 0123456789abcdef" in capsys.readouterr().err
    assert other.read_metrics() == []


def test_matching_tokenizer_hash_is_accepted(tmp_path, config):
    from harness.data import build_tokenizer

    tok = build_tokenizer(data_config(OmegaConf.create(config)))
    rundir = make_run(tmp_path / "run", config, tokenizer=tok.digest())
    main([f"run_dir={rundir.path}", "core=false"])
    assert "val_bpb" in rundir.read_metrics()[-1]


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m harness.evaluate [-h] [KEY=VALUE ...]")
    for phrase in ("run_dir=PATH", "bpb=true|false", "core=true|false", "eval.core.max_per_task=-1", "summary.json"):
        assert phrase in out


@pytest.mark.slow
def test_training_with_core_enabled_records_every_task_at_its_steps_and_in_the_summary(tmp_path, config):
    """CORE during training (eval=core on the fixture bundle, every 4 steps of 8): records at steps 0, 4
    and 8 with the aggregate, each task's centered and raw accuracy; the summary holds the last one,
    which equals the fixture scored directly from the final checkpoint."""
    from harness.eval.core import load_bundle
    from harness.run.session import run_training
    from harness.run.spec import resolve_run

    overrides = {"train.num_iterations": 8, "train.checkpoint_every": 8, "eval.core.every": 4, "eval.val_every": 4}
    cfg = OmegaConf.create(config)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    summary = run_training(resolve_run(cfg), tmp_path / "run")
    assert summary["status"] == "completed"

    rundir = RunDir(tmp_path / "run")
    labels = [task.label for task in load_bundle(FIXTURE).tasks]
    core_records = [r for r in rundir.read_metrics() if "core" in r]
    assert [r["step"] for r in core_records] == [0, 4, 8]
    for record in core_records:
        assert {k for k in record if k.startswith("core/")} == {f"core/{label}" for label in labels}
        assert {k for k in record if k.startswith("core_acc/")} == {f"core_acc/{label}" for label in labels}
        assert record["core"] == pytest.approx(sum(record[f"core/{label}"] for label in labels) / len(labels))
    _, core = reference_scores(rundir)
    assert summary["core"] == pytest.approx(core.core) == pytest.approx(core_records[-1]["core"])
    assert summary["core_tasks"] == pytest.approx({label: t["centered"] for label, t in core.tasks.items()})


# the CORE bundle of a run that moved ---------------------------------------------------------
def moved_run(tmp_path: Path, config: dict, monkeypatch) -> tuple[RunDir, Path]:
    """A run trained where the bundle was <old data dir>/eval_bundle, evaluated on a machine whose
    paths.data_dir (ABLATE_DATA_DIR) is another folder."""
    old, new = tmp_path / "old_data", tmp_path / "new_data"
    moved = {**config, "paths": {**config["paths"], "data_dir": str(old)}}
    moved["eval"] = {**config["eval"], "core": {**config["eval"]["core"], "bundle_dir": str(old / "eval_bundle")}}
    monkeypatch.setenv("ABLATE_DATA_DIR", str(new))
    return make_run(tmp_path / "run", moved), new


def test_a_moved_bundle_is_found_under_the_current_data_dir(tmp_path, config, monkeypatch):
    import shutil

    rundir, new = moved_run(tmp_path, config, monkeypatch)
    shutil.copytree(FIXTURE, new / "eval_bundle")
    main([f"run_dir={rundir.path}", "bpb=false"])
    _, core = reference_scores(rundir)  # scored on FIXTURE, the same tasks
    assert rundir.read_summary()["core"] == pytest.approx(core.core)
    assert rundir.read_summary()["evaluations"][-1]["core_examples"] == 23


def test_a_bundle_found_nowhere_is_one_line_naming_every_path_tried(tmp_path, config, monkeypatch, capsys):
    rundir, new = moved_run(tmp_path, config, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main([f"run_dir={rundir.path}", "bpb=false"])
    assert exit_info.value.code == USAGE_EXIT_CODE
    assert capsys.readouterr().err == (
        f"error: eval.core.bundle_dir: no CORE bundle at {tmp_path / 'old_data' / 'eval_bundle'} (the run's config) "
        f"nor {new / 'eval_bundle'} (under the current paths.data_dir); fetch it with "
        "`python -m harness.prepare eval=core` or pass eval.core.bundle_dir=PATH\n"
    )


# CORE during training is scored as harness.evaluate scores it ------------------------------------
def long_prompt_bundle(root: Path) -> Path:
    """One 3-shot language-modeling task whose prompts run to ~1,000 bytes: several hundred tokens,
    past a model whose rotary table holds 128 positions."""
    import shutil

    shutil.copytree(FIXTURE, root)
    sentence = "the quick brown fox jumps over the lazy dog and keeps on running through the field "
    lines = [f'{{"context": "Story {i}: {sentence * 3}then it", "continuation": "stopped"}}' for i in range(6)]
    (root / "eval_data/long.jsonl").write_text("\n".join(lines) + "\n")
    (root / "core.yaml").write_text(
        "icl_tasks:\n- label: long_lm\n  dataset_uri: long.jsonl\n"
        "  num_fewshot: [3]\n  icl_task_type: language_modeling\n"
    )
    (root / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nlong_lm,0\n")
    return root


def core_run_config(config: dict, bundle: Path, **overrides) -> OmegaConf:
    cfg = OmegaConf.create(config)
    OmegaConf.set_struct(cfg, False)
    cfg.model.rotary_cache_len = 128  # = model.sequence_len: the prompts do not fit
    for key, value in {"eval.core.bundle_dir": str(bundle), **overrides}.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_core_in_training_crops_long_prompts_as_evaluate_does(tmp_path, config):
    """Training's CORE at its last step and harness.evaluate on the final checkpoint give the same
    record: both crop rows to the model's rotary positions (training cropped nothing before and a
    prompt longer than the rotary table crashed the run at step 0)."""
    from harness.run.session import run_training
    from harness.run.spec import resolve_run

    steps = {"train.num_iterations": 2, "train.checkpoint_every": 2, "eval.core.every": 2, "eval.val_every": 2}
    cfg = core_run_config(config, long_prompt_bundle(tmp_path / "bundle"), **steps)
    summary = run_training(resolve_run(cfg), tmp_path / "run")
    assert summary["status"] == "completed"
    rundir = RunDir(tmp_path / "run")
    trained = [r for r in rundir.read_metrics() if "core" in r][-1]
    main([f"run_dir={rundir.path}", "bpb=false"])
    evaluated = rundir.read_metrics()[-1]
    core_keys = {k for k in evaluated if k.startswith("core")}
    assert core_keys == {"core", "core/long_lm", "core_acc/long_lm"}
    assert {k: trained[k] for k in core_keys} == {k: evaluated[k] for k in core_keys}


def test_a_task_file_error_during_training_is_one_line_without_a_traceback(tmp_path, config, caplog):
    """An answer longer than the model's limit is found when CORE first runs (it needs the tokenizer):
    a ConfigError naming the task and the example, which harness.train prints as one line (exit 2)."""
    from harness.errors import ConfigError
    from harness.run.session import run_training
    from harness.run.spec import resolve_run

    bundle = long_prompt_bundle(tmp_path / "bundle")
    long_answer = "and " * 200
    (bundle / "eval_data/long.jsonl").write_text(
        "".join(f'{{"context": "Story {i}:", "continuation": "{long_answer}"}}\n' for i in range(6))
    )
    cfg = core_run_config(config, bundle, **{"train.num_iterations": 2, "eval.core.every": 2})
    with pytest.raises(ConfigError) as error:
        run_training(resolve_run(cfg), tmp_path / "run")
    assert str(error.value).startswith("CORE task 'long_lm' example ")
    assert str(error.value).endswith("does not fit in max_seq_len=128")
    assert "Traceback" not in caplog.text
    assert RunDir(tmp_path / "run").read_summary()["status"] == "failed"


def test_evaluate_keeps_what_training_recorded_and_lists_each_evaluation(tmp_path, config):
    rundir = make_run(tmp_path / "run", config)
    trained = {"final_val_bpb": 2.5619, "core": 0.125, "core_tasks": {"task": 0.125}}
    rundir.write_summary({**rundir.read_summary(), **trained})
    main([f"run_dir={rundir.path}", "core=false"])
    main([f"run_dir={rundir.path}", "core=false", "eval.val_tokens=2048"])
    summary = rundir.read_summary()
    assert {key: summary[key] for key in trained} == trained
    first, second = summary["evaluations"]
    assert (first["val_tokens"], second["val_tokens"]) == (4096, 2048)
    assert first["val_bpb"] != second["val_bpb"] and first["filled"] == second["filled"] == []
    assert [r["val_bpb"] for r in rundir.read_metrics()] == [first["val_bpb"], second["val_bpb"]]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.val_tokens=abc", "eval.val_tokens"),
        ("eval.val_tokens=-5", "eval.val_tokens=-5"),
        ("train.device_batch_size=0", "train.device_batch_size=0"),
        ("train.device=tpu", "train.device"),
        ("model.depth=2", "does not fit the config's model"),
    ],
)
def test_overrides_are_checked_as_training_checks_them(tmp_path, config, capsys, override, message):
    rundir = make_run(tmp_path / "run", config)
    before = {p: p.read_bytes() for p in rundir.path.rglob("*") if p.is_file() and not p.name.startswith("run.lock")}
    with pytest.raises(SystemExit) as exit_info:
        main([f"run_dir={rundir.path}", "core=false", override])
    assert exit_info.value.code == USAGE_EXIT_CODE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    after = {p: p.read_bytes() for p in rundir.path.rglob("*") if p.is_file() and not p.name.startswith("run.lock")}
    assert after == before


def test_a_damaged_checkpoint_found_by_evaluate_goes_to_rejected(tmp_path, config):
    rundir = make_run(tmp_path / "run", config)
    state = RunDir.load_checkpoint(rundir.latest_checkpoint())
    rundir.save_checkpoint(STEP + 1, {**state, "step": STEP + 1}, keep_last=2)
    newest = rundir.checkpoint_path(STEP + 1)
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    main([f"run_dir={rundir.path}", "core=false"])
    assert rundir.read_summary()["evaluations"][-1]["step"] == STEP
    assert (rundir.checkpoints_dir / "rejected" / newest.name).exists() and not newest.exists()
