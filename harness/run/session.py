"""One run's session, on one screen: lock -> decision -> build -> loop -> outcome.

`run_training(spec, run_dir)` is the whole life of one run in one process (every rank of a
launcher's job calls it): resolve the spec, claim the run directory, decide what this invocation
does there, prepare the directory, build and run the trainer, and record how it ended. Each step is
one call into a sibling module; this module owns only their order and the try/finally that makes
every ending leave a summary.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from harness.distributed import destroy_process_group, init_process_group, is_collective_timeout, silent_ranks
from harness.errors import ConfigError, RunStopped
from harness.loggers import build_logger
from harness.optim import format_parameter_table
from harness.results.rundir import RunDir
from harness.run.build import RunData
from harness.run.checkpoint import LoadedCheckpoint, check_model_shapes, load_for_resume
from harness.run.decision import Decision, broadcast_decision, decide, finish_start_over, prepare
from harness.run.lock import RunBusy, claimed
from harness.run.outcome import (
    carry_over,
    ended_by,
    is_environment_fault,
    now,
    read_summary,
    started_summary,
    write_summary,
)
from harness.run.signals import hand_over_signal, stop_on_signals
from harness.run.spec import RunSpec
from harness.run.trainer import Trainer, data_passes, describe_spec, repeats_data_warning

log = logging.getLogger("ablate.train")


def run_training(spec: RunSpec, run_dir: Path, run_name: str = "") -> dict:
    """Train (or skip, or resume) the run `spec` (harness.run.spec.resolve_run of its config) in
    `run_dir`; returns its summary. Usable without Hydra. What this invocation does with an existing
    run directory is harness.run.decision's."""
    rundir = RunDir(run_dir)
    config = spec.config
    init_process_group(spec.dist, spec.device, config["launcher"].get("timeout_s"))
    try:
        # The data is loaded before the run directory is made or touched: a mistake found only now (a
        # split that tokenizes to fewer validation rows than eval.val_tokens) leaves no half-made run,
        # and an existing run is resumed or skipped only for the data it was trained on.
        data = RunData.load(spec)
        fingerprint = data.fingerprint()
        with claimed(rundir, "trained", spec.dist.is_main):

            def decide_on_main() -> Decision:
                finish_start_over(rundir)
                retry, ignored = spec.retry_failed, set(spec.location_keys)
                return decide(rundir, config, spec.train.resume, retry, ignored, fingerprint)

            decision = broadcast_decision(decide_on_main)
            if decision.action == "skip":
                log.info(f"{rundir.path}: {decision.reason}")
                return rundir.read_summary() or {}
            resume = None
            if decision.action == "resume":
                resume = load_for_resume(Path(decision.checkpoint), spec.dist.rank, spec.device)
                check_model_shapes(resume.path, resume.main["model"], spec.model)  # before anything is written
            return train_claimed(spec, rundir, config, decision, resume, run_name, data, fingerprint)
    except RunBusy as e:
        log.warning(str(e))  # that process trains it; a sweep moves on to its next run
        return {}
    finally:
        destroy_process_group()


def train_claimed(
    spec: RunSpec,
    rundir: RunDir,
    config: dict,
    decision: Decision,
    resume: LoadedCheckpoint | None,
    run_name: str,
    data: RunData,
    fingerprint: str | None,
) -> dict:
    """The run, its directory claimed: prepare it as decided, build, loop, record how it ended."""
    started_at = now()
    trainer, logger, status, error = None, None, "failed", None
    # A refusal is not a failure: a resume refused by a check (another tokenizer, a loader state that
    # does not fit) before it takes a step puts the summary back as it was, so fixing the cause and
    # re-running resumes.
    before = read_summary(rundir) if resume is not None and spec.dist.is_main else None
    refused = False
    try:
        if spec.dist.is_main:
            log.info(f"{rundir.path}: {decision.reason}")
            running = started_summary(spec, "running", started_at=started_at, data_fingerprint=fingerprint)
            prepare(rundir, decision, config, carry_over(before, running))
        logger = build_logger(
            config["logger"],
            run_dir=rundir.path,
            run_name=run_name or rundir.path.name,
            group=spec.name,
            config=config,
            rank=spec.dist.rank,
        )
        trainer = Trainer(spec, rundir, logger, data)
        if spec.dist.is_main:
            rundir.params_path.write_text(format_parameter_table(trainer.param_rows))
            passes = data_passes(spec, trainer.tokenizer)
            log.info(describe_spec(spec, trainer, passes))
            if warning := repeats_data_warning(spec, passes):
                log.warning(warning)
        with stop_on_signals(trainer):
            status = trainer.run(resume)
        error = trainer.divergence
    except KeyboardInterrupt as e:
        status, error = ended_by(e)
        raise
    except Exception as e:
        status, error = ended_by(e)
        if is_collective_timeout(e):  # a rank went silent (stopped, hung): resumable once it is gone
            silent = ", ".join(map(str, silent_ranks())) or "unknown"
            timeout_s = config["launcher"].get("timeout_s")
            status, error = "interrupted", f"rank {silent} went silent (no answer for launcher.timeout_s={timeout_s} s)"
            raise RunStopped(f"{rundir.path}: {error}; interrupted, re-run the same command to resume") from None
        refused = (
            resume is not None
            and isinstance(e, ConfigError)
            and (trainer is None or trainer.state.step in (0, resume_step(resume)))
        )
        if not is_environment_fault(e):
            if not isinstance(e, ConfigError):  # a user mistake is one line, printed by the entry point
                log.error(traceback.format_exc())
            raise
        # The machine's fault, not the config's: resumable from the newest valid checkpoint.
        raise RunStopped(f"{rundir.path}: {error}; interrupted, re-run the same command to resume") from None
    finally:
        summary = trainer.summary(status, error) if trainer else started_summary(spec, status, error=error)
        summary = carry_over(
            before, summary.update(started_at=started_at, ended_at=now(), data_fingerprint=fingerprint)
        )
        if refused:  # the run's record as it was (or the `running` stub prepare wrote: it resumes too)
            summary = before or read_summary(rundir) or summary
        if spec.dist.is_main:
            try:
                write_summary(rundir, summary)
            except OSError as e:  # a full disk: the summary still says running, which resumes too
                log.error(f"{rundir.summary_path}: not updated ({ended_by(e)[1]})")
            if logger is not None:
                logger.summary(summary.to_json())
        if logger is not None:
            logger.finish(status)
    log.info(f"{status}: {rundir.path} (final val bpb {summary.get('final_val_bpb')})")
    if status == "interrupted":
        hand_over_signal(trainer.stop_signal)
        raise KeyboardInterrupt(f"stopped by signal {trainer.stop_signal}; checkpoint saved, re-run to resume")
    return summary.to_json()


def resume_step(resume: LoadedCheckpoint | None) -> int:
    return int(resume.main["step"]) if resume is not None else 0
