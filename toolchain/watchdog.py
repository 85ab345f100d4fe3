"""Model runs that end: every run of a model is bounded in time, and a signal stops it while it is busy.

A model is data chosen by whoever made the file, and data can describe a computation that never ends (an
ONNX ``Loop`` of 2^62 iterations, a ``tf.while_loop`` with no exit). Python runs its signal handlers only
when the main thread is back in the interpreter, so while a runtime is busy in C++ Ctrl-C and SIGTERM would
wait for it, and ``timeout``, ``docker stop`` or CI's limits could not stop edgekiln politely.

Two mechanisms, one per kind of runtime:

- ONNX Runtime can be asked to stop (``RunOptions.terminate``, checked between kernels and between a
  ``Loop``'s iterations). Its runs stay on the calling thread (no cost per run beyond a ``RunOptions``);
  one watcher thread sets the flag when a run passes its deadline, or when the CLI's signal wake-up
  descriptor says a signal arrived (``signal.set_wakeup_fd``: written by the C-level handler even while
  the main thread is inside the runtime).
- Runtimes that cannot be asked (TensorFlow's and PyTorch's reference runs) run on a worker thread while
  the caller waits interruptibly; at the deadline or on a signal the caller gives up on it. An abandoned
  worker is remembered so that the CLI ends the process without waiting for it (``abandoned``).

The budget is ``EDGEKILN_RUN_TIMEOUT`` seconds per run (default ``DEFAULT_RUN_TIMEOUT_S``). Standard
library only.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from toolchain.errors import InputFileError

DEFAULT_RUN_TIMEOUT_S = 600.0
"""One run of one model on one batch: generous for the largest model on a slow CPU, finite for a loop."""
_TICK_S = 0.2

T = TypeVar("T")


class RunTimeout(InputFileError):
    """A model run passed its time budget and was stopped."""


def env_seconds(variable: str, default: float) -> float:
    """A budget in seconds from the environment variable ``variable``; ``default`` when unset or unusable."""
    raw = os.environ.get(variable, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = default
    return value if value > 0 else default


def run_timeout() -> float:
    """The per-run budget in seconds, from ``EDGEKILN_RUN_TIMEOUT`` (read on each call, never at import)."""
    return env_seconds("EDGEKILN_RUN_TIMEOUT", DEFAULT_RUN_TIMEOUT_S)


def timeout_error(runtime: str, seconds: float) -> RunTimeout:
    return RunTimeout(f"{runtime} ran the model for more than {seconds:g} s in one run and was stopped: the model "
                      "may never end (a Loop or while-loop whose count comes from its data)",
                      hint="If the model is just slow, raise the per-run budget: EDGEKILN_RUN_TIMEOUT=SECONDS.")


# ------------------------------------------------------------------------------------ stoppable runs


class _Run:
    __slots__ = ("deadline", "stop", "why")

    def __init__(self, deadline: float, stop: Callable[[], None]) -> None:
        self.deadline, self.stop, self.why = deadline, stop, ""


class _Watcher:
    """The one thread that stops registered runs at their deadline or when a signal arrives."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[int, _Run] = {}
        self.ids = itertools.count()
        # One pipe for the process, never closed: a closed descriptor's number is reused by the next open
        # file, which a watcher still reading it would corrupt.
        self.pipe: tuple[int, int] | None = None
        self.watching = False
        self.thread: threading.Thread | None = None

    def add(self, run: _Run) -> int:
        with self.lock:
            key = next(self.ids)
            self.runs[key] = run
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="edgekiln-watchdog", daemon=True)
                self.thread.start()
        return key

    def remove(self, key: int) -> None:
        with self.lock:
            self.runs.pop(key, None)

    def _stop_all(self, why: str, due: Callable[[_Run], bool]) -> None:
        with self.lock:
            chosen = [run for run in self.runs.values() if not run.why and due(run)]
        for run in chosen:
            run.why = why
            run.stop()

    def _loop(self) -> None:
        while True:
            if self.pipe is None:
                time.sleep(_TICK_S)
            else:
                readable, _, _ = select.select([self.pipe[0]], [], [], _TICK_S)
                with contextlib.suppress(BlockingIOError):
                    if readable and os.read(self.pipe[0], 64) and self.watching:
                        self._stop_all("signal", lambda run: True)
            now = time.monotonic()
            self._stop_all("timeout", lambda run: now >= run.deadline)


_WATCHER = _Watcher()


def watch_signals() -> Callable[[], None]:
    """Let signals stop busy ONNX Runtime runs (call from the main thread after installing handlers).

    Returns the function that undoes it. Python's handlers still run as usual; the wake-up descriptor only
    tells the watcher to stop what is running so that the main thread gets back to them.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread gets signals (and may set the descriptor)
    with _WATCHER.lock:
        if _WATCHER.pipe is None:
            _WATCHER.pipe = os.pipe()
            for fd in _WATCHER.pipe:
                os.set_blocking(fd, False)
    previous = signal.set_wakeup_fd(_WATCHER.pipe[1], warn_on_full_buffer=False)
    _WATCHER.watching = True

    def undo() -> None:
        _WATCHER.watching = False
        signal.set_wakeup_fd(previous)

    return undo


@contextlib.contextmanager
def stoppable(stop: Callable[[], None], runtime: str) -> Iterator[None]:
    """Bound one run of a runtime that ``stop()`` can end from another thread (ORT's terminate flag).

    On a timeout the run's own error becomes ``RunTimeout``; on a signal, the pending handler is given the
    chance to raise (KeyboardInterrupt) before the runtime's error could be reported as the model's.
    """
    seconds = run_timeout()
    run = _Run(time.monotonic() + seconds, stop)
    key = _WATCHER.add(run)
    try:
        yield
    except Exception:
        if run.why == "timeout":
            raise timeout_error(runtime, seconds) from None
        if run.why == "signal":
            _let_handlers_run()
        raise
    finally:
        _WATCHER.remove(key)


def _let_handlers_run() -> None:
    """Sleep briefly: a pending signal's Python handler runs in between and raises (KeyboardInterrupt)."""
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        time.sleep(0.01)
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------- unstoppable runs


_ABANDONED: list[threading.Thread] = []


def run_bounded(call: Callable[[], T], runtime: str) -> T:
    """``call()`` on a worker thread, waited for interruptibly and at most the per-run budget.

    For runtimes that cannot be asked to stop: on a timeout or a signal the worker is abandoned (it cannot
    be killed) and ``abandoned()`` says so, so that the CLI exits without waiting for it.
    """
    seconds = run_timeout()
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome["value"] = context.run(call)
        except BaseException as exc:  # handed to the caller's thread as is
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="edgekiln-run", daemon=True)
    worker.start()
    deadline = time.monotonic() + seconds
    try:
        while worker.is_alive():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timeout_error(runtime, seconds)
            worker.join(min(remaining, _TICK_S))  # interruptible: a signal's handler runs in here
    except BaseException:  # never wait on a stuck runtime: it does not listen
        if worker.is_alive():
            _ABANDONED.append(worker)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def abandoned() -> bool:
    """True when a run that could not be stopped is still going (the process must not wait for it)."""
    return any(worker.is_alive() for worker in _ABANDONED)
