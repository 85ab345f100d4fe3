"""Build progress on stderr: a live bar on a terminal, one line per stage in logs and CI, nothing with --quiet."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO


def _line(stage: Any, index: int, total: int) -> str:
    return f"[{index + 1}/{total}] {stage.name}"


def _outcome(state: str, seconds: float) -> str:
    """How a stage ended: its time, or cached, FAILED (the target is reported, the build goes on), skipped."""
    if state == "failed":
        return f"FAILED after {seconds:.1f} s"
    return state if state in ("cached", "skipped") else f"{seconds:.1f} s"


class LineProgress:
    """Plain lines, for logs and CI: what starts (and why it takes long) and how it ended."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, stage: Any, index: int, total: int, state: str, seconds: float) -> None:
        if state == "start":
            return
        print(f"  {_line(stage, index, total)}: {_outcome(state, seconds)}", file=self.stream, flush=True)


class BarProgress:
    """A rich progress bar over the stages; the current stage's description is shown while it runs."""

    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def __call__(self, stage: Any, index: int, total: int, state: str, seconds: float) -> None:
        if state == "start":
            self.bar.update(self.task, total=total, description=f"{_line(stage, index, total)}: {stage.description}")
            return
        outcome = f"[dim]{state}[/dim]" if state in ("cached", "skipped") else _outcome(state, seconds)
        self.bar.console.print(f"  {_line(stage, index, total)}: {outcome}", highlight=False)
        self.bar.update(self.task, completed=index + 1)


@contextlib.contextmanager
def build_progress(quiet: bool) -> Iterator[Any]:
    """The progress callback for a build: None when quiet, a bar on a terminal, lines otherwise."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():
        yield LineProgress(sys.stderr)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    with bar, _log_through(bar.console):
        yield BarProgress(bar, bar.add_task("planning", total=None))


@contextlib.contextmanager
def _log_through(console: Any) -> Iterator[None]:
    """Route the 'edgekiln' logger's stderr lines through the bar's console so they print above the bar."""
    handlers = [h for h in logging.getLogger("edgekiln").handlers if isinstance(h, logging.StreamHandler)]
    saved = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(console.file)
    try:
        yield
    finally:
        for handler, stream in zip(handlers, saved):
            handler.setStream(stream)


@contextlib.contextmanager
def quiet_logging(quiet: bool) -> Iterator[None]:
    """With --quiet, the 'edgekiln' logger's progress lines are dropped (errors still reach stderr)."""
    logger = logging.getLogger("edgekiln")
    saved = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(saved)
