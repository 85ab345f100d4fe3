"""The markdown tables of the record (rows of numbers; the prose around them is in ``render``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.build_overhead.breakdown import breakdown, group_rows
from bench.build_overhead.results import RoundResult, Summary


def load_text(load: Sequence[float] | None) -> str:
    return "n/a" if not load else " / ".join(f"{x:.2f}" for x in load)


def round_table(rounds: Sequence[RoundResult], summary: Summary) -> list[str]:
    lines = ["| round | order | A: checks on (s) | B: checks off (s) | C: raw tools (s) | D: cached (s) "
             "| B/C | A/C | load (1 min) before / after |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    notes = ["", "\\* D's cache was stale first in this round and was refilled by an untimed run."] if any(
        r.cache_refills for r in rounds) else []
    for r, bc, ac in zip(rounds, summary.ratios["B/C"], summary.ratios["A/C"]):
        lines.append(f"| {r.index + 1} | {' '.join(r.order)} | {r.seconds['A']:.1f} | {r.seconds['B']:.1f} "
                     f"| {r.seconds['C']:.1f} | {r.seconds['D']:.2f}{'*' if r.cache_refills else ''} | {bc:.2f} "
                     f"| {ac:.2f} | {load_text(r.load)} |")
    m = summary.medians
    lines.append(f"| **median** | | **{m['A']:.1f}** | **{m['B']:.1f}** | **{m['C']:.1f}** | **{m['D']:.2f}** "
                 f"| **{summary.ratio_medians['B/C']:.2f}** | **{summary.ratio_medians['A/C']:.2f}** | |")
    return lines + notes


def attribution_table(summary: Summary) -> list[str]:
    lines = ["| work | C: raw (s) | B: build, checks off (s) | B − C (s) | A: build, checks on (s) |",
             "|---|---:|---:|---:|---:|"]
    rows = group_rows(summary)
    for work, raw, b, a in rows:
        lines.append(f"| {work} | {raw:.2f} | {b:.2f} | {b - raw:+.2f} | {a:.2f} |")
    total = [sum(row[i] for row in rows) for i in (1, 2, 3)]
    lines.append(f"| **sum of the rows** (medians of parts: close to, not equal to, the median wall clock) "
                 f"| **{total[0]:.1f}** | **{total[1]:.1f}** | **{total[1] - total[0]:+.1f}** "
                 f"| **{total[2]:.1f}** |")
    return lines


def stage_table(summary: Summary) -> list[str]:
    """A's and B's stages. D is left out: a restored stage reports the seconds of the run that made it."""
    stages = [s for s in summary.stage_medians["A"] if s not in ("report total", "process")]
    lines = ["| report.json stage | A: checks on (s) | B: checks off (s) |", "|---|---:|---:|"]
    for stage in [*stages, "report total", "process"]:
        cells = [f"{summary.stage_medians[v].get(stage, float('nan')):.2f}" for v in ("A", "B")]
        name = {"report total": "report.json `seconds` (whole build)",
                "process": "wall clock minus report.json `seconds`"}.get(stage, f"`{stage}`")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def raw_table(summary: Summary) -> list[str]:
    lines = ["| group | step | median s |", "|---|---|---:|"]
    for step, seconds in summary.raw_medians.items():
        group = summary.raw_groups.get(step, "process")
        label = "interpreter start-up and exit (wall clock minus steps)" if step == "process" else step
        lines.append(f"| {group} | {label} | {seconds:.2f} |")
    return lines


def timed_table(timed: dict[str, Any]) -> list[str]:
    lines = ["| function | what it does | calls | total s | per call s |", "|---|---|---:|---:|---|"]
    for row in timed["rows"]:
        calls = row["call_seconds"]
        per_call = ", ".join(f"{x:.2f}" for x in calls) if len(calls) <= 4 else f"longest {row['longest_call_s']:.2f}"
        lines.append(f"| `{row['function']}` | {row['what']} | {row['calls']} | {row['seconds']:.2f} | {per_call} |")
    return lines


def breakdown_table(timed: dict[str, Any]) -> list[str]:
    lines = ["| work | B, timed (s) | C, paired (s) | B − C (s) |", "|---|---:|---:|---:|"]
    rows = breakdown(timed)
    lines += [f"| {work} | {b:.2f} | {c:.2f} | {b - c:+.2f} |" for work, b, c in rows]
    b_total, c_total = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"| **wall clock** | **{b_total:.1f}** | **{c_total:.1f}** | **{b_total - c_total:+.1f}** "
                 f"(B/C {b_total / c_total:.2f}) |")
    return lines
