"""Killed, interrupted and concurrent builds never leave a half-written output behind.

Real processes of the installed CLI, real signals. Bounded: 20 kills take about half a minute.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from helpers import make_onnx_model

KILLS = 20


def _build_command(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "toolchain", "build", str(model), "-o", str(out), "--bench-iterations", "0"]


def _fingerprint(out: Path) -> dict:
    """Hashes of the models and the manifest without its timings: what must not depend on interruptions."""
    manifest = json.loads((out / "x86" / "manifest.json").read_text())
    manifest.pop("timings")
    return {"model": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
            "simplified": hashlib.sha256((out / "model.simplified.onnx").read_bytes()).hexdigest(),
            "artifact": hashlib.sha256((out / "x86" / "model.onnx").read_bytes()).hexdigest(),
            "manifest": manifest, "stages": [s["stage"] for s in json.loads((out / "report.json").read_text())["stages"]]}


def _assert_complete_or_absent(out: Path) -> None:
    if not out.exists():
        return
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"model.onnx", "model.simplified.onnx", "report.json", "x86/manifest.json", "x86/model.onnx"} <= names
    onnx.checker.check_model(str(out / "x86" / "model.onnx"))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(make_onnx_model(batch="N"), str(path))
    return path


def test_sigkill_at_random_points_then_rerun_matches(model, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_build_command(model, reference), check=True, capture_output=True, timeout=300)
    started = time.perf_counter()
    finish = subprocess.run(_build_command(model, tmp_path / "timing"), check=True, capture_output=True, timeout=300)
    duration = time.perf_counter() - started
    assert finish.returncode == 0
    out = tmp_path / "out"
    rng = random.Random(0)
    for _ in range(KILLS):
        process = subprocess.Popen(_build_command(model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, duration))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        _assert_complete_or_absent(out)
    subprocess.run(_build_command(model, out), check=True, capture_output=True, timeout=300)
    assert _fingerprint(out) == _fingerprint(reference)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert leftovers == [], "staging folders of killed runs are cleaned by the next run"


# SIGTERM is what docker stop, systemd, CI cancellation and timeout send (issue #17: it exited 143 silently
# and left the staging folder); it must end a build exactly as Ctrl-C does, with its own line and code.
@pytest.mark.parametrize("signum, code, last_line", [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "edgekiln: terminated (SIGTERM)")],
                         ids=["sigint", "sigterm"])
def test_a_signal_ends_the_build_cleanly_with_a_short_message(model, tmp_path, signum, code, last_line):
    process = subprocess.Popen(_build_command(model, tmp_path / "out"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    # Signal once the build is under way (its staging folder exists), not during interpreter start-up.
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".out.") for p in tmp_path.iterdir()) and process.poll() is None:
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.02)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the build finished before the signal arrived on this machine")
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1] == last_line and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_concurrent_builds_into_the_same_folder(model, tmp_path):
    out = tmp_path / "out"
    processes = [subprocess.Popen(_build_command(model, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert [code for code, _ in results] == [0, 0], results
    _assert_complete_or_absent(out)
    assert out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_eight_concurrent_builds_on_one_cache_with_random_sigkills(model, tmp_path):
    """Load test (issue #40): 8 builds share one cache while random ones are SIGKILLed at random times, twice
    over; then each is rerun on the same cache, and every artifact matches a clean build's, byte for byte."""
    reference = tmp_path / "reference"
    subprocess.run(_build_command(model, reference) + ["--cache-dir", str(tmp_path / "clean-cache")], check=True,
                   capture_output=True, timeout=300)
    cache, rng = tmp_path / "shared-cache", random.Random(1)
    outs = [tmp_path / f"out{i}" for i in range(8)]
    for _ in range(2):
        processes = [subprocess.Popen(_build_command(model, out) + ["--cache-dir", str(cache)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for out in outs]
        victims = rng.sample(range(len(processes)), 5)
        for index in victims:
            time.sleep(rng.uniform(0.2, 3.0))
            processes[index].send_signal(signal.SIGKILL)
        for process in processes:
            process.wait(timeout=600)
        for out in outs:
            _assert_complete_or_absent(out)
    for out in outs:
        subprocess.run(_build_command(model, out) + ["--cache-dir", str(cache)], check=True, capture_output=True,
                       timeout=300)
        assert _fingerprint(out) == _fingerprint(reference), out.name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
