"""Run the firmware on ``qemu-system-arm -M mps2-an386`` and read what its ``main`` printed.

Semihosting carries the console (newlib's rdimon) and the exit. QEMU is not
cycle-accurate, so nothing here is a latency: the run is checked for its
numbers only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.tflite.firmware import sources
from toolchain.errors import MissingDependencyError, VerificationError

QEMU = "qemu-system-arm"
RUN_TIMEOUT_S = 300


def qemu_missing() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-arm)"
    return None


def command(elf: Path) -> list[str]:
    return [QEMU, "-M", sources.BOARD, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]


class ArenaTooSmall(VerificationError):
    """The firmware's AllocateTensors failed: its tensor arena is smaller than TFLM needs."""


@dataclass(frozen=True)
class Run:
    arena_used: int
    outputs: list[bytes]
    max_diff_lsb: int
    """What the firmware itself computed against the bundled reference outputs."""
    seconds: float


def run(elf: Path, timeout_s: float = RUN_TIMEOUT_S) -> Run:
    why = qemu_missing()
    if why:
        raise MissingDependencyError(f"running the Cortex-M4 firmware needs {why}")
    started = time.perf_counter()
    try:
        done = subprocess.run(command(elf), capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise VerificationError(f"the firmware did not finish within {timeout_s:g} s under QEMU") from exc
    return parse_run(done.stdout, done.stderr, done.returncode, time.perf_counter() - started)


def parse_run(stdout: str, stderr: str, returncode: int, seconds: float) -> Run:
    """The firmware's EDGEKILN_ lines -> outputs; its error line (or QEMU's) becomes one VerificationError."""
    arena, max_diff, done = None, None, False
    outputs: dict[int, list[str]] = {}
    sizes: dict[int, int] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("EDGEKILN_"):
            continue
        tag = parts[0]
        if tag == "EDGEKILN_ERROR":
            detail = " ".join(parts[2:])
            error = ArenaTooSmall if parts[1:2] == ["4"] else VerificationError
            raise error(f"the firmware failed on the Cortex-M4 (QEMU {sources.BOARD}): {detail}")
        if tag == "EDGEKILN_ARENA_USED":
            arena = int(parts[1])
        elif tag == "EDGEKILN_OUTPUT":
            sizes[int(parts[1])] = int(parts[2])
            outputs[int(parts[1])] = []
        elif tag == "EDGEKILN_DATA":
            outputs[int(parts[1])].append(parts[2] if len(parts) > 2 else "")
        elif tag == "EDGEKILN_MAX_DIFF_LSB":
            max_diff = int(parts[1])
        elif tag == "EDGEKILN_DONE":
            done = True
    if not done or arena is None or max_diff is None:
        last = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
        raise VerificationError(f"the firmware stopped before finishing under QEMU (exit code {returncode}): "
                                f"{last[:300]}")
    data = [bytes.fromhex("".join(outputs[i])) for i in sorted(outputs)]
    for i, blob in enumerate(data):
        if len(blob) != sizes[i]:
            raise VerificationError(f"the firmware printed {len(blob)} bytes of output {i}, announced {sizes[i]}")
    return Run(arena, data, max_diff, seconds)


def as_arrays(run_result: Run, like: list[np.ndarray]) -> list[np.ndarray]:
    """The printed output bytes as arrays of the reference outputs' dtypes and shapes."""
    if len(run_result.outputs) != len(like):
        raise VerificationError(f"the firmware printed {len(run_result.outputs)} outputs, the model has {len(like)}")
    arrays = []
    for blob, reference in zip(run_result.outputs, like):
        if len(blob) != reference.nbytes:
            raise VerificationError(f"a firmware output has {len(blob)} bytes, LiteRT's has {reference.nbytes}")
        arrays.append(np.frombuffer(blob, dtype=reference.dtype).reshape(reference.shape))
    return arrays
