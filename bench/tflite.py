"""TFLite backend benchmark: FP32 vs FP16 vs INT8 on the LiteRT interpreter, plus the MCU bundle's budget.

    python -m bench.tflite            # full: 15 interleaved rounds, all 10,000 Fashion-MNIST test images
    python -m bench.tflite --quick    # smoke check: 3 rounds, 1,000 test images

Prints a Markdown section (``run(quick)`` returns it, for ``bench.run`` to include).
The bundled Fashion-MNIST example is exported and simplified with ``toolchain.api``,
compiled with the tflite backend per precision, timed with the LiteRT interpreter at
2 threads in interleaved rounds (``bench.timing``), and scored on the test split.
INT8 is calibrated on Fashion-MNIST *training* images (a labelled PNG folder, so the
accuracy guard checks real top-1 on its held-out part), never on the test images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import timing

THREADS = 2
SEED = 0
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CALIBRATION, HOLDOUT = 256, 512
TARGET_SPEEDUP = 2.0
TARGET_DROP_POINTS = 0.5


@dataclass(frozen=True)
class Settings:
    plan: timing.TimingPlan
    test_images: int | None
    holdout: int


FULL = Settings(timing.TimingPlan(rounds=15, runs_per_round=50, warmup=20), None, HOLDOUT)
QUICK = Settings(timing.TimingPlan(rounds=3, runs_per_round=20, warmup=5), 1000, 128)


@dataclass
class Variant:
    name: str
    artifact: Path
    size_bytes: int
    details: dict[str, Any]


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
    result = api.compile(model, out, calib=calib, calib_size=CALIBRATION, holdout=settings.holdout,
                         no_cache=True, **kwargs)
    details = result.artifact.manifest["metrics"]["details"]
    _log(f"compiled {out.name} in {time.perf_counter() - started:.1f} s")
    return Variant(out.name, out, (out / "model.tflite").stat().st_size, details)


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


def _latency_table(variants: Sequence[Variant], runners: dict[str, Any], plan: timing.TimingPlan) -> str:
    feed = {"image": np.random.default_rng(SEED).random((1, 1, 28, 28), dtype=np.float32)}
    samples = timing.interleaved({v.name: (lambda r=runners[v.name]: r.run(feed)) for v in variants}, plan)
    summary = timing.summarize(samples, reference="fp32")
    rows = ["| variant | model.tflite | p50 latency (2 threads) | speed-up vs FP32 (per-round median, IQR) |",
            "|---|---:|---:|---:|"]
    for v in variants:
        s = summary[v.name]
        ratio = "1.00x" if v.name == "fp32" else f"{s.ratio_vs_reference:.2f}x ({s.ratio_low:.2f}-{s.ratio_high:.2f})"
        rows.append(f"| {v.name} | {v.size_bytes / 1024:.1f} KiB | {s.median_ms * 1000:.0f} µs | {ratio} |")
    return "\n".join(rows), summary


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


def run(quick: bool) -> str:
    settings = QUICK if quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekiln-bench-tflite-") as tmp:
        folder = Path(tmp)
        _log("exporting the bundled example")
        model = _export_example(folder)
        calib = _calibration_folder(folder / "calibration", CALIBRATION + settings.holdout)
        variants = [_compile(model, folder / "fp32", calib, settings, backend="tflite", precision="fp32"),
                    _compile(model, folder / "fp16", calib, settings, backend="tflite", precision="fp16"),
                    _compile(model, folder / "int8", calib, settings, backend="tflite", precision="int8")]
        mcu = _compile(model, folder / "mcu", calib, settings, target="mcu")
        runners = _runners(variants)
        _log("timing")
        table, latency = _latency_table(variants, runners, settings.plan)
        images, labels = _test_split(settings.test_images)
        _log(f"scoring {len(labels)} test images")
        accuracy = _accuracy(variants, runners, model, images, labels)
        for runner in runners.values():
            runner.close()
    speedup = latency["int8"].ratio_vs_reference
    drop = 100 * (accuracy["fp32"] - accuracy["int8"])
    lines = [
        "## TFLite backend (LiteRT interpreter)", "",
        f"Bundled Fashion-MNIST CNN, batch 1, {THREADS} threads, XNNPACK on; {settings.plan.rounds} interleaved "
        f"rounds of up to {settings.plan.runs_per_round} runs; speed-ups are per-round ratios (same machine, "
        f"same minute). {'Quick run. ' if quick else ''}Machine shared with other jobs: absolute times are noisy, "
        f"ratios less so.", "", table, "",
        f"Top-1 on {len(labels):,} Fashion-MNIST test images: "
        + ", ".join(f"{name} {score:.2%}" for name, score in accuracy.items()) + ".",
        f"INT8 calibration: {CALIBRATION} training images; {_guard_line(variants[2])}.", "",
        *_mcu_lines(mcu),
        f"- Target INT8 latency <= 1/2 of FP32: **{'met' if speedup >= TARGET_SPEEDUP else 'not met'}** "
        f"({speedup:.2f}x).",
        f"- Target INT8 top-1 within {TARGET_DROP_POINTS} points of FP32: "
        f"**{'met' if drop <= TARGET_DROP_POINTS else 'not met'}** ({drop:+.2f} points lost).",
        f"- Bench time {time.perf_counter() - started:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer rounds and test images (smoke check).")
    args = parser.parse_args(argv)
    print(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
