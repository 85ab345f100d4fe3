"""Fleet benchmark: 8 small CNNs x 3 targets, Ray with 2 workers against --no-ray (python -m bench.fleet).

Cold-cache runs alternate Ray and --no-ray (interleaved, the order flipping each round) and the medians
are recorded; then the fully cached rerun, the per-task scheduling overhead of Ray (no-op tasks carrying
a real ``Task``), a fault run that SIGKILLs a random running worker 5 times, and the per-stage costs the
paper estimate in bench/fleet.md uses. Writes bench/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolchain.fleet.inspect import delivered_digests, running_task_pids

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (4, 6, 8, 12, 16, 24, 32, 48)
TARGETS = ("x86", "x86:int8", "x86:fp16")


def small_cnn(width: int, seed: int) -> onnx.ModelProto:
    """conv 3x3 (1->w) relu, conv 3x3 stride 2 (w->2w) relu, global average pool, linear -> 10, on 1x1x28x28."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    weights = {"w1": he(width, 1, 3, 3), "b1": np.zeros(width, np.float32), "w2": he(2 * width, width, 3, 3),
               "b2": (rng.standard_normal(2 * width) * 0.1).astype(np.float32), "fc": he(10, 2 * width),
               "fcb": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, f"cnn{width}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench.fleet")
    model.ir_version = 8
    return model


def write_fleet(folder: Path) -> Path:
    from toolchain.examples import fashion_mnist as example

    folder.mkdir(parents=True, exist_ok=True)
    for i, width in enumerate(WIDTHS):
        onnx.save(small_cnn(width, i), str(folder / f"cnn{width}.onnx"))
    models = "".join(f"  - source: cnn{w}.onnx\n" for w in WIDTHS)
    path = folder / "fleet.yaml"
    path.write_text(f"targets: [{', '.join(TARGETS)}]\ndefaults:\n  calib: {example.samples_dir()}\n"
                    f"  bench-iterations: 20\nmodels:\n{models}")
    return path


def run(fleet: Path, out: Path, cache: Path, engine: str, retries: int = 3) -> tuple[float, list[dict]]:
    from toolchain.fleet.plan import plan_fleet
    from toolchain.fleet.run import run_fleet
    from toolchain.fleet.spec import load_fleet

    started = time.perf_counter()
    result = run_fleet(plan_fleet(load_fleet(fleet), out, cache), engine=engine, retries=retries)
    assert not result.failed, result.failed
    return time.perf_counter() - started, result.results


def scheduling_overhead(ray, task, count: int = 200) -> dict[str, float]:
    """Ray's cost per task with nothing to do: a no-op remote that takes a real (pickled) Task."""
    noop = ray.remote(lambda t: t.id).options(num_cpus=1, max_retries=3)
    ray.get([noop.remote(task) for _ in range(10)])  # workers up
    started = time.perf_counter()
    ray.get([noop.remote(task) for _ in range(count)])
    throughput = (time.perf_counter() - started) / count
    started = time.perf_counter()
    for _ in range(30):
        ray.get(noop.remote(task))
    return {"per_task_ms_pipelined": round(throughput * 1e3, 2),
            "round_trip_ms": round((time.perf_counter() - started) / 30 * 1e3, 2)}


def fault_run(fleet: Path, work: Path, kills: int) -> dict:
    killed: list[str] = []
    stop = threading.Event()
    chooser = random.Random(19)

    def killer() -> None:
        while not stop.is_set() and len(killed) < kills:
            pids = running_task_pids()
            if pids:
                pid = chooser.choice(pids)
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                    os.kill(pid, signal.SIGKILL)
                    killed.append(title)
                except OSError:
                    pass
                time.sleep(chooser.uniform(0.3, 1.0))
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        seconds, results = run(fleet, work / "fault", work / "c-fault", "ray", retries=10)
    finally:
        stop.set()
        thread.join()
    return {"seconds": round(seconds, 2), "kills": killed, "tasks": len(results)}


def stage_costs(output: Path) -> dict[str, float]:
    """Median seconds per stage kind over the fleet's build reports (a cold run)."""
    by_kind: dict[str, list[float]] = {}
    for report in output.glob("*/report.json"):
        for stage in json.loads(report.read_text())["stages"]:
            kind = stage["stage"].split(" ")[0] + ("" if " " not in stage["stage"] else " " + stage["stage"].split(" ")[1])
            by_kind.setdefault(kind, []).append(stage["seconds"])
    return {k: round(statistics.median(v), 3) for k, v in sorted(by_kind.items())}


def tensorflow_import_seconds() -> float | None:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True)
    return round(time.perf_counter() - started, 2) if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "fleet.json")
    args = parser.parse_args()
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    work = Path(tempfile.mkdtemp(prefix="edgekiln-bench-fleet-"))
    try:
        fleet = write_fleet(work / "fleet")
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
                 logging_level="ERROR")
        ray_start = time.perf_counter() - started
        cold: dict[str, list[float]] = {"ray": [], "local": []}
        task_seconds: list[float] = []
        for index in range(args.rounds):
            order = ["ray", "local"] if index % 2 == 0 else ["local", "ray"]
            for engine in order:
                seconds, results = run(fleet, work / f"{engine}{index}", work / f"c-{engine}{index}", engine)
                cold[engine].append(round(seconds, 2))
                if engine == "ray":
                    task_seconds.append(sum(r["seconds"] for r in results))
                print(f"cold {engine} round {index}: {seconds:.1f}s", file=sys.stderr)
        same = delivered_digests(work / "ray0") == delivered_digests(work / "local0")
        cached: dict[str, list[float]] = {"ray": [], "local": []}
        for index in range(args.rounds):
            for engine in ("ray", "local"):
                seconds, _ = run(fleet, work / f"cached-{engine}{index}", work / "c-ray0", engine)
                cached[engine].append(round(seconds, 2))
        from toolchain.fleet.plan import plan_fleet
        from toolchain.fleet.spec import load_fleet

        task = plan_fleet(load_fleet(fleet), work / "x", work / "c-ray0").tasks[2]
        overhead = scheduling_overhead(ray, task)
        fault = fault_run(fleet, work, args.kills)
        fault["identical_to_clean"] = delivered_digests(work / "fault") == delivered_digests(work / "local0")
        ray.shutdown()
        record = {
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "fleet": {"models": len(WIDTHS), "targets": list(TARGETS), "tasks": len(WIDTHS) * (2 + len(TARGETS))},
            "ray_start_seconds": round(ray_start, 2),
            "cold_seconds": cold, "cold_median": {k: statistics.median(v) for k, v in cold.items()},
            "ray_task_seconds_sum_median": round(statistics.median(task_seconds), 2),
            "cached_seconds": cached, "cached_median": {k: statistics.median(v) for k, v in cached.items()},
            "ray_vs_local_artifacts_identical": same, "scheduling": overhead, "fault": fault,
            "stage_seconds_median": stage_costs(work / "local0"),
            "tensorflow_import_seconds": tensorflow_import_seconds(),
        }
        args.output.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
