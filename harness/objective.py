"""What a training job gives back to a sweeper that chooses its trials from the results so far.

Hydra's basic sweeper only launches jobs; Optuna (`hydra/sweeper=optuna`, configs/hparams_search/)
needs one number per trial. That number is the summary.json value named by the config key
`optimized_metric` (default `final_val_bpb`, minimized). A trial that fails, diverges or ends
without the metric gets the worst value for the study's direction (+inf when minimizing): Optuna
records it as a complete, bad trial and samples elsewhere. NaN would not do: Optuna refuses it
("the objective function returned nan"), the sweeper counts a failure, and at its default
`max_failure_rate` of 0 one failed trial stops the whole study.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.errors import ConfigError

# Hydra's default sweeper: it enumerates every job before launching the first, and needs no value back.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

log = logging.getLogger("ablate.objective")

# summary.json numbers a study can optimize, and the direction in which each one is better.
OBJECTIVES = {
    "final_val_bpb": "minimize",
    "min_val_bpb": "minimize",
    "last_val_bpb": "minimize",
    "core": "maximize",
    "tok_per_s": "maximize",
    "mfu": "maximize",
}


def direction_name(direction: Any) -> str:
    """'minimize' or 'maximize' from the sweeper's `direction` (a string, or the plugin's enum)."""
    return str(getattr(direction, "name", direction)).lower()


def check_objective(cfg: DictConfig, direction: Any = "minimize") -> str:
    """`optimized_metric` names a summary number, measured by this config, optimized the right way."""
    metric = cfg.get("optimized_metric")
    if metric not in OBJECTIVES:
        raise ConfigError(f"optimized_metric={metric!r} is not a summary metric; choose from: {', '.join(OBJECTIVES)}")
    if metric == "core" and not cfg.eval.core.get("enabled", False):
        raise ConfigError("optimized_metric=core needs CORE measured: eval=core (or eval.core.enabled=true)")
    wanted, given = OBJECTIVES[metric], direction_name(direction)
    if given != wanted:
        raise ConfigError(
            f"hydra.sweeper.direction={given} for optimized_metric={metric}, which is better when it is "
            f"{'lower' if wanted == 'minimize' else 'higher'}; set hydra.sweeper.direction={wanted}"
        )
    return metric


def objective_value(cfg: DictConfig, summary: dict | None, direction: Any = "minimize") -> float:
    """The trial's value for the sweeper: the summary's `optimized_metric`, or the worst value."""
    metric = str(cfg.get("optimized_metric"))
    value = (summary or {}).get(metric)
    status = (summary or {}).get("status", "failed")
    if status != "completed" or not isinstance(value, (int, float)) or not math.isfinite(value):
        worst = math.inf if direction_name(direction) == "minimize" else -math.inf
        log.warning(f"trial {status}: {metric} is {value}; the sweeper records {worst}")
        return worst
    log.info(f"trial {metric} = {value:.6g}")
    return float(value)


def sweep_return(cfg: DictConfig, summary: dict | None):
    """What `harness.train`'s main returns to Hydra: the summary, or the trial's value for a
    sweeper that chooses its trials (the Optuna sweeper requires a float)."""
    sweeper = _job_sweeper()
    if sweeper is None:
        return summary
    return objective_value(cfg, summary, sweeper.get("direction", "minimize"))


def chooses_trials() -> bool:
    """Whether this Hydra job was launched by a sweeper that picks trials as it goes."""
    return _job_sweeper() is not None


def _job_sweeper() -> DictConfig | None:
    """This Hydra job's sweeper config when it is not the basic sweeper (which needs no value)."""
    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    return None if str(sweeper.get("_target_", BASIC_SWEEPER)) == BASIC_SWEEPER else sweeper
