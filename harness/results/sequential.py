"""Sequential designs: adding seeds and looking again without inflating the false-positive rate.

A researcher who adds seeds to a "not significant" result and looks again gets more chances to be
fooled: ten looks at a plain t-test at 5% each find a null effect about 20% of the time. A design
declared before the runs says at which seed counts the results will be looked at (`stats.looks` in
configs/config.yaml, with `stats.sequential: true`; every run records it in its config.yaml, which
is where the report reads it). Each look then tests at a stricter nominal level.

The boundary is Pocock's (the same nominal level at every look), computed for the t-statistic
itself rather than a normal approximation: for normal per-seed differences, the sequence of paired
t-statistics t_3, t_4, ... has a null distribution free of the unknown spread, so

    F(a) = P(min over the looks of the nominal two-sided p <= a)

is one function of the looks, estimated once by simulating `SIMULATIONS` null sequences (fixed
RNG seed, so every report computes the same numbers). A paired test's sequential p-value at the
current look is F(p): the chance, under the null, that some look of the design goes as far.
P(F(p_k) <= alpha at some look k) = P(min p <= F^-1(alpha)) = alpha, so it is valid whichever look
one stops at, and Holm can adjust it like any p-value. Its confidence interval is the repeated
confidence interval at the nominal level F^-1(alpha). A test whose null distribution is not free
of nuisance parameters (Welch, with two spreads) uses Bonferroni over the looks instead: min(1, K p).

A look the design did not plan (a seed count not in `stats.looks`) is added to the design, which
only makes F larger (more conservative).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from harness.errors import ConfigError

SIMULATIONS = 400_000
SIM_SEED = 20_260_101
# Below this many simulated sequences past a level, the estimate of F is too noisy to trust there:
# Bonferroni's K * a, which is an upper bound, is used instead.
MIN_TAIL_COUNT = 200
DEFAULT_LOOKS = tuple(range(3, 13))


@dataclass(frozen=True)
class Design:
    """`looks`: the seed counts at which results are looked at; () is the fixed (one-look) design."""

    looks: tuple[int, ...] = ()

    @property
    def sequential(self) -> bool:
        return bool(self.looks)

    def looks_at(self, n: int) -> tuple[int, ...]:
        """The looks the design accounts for at a look with `n` seeds: every planned one (the later
        ones too: a boundary that tightened only as looks were made would let the error grow), and n."""
        return tuple(sorted({*self.looks, n}))

    def p_value(self, p: float, n: int, pivotal: bool) -> float:
        """The p-value at a look with `n` seeds, given the test's nominal p. `pivotal`: a paired t-test."""
        if not self.sequential or not math.isfinite(p):
            return p
        looks = self.looks_at(n)
        return min_p_cdf(looks, p) if pivotal else min(1.0, len(looks) * p)

    def one_sided_p_value(self, p: float, n: int, pivotal: bool) -> float:
        """The same for a one-sided p (a TOST): a one-sided p <= a implies a two-sided p <= 2a, so
        F(2p) bounds the chance that some look goes as far."""
        if not self.sequential or not math.isfinite(p):
            return p
        return min(1.0, self.p_value(min(1.0, 2 * p), n, pivotal))

    def level(self, alpha: float, n: int, pivotal: bool) -> float:
        """The nominal level at which the look with `n` seeds rejects at overall level `alpha`."""
        if not self.sequential:
            return alpha
        looks = self.looks_at(n)
        return min_p_quantile(looks, alpha) if pivotal else alpha / len(looks)

    def text(self) -> str:
        if not self.sequential:
            return "fixed design (one look)"
        return f"sequential: Pocock-type looks at {_ranges(self.looks)} seeds (stats.looks)"


FIXED = Design()


def _ranges(looks: Sequence[int]) -> str:
    looks = sorted(looks)
    if len(looks) > 2 and looks == list(range(looks[0], looks[-1] + 1)):
        return f"{looks[0]}-{looks[-1]}"
    return ", ".join(map(str, looks))


def check_looks(looks: Iterable) -> tuple[int, ...]:
    """stats.looks as sorted seed counts, each at least 2; a ConfigError naming the value otherwise."""
    try:
        values = [int(v) for v in looks]
        ok = all(float(v) == int(v) for v in looks) and values and min(values) >= 2
    except (TypeError, ValueError):
        ok = False
    if not ok:
        shown = list(looks) if isinstance(looks, (list, tuple)) else looks
        raise ConfigError(f"stats.looks={shown} must be seed counts >= 2, e.g. [3, 4, 5]")
    return tuple(sorted(set(values)))


def design_from_configs(configs: Iterable[Mapping]) -> tuple[Design, list[str]]:
    """The design the runs declared (their flattened configs' stats.sequential and stats.looks), and
    notes. Runs that disagree: the sequential design (the conservative one), said in a note. Runs made
    before these keys existed declare the fixed design."""
    declared = set()
    for flat in configs:
        if flat.get("stats.sequential") is True:
            declared.add(check_looks(_as_list(flat.get("stats.looks", DEFAULT_LOOKS))))
        else:
            declared.add(())
    sequential = sorted(d for d in declared if d)
    notes = []
    if not sequential:
        return Design(), notes
    looks = tuple(sorted(set().union(*sequential)))
    if len(declared) > 1:
        notes.append(
            "the runs declare different designs (stats.sequential / stats.looks); the report tests with the "
            f"sequential one over every look any of them declares ({_ranges(looks)} seeds)"
        )
    return Design(looks), notes


def _as_list(value) -> list:
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)  # collect.flatten writes lists as JSON text
        except ValueError:
            return [value]
    return list(value) if isinstance(value, (list, tuple)) else [value]


# the null distribution of the smallest p over the looks ------------------------------------
@functools.lru_cache(maxsize=64)
def _sorted_min_p(looks: tuple[int, ...]) -> np.ndarray:
    """Sorted min over the looks of the paired t-test's two-sided p, for SIMULATIONS null sequences."""
    rng = np.random.default_rng(SIM_SEED)
    chunks = []
    remaining = SIMULATIONS
    while remaining:
        size = min(remaining, 100_000)
        remaining -= size
        chunks.append(min_p_of_sequences(rng.standard_normal((size, max(looks))), looks))
    return np.sort(np.concatenate(chunks))


def min_p_of_sequences(values: np.ndarray, looks: Sequence[int]) -> np.ndarray:
    """Per row of `values` (one sequence of per-seed differences each): the smallest two-sided p of
    the one-sample t-test of mean 0 over the first n values, n in `looks`."""
    total, squares = np.cumsum(values, axis=1), np.cumsum(values**2, axis=1)
    smallest = np.ones(len(values))
    for n in looks:
        mean = total[:, n - 1] / n
        variance = np.maximum(squares[:, n - 1] - n * mean**2, 0.0) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = mean / np.sqrt(variance / n)
        smallest = np.minimum(smallest, 2 * stats.t.sf(np.abs(t), n - 1))
    return smallest


def min_p_cdf(looks: tuple[int, ...], a: float) -> float:
    """F(a) = P(min over the looks of the nominal p <= a) under the null."""
    looks = tuple(looks)
    if len(looks) == 1:
        return float(a)
    simulated = _sorted_min_p(looks)
    count = int(np.searchsorted(simulated, a, side="right"))
    bound = min(1.0, len(looks) * a)
    if count < MIN_TAIL_COUNT:
        return float(bound)
    return float(max(a, min(bound, count / len(simulated))))


def min_p_quantile(looks: tuple[int, ...], alpha: float) -> float:
    """F^-1(alpha): the nominal level each look tests at so that the design's error rate is alpha."""
    looks = tuple(looks)
    if len(looks) == 1:
        return float(alpha)
    simulated = _sorted_min_p(looks)
    index = int(math.floor(alpha * len(simulated)))
    if index < MIN_TAIL_COUNT:
        return alpha / len(looks)
    return float(simulated[index - 1])


# planning ----------------------------------------------------------------------------------
def power_by_look(
    effect_size: float, looks: Sequence[int], nominal: float, simulations: int = 20_000, seed: int = 0
) -> list[float]:
    """P(the design has rejected by each look) when the per-seed differences have mean/sd =
    `effect_size`, each look testing at the `nominal` level (paired t-test, two-sided)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((simulations, max(looks))) + effect_size
    total, squares = np.cumsum(values, axis=1), np.cumsum(values**2, axis=1)
    rejected = np.zeros(simulations, dtype=bool)
    powers = []
    for n in sorted(looks):
        mean = total[:, n - 1] / n
        variance = np.maximum(squares[:, n - 1] - n * mean**2, 0.0) / (n - 1)
        t = mean / np.sqrt(variance / n)
        rejected |= 2 * stats.t.sf(np.abs(t), n - 1) < nominal
        powers.append(float(rejected.mean()))
    return powers
