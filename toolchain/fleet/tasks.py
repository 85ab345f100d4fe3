"""Running one fleet task: the same function on a Ray worker and in-process with ``--no-ray``.

A task works in its own temporary staging folder: it restores its upstream stages from the shared
stage cache (or rebuilds them when the cache lost them), runs its own stages and publishes each to
the cache, which writes atomically and checks hashes on restore. A worker killed mid-task therefore
leaves at most a stale staging folder, never a damaged entry; Ray runs the task again.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from toolchain.fleet.plan import Task

Result = dict[str, Any]
# A task's staging folder: '.edgekiln-fleet-task.<pid>.<random>.tmp' in the temporary folder, the
# fileio convention, so the next task on the node removes the ones SIGKILLed workers left.
STAGING_NAME = "edgekiln-fleet-task"


def result(task: Task, status: str, seconds: float, cached: bool = False,
           failure: dict[str, Any] | None = None) -> Result:
    """What a task hands back: small, plain data (the files went to the cache). ``failure`` is
    ``toolchain.build.failure_record``'s dict: status, error (stage, kind, message, hint), tried, guard."""
    return {"model": task.model, "task": task.name, "status": status, "seconds": round(seconds, 3),
            "cached": cached, "failure": failure, "pid": os.getpid()}


def lost(task: Task, kind: str, message: str) -> Result:
    """A task that produced no result of its own: its upstream failed, or its workers kept dying."""
    status = "skipped" if kind == "skipped" else "failed"
    return result(task, status, 0.0, failure={
        "status": status, "error": {"stage": task.name, "kind": kind, "exit_code": 1, "message": message,
                                    "hint": None, "seconds": 0.0}, "tried": [], "guard": None})


def _internal(stage: Any, exc: Exception, seconds: float) -> dict[str, Any]:
    """A bug in one model's task is that model's failure, not the fleet's (the report keeps the type)."""
    return {"status": "failed", "error": {"stage": stage.name, "kind": type(exc).__name__, "exit_code": 1,
                                          "message": f"internal error: {exc}", "hint": None,
                                          "seconds": round(seconds, 3)}, "tried": [], "guard": None}


def run_task(task: Task, upstream: Result | None = None) -> Result:
    """Restore or run ``task``'s stages; a stage's ``ToolchainError`` (or a bug) is the task's failure."""
    from toolchain.build import advance, failure_record, run_stage
    from toolchain.build_steps import StepContext
    from toolchain.errors import ToolchainError
    from toolchain.fileio import _remove_stale_staging
    from toolchain.stage_cache import StageCache

    if upstream is not None and upstream["status"] != "ok":
        return lost(task, "skipped", f"{upstream['task']} {upstream['status']}")
    started = time.perf_counter()
    cache = StageCache(task.cache_root)
    own = set(id(stage) for stage in task.own_stages)
    all_cached = True
    _remove_stale_staging(Path(tempfile.gettempdir()), STAGING_NAME)
    with tempfile.TemporaryDirectory(prefix=f".{STAGING_NAME}.{os.getpid()}.", suffix=".tmp") as work:
        context = StepContext(task.request, Path(work))
        for stage in task.stages:
            began = time.perf_counter()
            try:
                record, cached = run_stage(stage, context, cache)
            except ToolchainError as exc:
                failure = failure_record(stage, exc, time.perf_counter() - began)
                return result(task, failure["status"], time.perf_counter() - started, failure=failure)
            except Exception as exc:  # noqa: BLE001 - reported per model; --debug is for single builds
                failure = _internal(stage, exc, time.perf_counter() - began)
                return result(task, "failed", time.perf_counter() - started, failure=failure)
            if id(stage) in own:
                all_cached = all_cached and cached
            advance(context, stage, record)
    return result(task, "ok", time.perf_counter() - started, cached=all_cached)
