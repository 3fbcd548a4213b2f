"""When the runs ran: whether a speed comparison is confounded with time, and which runs pair up.

A machine's throughput drifts (other jobs, thermal state, a neighbour's test suite). Two arms whose
runs ran one after the other differ by that drift as well as by the config, and no number of seeds
cancels it. So before speed is tested, the runs' start times decide:

- **interleaved**: the arms' start orders are mixed. The measure is the Mann-Whitney statistic of
  the start times, as the probability that a variant run started after a baseline run (ties count
  half): 0 or 1 when one arm ran entirely before the other, 1/2 when perfectly mixed. The arms
  interleave when it lies in [MIXED_LOW, 1 - MIXED_LOW], i.e. at least a quarter of the
  (variant run, baseline run) pairs started in each order; or when they ran side by side, the
  span of each arm (first start to last end) overlapping the other's by at least OVERLAP_SHARE of
  the shorter span (a cluster that launched every run at once, in whatever order). Otherwise the
  speed verdict is `confounded`, with no faster/slower word, and the note points to
  `harness.bench ab`, which interleaves by design.
- **paired by seed** only where the seed's two runs shared a time window (their windows overlap
  by at least half the shorter one: side by side on one machine, or launched together on a cluster),
  for every shared seed. Runs that ran at different times gain nothing from being paired by seed
  (the seed does not set the speed) and pairing would drop the unshared ones, so they use Welch on
  every run.

Runs that did not record their start and end (older summaries, wandb imports) are unknown: the
speed test then pairs by seed as before and the row says the interleaving could not be checked.
The rule's false-verdict rate under drift is shown by simulation in tests/test_verdicts.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MIXED_LOW = 0.25
OVERLAP_SHARE = 0.5
CONFOUNDED = "confounded"
PAIRED, WELCH = "paired", "welch"


def times(runs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """Start and end of each run in seconds (UTC epoch), or None if any run lacks either."""
    if runs.empty or "started_at" not in runs or "ended_at" not in runs:
        return None
    starts = pd.to_datetime(runs["started_at"], errors="coerce", utc=True)
    ends = pd.to_datetime(runs["ended_at"], errors="coerce", utc=True)
    if starts.isna().any() or ends.isna().any():
        return None
    epoch = pd.Timestamp(0, tz="UTC")
    return ((starts - epoch).dt.total_seconds().to_numpy(), (ends - epoch).dt.total_seconds().to_numpy())


def start_mixing(variant_starts: Sequence[float], baseline_starts: Sequence[float]) -> float:
    """P(a variant run started after a baseline run), ties half: the Mann-Whitney U over n_v * n_b."""
    v, b = np.asarray(variant_starts, dtype=float), np.asarray(baseline_starts, dtype=float)
    if not len(v) or not len(b):
        return float("nan")
    later = (v[:, None] > b[None, :]).sum() + 0.5 * (v[:, None] == b[None, :]).sum()
    return float(later / (len(v) * len(b)))


def interleaved(variant: tuple[Sequence, Sequence], baseline: tuple[Sequence, Sequence]) -> bool:
    """Each arm as (starts, ends): their start orders mix, or they ran side by side."""
    (v_starts, v_ends), (b_starts, b_ends) = variant, baseline
    mixing = start_mixing(v_starts, b_starts)
    side_by_side = share_window((min(v_starts), max(v_ends)), (min(b_starts), max(b_ends)))
    return MIXED_LOW <= mixing <= 1 - MIXED_LOW or side_by_side


def share_window(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two runs overlap by at least OVERLAP_SHARE of the shorter one's window."""
    overlap = min(a[1], b[1]) - max(a[0], b[0])
    shorter = min(a[1] - a[0], b[1] - b[0])
    return overlap > 0 and overlap >= OVERLAP_SHARE * shorter


def confounded_note(mixing: float, disjoint: bool) -> str:
    if disjoint:
        return (
            "speed: this variant's runs and the baseline's ran in separate time windows, so a change in "
            "machine load between them is not cancelled (harness.bench ab interleaves)"
        )
    return (
        f"speed: confounded with time: the runs did not interleave with the baseline's (start-order mixing "
        f"{mixing:.2f}; needs {MIXED_LOW:g}-{1 - MIXED_LOW:g}), so machine drift is not cancelled "
        "(harness.bench ab interleaves)"
    )


def speed_design(
    variant: tuple[Sequence, Sequence, Sequence], baseline: tuple[Sequence, Sequence, Sequence]
) -> tuple[str, float, bool]:
    """How to test speed between two arms, each (seeds, starts, ends): CONFOUNDED when the start
    orders do not mix, PAIRED when every seed both ran shared a time window (at least 2 such seeds),
    else WELCH. Also the start-order mixing and whether the two arms' windows are disjoint."""
    (v_seeds, v_starts, v_ends), (b_seeds, b_starts, b_ends) = variant, baseline
    mixing = start_mixing(v_starts, b_starts)
    disjoint = max(v_ends) <= min(b_starts) or max(b_ends) <= min(v_starts)
    if not interleaved((v_starts, v_ends), (b_starts, b_ends)):
        return CONFOUNDED, mixing, disjoint
    v_window = _once(v_seeds, v_starts, v_ends)
    b_window = _once(b_seeds, b_starts, b_ends)
    shared = [s for s in v_window if s in b_window]
    if len(shared) >= 2 and all(share_window(v_window[s], b_window[s]) for s in shared):
        return PAIRED, mixing, disjoint
    return WELCH, mixing, disjoint


def _once(seeds: Sequence, starts: Sequence, ends: Sequence) -> dict:
    """seed -> (start, end) for the seeds that ran once in this arm."""
    counts: dict = {}
    for seed in seeds:
        counts[seed] = counts.get(seed, 0) + 1
    return {s: (a, b) for s, a, b in zip(seeds, starts, ends, strict=True) if counts[s] == 1}
