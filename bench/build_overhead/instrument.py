"""Where B's extra time goes: wall-clock timers around edgekiln's functions in one extra run of B.

``python -m bench.build_overhead --instrument OUT_JSON BUILD_ARGS...`` calls ``instrumented_build`` (the child
process); ``timed_pair`` starts it from the benchmark and pairs it with a run of C.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.build_overhead.rounds import build_report, code_version, run_variant, timed_run
from bench.build_overhead.workspace import Workspace, build_arguments


# (module, attribute, what it does). Wall-clock timers around these functions in one extra run of B:
# cProfile, tried once, inflated B from 44 s to 71 s here (TensorFlow's converter is call-heavy
# Python), which would misplace the overhead; a timer per call costs microseconds.
TIMED_FUNCTIONS: tuple[tuple[str, str, str], ...] = (
    ("toolchain.api", "build", "the whole build: plan, stages, report.json, report.html"),
    ("toolchain.onnx_io", "load_onnx", "load and check an ONNX file"),
    ("toolchain.onnx_io", "save_onnx", "save an ONNX file"),
    ("toolchain.passes.simplify", "run", "onnxsim: the simplify stage, and again inside the TFLite backend"),
    ("calibration.dataset", "build_calibration_set", "choose, decode and preprocess calibration + held-out images"),
    ("toolchain.feeds", "image_feeds", "decode and preprocess a few images (agreement, bundle samples)"),
    ("toolchain.passes.calibrate", "calibrate", "x86 INT8: samples, ranges, quantize (guard when on), save"),
    ("toolchain.passes.quantize", "compute_ranges", "x86 INT8: ORT calibrator over the calibration images"),
    ("toolchain.passes.quantize", "quantize_static", "x86 INT8: ORT quantize_static from the ranges"),
    ("toolchain.quant_guard", "guarded_quantize", "x86 INT8: the accuracy guard (A only)"),
    ("backends.tflite.builder", "_build", "rpi4: the whole TFLite build"),
    ("backends.tflite.onnx2tf_run", "_run_logged", "rpi4: onnx2tf child process (start-up, imports, conversion)"),
    ("backends.tflite.converter", "_tf", "rpi4: import TensorFlow in the build process (first call)"),
    ("backends.tflite.converter", "preload_tensorflow",
     "rpi4: the build process's TensorFlow import, run while the onnx2tf child works (newer edgekiln)"),
    ("backends.tflite.converter", "lower", "rpi4: TFLiteConverter runs (INT8; older edgekiln: a float model for I/O binding first)"),
    ("backends.tflite.builder", "bind", "rpi4: map ONNX inputs/outputs onto the TFLite signature"),
    ("backends.tflite.int8", "quantize_int8", "rpi4: samples, INT8 conversion, held-out measurement"),
    ("backends.tflite.int8", "load_samples", "rpi4: calibration + held-out images"),
    ("backends.tflite.int8", "_reference_outputs", "rpi4: FP32 ONNX outputs on the held-out images (ORT)"),
    ("backends.tflite.int8", "measure", "rpi4: INT8 TFLite on the held-out images, compared with FP32"),
    ("backends.tensorrt.compile", "compile_bundle", "jetson-nano: the whole bundle"),
    ("backends.tensorrt.prepare", "prepare_for_device", "jetson-nano: op check, opset 17 -> 13, shape inference"),
    ("backends.tensorrt.compile", "sample_feeds", "jetson-nano: sample images for the bundle"),
    ("backends.tensorrt.bundle", "write_bundle", "jetson-nano: samples, references, hashes, scripts"),
    ("toolchain.verify", "run_and_compare", "ORT parity runs (bundle: prepared vs input model; A: verification)"),
    ("toolchain.verify", "verify_callables", "verification against the previous model (A only)"),
    ("toolchain.compare", "compare_artifacts", "measure: agreement with the FP32 model on 32 images"),
    ("toolchain.compare", "per_layer", "measure x86-int8: per-layer error against FP32 on 8 images"),
    ("toolchain.bench", "benchmark", "measure: latency runs (A only)"),
    ("backends.onnxruntime.runner", "OnnxRuntimeRunner._create", "ONNX Runtime session creation"),
    ("backends.tflite.runner", "make_interpreter", "TFLite interpreter creation"),
    ("toolchain.artifact", "sdk_versions", "SDK versions for each manifest"),
    ("toolchain.stage_cache", "StageCache.store", "stage cache writes (none with --no-cache)"),
    ("toolchain.report_html", "write_report_html", "report.html"),
)
_REPO_PACKAGES = ("toolchain", "backends", "calibration")
KEPT_CALLS = 16


class CallTimes:
    """Calls and total wall-clock seconds per timed function (nested functions each count their own)."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}
        self.durations: dict[str, list[float]] = {}
        """The first ``KEPT_CALLS`` calls' seconds, in call order (which call was which is known per function)."""
        self.missing: list[str] = []
        """``TIMED_FUNCTIONS`` entries that no longer exist in edgekiln."""

    def wrap(self, key: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                entry = self.totals.setdefault(key, [0, 0.0, 0.0])
                elapsed = time.perf_counter() - started
                entry[0] += 1
                entry[1] += elapsed
                entry[2] = max(entry[2], elapsed)
                kept = self.durations.setdefault(key, [])
                if len(kept) < KEPT_CALLS:
                    kept.append(round(elapsed, 3))
        return timed

    def rows(self) -> list[dict[str, Any]]:
        what = {f"{m}.{a}": d for m, a, d in TIMED_FUNCTIONS}
        rows = [{"function": key, "what": what.get(key, ""), "calls": int(calls), "seconds": round(total, 3),
                 "longest_call_s": round(longest, 3), "call_seconds": self.durations.get(key, [])}
                for key, (calls, total, longest) in self.totals.items()]
        return sorted(rows, key=lambda row: -row["seconds"])


def _install_timer(times: CallTimes, module_name: str, attribute: str) -> tuple[Any, Any] | None:
    """Replace one function (or classmethod/method) by a timed wrapper; returns (original, wrapper) for
    module-level functions, which other modules may already have bound by ``from ... import``."""
    module = importlib.import_module(module_name)
    key = f"{module_name}.{attribute}"
    owner_name, _, name = attribute.rpartition(".")
    owner = getattr(module, owner_name, None) if owner_name else module
    if owner is None or not hasattr(owner, name):  # renamed in edgekiln since this list was written
        times.missing.append(key)
        return None
    if owner_name:
        raw = owner.__dict__[name]
        if isinstance(raw, classmethod):
            setattr(owner, name, classmethod(times.wrap(key, raw.__func__)))
        else:
            setattr(owner, name, times.wrap(key, raw))
        return None
    original = getattr(module, name)
    wrapper = times.wrap(key, original)
    setattr(module, name, wrapper)
    return original, wrapper


def install_timers(times: CallTimes) -> None:
    """Time every ``TIMED_FUNCTIONS`` entry, also where a repository module imported it by name."""
    swaps = {id(o): w for o, w in filter(None, (_install_timer(times, m, a) for m, a, _ in TIMED_FUNCTIONS))}
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in _REPO_PACKAGES:
            continue
        for attribute, value in list(vars(module).items()):
            if id(value) in swaps and swaps[id(value)] is not value:
                setattr(module, attribute, swaps[id(value)])


def instrumented_build(out_json: Path, build_args: list[str]) -> int:
    """Run ``edgekiln build`` in this process with timers installed; write the timings to ``out_json``."""
    started = time.perf_counter()
    times = CallTimes()
    install_timers(times)
    setup_seconds = time.perf_counter() - started
    code: object = 0
    try:
        from toolchain import cli

        cli.main(build_args)
    except SystemExit as exc:
        code = exc.code
    out_json.write_text(json.dumps({"timer_setup_s": round(setup_seconds, 3), "rows": times.rows(),
                                    "missing": times.missing,
                                    "in_process_s": round(time.perf_counter() - started, 3)}, indent=1) + "\n")
    return code if isinstance(code, int) else 0


def timed_pair(workspace: Workspace, raw_config: Path) -> dict[str, Any]:
    """One extra run of B with timers on the functions that do (or add) its work, then one run of C right
    after it, so the two breakdowns are compared under the same load."""
    out = workspace.root / "timed-B.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.build_overhead", "--instrument", str(out),
               *build_arguments(workspace, "B")]
    seconds = timed_run(command, workspace.logs / "timed-B.log")
    result = json.loads(out.read_text())
    result["wall_s"] = round(seconds, 3)
    result["report"] = build_report(workspace.output("B"))
    raw_seconds, steps = run_variant("C", workspace, raw_config, "timed")
    result["raw"] = {"wall_s": round(raw_seconds, 3), "steps": steps}
    result["code"] = code_version()
    return result
