"""Fleets on a real local Ray instance (2 CPUs, shared by the module): same artifacts as --no-ray, the
shared stage cache, a worker SIGKILLed mid-task, a failing model."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import onnx
import pytest

from fleet_helpers import cache_is_sound, write_fleet, write_model
from toolchain.fleet.inspect import delivered_digests, running_task_pids
from toolchain.fleet.plan import plan_fleet
from toolchain.fleet.run import run_fleet
from toolchain.fleet.tasks import STAGING_NAME
from toolchain.fleet.spec import load_fleet

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One Ray instance for the module (it takes ~12 s to start); workers import this checkout."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved) if p)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


def _run(fleet: Path, out: Path, cache: Path, engine: str = "ray", **options):
    return run_fleet(plan_fleet(load_fleet(fleet), out, cache), engine=engine, **options)


def test_ray_gives_the_same_artifacts_as_no_ray_and_shares_the_cache(tmp_path):
    fleet = write_fleet(tmp_path / "f", count=2)
    local = _run(fleet, tmp_path / "local", tmp_path / "c-local", engine="local")
    on_ray = _run(fleet, tmp_path / "ray", tmp_path / "c-ray")
    assert not local.failed and not on_ray.failed
    assert {r["pid"] for r in on_ray.results}.isdisjoint({os.getpid()})  # ran on workers
    assert delivered_digests(tmp_path / "ray") == delivered_digests(tmp_path / "local")
    assert len(delivered_digests(tmp_path / "ray")) > 10
    # Rerun: every stage is in the shared cache; then one retrained model reruns only its own tasks.
    again = plan_fleet(load_fleet(fleet), tmp_path / "again", tmp_path / "c-ray")
    assert all(t.cached for t in again.tasks)
    write_model(fleet.parent / "m0.onnx", 5.0)
    changed = _run(fleet, tmp_path / "changed", tmp_path / "c-ray")
    assert sorted(r["task"] for r in changed.results if not r["cached"]) == [
        "prepare", "reference", "x86", "x86-int8"]
    assert {r["model"] for r in changed.results if not r["cached"]} == {"m0"}
    assert delivered_digests(tmp_path / "changed" / "m1") == delivered_digests(tmp_path / "local" / "m1")
    assert cache_is_sound(tmp_path / "c-ray") > 0


def test_a_worker_killed_mid_task_is_retried_and_nothing_is_damaged(tmp_path):
    fleet = write_fleet(tmp_path / "f", count=2)
    reference = _run(fleet, tmp_path / "clean", tmp_path / "c-clean", engine="local")
    assert not reference.failed
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and len(killed) < 2:
            for pid in running_task_pids()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                time.sleep(0.5)  # let Ray notice and resubmit before the next kill
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = _run(fleet, tmp_path / "out", tmp_path / "c", retries=5)
    finally:
        done.set()
        thread.join()
    assert killed, "no task was caught running"
    assert not result.failed, result.failed
    assert delivered_digests(tmp_path / "out") == delivered_digests(tmp_path / "clean")
    assert cache_is_sound(tmp_path / "c") == cache_is_sound(tmp_path / "c-clean")
    # The killed tasks' staging folders are gone too: later tasks on this node removed them.
    stale = [p for p in Path(tempfile.gettempdir()).glob(f".{STAGING_NAME}.*.tmp")
             if int(p.name.split(".")[2]) in killed]
    assert stale == []


def test_failing_models_do_not_stop_the_others_on_ray(tmp_path):
    fleet = write_fleet(tmp_path / "f", count=2, targets="[x86:int8]")
    broken = onnx.load(str(fleet.parent / "m1.onnx"))
    broken.graph.node[1].op_type = "NoSuchOp"  # passes planning, fails the ONNX checker in convert
    onnx.save(broken, str(fleet.parent / "broken.onnx"))
    text = fleet.read_text().replace("  - source: m0.onnx\n", "  - {source: m0.onnx, min-cosine: 0.9999999, "
                                                               "max-drop: 0.0}\n  - source: broken.onnx\n")
    fleet.write_text(text)
    result = _run(fleet, tmp_path / "out", tmp_path / "c")
    assert sorted((r["model"], r["task"], r["status"]) for r in result.failed) == [
        ("broken", "prepare", "failed"), ("broken", "reference", "skipped"), ("broken", "x86-int8", "skipped"),
        ("m0", "x86-int8", "refused")]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["m1"] == {"ok": 3, "cached": 0}
    broken_target = next(m for m in report["models"] if m["model"] == "broken")["targets"][0]
    assert broken_target["status"] == "failed" and "NoSuchOp" in broken_target["error"]["message"]
    assert not (tmp_path / "out" / "broken").exists()
    assert (tmp_path / "out" / "m1" / "x86-int8" / "model.onnx").is_file()
