"""Runs edgekiln's real command line the way a user does, and reads what it wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TIMEOUT_S = 1200
# Forms of a message that the user should never see: a traceback, an internal error, or a runtime's raw
# error text (the "[ONNXRuntimeError] ... Unrecognized attribu." was both raw and cut).
_RAW = re.compile(r"Traceback \(most recent call last\)|internal error|\[ONNXRuntimeError\]|INVALID_GRAPH|"
                  r"RuntimeError:|The following operation failed in the TorchScript interpreter")


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def command(self) -> str:
        return "edgekiln " + " ".join(self.args)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def error(self) -> str | None:
        lines = self.error_lines
        return lines[-1].removeprefix("error:").strip() if lines else None

    def problems(self) -> list[str]:
        """What is wrong with how the command reported itself (empty when it is clean)."""
        found = []
        raw = _RAW.search(self.stderr + self.stdout)
        if raw:
            found.append(f"raw or internal error text {raw.group(0)!r}")
        if self.returncode != 0:
            if len(self.error_lines) != 1:
                found.append(f"exit {self.returncode} with {len(self.error_lines)} 'error:' lines")
            elif len(self.error or "") < 20:
                found.append(f"error message too short to explain anything: {self.error!r}")
        return found

    def describe(self) -> str:
        tail = "\n".join(self.stderr.strip().splitlines()[-6:])
        return f"{self.command}\n-> exit {self.returncode} after {self.seconds:.0f} s\n{tail}"


def run_cli(args: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> CliResult:
    """``edgekiln ARGS`` in a child process (never a TTY: one line per stage, as in CI)."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "toolchain", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return CliResult(tuple(args), done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def write_recipe(path: Path, options: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(options, sort_keys=True))
    return path


def read_report(folder: Path) -> dict[str, Any] | None:
    path = folder / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None
