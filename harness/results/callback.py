"""The report at the end of a multirun: a Hydra callback that calls `build_report` on the sweep.

Wired in an experiment file, e.g. configs/experiment/smoke.yaml:

    hydra:
      callbacks:
        report:
          _target_: harness.results.callback.ReportCallback
          output_dir: ${paths.results_dir}/smoke
          baseline: [rope.split=slice, mlp_lr.name=c_fc_2x]   # optional; this is the default

After the last run it writes the report of `hydra.sweep.dir` into `output_dir` and prints the
comparison table and the report's path. A sweep that left nothing to report says so in one line
rather than failing the multirun; its runs are on disk either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.errors import ConfigError


class ReportCallback(Callback):
    def __init__(self, output_dir: str, baseline: Any = None) -> None:
        self.output_dir = Path(output_dir)
        if isinstance(baseline, (DictConfig, ListConfig)):
            baseline = OmegaConf.to_container(baseline, resolve=True)
        self.baseline = baseline

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.results.render import build_report  # pandas, scipy, matplotlib: only when reporting

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = build_report(
                [sweep_dir], self.output_dir, self.baseline, command=f"the multirun's ReportCallback on {sweep_dir}"
            )
        except ConfigError as e:
            print(f"report not written: {e}")
            return
        print(report.console_text())
