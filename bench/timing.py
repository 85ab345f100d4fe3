"""Interleaved latency measurement: robust to a noisy, shared machine.

Timing one variant after another lets a burst of load from a neighbour land on
one variant only. Instead every round times each variant for a short block, in
an order that rotates from round to round, and a variant's speed-up over FP32 is
taken per round (both blocks ran within about a second of each other) before
taking the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Call = Callable[[], object]


@dataclass(frozen=True)
class TimingPlan:
    rounds: int
    runs_per_round: int
    warmup: int
    """Untimed runs per variant before the first round (allocations, kernel selection, caches)."""
    block_warmup: int = 2
    """Untimed runs at the start of every block: the previous session's spinning threads settle down."""
    max_block_seconds: float = 1.0
    """A block stops early after this long (but not before ``min_runs``): slow variants such as dynamic
    INT8 would otherwise dominate the run time without making the fast ones' numbers any better."""
    min_runs: int = 3


@dataclass(frozen=True)
class LatencySummary:
    median_ms: float
    """Median over every timed run of all rounds."""
    runs: int
    round_medians_ms: tuple[float, ...]
    ratio_vs_reference: float | None
    """Median over rounds of (reference's round median / this variant's round median)."""
    ratio_low: float | None
    ratio_high: float | None
    """25th and 75th percentile of the per-round ratios: how much the speed-up moved with the noise."""


def _time_block(call: Call, plan: TimingPlan) -> list[float]:
    for _ in range(plan.block_warmup):
        call()
    times: list[float] = []
    budget_ms = 1000 * plan.max_block_seconds
    while len(times) < plan.runs_per_round and (len(times) < plan.min_runs or sum(times) < budget_ms):
        started = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - started) / 1e6)
    return times


def _rotated(names: Sequence[str], shift: int) -> list[str]:
    shift %= len(names)
    return list(names[shift:]) + list(names[:shift])


def interleaved(calls: dict[str, Call], plan: TimingPlan) -> dict[str, list[list[float]]]:
    """Per variant, per round, the timed runs in milliseconds."""
    names = list(calls)
    for name in names:
        for _ in range(plan.warmup):
            calls[name]()
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for round_index in range(plan.rounds):
        for name in _rotated(names, round_index):
            samples[name].append(_time_block(calls[name], plan))
    return samples


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(samples: dict[str, list[list[float]]], reference: str) -> dict[str, LatencySummary]:
    """Median latency per variant and its speed-up over ``reference``, paired round by round."""
    medians = {name: [statistics.median(block) for block in rounds] for name, rounds in samples.items()}
    result = {}
    for name, rounds in samples.items():
        ratios = [ref / own for ref, own in zip(medians.get(reference, []), medians[name])]
        low, high = _quartiles(ratios) if ratios else (None, None)
        result[name] = LatencySummary(
            median_ms=statistics.median(t for block in rounds for t in block),
            runs=sum(len(block) for block in rounds),
            round_medians_ms=tuple(medians[name]),
            ratio_vs_reference=statistics.median(ratios) if ratios else None,
            ratio_low=low, ratio_high=high)
    return result
