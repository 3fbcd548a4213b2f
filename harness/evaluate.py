"""`python -m harness.evaluate run_dir=PATH [OPTION ...]`: score a run's checkpoint after the fact.

Loads the run's saved config and its newest valid checkpoint (harness.run.checkpoint verifies it,
harness.run.lock holds the run meanwhile), measures validation bits per byte and
CORE, appends one metrics record at the checkpoint's step and adds the numbers to summary.json,
without training. Under torchrun every rank scores its share and rank 0 writes. What training
recorded is never replaced: each evaluation is appended to the summary's `evaluations`, with how it
was measured; a headline number training did not record (CORE with eval.core disabled) is filled.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.cli import compose, exit_on_config_error
from harness.config import model_config, train_config
from harness.data import build_tokenizer, data_config, val_batches
from harness.distributed import destroy_process_group, dist_info_from_env, init_process_group
from harness.errors import ConfigError, RunStopped
from harness.eval.bpb import evaluate_bpb
from harness.eval.core import check_bundle, core_config, run_core_eval
from harness.eval.core_bundle import find_bundle
from harness.hardware import resolve_device
from harness.results.rundir import CheckpointRefused, RunDir
from harness.run.build import autocast_for, materialize
from harness.run.checkpoint import check_model_shapes, check_tokenizer, checkpoint_for_evaluation
from harness.run.decision import broadcast_decision
from harness.run.lock import RunBusy, claimed
from harness.run.outcome import Summary, now, read_summary, write_summary
from harness.run.spec import resolve_run
from models.gpt import GPT, GPTConfig

DESCRIPTION = """\
Score the latest checkpoint of a run directory again: validation bits per byte (eval.val_tokens
held-out tokens) and CORE (eval.core.max_per_task examples per task, from eval.core.bundle_dir),
with the run's own config. Appends one metrics record at the checkpoint's step and adds an entry
to summary.json's `evaluations` (what was measured and how: step, val tokens, CORE settings).
Training's own numbers are kept; core, core_tasks and final_val_bpb (when the checkpoint is the
run's last step) are filled only where training recorded none.

Arguments are KEY=VALUE:
  run_dir=PATH     the run directory (required)
  bpb=true|false   measure validation bits per byte (default true)
  core=true|false  measure CORE (default true; eval.core.enabled is ignored here)
  KEY.PATH=VALUE   override a key of the run's saved config, e.g. eval.core.max_per_task=-1
                   (every example, as the recipe's final CORE), eval.core.bundle_dir=...,
                   data.dir=... for data prepared elsewhere, train.device=cpu
"""

EXAMPLES = """\
examples:
  python -m harness.evaluate run_dir=runs/default/rope=chunk eval.core.max_per_task=-1
  torchrun --nproc_per_node=8 -m harness.evaluate run_dir=runs/d24 bpb=false
"""

TOOL_OPTIONS = ("bpb", "core")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.evaluate",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="run_dir=PATH, options and overrides")
    return parser


def parse_arguments(arguments: list[str]) -> tuple[Path, dict[str, bool], list[str]]:
    """run_dir, the tool's on/off options, and config overrides."""
    run_dir, options, overrides = None, dict.fromkeys(TOOL_OPTIONS, True), []
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if not equals:
            raise ConfigError(f"{argument!r} is not KEY=VALUE (python -m harness.evaluate --help)")
        if key == "run_dir":
            run_dir = Path(value)
        elif key in TOOL_OPTIONS:
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"{key}={value!r} must be true or false")
            options[key] = value.lower() == "true"
        elif "." in key:
            overrides.append(argument)
        else:
            raise ConfigError(f"{key} is not an option; use run_dir, bpb, core or a config key such as eval.val_tokens")
    if run_dir is None:
        raise ConfigError("run_dir=PATH is required (python -m harness.evaluate --help)")
    if not any(options.values()):
        raise ConfigError("bpb=false and core=false leave nothing to evaluate")
    return run_dir, options, overrides


def run_config(rundir: RunDir, overrides: list[str]) -> DictConfig:
    """The run's saved (resolved) config with `overrides` applied; unknown keys are errors."""
    cfg = OmegaConf.create(rundir.read_config())
    OmegaConf.set_struct(cfg, True)
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        reason = f"{key} is not a key of" if key else f"{str(e).splitlines()[0]}: cannot override"
        raise ConfigError(f"{reason} the run's config {rundir.config_path}") from None


def locate_core_bundle(cfg: DictConfig, saved: dict, overrides: list[str]) -> None:
    """Point eval.core.bundle_dir at the bundle as it is found now (core_bundle.find_bundle), unless
    the command line names it: the saved path is the training machine's."""

    given = {override.split("=", 1)[0] for override in overrides}
    if "eval.core.bundle_dir" in given:
        return
    data_dir = cfg.paths.data_dir if "paths.data_dir" in given else compose([]).paths.data_dir
    saved_data_dir = (saved.get("paths") or {}).get("data_dir")
    cfg.eval.core.bundle_dir = str(find_bundle(cfg.eval.core.bundle_dir, saved_data_dir, str(data_dir)))


def load_model(config: GPTConfig, state_dict: dict, device: torch.device) -> GPT:
    """The run's network with the checkpoint's weights, laid out as training had it on `device`."""
    model = materialize(config, device, seed=0)  # init only builds the rotary tables here
    model.load_state_dict(state_dict)
    return model.eval()


def evaluate_run(run_dir: Path, options: dict[str, bool], overrides: list[str]) -> dict:
    """Measure, then (rank 0) append the metrics record and update the summary; returns the record."""

    rundir = RunDir(run_dir)
    if not rundir.exists():
        raise ConfigError(f"run_dir={run_dir} has no config.yaml; it is not a run directory")
    cfg = run_config(rundir, overrides)
    resolve_run(cfg, check_inputs=False)  # the overrides checked as training checks them
    if not rundir.list_checkpoints():
        raise ConfigError(f"run_dir={run_dir} has no checkpoint in {rundir.checkpoints_dir}")
    if options["core"]:
        locate_core_bundle(cfg, rundir.read_config(), overrides)
    # The one conversion of the run's config: plain, resolved values from here on.
    tree = OmegaConf.to_container(cfg, resolve=True)
    if options["core"]:
        check_bundle(tree)
    info = dist_info_from_env()
    device = resolve_device(str(tree["train"]["device"]))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    init_process_group(info, device)
    try:
        # One writer: a run being trained (or evaluated) elsewhere is left alone.
        with claimed(rundir, "evaluated", info.is_main):
            checkpoint = Path(broadcast_decision(lambda: str(checkpoint_for_evaluation(rundir))))
            state = RunDir.load_checkpoint(checkpoint)  # weights-only: a checkpoint cannot run code
            check_model_shapes(checkpoint, state["model"], model_config(tree))  # model.* overrides
            tokenizer = build_tokenizer(data_config(tree))
            check_tokenizer(checkpoint, state["tokenizer"], tokenizer)
            model = load_model(model_config(tree), state["model"], device)
            autocast = autocast_for(device, str(tree["train"]["dtype"]))
            values, evaluation = {}, {"step": state["step"], "checkpoint": checkpoint.name}
            for wanted, measure in ((options["bpb"], measure_bpb), (options["core"], measure_core)):
                if wanted:
                    measured, details = measure(tree, model, tokenizer, device, autocast)
                    values.update(measured)
                    evaluation.update(details)
            record = metrics_record(tree, state, values)
            if info.is_main:
                rundir.append_metrics(record)
                update_summary(rundir, evaluation, values)
            return record
    finally:
        destroy_process_group()


def measure_bpb(cfg: Mapping[str, Any], model: GPT, tokenizer, device: torch.device, autocast) -> tuple[dict, dict]:
    """Validation bits per byte on eval.val_tokens tokens: the metric, and how it was measured."""

    start = time.perf_counter()
    info = dist_info_from_env()
    batch_size, seq_len, num_tokens = (
        int(cfg["train"]["device_batch_size"]),
        model.config.sequence_len,
        int(cfg["eval"]["val_tokens"]),
    )
    batches = val_batches(data_config(cfg), tokenizer, batch_size, seq_len, num_tokens, info.rank, info.world_size)
    bpb = evaluate_bpb(model, batches, tokenizer.token_bytes(), device, autocast)
    return {"val_bpb": bpb}, {"val_bpb": bpb, "val_tokens": num_tokens, "bpb_seconds": time.perf_counter() - start}


def measure_core(cfg: Mapping[str, Any], model: GPT, tokenizer, device: torch.device, autocast) -> tuple[dict, dict]:
    """CORE with eval.core's settings: the metrics-record entries, and how it was measured."""

    start = time.perf_counter()
    core = core_config(cfg)
    result = run_core_eval(
        model, tokenizer, core, device=device, autocast=autocast, progress=dist_info_from_env().is_main
    )
    details = {
        "core": result.core,
        "core_max_per_task": core.max_per_task,
        "core_examples": result.num_examples,
        "core_accuracy": {label: task["accuracy"] for label, task in result.tasks.items()},
        "core_seconds": time.perf_counter() - start,
    }
    return result.to_record(), details


def metrics_record(cfg: Mapping[str, Any], state: dict, values: dict) -> dict:
    """Stamped like training's records: step, tokens, flops and training time at the checkpoint."""
    step = int(state["step"])
    tokens = step * train_config(cfg).total_batch_tokens  # resolved: a recipe may choose the batch (-1)
    flops_per_token = GPT.on_meta(model_config(cfg)).flops_per_token()
    time_s = (state.get("train_state") or {}).get("train_time_s")
    return {"step": step, "tokens": tokens, "flops": tokens * flops_per_token, "time_s": time_s, **values}


def update_summary(rundir: RunDir, evaluation: dict, values: dict) -> None:
    """Append the evaluation to the summary's `evaluations`; training's numbers stay as they are (the
    report compares them, and says so where an evaluation measured differently). A headline number
    training did not record is filled, and the entry says which (`filled`)."""
    # A run killed before its first summary still has checkpoints; it ended without saying so.
    summary = read_summary(rundir) or Summary(status="interrupted")
    evaluation["evaluated_at"] = now()
    filled = []
    at_horizon = evaluation["step"] == summary.get("num_iterations")
    if "val_bpb" in values and at_horizon and not recorded(summary, "final_val_bpb"):
        summary.final_val_bpb = values["val_bpb"]
        filled.append("final_val_bpb")
    if "core" in values and not recorded(summary, "core"):
        summary.core = values["core"]
        summary.core_tasks = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("core/")}
        filled.append("core")
    evaluation["filled"] = filled
    earlier = summary.evaluations if isinstance(summary.evaluations, list) else []
    summary.evaluations = [*earlier, evaluation]
    write_summary(rundir, summary)


def recorded(summary: Summary, key: str) -> bool:
    value = summary.get(key)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_dir, options, overrides = parse_arguments(args.arguments)
    try:
        record = evaluate_run(run_dir, options, overrides)
    except (RunBusy, RunStopped, CheckpointRefused) as e:
        print(f"error: {e}", file=sys.stderr)  # not a usage mistake: the run is busy or its checkpoints are bad
        sys.exit(1)
    if dist_info_from_env().is_main:
        shown = {k: v for k, v in record.items() if k in ("step", "val_bpb", "core")}
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
