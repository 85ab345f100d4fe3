"""Which piece of work the time goes to: build stages matched to the raw path's steps (``group_rows``), and
the paired, timed run of B against C taken apart row by row (``breakdown``)."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from bench.build_overhead.params import HOLDOUT, IMAGE_COUNT
from bench.build_overhead.results import Summary


# Which report.json stages do the work of which raw step group (None: work the raw path does not do).
STAGE_GROUPS: dict[str, str | None] = {
    "convert": "simplify", "simplify": "simplify", "compile x86-int8": "x86:int8", "compile rpi4": "rpi4",
    "compile jetson-nano": "jetson-nano", "measure reference": None, "measure x86-int8": None,
    "measure rpi4": None, "measure jetson-nano": None}
GROUP_ORDER = ("simplify", "x86:int8", "rpi4", "jetson-nano")


def group_rows(summary: Summary) -> list[tuple[str, float, float, float]]:
    """(work, raw C, build B, build A) median seconds per group of work."""
    rows = []
    for group in GROUP_ORDER:
        raw = sum(s for step, s in summary.raw_medians.items() if summary.raw_groups.get(step) == group)
        build = {v: sum(s for stage, s in summary.stage_medians[v].items() if STAGE_GROUPS.get(stage) == group)
                 for v in ("A", "B")}
        rows.append((group, raw, build["B"], build["A"]))
    measure = {v: sum(s for stage, s in summary.stage_medians[v].items()
                      if stage in STAGE_GROUPS and STAGE_GROUPS[stage] is None) for v in ("A", "B")}
    rows.append(("measure stages (agreement, per-layer, latency)", 0.0, measure["B"], measure["A"]))
    rest = {v: summary.stage_medians[v]["report total"] - sum(
        s for stage, s in summary.stage_medians[v].items() if stage in STAGE_GROUPS) for v in ("A", "B")}
    rows.append(("planning, hashing, staging, report.json (report total minus stages)", 0.0, rest["B"], rest["A"]))
    rows.append(("process: start-up, imports outside stages, report.html, exit", summary.raw_medians["process"],
                 summary.stage_medians["B"]["process"], summary.stage_medians["A"]["process"]))
    return rows


def _calls(timed: dict[str, Any], function: str) -> list[float]:
    row = next((r for r in timed["rows"] if r["function"] == function), None)
    return list(row["call_seconds"]) if row else []


def _first(timed: dict[str, Any], function: str) -> float:
    """Seconds of the first call of a timed function (0 when it was not called)."""
    return (_calls(timed, function) or [0.0])[0]


def _raw_steps(steps: Sequence[dict[str, Any]], group: str, prefix: str = "") -> float:
    return sum(s["seconds"] for s in steps if s["group"] == group and s["step"].startswith(prefix))


def breakdown(timed: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(work, B seconds, C seconds) for the paired timed run of B and run of C; the rows add up to each
    run's wall clock. The call order of each timed function is fixed by the build: where there are two
    ``lower`` calls the first is the float TFLite conversion older edgekiln ran only to bind inputs and
    outputs (newer edgekiln reads them from the SavedModel: one call); the second ``simplify.run`` call is
    the TFLite backend's."""
    stages: dict[str, float] = collections.defaultdict(float, timed["report"]["stages"])
    steps = timed["raw"]["steps"]
    lower_calls = _calls(timed, "backends.tflite.converter.lower")
    lower = (lower_calls if len(lower_calls) > 1 else [0.0, *lower_calls]) + [0.0, 0.0]
    simplify = _calls(timed, "toolchain.passes.simplify.run") + [0.0, 0.0]
    tf_import = _first(timed, "backends.tflite.converter._tf")
    # Newer edgekiln imports TensorFlow while the onnx2tf child runs (``preload_tensorflow``): the import then
    # sits inside the child's wall clock; older edgekiln pays it in its first TFLiteConverter call.
    overlapped = _first(timed, "backends.tflite.converter.preload_tensorflow") > 0
    raw_onnx2tf = _raw_steps(steps, "rpi4", "import") + _raw_steps(steps, "rpi4", "onnx2tf")
    child = ("onnx2tf child process, with the build process's own TensorFlow import running meanwhile "
             f"({tf_import:.1f} s of it) (C: import onnx2tf + TensorFlow, convert)" if overlapped else
             "onnx2tf (B: child process: start-up, imports, conversion; C: import onnx2tf + TensorFlow, convert)")
    rpi4 = {
        child: (_first(timed, "backends.tflite.onnx2tf_run._run_logged"), raw_onnx2tf),
        "TensorFlow imported again, in the build process (first TFLiteConverter call)":
            (0.0 if overlapped else tf_import, 0.0),
        "float32 TFLiteConverter run, only to map ONNX inputs/outputs onto TFLite tensors":
            (lower[0] - (0.0 if overlapped else tf_import), 0.0),
        "full-INT8 TFLiteConverter run": (lower[1], _raw_steps(steps, "rpi4", "TFLiteConverter")),
        f"calibration + held-out images ({IMAGE_COUNT}) decoded again (about 0 where the x86 stage's set is reused)":
            (_first(timed, "backends.tflite.int8.load_samples"), 0.0),
        f"held-out check: FP32 ONNX and INT8 TFLite on {HOLDOUT} images (0 where --no-guard skips it)":
            (_first(timed, "backends.tflite.int8._reference_outputs")
             + _first(timed, "backends.tflite.int8.measure"), 0.0),
        "onnxsim again on the already simplified model": (simplify[1], 0.0),
    }
    rows: list[tuple[str, float, float]] = [
        ("simplify (B: convert + simplify stages; C: import onnx + onnxsim, simplify, save)",
         stages["convert"] + stages["simplify"], _raw_steps(steps, "simplify")),
        ("x86 INT8 (B: compile stage; C: import, preprocess, quantize_static)", stages["compile x86-int8"],
         _raw_steps(steps, "x86:int8")),
    ]
    rows += [(f"rpi4: {what}", b, c) for what, (b, c) in rpi4.items()]
    rows.append(("rpi4: the rest of the compile stage (model loads and saves, manifest, I/O binding, runners)",
                 stages["compile rpi4"] - sum(b for b, _ in rpi4.values()), 0.0))
    rows.append(("jetson-nano (B: the bundle, with ORT parity and reference outputs on 4 images; C: opset "
                 "conversion + save)", stages["compile jetson-nano"], _raw_steps(steps, "jetson-nano")))
    rows.append(("measure stages", sum(v for k, v in stages.items() if k.startswith("measure")), 0.0))
    rows.append(("planning, hashing, staging, report.json (report total minus stages)",
                 timed["report"]["seconds"] - sum(stages.values()), 0.0))
    build_call = _first(timed, "toolchain.api.build")
    rows += [
        ("report.html and the rest of `api.build` outside report.json's `seconds`",
         build_call - timed["report"]["seconds"], 0.0),
        ("in the process, outside `api.build`: CLI parsing, imports, printing the summary",
         timed["in_process_s"] - timed["timer_setup_s"] - build_call, 0.0),
        ("interpreter start-up and exit (module teardown, temporary folders removed)",
         timed["wall_s"] - timed["in_process_s"], timed["raw"]["wall_s"] - sum(step["seconds"] for step in steps)),
        ("installing the timers (instrumented run only: imports the normal build does inside its stages)",
         timed["timer_setup_s"], 0.0),
    ]
    return rows
