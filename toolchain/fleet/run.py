"""Run a planned fleet and deliver it: one folder per model (an ``edgekiln build`` output) and the fleet
report, published together from a staging folder so an interrupted or fail-fast fleet leaves nothing.

Each model's folder is assembled by ``toolchain.build.build`` itself from the stage cache the tasks
filled, so it is exactly what ``edgekiln build`` writes for the variants that succeeded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.errors import TargetsFailedError, ToolchainError
from toolchain.fleet.plan import PREPARE, REFERENCE, FleetPlan, ModelPlan, Task
from toolchain.fleet.tasks import Result, result

Say = Callable[[str], None]
OnFinished = Callable[[Result], None]
OnStarted = Callable[[Task], None]


@dataclass
class FleetResult:
    plan: FleetPlan
    engine: dict[str, Any]
    results: list[Result]
    models: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Result]:
        """Tasks that failed or were skipped, and models whose assembly failed."""
        return [r for r in self.results if r["status"] != "ok"]


def task_line(found: Result, index: int, total: int) -> str:
    """``[ 3/24] resnet x86-int8 ok 0.44s``: one line per finished task, for logs."""
    state = "cached" if found["cached"] and found["status"] == "ok" else found["status"]
    why = ""
    if found["failure"]:
        error = found["failure"]["error"]
        why = f" ({error['stage']}: {str(error['message']).rstrip('.')})"
    return (f"[{index:>{len(str(total))}}/{total}] {found['model']} {found['task']} {state} "
            f"{found['seconds']:.2f}s{why}")


def execute(plan: FleetPlan, *, engine: str = "ray", address: str | None = None, workers: int | None = None,
            retries: int = 3, fail_fast: bool = False, say: Say | None = None,
            on_finished: OnFinished | None = None, on_started: OnStarted | None = None) -> list[Result]:
    """Run the tasks that are not cached (cached ones are reported as such); results in finishing order.

    ``say`` gets one line per finished task (``task_line``); ``on_finished`` gets each task's result as it
    comes in, cached ones first (the live view's feed). ``on_started`` is called when a task begins, by
    the in-process engine only: Ray's engine cannot tell a running task from a queued one.
    """
    from toolchain.fleet import engines

    tasks = plan.tasks
    results: list[Result] = []

    def on_result(found: Result) -> bool:
        results.append(found)
        if say is not None:
            say(task_line(found, len(results), len(tasks)))
        if on_finished is not None:
            on_finished(found)
        return not (fail_fast and found["status"] != "ok")

    for task in tasks:
        if task.cached:
            on_result(result(task, "ok", 0.0, cached=True))
    to_run = [t for t in tasks if not t.cached]
    if not to_run:
        pass  # a fully cached fleet needs no workers (and no Ray start-up)
    elif engine == "ray":
        engines.run_on_ray(to_run, on_result, address, workers, retries)
    else:
        engines.run_in_process(to_run, on_result, on_started)
    if fail_fast:
        stopped = next((r for r in results if r["status"] != "ok"), None)
        if stopped is not None:
            error = stopped["failure"]["error"]
            raise TargetsFailedError(f"{stopped['model']} {stopped['task']} {stopped['status']} in {error['stage']}: "
                                     f"{str(error['message']).rstrip('.')} (--fail-fast: the fleet stopped, "
                                     "nothing was written)")
    return results


def _assemble(model: ModelPlan, by_task: dict[str, Result], folder: Path) -> dict[str, Any]:
    """The model's build output from the cache (only stages that succeeded), and its failed targets."""
    from toolchain.build import build
    from toolchain.stage_cache import StageCache

    failed = {name: r for name, r in by_task.items() if r["status"] != "ok"}
    entry: dict[str, Any] = {"model": model.name, "source": str(model.request.source or ""),
                             "failed_tasks": sorted(failed), "targets": [], "reference": None, "folder": None}
    for shared in (PREPARE, REFERENCE):
        if shared in failed:
            entry["failure"] = failed[shared]["failure"]
            # Every target shows why: the shared stage's failure, not just "skipped".
            entry["targets"] = [_failed_target(v, failed[shared]) for v in model.request.variants]
            return entry
    ok = [v for v in model.request.variants if v.name not in failed]
    try:
        built = build(replace(model.request, output=folder, variants=ok), StageCache(model.tasks[0].cache_root))
    except ToolchainError as exc:
        from toolchain.build import failure_record

        entry["failure"] = failure_record(model.stages[0], exc, 0.0)
        return entry
    report = built.to_dict()
    by_name = {t["artifact"]: t for t in report["targets"]}
    entry.update(folder=folder.name, reference=report["reference"], cache=report["cache"],
                 targets=[by_name[v.name] if v.name in by_name else _failed_target(v, failed[v.name])
                          for v in model.request.variants])
    return entry


def _failed_target(variant: Any, found: Result) -> dict[str, Any]:
    from toolchain.build import _failed_target as failed_row  # the build report's row for a target not delivered

    return failed_row(variant, found["failure"])


def deliver(plan: FleetPlan, results: list[Result], engine: dict[str, Any], started: float) -> FleetResult:
    """Assemble every model into the output folder and write report.json and report.html, atomically."""
    from toolchain.build import REPORT_NAME
    from toolchain.fileio import atomic_directory
    from toolchain.fleet.report import HTML_NAME, fleet_report, write_fleet_html
    from toolchain.stages import refuse_foreign_folder

    refuse_foreign_folder(plan.output, marker=REPORT_NAME)
    fleet = FleetResult(plan, engine, results)
    with atomic_directory(plan.output) as staging:
        for model in plan.models:
            by_task = {r["task"]: r for r in results if r["model"] == model.name}
            fleet.models.append(_assemble(model, by_task, staging / model.name))
        fleet.seconds = time.perf_counter() - started
        report = fleet_report(fleet)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        write_fleet_html(report, staging / HTML_NAME)
    return fleet


def run_fleet(plan: FleetPlan, *, engine: str = "ray", address: str | None = None, workers: int | None = None,
              retries: int = 3, fail_fast: bool = False, say: Say | None = None,
              on_finished: OnFinished | None = None, on_started: OnStarted | None = None) -> FleetResult:
    """Execute the plan's tasks, then deliver the outputs and reports (see ``execute`` and ``deliver``)."""
    started = time.perf_counter()
    results = execute(plan, engine=engine, address=address, workers=workers, retries=retries,
                      fail_fast=fail_fast, say=say, on_finished=on_finished, on_started=on_started)
    where = {"engine": engine, "address": address, "workers": workers, "retries": retries}
    return deliver(plan, results, where, started)
