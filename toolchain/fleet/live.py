"""The fleet's live progress on a terminal: one row per model (tasks done, running or pending, failed, total,
and the last task that finished), redrawn in place on stderr with ``rich.live.Live``.

Only ``edgekiln fleet`` with stderr on a terminal and without ``--json`` shows it; logs and CI get
``run.task_line``'s one line per finished task instead. The table is fed from ``run.execute``'s
``on_finished`` and ``on_started`` hooks, i.e. from the results themselves, never from the engines' insides.
Rich is imported when the view starts, not when this module is.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, TextIO

from toolchain.fleet.plan import FleetPlan, Task
from toolchain.fleet.run import task_line
from toolchain.fleet.tasks import Result

REFRESHES_PER_SECOND = 4


@dataclass
class ModelRow:
    """One model's tasks so far. ``failed`` counts every task that did not end ok (failed, refused, or
    skipped because its upstream failed), as the fleet's exit code and report do."""

    total: int
    done: int = 0
    cached: int = 0
    running: int = 0
    failed: int = 0
    last: str = ""

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.running


class FleetBoard:
    """Per-model task counts of a running fleet, and the table that shows them.

    ``show_running``: whether the engine reports when a task starts (``on_started``). The in-process
    engine (``--no-ray``) does, so "running" is exact there (one task at a time). The Ray engine submits
    every task at once and can only tell when one finished; its tasks that have not finished are shown
    as "pending" (waiting for their upstream, queued for a worker, or running: it cannot say which), and
    the table has no "running" column rather than a guessed one.
    """

    def __init__(self, plan: FleetPlan, *, show_running: bool) -> None:
        self.show_running = show_running
        self.rows = {model.name: ModelRow(total=len(model.tasks)) for model in plan.models}
        self.total = sum(row.total for row in self.rows.values())
        self.finished_count = 0
        self.started_at = time.monotonic()
        self._running: set[str] = set()
        self.ended = False  # set for the last drawing, which stays on screen
        # The Live's refresh thread renders while the main thread records results.
        self._lock = threading.Lock()

    def started(self, task: Task) -> None:
        if not self.show_running:
            return
        with self._lock:
            self._running.add(task.id)
            self.rows[task.model].running += 1

    def finished(self, found: Result) -> None:
        state = "cached" if found["cached"] and found["status"] == "ok" else found["status"]
        with self._lock:
            row = self.rows[found["model"]]
            if f"{found['model']}/{found['task']}" in self._running:  # cached ones finish unstarted
                self._running.discard(f"{found['model']}/{found['task']}")
                row.running -= 1
            if found["status"] == "ok":
                row.done += 1
                row.cached += bool(found["cached"])
            else:
                row.failed += 1
            row.last = f"{found['task']} {state} {found['seconds']:.2f}s"
            self.finished_count += 1

    def table(self) -> Any:
        """The rich ``Table`` of the counts now (render it with any rich ``Console``)."""
        from rich.markup import escape
        from rich.table import Table

        with self._lock:
            rows = [(name, replace(row)) for name, row in self.rows.items()]
            finished, elapsed = self.finished_count, time.monotonic() - self.started_at
        failed = sum(row.failed for _name, row in rows)
        title = f"fleet: {finished}/{self.total} tasks finished, {failed} failed, {elapsed:.0f}s"
        if finished == self.total and not self.ended:
            title += ", writing the outputs"
        table = Table(title=title, title_justify="left", expand=False)
        table.add_column("model", no_wrap=True)
        columns = ["done", "running", "pending", "failed", "total"] if self.show_running else \
            ["done", "pending", "failed", "total"]
        for column in columns:
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("last finished")  # the one column that wraps: it gives way on a narrow terminal
        for name, row in rows:
            done = f"{row.done} ({row.cached} cached)" if row.cached else str(row.done)
            counts = [done, str(row.running), str(row.pending)] if self.show_running else [done, str(row.pending)]
            failed_cell = f"[red]{row.failed}[/red]" if row.failed else "0"
            table.add_row(escape(name), *counts, failed_cell, str(row.total), escape(row.last))
        return table

    def __rich__(self) -> Any:  # what the Live redraws: the counts at that moment
        return self.table()


class LiveFleet:
    """The hooks ``run_fleet`` takes, drawing into a running ``Live``: counts in the table, and each task
    that did not end ok as its log line above the table, so the reasons stay in the scrollback."""

    def __init__(self, board: FleetBoard, live: Any) -> None:
        self.board, self.live = board, live

    def started(self, task: Task) -> None:
        self.board.started(task)

    def finished(self, found: Result) -> None:
        self.board.finished(found)  # takes and releases the board's lock before printing (the Live's lock)
        if found["status"] != "ok":
            self.live.console.print(task_line(found, self.board.finished_count, self.board.total),
                                    highlight=False, markup=False)
        self.live.refresh()


@contextlib.contextmanager
def live_fleet(plan: FleetPlan, *, show_running: bool, console: Any = None) -> Iterator[LiveFleet]:
    """Show the fleet's table on stderr (or ``console``) until the block ends, also by Ctrl-C or an error:
    the Live is stopped and its last table left on screen either way."""
    from rich.console import Console
    from rich.live import Live

    board = FleetBoard(plan, show_running=show_running)
    live = Live(board, console=console or Console(stderr=True), refresh_per_second=REFRESHES_PER_SECOND,
                redirect_stdout=False, redirect_stderr=True)
    with live, _logs_through(sys.stderr):  # sys.stderr is the Live's proxy now: lines print above the table
        try:
            yield LiveFleet(board, live)
        finally:
            board.ended = True


@contextlib.contextmanager
def _logs_through(stream: TextIO) -> Iterator[None]:
    """Point the 'edgekiln' logger's stream handlers (set up with the real stderr) at ``stream`` meanwhile."""
    handlers = [h for h in logging.getLogger("edgekiln").handlers if isinstance(h, logging.StreamHandler)]
    saved = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler, old in zip(handlers, saved):
            handler.setStream(old)
