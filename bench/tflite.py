"""TFLite backend benchmark: FP32 vs FP16 vs INT8 on the LiteRT interpreter, plus the MCU bundle's budget.

    python -m bench.tflite               # full run (~5 min on 2 cores): the example and both 224x224 CNNs
    python -m bench.tflite --quick       # smoke check: few rounds, 1,000 test images, 16 held-out CNN images
    python -m bench.tflite --only cnn    # one part: example (bundled Fashion-MNIST) or cnn (ResNet18/MobileNetV2)

Prints a Markdown section (``run(quick)`` returns it, for ``bench.run`` to include).
Every model is compiled with ``toolchain.api.compile(backend="tflite")`` per precision,
timed with the LiteRT interpreter through the artifact's runner at 2 threads (XNNPACK)
in interleaved rounds (``bench.timing``), with speed-ups as same-round ratios vs FP32.

* The bundled Fashion-MNIST example is exported and simplified with ``toolchain.api`` and
  scored on the test split. INT8 is calibrated on Fashion-MNIST *training* images (a
  labelled PNG folder, so the accuracy guard checks real top-1 on its held-out part),
  never on the test images.
* The ResNet18-sized and MobileNetV2-sized CNNs reuse ``bench.run``'s cached FP32 ONNX
  exports (random weights, settled BatchNorm) and its calibration images (the same
  ``bench.data.cnn_images`` call, written to one ``.npy``); their weights are random, so
  they are scored by agreement with TFLite FP32 on held-out images, and INT8 is compiled
  with the accuracy guard off (near-tied random logits would fail any top-1 budget).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import data, machine, quality, timing

THREADS = 2
SEED = 0
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CALIBRATION, HOLDOUT = 256, 512
TARGET_SPEEDUP = 2.0
TARGET_DROP_POINTS = 0.5
PRECISIONS = ("fp32", "fp16", "int8")
PARTS = ("example", "cnn", "effnet")
CNN_NAMES = ("resnet18", "mobilenet_v2")
CNN_INT8_MIN_COSINE = 0.90
"""Compile-time parity floor for the random-weight CNNs' INT8 artifacts (the default 0.99 is for trained models:
random logits are near-tied, so INT8 noise is large relative to their spread). FP32/FP16 keep the defaults."""


@dataclass(frozen=True)
class Settings:
    plan: timing.TimingPlan
    test_images: int | None
    holdout: int
    cnn_plan: timing.TimingPlan
    cnn_holdout: int
    """Held-out 224x224 images for agreement; the first 32 are the ones ``bench.run`` scores ORT on."""
    quick: bool


FULL = Settings(timing.TimingPlan(rounds=15, runs_per_round=50, warmup=20), None, HOLDOUT,
                timing.TimingPlan(rounds=15, runs_per_round=20, warmup=5), 256, False)
QUICK = Settings(timing.TimingPlan(rounds=3, runs_per_round=20, warmup=5), 1000, 128,
                 timing.TimingPlan(rounds=2, runs_per_round=5, warmup=2), 16, True)


@dataclass
class Variant:
    name: str
    artifact: Path
    size_bytes: int
    details: dict[str, Any]
    parity: list[Any]
    """``api.compile``'s own verification reports (artifact vs ONNX in ONNX Runtime)."""


def _log(message: str) -> None:
    print(f"[bench.tflite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _export_example(folder: Path) -> Path:
    from toolchain import api
    from toolchain.examples.fashion_mnist import INPUT_NAME, MODEL_CLASS, weights_path
    from toolchain.examples.fashion_mnist.train import MODEL_KWARGS

    raw, simplified = folder / "fashion.onnx", folder / "fashion.simplified.onnx"
    api.convert(None, raw, model_class=MODEL_CLASS, weights=weights_path(), model_kwargs=MODEL_KWARGS,
                inputs=[f"{INPUT_NAME}:1x1x28x28"], dynamic_batch=True)
    api.optimize(raw, simplified, simplify=True)
    return simplified


def _calibration_folder(folder: Path, count: int) -> Path:
    """Seeded training images as ``<label>_<class>/<index>.png``: labelled, so the guard measures top-1."""
    from PIL import Image

    from toolchain.examples.fashion_mnist import SAMPLE_FOLDERS
    from toolchain.examples.fashion_mnist.train import load_split

    images, labels = load_split(FASHION_DIR, "train")
    chosen = np.sort(np.random.default_rng(SEED).choice(len(images), count, replace=False))
    for index in chosen:
        target = folder / SAMPLE_FOLDERS[labels[index]]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(target / f"{index:05d}.png")
    return folder


def _compile(model: Path, out: Path, calib: Path, settings: Settings, **kwargs: Any) -> Variant:
    from toolchain import api

    started = time.perf_counter()
    options = {"calib_size": CALIBRATION, "holdout": settings.holdout, **kwargs}
    result = api.compile(model, out, calib=calib, no_cache=True, **options)
    details = result.artifact.manifest["metrics"]["details"]
    _log(f"compiled {out.name} in {time.perf_counter() - started:.1f} s")
    return Variant(out.name, out, (out / "model.tflite").stat().st_size, details, result.parity)


def _test_split(count: int | None) -> tuple[np.ndarray, np.ndarray]:
    from toolchain.examples.fashion_mnist.train import load_split

    images, labels = load_split(FASHION_DIR, "t10k")
    if count is not None:
        images, labels = images[:count], labels[:count]
    return (images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)


def _top1(run, images: np.ndarray, labels: np.ndarray, name: str, batch: int = 100) -> float:
    logits = np.concatenate([next(iter(run({name: images[i:i + batch]}).values()))
                             for i in range(0, len(images), batch)])
    return float((logits.argmax(1) == labels).mean())


def _runners(variants: Sequence[Variant]) -> dict[str, Any]:
    from backends.registry import get_backend
    from toolchain.artifact import Artifact

    runners = {}
    for variant in variants:
        artifact = Artifact.open(variant.artifact)
        options = {**artifact.runtime_options, "threads": THREADS}
        runners[variant.name] = get_backend(artifact.backend).load(artifact.model_path, options)
    return runners


def _duration(ms: float) -> str:
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1024:.1f} KiB" if size_bytes < 1024 ** 2 else f"{size_bytes / 1024 ** 2:.2f} MiB"


def _speedup(name: str, s: timing.LatencySummary) -> str:
    return "1.00x" if name == "fp32" else f"{s.ratio_vs_reference:.2f}x ({s.ratio_low:.2f}-{s.ratio_high:.2f})"


def _time(variants: Sequence[Variant], runners: dict[str, Any], feed: dict[str, np.ndarray],
          plan: timing.TimingPlan) -> dict[str, timing.LatencySummary]:
    samples = timing.interleaved({v.name: (lambda r=runners[v.name]: r.run(feed)) for v in variants}, plan)
    return timing.summarize(samples, reference="fp32")


def _plan_text(plan: timing.TimingPlan) -> str:
    return (f"{plan.rounds} interleaved rounds, each timing every variant for a block of up to "
            f"{plan.runs_per_round} runs (cut at {plan.max_block_seconds:g} s, at least {plan.min_runs}), "
            f"after {plan.warmup} untimed warm-up runs per variant")


def _latency_table(variants: Sequence[Variant], latency: dict[str, timing.LatencySummary]) -> str:
    rows = ["| variant | model.tflite | p50 latency (2 threads) | speed-up vs FP32 (per-round median, IQR) |",
            "|---|---:|---:|---:|"]
    for v in variants:
        s = latency[v.name]
        rows.append(f"| {v.name} | {_size(v.size_bytes)} | {_duration(s.median_ms)} | {_speedup(v.name, s)} |")
    return "\n".join(rows)


def _accuracy(variants: Sequence[Variant], runners: dict[str, Any], model: Path,
              images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    scores = {"onnxruntime fp32": _top1(OnnxRuntimeRunner.from_path(model, threads=THREADS).run, images, labels,
                                        "image")}
    for v in variants:
        scores[v.name] = _top1(runners[v.name].run, images, labels, "image")
    return scores


def _mcu_lines(mcu: Variant) -> list[str]:
    details = mcu.details["mcu"]
    arena = details["arena"]
    return [f"- **MCU bundle** (`--target mcu`: full INT8, int8 input and output): flash (model array) "
            f"{details['flash_bytes'] / 1024:.1f} KiB; tensor arena estimate {arena['total'] / 1024:.1f} KiB "
            f"(activations {arena['activations'] / 1024:.1f} KiB planned by lifetime + bookkeeping "
            f"{arena['persistent'] / 1024:.1f} KiB + 10%); ops to register: {', '.join(details['ops'])}."]


def _guard_line(variant: Variant) -> str:
    guard = variant.details["int8"].get("guard", {})
    first = guard.get("attempts", [{}])[0].get("quality", {})
    kept = variant.details["int8"].get("kept_float", [])
    text = (f"guard on {first.get('samples')} held-out training images: FP32 {first.get('accuracy_reference', 0):.2%}"
            f" -> INT8 {first.get('accuracy_candidate', 0):.2%}")
    return text + (f"; kept in float: {', '.join(kept)}" if kept else "; no layer kept in float")


@dataclass
class Part:
    """One model's Markdown lines and its numbers for the targets."""

    title: str
    lines: list[str]
    speedup: float | None
    """INT8's same-round speed-up over FP32; None when the toolchain could not build a loadable INT8 model."""
    failure: str | None = None
    """Why INT8 could not be built or loaded, when it could not."""
    drop_points: float | None = None
    """FP32 minus INT8 top-1, in points (labelled data only)."""
    top1_same: float | None = None
    """Share of held-out images where INT8's top-1 class is FP32's (random-weight models)."""


# --- the bundled example ----------------------------------------------------------------------


def run_example(settings: Settings, folder: Path) -> Part:
    _log("exporting the bundled example")
    folder.mkdir(parents=True, exist_ok=True)
    model = _export_example(folder)
    calib = _calibration_folder(folder / "calibration", CALIBRATION + settings.holdout)
    variants = [_compile(model, folder / p, calib, settings, backend="tflite", precision=p) for p in PRECISIONS]
    mcu = _compile(model, folder / "mcu", calib, settings, target="mcu")
    runners = _runners(variants)
    _log("example: timing")
    feed = {"image": np.random.default_rng(SEED).random((1, 1, 28, 28), dtype=np.float32)}
    latency = _time(variants, runners, feed, settings.plan)
    images, labels = _test_split(settings.test_images)
    _log(f"example: scoring {len(labels)} test images")
    accuracy = _accuracy(variants, runners, model, images, labels)
    for runner in runners.values():
        runner.close()
    lines = [
        "### Bundled Fashion-MNIST CNN (trained weights)", "",
        f"`toolchain.examples.fashion_mnist`, exported and simplified with `toolchain.api`, batch 1; "
        f"{_plan_text(settings.plan)}.", "", _latency_table(variants, latency), "",
        f"Top-1 on {len(labels):,} Fashion-MNIST test images: "
        + ", ".join(f"{name} {score:.2%}" for name, score in accuracy.items()) + ".",
        f"INT8 calibration: {CALIBRATION} training images; accuracy guard on, {_guard_line(variants[2])}.", "",
        *_mcu_lines(mcu), ""]
    return Part("Fashion-MNIST example", lines, latency["int8"].ratio_vs_reference,
                drop_points=100 * (accuracy["fp32"] - accuracy["int8"]))


# --- the ResNet18-sized and MobileNetV2-sized CNNs ---------------------------------------------


def _agreement(runners: dict[str, Any], reference: Any, feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, dict]:
    """Each runner's logits vs ``reference``'s on every held-out image."""
    expected = quality.outputs(lambda feed: next(iter(reference.run(feed).values())), feeds)
    return {name: quality.agreement(expected, quality.outputs(lambda feed, r=r: next(iter(r.run(feed).values())),
                                                              feeds))
            for name, r in runners.items()}


def _image_parity(variant: Variant) -> str:
    """``api.compile``'s own check of the artifact against the ONNX model on the calibration images."""
    reports = [p for p in variant.parity if "samples from" in p.inputs]
    if not reports:
        return "not run"
    return f"cosine {min(o.cosine for o in reports[0].outputs):.4f} on {reports[0].inputs}"


def _cnn_table(variants: Sequence[Variant], latency: dict[str, timing.LatencySummary],
               agreement: dict[str, dict], failures: dict[str, str]) -> str:
    rows = ["| variant | model.tflite | p50 latency (2 threads) | speed-up vs FP32 (per-round median, IQR) "
            "| logit cosine vs FP32, mean / worst | top-1 same as FP32 |",
            "|---|---:|---:|---:|---:|---:|"]
    for name in [p for p in PRECISIONS if p in failures or any(v.name == p for v in variants)] + \
            [v.name for v in variants if v.name not in PRECISIONS]:
        if name in failures:
            rows.append(f"| {name} | not built | — | — | — | — |")
            continue
        v = next(v for v in variants if v.name == name)
        s, a = latency[name], agreement.get(name)
        scores = (f"{a['cosine_mean']:.4f} / {a['cosine_min']:.4f} | {a['top1_agreement']:.1%}" if a
                  else "reference | reference")
        rows.append(f"| {name} | {_size(v.size_bytes)} | {_duration(s.median_ms)} | {_speedup(name, s)} "
                    f"| {scores} |")
    return "\n".join(rows)


def run_cnn(name: str, settings: Settings, folder: Path) -> Part:
    from backends.onnxruntime.runner import OnnxRuntimeRunner
    from bench import models
    from bench import run as ort_bench
    from toolchain.errors import first_line

    ort_settings = ort_bench.QUICK if settings.quick else ort_bench.FULL
    source, count = ort_settings.cnn_data, ort_settings.cnn_calibration
    fp32 = ort_bench.cnn_fp32(name, source)  # cached by bench.run; built (and cached) only when missing
    work = folder / name
    calib_path = work / "calibration.npy"
    work.mkdir(parents=True)
    np.save(calib_path, data.cnn_images(source, count, "calibration", ort_bench.SEED))
    held_out = data.cnn_images(source, settings.cnn_holdout, "holdout", ort_bench.SEED)
    feeds = [{"input": held_out[i: i + 1]} for i in range(len(held_out))]

    def compile_one(model: Path, precision: str, out: Path) -> Variant:
        # holdout=0: all `count` samples calibrate (exactly bench.run's set); guard=False: no top-1 budget.
        return _compile(model, out, calib_path, settings, backend="tflite", precision=precision, calib_size=count,
                        holdout=0, guard=False, **({"min_cosine": CNN_INT8_MIN_COSINE} if precision == "int8" else {}))

    _log(f"{name}: compiling from {fp32.name} (calibration: {count} images)")
    variants, failures = [], {}
    for precision in PRECISIONS:
        try:
            variants.append(compile_one(fp32, precision, work / precision))
        except Exception as exc:  # report what the toolchain did, and go on with the other precisions
            if precision == "fp32":
                raise
            failures[precision] = first_line(exc)
            _log(f"{name}: {precision} failed: {failures[precision]}")
    runners = _runners(variants)
    _log(f"{name}: timing, {settings.cnn_plan.rounds} rounds")
    latency = _time(variants, runners, feeds[0], settings.cnn_plan)
    _log(f"{name}: agreement on {len(feeds)} held-out images")
    agreement = _agreement({v.name: runners[v.name] for v in variants[1:]}, runners["fp32"], feeds)
    ort = OnnxRuntimeRunner.from_path(fp32, threads=THREADS)
    conversion = _agreement({"fp32": runners["fp32"]}, ort, feeds)["fp32"]
    for runner in runners.values():
        runner.close()
    parameters = models.parameter_count(models.build(name, ort_bench.SEED))
    built = {v.name: v for v in variants}
    checks = ", ".join(f"{v.name} {_image_parity(v)}" for v in variants)
    failure_lines = [f"- **`{variant}` was not built**: `api.compile` raised `{message}`"
                     for variant, message in failures.items()]
    lines = [
        f"### {ort_bench.TITLES[name]} (random weights)", "",
        f"`bench.models.{models.ARCHITECTURES[name].__name__}`, {parameters / 1e6:.2f} M parameters, input "
        f"{'x'.join(map(str, models.INPUT_SHAPE))}, {models.NUM_CLASSES} classes, random weights (seed "
        f"{ort_bench.SEED}) with settled BatchNorm: `bench.run`'s cached FP32 export `{fp32.name}` "
        f"({_size(fp32.stat().st_size)}), compiled per precision. Batch 1; {_plan_text(settings.cnn_plan)}.", "",
        _cnn_table(variants, latency, agreement, failures), "",
        *failure_lines,
        f"- Agreement: logits of each variant vs TFLite FP32 on {len(feeds)} held-out images "
        f"(`bench.data.cnn_images(..., 'holdout', seed {ort_bench.SEED})`; the first "
        f"{min(len(feeds), ort_settings.cnn_holdout)} are the ones `bench.run` scores ONNX Runtime on); random "
        f"weights, so there is no accuracy to measure. TFLite FP32 vs ONNX Runtime FP32 on the same images: "
        f"cosine {conversion['cosine_mean']:.6f} mean / {conversion['cosine_min']:.6f} worst, top-1 same "
        f"{conversion['top1_agreement']:.1%}.",
        f"- INT8 calibration: the {count} images `bench.run` calibrates ONNX Runtime INT8 on "
        f"({data.describe_cnn_source(source)}), as one `.npy` passed as `calib=` with `calib_size={count}, "
        f"holdout=0`, so all of them calibrate. **Accuracy guard off** (`guard=False`): with random weights the "
        f"1,000 logits are near-tied, so a top-1 budget would refuse any INT8 model; the guard is exercised on "
        f"the trained example above. `api.compile` still verified each artifact it wrote against its ONNX model "
        f"on the calibration images (floor lowered from 0.99 to {CNN_INT8_MIN_COSINE} for INT8 only): {checks}.",
        ""]
    int8 = built.get("int8")
    return Part(ort_bench.TITLES[name], lines, latency["int8"].ratio_vs_reference if int8 else None,
                failure=failures.get("int8"),
                top1_same=agreement["int8"]["top1_agreement"] if int8 else None)


def _delegation(model: Path) -> str:
    """How LiteRT runs ``model`` with its default XNNPACK delegate. Python lists every original node beside
    the delegate nodes, so what is delegated is read from the partitions' borders: one partition that
    takes the model's inputs and gives its outputs runs every node."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model), num_threads=THREADS)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()  # noqa: SLF001 - LiteRT's only view of the delegated graph
    partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
    inputs = {d["index"] for d in interpreter.get_input_details()}
    outputs = {d["index"] for d in interpreter.get_output_details()}
    whole = (len(partitions) == 1 and inputs <= set(partitions[0]["inputs"].tolist())
             and outputs <= set(partitions[0]["outputs"].tolist()))
    if whole:
        return "1 XNNPACK partition from the model's inputs to its outputs (every node delegated)"
    return f"{len(partitions)} XNNPACK partition(s), not spanning the whole model: some nodes run outside it"


def run_effnet(settings: Settings, folder: Path) -> Part:
    """The zoo's trained EfficientNet-Lite0 (its wheels and photos: ``tests/zoo``), calibrated on the zoo's 81
    calibration photos and compared with TFLite FP32 on its 39 held-out ones."""
    from bench import zoo as bench_zoo
    from zoo import metrics, models, photos as zoo_photos

    model = models.EFFNET
    spec = models.spec_for(model)
    photos = zoo_photos.build_photo_set(bench_zoo.CACHE_DIR)
    calib_names, held_names = photos.split()
    calib = zoo_photos.subset(photos, calib_names, bench_zoo.CACHE_DIR / "calib")
    held = sorted(zoo_photos.subset(photos, held_names, bench_zoo.CACHE_DIR / "heldout").iterdir())
    work = bench_zoo.CACHE_DIR / model.key
    work.mkdir(parents=True, exist_ok=True)
    fp32 = bench_zoo._fp32(model, work)
    count = len(list(calib.iterdir()))
    folder.mkdir(parents=True)
    variants = [_compile(fp32, folder / precision, calib, settings, backend="tflite", precision=precision,
                         preprocess=spec, calib_size=count, holdout=0, guard=False) for precision in PRECISIONS]
    runners = _runners(variants)
    batch = metrics.preprocess(spec, held)
    feeds = [{"input": batch[i: i + 1]} for i in range(len(batch))]
    _log(f"effnet: timing, {settings.cnn_plan.rounds} rounds")
    latency = _time(variants, runners, feeds[0], settings.cnn_plan)
    agreement = _agreement({v.name: runners[v.name] for v in variants[1:]}, runners["fp32"], feeds)
    for runner in runners.values():
        runner.close()
    delegation = "; ".join(f"{v.name}: {_delegation(v.artifact / 'model.tflite')}" for v in variants)
    title = "EfficientNet-Lite0 (trained, the model zoo's)"
    lines = [f"### {title}", "",
             f"`{model.distribution}` {model.installed_version()} with its architecture package, converted and "
             f"simplified by edgekiln (`bench.zoo`), input 1x3x224x224, ImageNet preprocessing, compiled per "
             f"precision. INT8 calibrated on the zoo's {count} calibration photos (guard off: `bench/zoo.md` and "
             f"`bench/tflite_agreement.md` measure what it accepts); agreement with TFLite FP32 on its "
             f"{len(held)} held-out photos. Batch 1; {_plan_text(settings.cnn_plan)}.", "",
             _cnn_table(variants, latency, agreement, {}), "", f"- Delegation: {delegation}.", ""]
    return Part(title, lines, latency["int8"].ratio_vs_reference)


# --- the section ------------------------------------------------------------------------------


def _versions() -> str:
    from importlib import metadata

    found = []
    for package in ("ai-edge-litert", "tensorflow", "onnx2tf", "onnxruntime"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _machine_line(load_before: Any, load_after: Any) -> str:
    cpu = machine.cpu()
    load = ("" if not load_before or not load_after else
            f" Load average (1 min) {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end.")
    return (f"Machine: {cpu['model']}, {cpu['logical_cpus']} logical CPUs ({', '.join(cpu['flags'])}); "
            f"Python {platform.python_version()}, {_versions()}. The machine may be shared with other "
            f"jobs: absolute times are noisy, same-round ratios less so.{load}")


def _speed_verdict(part: Part) -> str:
    if part.speedup is not None:
        return f"{part.title} **{'met' if part.speedup >= TARGET_SPEEDUP else 'not met'}** ({part.speedup:.2f}x)"
    return f"{part.title} **not met** (the toolchain's INT8 model was not built: see above)"


def _target_lines(parts: Sequence[Part]) -> list[str]:
    speed = "; ".join(_speed_verdict(p) for p in parts)
    lines = [f"- Target INT8 latency at most 1/2 of FP32 (speed-up >= {TARGET_SPEEDUP:.1f}x): {speed}."]
    for p in parts:
        if p.drop_points is not None:
            lines.append(f"- Target INT8 top-1 within {TARGET_DROP_POINTS} points of FP32, {p.title}: "
                         f"**{'met' if p.drop_points <= TARGET_DROP_POINTS else 'not met'}** "
                         f"({p.drop_points:+.2f} points lost).")
    random = [p for p in parts if p.top1_same is not None]
    if random:
        lines.append("- The accuracy target cannot be checked on the random-weight CNNs (no labels, no trained "
                     "classes); not a pass/fail, INT8's top-1 matches FP32's on "
                     + ", ".join(f"{p.top1_same:.1%} of held-out images for the {p.title}"
                                 for p in random) + ".")
    return lines


def run(quick: bool, only: str | None = None, command: str = "python -m bench.tflite") -> str:
    settings = QUICK if quick else FULL
    started = time.perf_counter()
    started_utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = machine.load_average()
    parts: list[Part] = []
    with tempfile.TemporaryDirectory(prefix="edgekiln-bench-tflite-") as tmp:
        folder = Path(tmp)
        if only in (None, "example"):
            parts.append(run_example(settings, folder / "example"))
        if only in (None, "cnn"):
            parts += [run_cnn(name, settings, folder / "cnn") for name in CNN_NAMES]
        if only in (None, "effnet"):
            parts.append(run_effnet(settings, folder / "effnet"))
    seconds = time.perf_counter() - started
    mode = ", ".join(filter(None, ["quick" if quick else "", f"only {only}" if only else ""])) or "full"
    lines = [
        "## TFLite backend (LiteRT interpreter)", "",
        *([f"> **Partial run ({mode})**: run `python -m bench.tflite` for the full record.", ""]
          if mode != "full" else []),
        f"Command: `{command}` ({mode} run), started {started_utc}, took {seconds / 60:.1f} min.",
        _machine_line(load_before, machine.load_average()), "",
        f"Every model is compiled with `toolchain.api.compile(..., backend=\"tflite\", precision=...)` (onnx2tf, "
        f"then TensorFlow's converter) and run with the LiteRT interpreter through the artifact's own runner: "
        f"batch 1, {THREADS} threads, XNNPACK on. Variants are timed in interleaved rounds in a rotating order; "
        f"p50 is the median of all timed runs, the speed-up the median over rounds of that round's FP32 median "
        f"over the variant's (IQR over rounds in brackets). Sizes are `model.tflite`.", ""]
    for part in parts:
        lines += part.lines
    lines += ["### Targets", "",
              "From the issue: INT8 at most half the FP32 latency on this CPU, and INT8 accuracy within "
              f"{TARGET_DROP_POINTS} points of FP32.", "", *_target_lines(parts),
              f"- Bench time {seconds:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tflite", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer rounds, test and held-out images (smoke check).")
    parser.add_argument("--only", choices=PARTS,
                        help="Only the bundled example, the ResNet18/MobileNetV2-sized CNNs, or the zoo's "
                             "EfficientNet-Lite0.")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.tflite", *(sys.argv[1:] if argv is None else argv)])
    print(run(args.quick, args.only, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
