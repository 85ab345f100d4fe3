"""ONNX Runtime INT8 on depthwise networks, kernel by kernel (issue #18, item 2).

    python -m bench.ort_kernels    # bench/ort_kernels.md + bench/ort_kernels.json (about 4 minutes on 2 cores)

Per model, the FP32 model and edgekiln's x86 INT8 (MinMax, uint8 activations, symmetric per-channel int8
weights, no layer in float: the "edgekiln INT8" row of ``bench/run.py``) are timed whole, interleaved. Then each
runs again under ONNX Runtime's profiler, which times every kernel of the graph ORT really runs (after its
fusions: QDQ -> QLinearConv, FP32 Conv+Clip+Add -> one NCHWc convolution). Kernel times are grouped:
convolutions by kind (1x1, depthwise, others such as the 3-channel stem), INT8 ops that have no FP32
counterpart (QLinearAdd: the FP32 graph fuses the residual Add into a convolution), and quantization plumbing
(Quantize/Dequantize at the model's edges, layout Transposes). Two alternatives made from the same ranges are
timed in the same rounds: every depthwise convolution kept in float, and the stem kept in float.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from bench import data, machine, run, timing

BENCH_DIR = Path(__file__).resolve().parent
PLAN = timing.TimingPlan(rounds=21, runs_per_round=20, warmup=10)
PROFILED_RUNS, PROFILE_WARMUP = 40, 10
CALIBRATION = 64
TARGETS = {"mobilenet_v2": 2.2, "effnet": 1.8}  # issue #18: INT8 at least this many times FP32's speed
TITLES = {**run.TITLES, "effnet": "EfficientNet-Lite0 (trained, the model zoo's)"}
# Kernel classes, in the table's order.
CLASSES = ("conv 1x1", "conv depthwise", "conv other (kxk)", "residual Add (INT8 only: FP32 fuses it)",
           "quantization plumbing (Q/DQ, Transpose)", "everything else")


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _kernel_class(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> str:
    if node.op_type in ("Conv", "QLinearConv"):
        if int(_attribute(node, "group", 1)) > 1:
            return "conv depthwise"
        weight = shapes.get(node.input[1] if node.op_type == "Conv" else node.input[3], [])
        return "conv 1x1" if weight[2:] == [1, 1] else "conv other (kxk)"
    if node.op_type == "QLinearAdd":
        return "residual Add (INT8 only: FP32 fuses it)"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Transpose"):
        return "quantization plumbing (Q/DQ, Transpose)"
    return "everything else"


def kernel_times(path: Path, feed: dict[str, np.ndarray], work: Path) -> dict[str, float]:
    """Microseconds per run spent in each kernel class, from ORT's profiler over ``PROFILED_RUNS`` runs."""
    import onnxruntime as ort

    from backends.onnxruntime.runner import session_options

    options = session_options(run.THREADS)
    options.optimized_model_filepath = str(work / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    classes = {node.name: _kernel_class(node, shapes) for node in graph.node}

    options = session_options(run.THREADS)
    options.enable_profiling = True
    options.profile_file_prefix = str(work / path.stem)
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    for _ in range(PROFILE_WARMUP + PROFILED_RUNS):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_timed = runs[PROFILE_WARMUP]
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_timed:
            totals[classes.get(event["name"][: -len("_kernel_time")], "everything else")] += event["dur"]
    return {kind: totals.get(kind, 0.0) / PROFILED_RUNS for kind in CLASSES}


def _workload(name: str) -> tuple[Path, list[dict[str, np.ndarray]], dict[str, np.ndarray], str]:
    """FP32 model, calibration feeds, the timed feed, and a line on the data."""
    if name == "effnet":
        from bench import zoo as bench_zoo
        from zoo import metrics, models, photos as zoo_photos

        model = models.EFFNET
        spec = models.spec_for(model)
        photos = zoo_photos.build_photo_set(bench_zoo.CACHE_DIR)
        calib_names, held_names = photos.split()
        calib = sorted(zoo_photos.subset(photos, calib_names, bench_zoo.CACHE_DIR / "calib").iterdir())
        held = sorted(zoo_photos.subset(photos, held_names, bench_zoo.CACHE_DIR / "heldout").iterdir())
        work = bench_zoo.CACHE_DIR / model.key
        work.mkdir(parents=True, exist_ok=True)
        batch = metrics.preprocess(spec, calib)
        feeds = [{"input": batch[i: i + 1]} for i in range(len(batch))]
        timed = {"input": metrics.preprocess(spec, held[:1])}
        return (bench_zoo._fp32(model, work), feeds, timed,
                f"`{model.distribution}` {model.installed_version()} converted and simplified by `bench.zoo`; "
                f"calibrated on the zoo's {len(feeds)} calibration photos, timed on a held-out one")
    calib = data.cnn_images("fashion", CALIBRATION, "calibration", run.SEED)
    held = data.cnn_images("fashion", 1, "holdout", run.SEED)
    return (run.cnn_fp32(name, "fashion"), [{"input": calib[i: i + 1]} for i in range(len(calib))],
            {"input": held[:1]},
            f"`bench.run`'s random-weight CNN; calibrated on {CALIBRATION} Fashion-MNIST images upsampled to "
            "224x224, timed on a held-out one")


def _variants(fp32: Path, feeds: Sequence[dict[str, np.ndarray]], work: Path) -> dict[str, Path]:
    """FP32, edgekiln's INT8 and the two alternatives, all INT8 ones from the same ranges."""
    from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static

    model = onnx.load(fp32)
    config = QuantizeConfig.for_target("x86")
    ranges = compute_ranges(model, feeds, config)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    depthwise = tuple(node.name for node in convs if int(_attribute(node, "group", 1)) > 1)
    kept = {"int8": (), "int8, depthwise in float": depthwise, "int8, stem in float": (convs[0].name,)}
    paths = {"fp32": fp32}
    for label, exclude in kept.items():
        if label != "int8" and not exclude:
            continue  # no depthwise convolution: nothing to keep in float
        path = work / f"{label.replace(', ', '-').replace(' ', '_')}.onnx"
        onnx.save(quantize_static(model, ranges, config.model_copy(update={"nodes_to_exclude": exclude})), path)
        paths[label] = path
    return paths


def measure(name: str) -> dict:
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    fp32, feeds, feed, source = _workload(name)
    with tempfile.TemporaryDirectory(prefix="edgekiln-bench-ort-kernels-") as folder:
        work = Path(folder)
        paths = _variants(fp32, feeds, work)
        runners = {label: OnnxRuntimeRunner.from_path(path, threads=run.THREADS) for label, path in paths.items()}
        print(f"[ort_kernels] {name}: timing {', '.join(runners)}", file=sys.stderr)
        latency = timing.summarize(timing.interleaved({k: (lambda r=r: r.run(feed)) for k, r in runners.items()},
                                                      PLAN), reference="fp32")
        print(f"[ort_kernels] {name}: profiling", file=sys.stderr)
        kernels = {label: kernel_times(paths[label], feed, work) for label in ("fp32", "int8")}
    return {"model": name, "source": source,
            "latency": {k: {"median_ms": v.median_ms, "x_fp32": v.ratio_vs_reference, "low": v.ratio_low,
                            "high": v.ratio_high} for k, v in latency.items()},
            "kernels_us": kernels}


def projection(kernels: dict[str, dict[str, float]]) -> dict[str, float]:
    """The INT8/FP32 kernel-time ratio as profiled, and as it would be if every convolution sped up as much as
    the 1x1 ones do (arithmetic on the profile, not a measurement)."""
    fp32, int8 = kernels["fp32"], kernels["int8"]
    pointwise = fp32["conv 1x1"] / int8["conv 1x1"]
    slow = ("conv depthwise", "conv other (kxk)")
    projected = sum(int8.values()) - sum(int8[k] for k in slow) + sum(fp32[k] for k in slow) / pointwise
    return {"profiled": sum(fp32.values()) / sum(int8.values()), "pointwise": pointwise,
            "all_convs_as_1x1": sum(fp32.values()) / projected,
            "int8_only_us": int8[CLASSES[3]] + int8[CLASSES[4]]}


def markdown(record: dict) -> str:
    lines = ["# ONNX Runtime INT8 on depthwise networks, kernel by kernel (issue #18, item 2)", "",
             f"Generated by `python -m bench.ort_kernels` ({record['date']}, {record['minutes']:.1f} min) at commit "
             f"`{record['commit']}`; raw numbers in `bench/ort_kernels.json`. Machine: "
             f"{machine.summary(record['machine'])}; load average {record['load']} at the start. ONNX Runtime "
             f"{record['onnxruntime']}, CPU, batch 1, {run.THREADS} threads. Whole-model latency: {PLAN.rounds} "
             f"interleaved rounds of up to {PLAN.runs_per_round} runs per variant, speed-up = median of the rounds' "
             f"ratios (interquartile range in brackets). Kernel times: ORT's profiler over {PROFILED_RUNS} runs "
             f"after {PROFILE_WARMUP} untimed ones, microseconds per run.", "",
             __doc__.split("\n\n", 2)[2].strip(), ""]
    for result in record["results"]:
        latency, kernels = result["latency"], result["kernels_us"]
        lines += [f"## {TITLES[result['model']]}", "", result["source"] + ".", "",
                  "| variant | median ms | x FP32 |", "|---|---:|---:|"]
        for label, row in latency.items():
            lines.append(f"| {label} | {row['median_ms']:.2f} | {row['x_fp32']:.2f}x "
                         f"({row['low']:.2f}-{row['high']:.2f}) |")
        fp32_total = sum(kernels["fp32"].values())
        lines += ["", "| kernels | FP32 µs | share of FP32 | INT8 µs | FP32 / INT8 |", "|---|---:|---:|---:|---:|"]
        for kind in CLASSES:
            a, b = kernels["fp32"][kind], kernels["int8"][kind]
            lines.append(f"| {kind} | {a:.0f} | {100 * a / fp32_total:.0f}% | {b:.0f} | "
                         + (f"{a / b:.2f}x |" if a and b else "– |"))
        projected = projection(kernels)
        lines += [f"| all kernels | {fp32_total:.0f} | 100% | {sum(kernels['int8'].values()):.0f} | "
                  f"{projected['profiled']:.2f}x |", ""]
        target = TARGETS.get(result["model"])
        if target:
            measured = latency["int8"]["x_fp32"]
            lines.append(f"- Target (issue #18): INT8 at least {target}x FP32: measured {measured:.2f}x, "
                         + ("**met**." if measured >= target else "**missed**."))
        lines.append(f"- If the depthwise and other convolutions sped up as much as the 1x1 ones "
                     f"({projected['pointwise']:.2f}x), the INT8 kernels would take FP32's time / "
                     f"{projected['all_convs_as_1x1']:.2f} (arithmetic on the profile above). The INT8-only "
                     f"kernels (residual Adds, Q/DQ, Transposes) cost {projected['int8_only_us']:.0f} µs per run.")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import onnxruntime

    args = argv if argv is not None else sys.argv[1:]
    if args == ["--render"]:  # bench/ort_kernels.md again from its JSON
        (BENCH_DIR / "ort_kernels.md").write_text(markdown(json.loads((BENCH_DIR / "ort_kernels.json").read_text())))
        return 0
    started = time.perf_counter()
    load = machine.load_average()
    names = ["resnet18", "mobilenet_v2", "effnet"]
    try:
        import efficientnet_lite_pytorch  # noqa: F401  (the zoo's wheels: tests/zoo/requirements.txt)
    except ImportError:
        print("[ort_kernels] no model-zoo wheels: EfficientNet-Lite0 left out", file=sys.stderr)
        names.remove("effnet")
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": machine.commit(),
              "machine": machine.describe(), "onnxruntime": onnxruntime.__version__,
              "load": "unknown" if load is None else " / ".join(f"{v:.1f}" for v in load),
              "results": [measure(name) for name in names]}
    record["minutes"] = (time.perf_counter() - started) / 60
    (BENCH_DIR / "ort_kernels.json").write_text(json.dumps(record, indent=1) + "\n")
    (BENCH_DIR / "ort_kernels.md").write_text(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
