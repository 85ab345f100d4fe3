"""Ctrl-C during a Ray fleet: the running tasks are cancelled, Ray is stopped, one line, exit 130,
and no output folder (the command's own embedded Ray instance, in a fresh process)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_helpers import ctrl_c_reaches_the_child, write_fleet

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_cancels_the_fleet_cleanly(tmp_path):
    fleet = write_fleet(tmp_path / "f", count=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "toolchain", "fleet", str(fleet), "-o", str(tmp_path / "out"),
               "--cache-dir", str(tmp_path / "c"), "--workers", "2"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env,
                          preexec_fn=ctrl_c_reaches_the_child) as process:
        try:
            for line in process.stderr:
                if line.startswith("[1/"):  # the first task finished: the fleet is running on Ray
                    break
            process.send_signal(signal.SIGINT)
            rest = process.stderr.read()
            code = process.wait(timeout=60)
        finally:
            process.kill()
    assert code == 130
    # Ray's native workers may log one line of their own as the driver goes ("[date ...] task_manager.cc:1545:
    # Failed to push error to driver"), seen once in 3 runs here; edgekiln's own output is the one line.
    ray_native = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ \w \d+ \d+\] \w+\.cc:\d+: ")
    assert [line for line in rest.splitlines() if line.strip() and not ray_native.match(line)] == ["interrupted"]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging folder left
