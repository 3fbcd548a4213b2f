"""The report at the end of a multirun: a Hydra callback that calls `build_report` on the sweep.

Wired in an experiment file, e.g. configs/experiment/smoke.yaml:

    hydra:
      callbacks:
        report:
          _target_: harness.results.callback.ReportCallback
          baseline: [rope.split=slice, mlp_lr.name=c_fc_2x]   # optional; this is the default
          output_dir: results/elsewhere                       # optional; see below
          equivalence_margin: [bpb=0.002, core=0.005, speed=1]  # optional: TOST, as --equivalence-margin

After the last run it writes the report of `hydra.sweep.dir` and prints the comparison table and
the report's path. The report goes where the sweep's runs are named, `<paths.results_dir>/<name>/`
(runs/<name> -> results/<name>), so `name=...` on the command line keeps two sweeps of one
experiment, and their reports, apart. A sweep that left nothing to report says so in one line
rather than failing the multirun; its runs are on disk either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.errors import ConfigError


class ReportCallback(Callback):
    def __init__(self, output_dir: str | None = None, baseline: Any = None, equivalence_margin: Any = None) -> None:
        from harness.results.equivalence import parse_margins

        self.output_dir = Path(output_dir) if output_dir else None
        if isinstance(baseline, (DictConfig, ListConfig)):
            baseline = OmegaConf.to_container(baseline, resolve=True)
        self.baseline = baseline
        if isinstance(equivalence_margin, ListConfig):
            equivalence_margin = OmegaConf.to_container(equivalence_margin, resolve=True)
        self.margins = parse_margins(None if equivalence_margin is None else [str(m) for m in equivalence_margin])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.results.render import build_report  # pandas, scipy, matplotlib: only when reporting

        sweep_dir = Path(str(config.hydra.sweep.dir))
        output_dir = self.output_dir or report_dir(config)
        try:
            report = build_report(
                [sweep_dir],
                output_dir,
                self.baseline,
                command=f"the multirun's ReportCallback on {sweep_dir}",
                margins=self.margins,
            )
        except ConfigError as e:
            print(f"report not written: {e}")
            return
        print(report.console_text())


def report_dir(config: DictConfig) -> Path:
    """results/<name>: the sweep's own folder of reports, named as its runs are (runs/<name>)."""
    return Path(str(config.paths.results_dir)) / str(config.name)
