"""Where fleet tasks run: in this process, one after another (``--no-ray``), or as Ray tasks.

Both call ``toolchain.fleet.tasks.run_task`` on the same ``Task`` objects. Ray is imported only by
``run_on_ray``. Ray retries a task whose worker died (``max_retries``); a task's own errors are
results, not exceptions, so Ray never retries a model that is simply broken.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from toolchain.errors import MissingDependencyError, UsageError
from toolchain.fleet.inspect import TASK_TITLE
from toolchain.fleet.plan import Task
from toolchain.fleet.tasks import Result, lost, run_task

# on_result(result) -> keep going? (False: --fail-fast saw a failure; the rest is cancelled.)
OnResult = Callable[[Result], bool]
# on_started(task): the task begins now. Only the in-process engine knows that; Ray's does not call it.
OnStarted = Callable[[Task], None]
DEFAULT_RETRIES = 3
# Task results are a few hundred bytes and files go through the shared cache, so the object store
# only needs Ray's minimum, not its default of 30% of the machine's memory.
OBJECT_STORE_BYTES = 80 * 1024 * 1024


def _upstream_id(task: Task) -> str | None:
    return f"{task.model}/{task.depends_on}" if task.depends_on else None


def run_in_process(tasks: list[Task], on_result: OnResult, on_started: OnStarted | None = None) -> list[Result]:
    """Tasks in plan order (each model's prepare comes before what depends on it), one at a time."""
    done: dict[str, Result] = {}
    for task in tasks:
        upstream = done.get(_upstream_id(task) or "")
        if on_started is not None:
            on_started(task)
        done[task.id] = run_task(task, upstream)
        if not on_result(done[task.id]):
            break
    return list(done.values())


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("edgekiln fleet on Ray needs the 'ray' package",
                                     hint="pip install 'edgekiln[fleet]', or run with --no-ray") from None
    return ray


def _ray_options(task: Task, retries: int) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": retries, "retry_exceptions": False}
    custom = {}
    for name, amount in task.resources.items():
        if name in ("num_cpus", "num_gpus", "memory"):
            options[name] = int(amount) if name == "memory" else amount
        else:
            custom[name] = amount
    if custom:
        options["resources"] = custom
    return options


def _check_feasible(tasks: list[Task], cluster: dict[str, float]) -> None:
    """A task asking for a resource no node has would wait forever: refuse it with one line instead."""
    spelled = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
    for task in tasks:
        for name, amount in task.resources.items():
            have = cluster.get(spelled.get(name, name), 0.0)
            if amount > have:
                raise UsageError(f"task {task.id} needs {name}={amount:g} but the Ray cluster has {have:g}",
                                 hint="Add a node with it, change the fleet file's 'resources', or drop the target.")


def probe_address(address: str) -> None:
    """Fail in seconds on an address nobody listens at: Ray itself retries for minutes."""
    import socket

    if address == "auto":
        return  # Ray finds the local cluster's address itself, and says at once when there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address '{address}' is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at '{address}': {exc.strerror or exc}",
                         hint="Check --address (auto, HOST:6379 or ray://HOST:10001), or run with --no-ray.") from None


def connect(ray: Any, address: str | None, workers: int | None) -> bool:
    """Join ``address`` or start an embedded local instance; True when this call started Ray (so stops it)."""
    if ray.is_initialized():
        return False  # an embedding program (or a test) already set Ray up
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    try:
        if address:
            probe_address(address)
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, **quiet)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
        raise UsageError(f"cannot reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         hint="Check --address (auto, HOST:6379 or ray://HOST:10001), or run with --no-ray.") from None
    return True


def run_on_ray(tasks: list[Task], on_result: OnResult, address: str | None = None, workers: int | None = None,
               retries: int = DEFAULT_RETRIES) -> list[Result]:
    """Submit every task at once, dependents holding their upstream's result ref, and collect results as
    they finish. Ctrl-C (KeyboardInterrupt) or a stop from ``on_result`` cancels what has not finished.

    There is no ``on_started``: Ray decides when a submitted task gets a worker and the driver only learns
    when it finished, so a task here is pending until its result arrives."""
    ray = import_ray()
    started_here = connect(ray, address, workers)
    try:
        _check_feasible(tasks, ray.cluster_resources())
        remote = ray.remote(run_task)
        refs: dict[str, Any] = {}
        by_ref: dict[Any, Task] = {}
        for task in tasks:
            upstream = refs.get(_upstream_id(task) or "")
            ref = remote.options(name=f"{TASK_TITLE}{task.id}", **_ray_options(task, retries)).remote(task, upstream)
            refs[task.id] = ref
            by_ref[ref] = task
        return _collect(ray, by_ref, on_result, cancel=not started_here)
    finally:
        if started_here:
            ray.shutdown()


def _collect(ray: Any, by_ref: dict[Any, Task], on_result: OnResult, cancel: bool) -> list[Result]:
    """Results as they finish. ``cancel``: stop unfinished tasks one by one on the way out, for a cluster
    that outlives this command; an instance started here is shut down instead, which stops its workers
    (force-cancelling them first sometimes aborted Ray's driver: "Tried to complete task that was not
    pending", 3 runs in 20 of the Ctrl-C test)."""
    pending = list(by_ref)
    results = []
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            task = by_ref[ready[0]]
            try:
                found = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # workers died more than max_retries times, or cancelled
                found = lost(task, type(exc).__name__, str(exc).strip().splitlines()[-1][:300] if str(exc) else
                             "the task's worker died")
            results.append(found)
            if not on_result(found):
                break
    finally:  # Ctrl-C or --fail-fast: nothing more is started, running tasks are stopped
        for ref in pending if cancel else ():
            ray.cancel(ref, force=True)
    return results
