"""The measurements: one round's results, the whole run's record (and its JSON), and the summary over rounds."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.build_overhead.params import VARIANTS


@dataclasses.dataclass
class RoundResult:
    index: int
    order: list[str]
    seconds: dict[str, float]
    reports: dict[str, dict[str, Any]]
    """report.json summaries of the build variants (A, B, D)."""
    raw_steps: list[dict[str, Any]]
    """Variant C's own step timings."""
    load: tuple[float, float] | None = None
    cache_refills: int = 0
    """D runs that had to rebuild stages before the timed one (edgekiln's code changed under the cache)."""
    code: tuple[str, str] = ("", "")
    """Digest of edgekiln's sources at the start and the end of the round (``code_version``)."""


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclasses.dataclass
class Summary:
    medians: dict[str, float]
    ratios: dict[str, list[float]]
    """Per round: B/C and A/C."""
    ratio_medians: dict[str, float]
    stage_medians: dict[str, dict[str, float]]
    """Per build variant: median seconds of each report.json stage (A, B), 'report total' and 'process'."""
    raw_medians: dict[str, float]
    """Variant C: median seconds per step, and 'process' (start-up, exit)."""
    raw_groups: dict[str, str]
    cached_rounds: list[float]
    """Variant D's wall-clock seconds per round."""


def summarize(rounds: Sequence[RoundResult]) -> Summary:
    medians = {v: _median([r.seconds[v] for r in rounds]) for v in VARIANTS}
    ratios = {"B/C": [r.seconds["B"] / r.seconds["C"] for r in rounds],
              "A/C": [r.seconds["A"] / r.seconds["C"] for r in rounds]}
    stage_medians: dict[str, dict[str, float]] = {}
    for variant in ("A", "B", "D"):
        # A restored stage reports the seconds of the run that made it, so D keeps only its totals.
        stages = list(rounds[0].reports[variant]["stages"]) if variant != "D" else []
        table = {s: _median([r.reports[variant]["stages"][s] for r in rounds]) for s in stages}
        table["report total"] = _median([r.reports[variant]["seconds"] for r in rounds])
        table["process"] = _median([r.seconds[variant] - r.reports[variant]["seconds"] for r in rounds])
        stage_medians[variant] = table
    names = [s["step"] for s in rounds[0].raw_steps]
    raw = {n: _median([next(s["seconds"] for s in r.raw_steps if s["step"] == n) for r in rounds]) for n in names}
    raw["process"] = _median([r.seconds["C"] - sum(s["seconds"] for s in r.raw_steps) for r in rounds])
    groups = {s["step"]: s["group"] for s in rounds[0].raw_steps}
    return Summary(medians, ratios, {k: _median(v) for k, v in ratios.items()}, stage_medians, raw, groups,
                   [r.seconds["D"] for r in rounds])


@dataclasses.dataclass
class Record:
    command: str
    started_utc: str
    seconds: float
    machine: dict[str, Any]
    load_start: tuple[float, float, float] | None
    load_end: tuple[float, float, float] | None
    settings: dict[str, Any]
    commands: dict[str, str]
    rounds: list[RoundResult]
    fill_seconds: float
    fill_report: dict[str, Any]
    timed: dict[str, Any] | None
    """The extra run of B with timers on its functions and the run of C after it (``timed_pair``)."""
    imports: dict[str, float]


def record_json(record: Record, summary: Summary) -> dict[str, Any]:
    return {"record": dataclasses.asdict(record), "summary": dataclasses.asdict(summary)}


def load_record(path: Path) -> Record:
    """The ``Record`` of an earlier run from its JSON (the summary is recomputed from the rounds)."""
    data = json.loads(path.read_text(encoding="utf-8"))["record"]
    rounds = [RoundResult(**{**r, "load": tuple(r["load"]) if r["load"] else None, "code": tuple(r["code"])})
              for r in data.pop("rounds")]
    for key in ("load_start", "load_end"):
        data[key] = tuple(data[key]) if data[key] else None
    return Record(rounds=rounds, **data)
