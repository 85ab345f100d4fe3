"""Latency, throughput and memory of an artifact on this machine.

Peak memory is the process's resident high-water mark (``ru_maxrss``), which is
meaningful because ``edgekiln bench`` loads nothing but the runtime; the growth
from before loading is reported beside it.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.artifact import Artifact
from toolchain.errors import UsageError
from toolchain.feeds import random_feed
from toolchain.hostcpu import host_cpu


@dataclass(frozen=True)
class BenchResult:
    artifact: str
    backend: str
    batch: int
    threads: int | None
    warmup: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_per_s: float
    peak_rss_mb: float
    rss_growth_mb: float
    measured_on: str = ""
    """The CPU that ran it (model, INT8 ISA class, features, CPU count): latencies are that machine's."""

    def to_dict(self) -> dict:
        return asdict(self)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * resource.getpagesize() / (1024 * 1024)
    except OSError:
        return _peak_rss_mb()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_runs(runner: Any, feed: dict[str, Any], *, warmup: int, iterations: int) -> list[float]:
    """Milliseconds of each of ``iterations`` runs of ``feed``, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        runner.run(feed)
    latencies = []
    for _ in range(iterations):
        start = time.perf_counter()
        runner.run(feed)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return latencies


def benchmark(artifact_path: Path, *, warmup: int = 10, iterations: int = 100, threads: int | None = None,
              batch: int = 1, seed: int = 0) -> BenchResult:
    """Time ``iterations`` runs on one seeded random feed after ``warmup`` untimed runs."""
    from backends.registry import get_backend

    if warmup < 0 or iterations < 1 or batch < 1:
        raise UsageError("--warmup must be >= 0, --iterations and --batch >= 1")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be >= 1")
    artifact = Artifact.open(artifact_path)
    options = artifact.runtime_options
    if threads:
        options["threads"] = threads
    rss_before = _current_rss_mb()
    backend = get_backend(artifact.backend)
    with backend.load(artifact.model_path, options) as runner:
        if batch != 1 and not all(i.shape and isinstance(i.shape[0], str) for i in runner.inputs):
            raise UsageError(f"--batch {batch} needs a model with a dynamic batch axis (convert with --dynamic-batch)")
        feed = random_feed(runner.inputs, seed=seed, batch=batch)
        latencies = time_runs(runner, feed, warmup=warmup, iterations=iterations)
    mean = statistics.fmean(latencies)
    return BenchResult(str(artifact_path), artifact.backend, batch, options.get("threads"), warmup, iterations,
                       percentile(latencies, 50), percentile(latencies, 90), percentile(latencies, 99), mean,
                       min(latencies), batch * 1000.0 / mean, _peak_rss_mb(), _current_rss_mb() - rss_before,
                       host_cpu().describe())
