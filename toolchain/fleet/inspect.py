"""Looking at a fleet from outside: which local workers are running its tasks, and the digests of what
it delivered without the fields that vary from run to run (what the fault benchmark and tests compare)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

TASK_TITLE = "edgekiln:"
"""Prefix of every fleet task's Ray name; a worker running one is titled ``ray::edgekiln:<model>/<task>``."""


def running_task_pids() -> list[int]:
    """Processes on this machine executing a fleet task now (Linux: read from /proc)."""
    prefix = f"ray::{TASK_TITLE}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(prefix):
                pids.append(int(proc.name))
        except OSError:
            continue  # the process ended while we looked
    return pids


def delivered_digests(output: Path) -> dict[str, str]:
    """sha256 of every delivered file except the reports (times, cache counts); manifests without their
    'timings' and without the note of whether calibration samples came from their cache (which model built
    them first depends on scheduling order; the samples, ranges and models are the same)."""
    digests = {}
    for path in sorted(output.rglob("*")):
        if not path.is_file() or path.name in ("report.json", "report.html"):
            continue
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = json.loads(data)
            manifest.pop("timings", None)
            data = re.sub(r"; cache (hit|miss, built)", "", json.dumps(manifest, sort_keys=True)).encode()
        digests[path.relative_to(output).as_posix()] = hashlib.sha256(data).hexdigest()
    return digests
