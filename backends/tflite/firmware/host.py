"""The host TensorFlow Lite Micro interpreter (PyPI ``tflite-micro``): same kernels as the MCU, on x86-64.

A fast check that runs in every MCU build: the model's outputs under TFLM's
reference kernels, and the smallest arena TFLM accepts for it, found by
bisection (allocation either succeeds or fails, so this is a measurement, not
a formula). The host is 64-bit: its bookkeeping structs are larger than on a
32-bit MCU, so its arena is an upper bound for the Cortex-M4's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from toolchain.errors import MissingDependencyError, VerificationError, first_line
from toolchain.lazy import is_installed
from toolchain.quiet import native_stderr_captured

log = logging.getLogger("edgekiln.tflite")

MODULE = "tflite_micro"
INSTALL = "pip install tflite-micro"


def missing() -> str | None:
    return None if is_installed(MODULE) else f"the tflite-micro package is not installed ({INSTALL})"


def package_version() -> str:
    try:
        return version("tflite-micro")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class HostRun:
    outputs: list[list[np.ndarray]]
    """Per input set, the outputs in TFLite order."""
    arena_bytes: int
    """Smallest arena (bytes) the host interpreter allocates this model in."""


def _runtime():
    try:
        from tflite_micro import runtime
    except ImportError as exc:  # installed but unusable (e.g. built for another numpy)
        raise MissingDependencyError(f"the tflite-micro package does not import: {first_line(exc)}",
                                     hint=f"Reinstall it: {INSTALL}") from exc
    return runtime


def _interpreter(model: bytes, arena: int):
    runtime = _runtime()

    with native_stderr_captured():
        return runtime.Interpreter.from_bytes(model, arena_size=arena)


@contextlib.contextmanager
def _fd2_discarded() -> Iterator[None]:
    """TFLM logs every failed allocation to fd 2; during the bisection those failures are expected."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _fits(model: bytes, arena: int) -> bool:
    runtime = _runtime()

    try:
        with _fd2_discarded():
            runtime.Interpreter.from_bytes(model, arena_size=arena)
        return True
    except RuntimeError:
        return False


def smallest_arena(model: bytes, upper: int) -> int:
    """Bisection over arena sizes in 16-byte steps; ``upper`` must fit."""
    low, high = 0, -(-upper // 16)  # in 16-byte units: low fails (or is 0), high fits
    while high - low > 1:
        middle = (low + high) // 2
        if _fits(model, middle * 16):
            high = middle
        else:
            low = middle
    return high * 16


def run(model: bytes, input_sets: list[list[np.ndarray]], output_count: int, generous_arena: int) -> HostRun:
    """Run every input set; raises VerificationError when TFLM cannot allocate or invoke the model."""
    try:
        interpreter = _interpreter(model, generous_arena)
    except (RuntimeError, ValueError) as exc:
        raise VerificationError(f"the TFLM host interpreter cannot allocate the model in {generous_arena} bytes: "
                                f"{first_line(exc)}") from exc
    results = []
    for inputs in input_sets:
        for index, value in enumerate(inputs):
            interpreter.set_input(value, index)
        try:
            with native_stderr_captured():
                interpreter.invoke()
        except RuntimeError as exc:
            raise VerificationError(f"the TFLM host interpreter failed to run the model: {first_line(exc)}") from exc
        results.append([np.array(interpreter.get_output(i)) for i in range(output_count)])
    return HostRun(results, smallest_arena(model, generous_arena))

