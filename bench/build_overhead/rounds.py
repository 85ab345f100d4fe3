"""Running and timing: each variant as a fresh process timed by wall clock, the cached variant D, the rounds,
and the fresh-interpreter import costs."""

from __future__ import annotations

import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.build_overhead.params import IMPORTS, LABELS, MAX_REFILLS, REPO_DIR, VARIANTS, progress
from bench import timing
from bench.build_overhead.results import RoundResult
from bench.build_overhead.workspace import Workspace, build_arguments, edgekiln_command, raw_command


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def timed_run(command: Sequence[str], log: Path) -> float:
    """Wall-clock seconds of ``command`` as a fresh process (start-up and exit included); output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        done = subprocess.run(list(command), cwd=REPO_DIR, stdout=sink, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited with code {done.returncode}; last lines of {log}:\n"
                           f"{_tail(log)}")
    return seconds


def build_report(output: Path) -> dict[str, Any]:
    """What report.json says about a build: total seconds, per-stage seconds, cache hits."""
    report = json.loads((output / "report.json").read_text())
    return {"seconds": report["seconds"], "stages": {s["stage"]: s["seconds"] for s in report["stages"]},
            "cached": {s["stage"]: s["cached"] for s in report["stages"]},
            "cache": {k: report["cache"].get(k) for k in ("enabled", "hits", "misses")}}


def guard_outcome(output: Path) -> dict[str, Any]:
    """What the accuracy guard measured in an A build (first attempt) for the x86 and rpi4 artifacts."""
    outcome = {}
    for artifact, path in (("x86-int8", ("precision", "guard")), ("rpi4", ("details", "int8", "guard"))):
        guard: Any = json.loads((output / artifact / "manifest.json").read_text())["metrics"]
        for key in path:
            guard = guard[key]
        first = guard["attempts"][0]["quality"]
        outcome[artifact] = {"passed": guard["passed"], "attempts": len(guard["attempts"]),
                             "top1_agreement": first["top1_agreement"], "min_cosine": first["min_cosine"]}
    return outcome


def code_version() -> str:
    """Short digest of edgekiln's sources, read now: other engineers edit this checkout while the benchmark
    runs, and a round that straddles an edit measures two versions."""
    from toolchain.digests import code_digest

    return code_digest.__wrapped__()[:10]  # the cached value would be the first one read in this process


def run_variant(variant: str, workspace: Workspace, raw_config: Path, label: str) -> tuple[float, Any]:
    """Run one variant once; returns its wall-clock seconds and its report (build) or step list (raw)."""
    log = workspace.logs / f"{label}-{variant}.log"
    if variant == "C":
        steps_path = Path(json.loads(raw_config.read_text())["steps_json"])
        steps_path.unlink(missing_ok=True)
        seconds = timed_run(raw_command(raw_config), log)
        return seconds, json.loads(steps_path.read_text())
    seconds = timed_run([*edgekiln_command(), *build_arguments(workspace, variant)], log)
    return seconds, build_report(workspace.output(variant))


def run_cached(workspace: Workspace, raw_config: Path, label: str) -> tuple[float, dict[str, Any], int]:
    """Variant D, timed only once every stage comes from the cache. Stage keys include a digest of
    edgekiln's own code, so an edit to the toolchain during the benchmark (other engineers work in this
    checkout) invalidates the cache: that run refills it and D is run again."""
    refills = 0
    while True:
        seconds, report = run_variant("D", workspace, raw_config, label if not refills else f"{label}-{refills}")
        if all(report["cached"].values()) or refills >= MAX_REFILLS:
            return seconds, report, refills
        refills += 1
        progress(f"{label}: D rebuilt {sum(not c for c in report['cached'].values())} stage(s) (edgekiln's "
                 f"code changed since the cache was filled); running it again")


def run_round(index: int, workspace: Workspace, raw_config: Path) -> RoundResult:
    from bench import machine

    order = timing._rotated(VARIANTS, index)  # noqa: SLF001 - the rotation bench.timing interleaves with
    label = f"round{index + 1}"
    before, code_before = machine.load_average(), code_version()
    seconds: dict[str, float] = {}
    reports: dict[str, dict[str, Any]] = {}
    raw_steps: list[dict[str, Any]] = []
    refills = 0
    for variant in order:
        if variant == "D":
            seconds[variant], reports[variant], refills = run_cached(workspace, raw_config, label)
        elif variant == "C":
            seconds[variant], raw_steps = run_variant(variant, workspace, raw_config, label)
        else:
            seconds[variant], reports[variant] = run_variant(variant, workspace, raw_config, label)
        progress(f"round {index + 1}: {variant} ({LABELS[variant]}) {seconds[variant]:.1f} s")
    after = machine.load_average()
    load = (before[0], after[0]) if before and after else None
    return RoundResult(index, order, seconds, reports, raw_steps, load, refills, (code_before, code_version()))


def fill_cache(workspace: Workspace) -> tuple[float, dict[str, Any]]:
    """Variant D's first, cold run: fills its dedicated stage cache."""
    shutil.rmtree(workspace.stage_cache, ignore_errors=True)
    workspace.stage_cache.mkdir(parents=True)
    seconds = timed_run([*edgekiln_command(), *build_arguments(workspace, "D")], workspace.logs / "fill-D.log")
    return seconds, build_report(workspace.output("D"))


def import_seconds(module: str) -> float:
    """Wall-clock seconds of a fresh interpreter that only imports ``module`` (start-up included)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO_DIR, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def import_costs(repeats: int = 5) -> dict[str, float]:
    """Median start-up + import time per module, interleaved; 'python' is the bare interpreter."""
    modules = ("sys", *IMPORTS)
    samples: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(repeats):
        for module in modules:
            samples[module].append(import_seconds(module))
    return {("python (no import)" if m == "sys" else m): round(statistics.median(v), 3) for m, v in samples.items()}
