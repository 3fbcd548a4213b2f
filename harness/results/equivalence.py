"""Equivalence: "no effect" as a verdict of its own, by two one-sided tests (TOST) against a margin.

A difference that is "not significant" may still be large; it is *equivalent within ±m* only when
both one-sided tests reject: the true difference is above -m and below +m. The TOST p-value is the
larger of the two one-sided p-values, and it joins the report's Holm family like any other p.

Quality is tested on the absolute difference (val bpb, CORE), paired on shared seeds as
stats.compare is, else Welch. Speed is tested on the ratio of means, as stats.ratio_compare is:
rho > 1 - m and rho < 1 + m, each a one-sided t-test of mean(variant) - r * mean(baseline) (paired
or Welch), the same statistics Fieller's interval inverts.

Margins are chosen by the researcher before looking (`--equivalence-margin bpb=0.002 core=0.005
speed=1`); without one no equivalence is tested and a null stays "not significant".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from harness.errors import ConfigError

# Defaults when --equivalence-margin is given without a value for a metric: the differences the
# README's planning examples size sweeps for (`--detect 0.002`, `--detect-core 0.005`), and 1% of
# throughput, about the run-to-run spread of a quiet GPU node.
DEFAULT_MARGINS = {"bpb": 0.002, "core": 0.005, "speed": 1.0}
# The report's metric keys for each margin name.
MARGIN_KEYS = {"bpb": "val_bpb", "core": "core", "speed": "tok_per_s"}


@dataclass(frozen=True)
class Margins:
    """Equivalence margins: bpb and CORE absolute, speed in percent. None: not tested."""

    bpb: float | None = None
    core: float | None = None
    speed: float | None = None

    def for_key(self, key: str) -> float | None:
        """The margin of a report metric key (val_bpb, core, tok_per_s)."""
        name = {v: k for k, v in MARGIN_KEYS.items()}[key]
        return getattr(self, name)

    @property
    def any(self) -> bool:
        return any(m is not None for m in (self.bpb, self.core, self.speed))

    def text(self) -> str:
        parts = [f"bpb ±{self.bpb:g}" if self.bpb is not None else ""]
        parts += [f"CORE ±{self.core:g}" if self.core is not None else ""]
        parts += [f"speed ±{self.speed:g}%" if self.speed is not None else ""]
        return ", ".join(p for p in parts if p)


NO_MARGINS = Margins()


def parse_margins(items: Sequence[str] | None) -> Margins:
    """`--equivalence-margin` values: None (flag absent) tests nothing; [] (the bare flag) takes every
    default; NAME=VALUE items set those margins, the rest keep their defaults."""
    if items is None:
        return Margins()
    margins = dict(DEFAULT_MARGINS)
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or name not in DEFAULT_MARGINS:
            raise ConfigError(
                f"--equivalence-margin item {item!r} is not NAME=VALUE with NAME one of "
                f"{', '.join(DEFAULT_MARGINS)} (e.g. bpb=0.002 core=0.005 speed=1)"
            )
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ConfigError(f"--equivalence-margin {name}={value!r} must be a positive number")
        margins[name] = number
    return Margins(**margins)


def _finite_pairs(pairs: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(s, float(v)) for s, v in pairs if math.isfinite(v)]


def _arms(variant, baseline, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """Paired: the values of the shared seeds, in seed order; else every value of each side."""
    from harness.results.stats import shared_seeds

    variant, baseline = _finite_pairs(variant), _finite_pairs(baseline)
    if paired:
        shared = shared_seeds(variant, baseline)
        v, b = dict(variant), dict(baseline)
        return np.array([v[s] for s in shared]), np.array([b[s] for s in shared])
    return np.array([x for _, x in variant]), np.array([x for _, x in baseline])


def tost_difference(variant, baseline, margin: float, paired: bool) -> float:
    """TOST p for |mean(variant) - mean(baseline)| < margin: paired t on the shared seeds, or Welch."""
    v, b = _arms(variant, baseline, paired)
    return _tost(v, b, -margin, margin, paired, scale_low=1.0, scale_high=1.0)


def tost_ratio(variant, baseline, margin_pct: float, paired: bool) -> float:
    """TOST p for 1 - m < mean(variant) / mean(baseline) < 1 + m (m = margin_pct / 100)."""
    v, b = _arms(variant, baseline, paired)
    m = margin_pct / 100
    return _tost(v, b, 0.0, 0.0, paired, scale_low=1 - m, scale_high=1 + m)


def _tost(v, b, low: float, high: float, paired: bool, scale_low: float, scale_high: float) -> float:
    """max of: p of "v - scale_low * b > low" and p of "v - scale_high * b < high" (one-sided t-tests)."""
    if min(len(v), len(b)) < 2:
        return math.nan
    if paired:
        lower = stats.ttest_1samp(v - scale_low * b - low, 0.0, alternative="greater").pvalue
        upper = stats.ttest_1samp(v - scale_high * b - high, 0.0, alternative="less").pvalue
    else:
        lower = stats.ttest_ind(v - low, scale_low * b, equal_var=False, alternative="greater").pvalue
        upper = stats.ttest_ind(v - high, scale_high * b, equal_var=False, alternative="less").pvalue
    p = max(float(lower), float(upper))
    return p if math.isfinite(p) else math.nan
