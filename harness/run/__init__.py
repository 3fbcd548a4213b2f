"""One run's life, from the composed Hydra config to the summary.json it leaves. Read in this order:

1. `spec.py`       the config checked and made into one frozen `RunSpec` (`resolve_run`): every
                   derived number (grad accumulation, horizon, FLOPs per token, parameter counts).
2. `session.py`    the run on one screen: lock -> decision -> build -> loop -> outcome.
3. `lock.py`       one writer per run directory (`run.lock`, `run.lock.json`).
4. `decision.py`   what this invocation does with the directory (fresh, resume, skip), and the
                   writes that put the directory in that state.
5. `build.py`      the model, its compiled step and the optimizer step, shared by training,
                   `harness.bench` and `harness.evaluate`.
6. `trainer.py`    the loop: evaluate when due, step, log, checkpoint.
7. `checkpoint.py` save, verify, load and restore checkpoints (re-sharding through harness.reshard).
8. `outcome.py`    how a run ended: the `Summary` schema, the one writer of summary.json, and the
                   status policy (completed, diverged, interrupted, failed).
   `signals.py`    stop signals: checkpoint at the next step, then hand the signal on.

`harness.train` is only the command line around `session.run_training`; launchers
(harness.launch) call `run_training` in each worker. Nothing here parses command lines.
"""
