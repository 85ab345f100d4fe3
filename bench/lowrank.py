"""Low-rank factorization benchmark: accuracy vs parameters vs ONNX Runtime latency.

    python -m bench.lowrank            # full run (~5-10 min on 2 cores; training is cached)
    python -m bench.lowrank --quick    # smoke check: fewer test images, samples and timing rounds

Prints a Markdown section and writes the plot to ``bench/lowrank.png`` (``bench/.cache/lowrank-quick.png``
for --quick, so a smoke check never replaces the full record). Three models:

* ``FcHeavyNet``: an AlexNet-style classifier whose fully connected head holds ~99% of the weights, trained
  briefly on Fashion-MNIST (weights cached in ``bench/.cache/``), so top-1 accuracy means something;
* the bundled Fashion-MNIST example (small head: little to gain);
* a MobileNetV2-sized network from ``bench/models.py`` (random weights, settled BatchNorm): mostly
  depthwise and 1x1 convolutions; quality there is agreement with FP32, not accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from bench import data, timing
from toolchain.errors import ToolchainError

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
SEED = 0
THREADS = 2
Feed = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Settings:
    plan: timing.TimingPlan
    calibration: int
    holdout: int
    test_images: int | None
    """Fashion-MNIST test images for accuracy; None for all 10,000."""
    cnn_calibration: int
    cnn_holdout: int
    budgets: tuple[float, ...]


FULL = Settings(timing.TimingPlan(rounds=15, runs_per_round=20, warmup=10), calibration=512, holdout=512,
                test_images=None, cnn_calibration=64, cnn_holdout=32, budgets=(0.9999, 0.999, 0.995, 0.99, 0.98, 0.95))
QUICK = Settings(timing.TimingPlan(rounds=4, runs_per_round=8, warmup=3), calibration=128, holdout=128,
                 test_images=2000, cnn_calibration=16, cnn_holdout=8, budgets=(0.999, 0.99))


def _log(message: str) -> None:
    print(f"[lowrank {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the FC-heavy classifier ------------------------------------------------------------------


class FcHeavyNet(nn.Module):
    """AlexNet-style: two strided convolutions (cheap to train on CPU), then 1568 -> 1024 -> 1024 -> classes."""

    def __init__(self, num_classes: int = 10, width: int = 16, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 5, stride=2, padding=2), nn.ReLU(inplace=True),  # 28 -> 14
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True))  # 14 -> 7
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


TRAINING = {"epochs": 2, "batch": 128, "lr": 1e-3, "weight_decay": 1e-4, "seed": SEED}


def _source_digest() -> str:
    import inspect

    return hashlib.sha256(inspect.getsource(FcHeavyNet).encode()).hexdigest()[:8]


def _cache_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _train_fc_net(path: Path) -> None:
    """Adam(W) with cosine decay on all 60k training images; seeded and single-process."""
    torch.manual_seed(TRAINING["seed"])
    torch.set_num_threads(THREADS)
    train = data.fashion_subset("train", None, None)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    model = FcHeavyNet()
    steps = TRAINING["epochs"] * ((len(x) + TRAINING["batch"] - 1) // TRAINING["batch"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING["lr"], weight_decay=TRAINING["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(TRAINING["seed"])
    model.train()
    for epoch in range(TRAINING["epochs"]):
        started = time.perf_counter()
        for batch in torch.randperm(len(x), generator=generator).split(TRAINING["batch"]):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
        _log(f"FcHeavyNet epoch {epoch + 1}/{TRAINING['epochs']} in {time.perf_counter() - started:.0f} s")
    partial = path.with_suffix(".partial")
    torch.save(model.state_dict(), partial)
    partial.replace(path)


def _convert(weights: Path, model_class: str, input_spec: str, output: Path, **kwargs: Any) -> Path:
    """``edgekiln convert`` through the public API, to a temporary name first (no half files in the cache)."""
    from toolchain import api

    if output.is_file():
        return output
    partial = output.with_name(output.stem + ".partial.onnx")
    partial.unlink(missing_ok=True)
    api.convert(None, partial, weights=weights, model_class=model_class, inputs=[input_spec], opset=17, **kwargs)
    partial.replace(output)
    return output


def fc_net_onnx() -> Path:
    """The trained FcHeavyNet as verified ONNX with a dynamic batch axis (cached by what determines it)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    key = _cache_key("fc-heavy", TRAINING, torch.__version__, _source_digest())
    weights = CACHE_DIR / f"lowrank-fcnet-{key}.pth"
    if not weights.is_file():
        _log("training FcHeavyNet on Fashion-MNIST (cached after the first run)")
        _train_fc_net(weights)
    return _convert(weights, "bench.lowrank:FcHeavyNet", "image:Nx1x28x28", weights.with_suffix(".onnx"),
                    dynamic_batch=True)


def example_onnx() -> Path:
    from toolchain.examples.fashion_mnist import MODEL_CLASS, weights_path
    from toolchain.examples.fashion_mnist.train import MODEL_KWARGS

    key = _cache_key("example", hashlib.sha256(weights_path().read_bytes()).hexdigest())
    return _convert(weights_path(), MODEL_CLASS, "image:Nx1x28x28", CACHE_DIR / f"lowrank-example-{key}.onnx",
                    model_kwargs=MODEL_KWARGS, dynamic_batch=True)


def mobilenet_onnx() -> Path:
    """MobileNetV2 (random weights, BatchNorm settled on 64 images) exported at batch 1."""
    from bench import models

    key = _cache_key("mobilenet_v2", SEED, torch.__version__,
                     hashlib.sha256((BENCH_DIR / "models.py").read_bytes()).hexdigest())
    output = CACHE_DIR / f"lowrank-mobilenet_v2-{key}.onnx"
    if output.is_file():
        return output
    network = models.build("mobilenet_v2", SEED)
    images = torch.from_numpy(data.cnn_images("fashion", 64, "batchnorm", SEED))
    models.settle_batchnorm(network, images.split(16), SEED)
    weights = output.with_suffix(".pth")
    torch.save(network.state_dict(), weights)
    return _convert(weights, "bench.models:MobileNetV2", "input:1x3x224x224", output)


# --- measuring --------------------------------------------------------------------------------


def _feeds(name: str, images: np.ndarray, batch: int) -> list[Feed]:
    return [{name: images[i:i + batch]} for i in range(0, len(images), batch)]


def _runner(model: onnx.ModelProto):
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_model(model, threads=THREADS)


def _top1(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, name: str) -> float:
    runner = _runner(model)
    predictions = [next(iter(runner.run(feed).values())).argmax(1) for feed in _feeds(name, images, 500)]
    return float((np.concatenate(predictions) == labels).mean())


@dataclasses.dataclass
class Row:
    name: str
    model: onnx.ModelProto
    report: dict[str, Any] | None = None
    seconds: float = 0.0
    accuracy: float | None = None
    latency: timing.LatencySummary | None = None
    agreement: tuple[float, float] | None = None
    """(min cosine, relative error) of the outputs against FP32 on the held-out images, measured here."""

    @property
    def factorized(self) -> tuple[int, int]:
        """Parameters of the layers this variant factorized, before and after."""
        layers = self.report["layers"] if self.report else []
        return sum(r["parameters_before"] for r in layers), sum(r["parameters_after"] for r in layers)


def _lowrank(name: str, model: onnx.ModelProto, options: dict[str, Any], calibration: Sequence[Feed] = (),
             holdout: Sequence[Feed] = (), labels: np.ndarray | None = None) -> Row:
    from toolchain.passes import lowrank

    config = lowrank.LowRankConfig.from_options(latency_rounds=0, **options)
    started = time.perf_counter()
    result, report = lowrank.run(model, config, calibration, holdout, holdout_labels=labels)
    seconds = time.perf_counter() - started
    _log(f"{name}: {len(report.details['layers'])} layer(s) factorized in {seconds:.1f} s")
    return Row(name, result, report.details, seconds)


def _int8(name: str, source: Row, calibration: Sequence[Feed]) -> Row:
    from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static

    config = QuantizeConfig.for_target("x86")
    started = time.perf_counter()
    quantized = quantize_static(source.model, compute_ranges(source.model, calibration, config), config)
    return Row(name, quantized, source.report, source.seconds + time.perf_counter() - started)


def _time_rows(rows: list[Row], input_name: str, shape: tuple[int, ...], plan: timing.TimingPlan) -> None:
    feed = {input_name: np.random.default_rng(SEED).random(shape, dtype=np.float32)}
    runners = {row.name: _runner(row.model) for row in rows}
    calls = {name: (lambda r=runner: r.run(feed)) for name, runner in runners.items()}
    summary = timing.summarize(timing.interleaved(calls, plan), rows[0].name)
    for row in rows:
        row.latency = summary[row.name]


def _size_mb(model: onnx.ModelProto) -> float:
    return model.ByteSize() / 1e6


# --- tables -----------------------------------------------------------------------------------


def _m(value: int) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value / 1e3:.1f} K"


def _speedup(row: Row) -> str:
    latency = row.latency
    if latency is None or latency.ratio_vs_reference is None:
        return "—"
    return (f"{latency.median_ms:.3f} ms (**{latency.ratio_vs_reference:.2f}x**, "
            f"{latency.ratio_low:.2f}–{latency.ratio_high:.2f})")


def _measure_agreement(rows: list[Row], holdout: Sequence[Feed]) -> None:
    """Every row's outputs against FP32 on the held-out feeds (INT8 rows included), independent of the pass."""
    def outputs(model: onnx.ModelProto) -> np.ndarray:
        runner = _runner(model)
        return np.concatenate([next(iter(runner.run(feed).values())) for feed in holdout]).astype(np.float64)

    reference = outputs(rows[0].model)
    for row in rows[1:]:
        candidate = outputs(row.model)
        ref, cand = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
        cosines = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1))
        row.agreement = float(cosines.min()), float(np.linalg.norm(cand - ref) / np.linalg.norm(ref))


def _holdout(row: Row) -> str:
    if row.agreement is None:
        return "reference"
    return f"{row.agreement[0]:.4f} / {row.agreement[1]:.3f}"


def _classifier_table(rows: list[Row], reference: Row) -> str:
    from toolchain.model_info import summarize

    lines = ["| variant | factorized layers: params before → after | ranks | model params | MACs | size MB | "
             "top-1 (Δ points) | holdout min cos / rel err | latency b=1 (speed-up, IQR) | pass s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        info = summarize(row.model)
        before, after = row.factorized
        factor = f"{_m(before)} → {_m(after)} (**{before / after:.1f}x**)" if after else "—"
        ranks = ", ".join(str(r["rank"]) for r in row.report["layers"]) if row.report else "—"
        delta = "" if row is reference else f" ({100 * (row.accuracy - reference.accuracy):+.2f})"
        lines.append(f"| {row.name} | {factor} | {ranks} | {_m(info.parameter_count)} | {_m(info.macs)} | "
                     f"{_size_mb(row.model):.1f} | {100 * row.accuracy:.2f}%{delta} | {_holdout(row)} | "
                     f"{_speedup(row)} | {row.seconds:.1f} |")
    return "\n".join(lines)


def _plot(rows: list[Row], reference: Row, path: Path) -> str:
    """Accuracy vs parameters and vs latency; returns a Markdown line (image or why there is none)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "_No plot: matplotlib is not installed (`pip install matplotlib`); the table above has the numbers._"
    from toolchain.model_info import summarize

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    markers = "*osD^v<>phX8P"
    for index, row in enumerate(rows):
        params = summarize(row.model).parameter_count / 1e6
        style = {"marker": markers[index % len(markers)], "s": 70, "label": row.name}
        left.scatter(params, 100 * row.accuracy, **style)
        if row.latency:
            right.scatter(row.latency.median_ms, 100 * row.accuracy, **style)
    # Log axes: the factorized variants are 10-40x smaller and faster, and would pile up in a corner.
    left.set_xscale("log")
    right.set_xscale("log")
    left.set_xlabel("model parameters (M, log scale)")
    right.set_xlabel("ONNX Runtime latency, batch 1, 2 threads (ms, log scale)")
    for axis in (left, right):
        axis.set_ylabel("top-1 on Fashion-MNIST test (%)")
        axis.grid(alpha=0.3, which="both")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle("FcHeavyNet: low-rank factorization (edgekiln --lowrank)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"![accuracy vs parameters and latency]({path.relative_to(BENCH_DIR).as_posix()})"


# --- sections ---------------------------------------------------------------------------------


def _fashion_sets(settings: Settings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Calibration and held-out training images (disjoint, seeded) and the test images with labels."""
    pool = data.fashion_subset("train", settings.calibration + settings.holdout, SEED)
    order = np.random.default_rng(SEED + 1).permutation(len(pool.images))
    calib, hold = order[:settings.calibration], order[settings.calibration:]
    test = data.fashion_subset("t10k", settings.test_images, None)
    return pool.images[calib], pool.images[hold], pool.labels[hold], test.images, test.labels


def _classifier_rows(model: onnx.ModelProto, settings: Settings, calibration: list[Feed], holdout: list[Feed],
                     labels: np.ndarray) -> list[Row]:
    rows = [Row("FP32", model),
            _lowrank("energy 0.90, no data", model, {"mode": "energy", "energy": 0.9}),
            _lowrank("ratio 0.5", model, {"mode": "ratio", "target_ratio": 0.5}, calibration, holdout, labels)]
    for budget in settings.budgets:
        rows.append(_lowrank(f"budget cos≥{budget:g}", model, {"mode": "budget", "min_cosine": budget},
                             calibration, holdout, labels))
    middle = settings.budgets[len(settings.budgets) // 2]
    rows.append(_lowrank(f"budget cos≥{middle:g}, no bias corr.", model,
                         {"mode": "budget", "min_cosine": middle, "bias_correction": False}, calibration, holdout,
                         labels))
    best = next(row for row in rows if row.name == f"budget cos≥{middle:g}")
    rows.append(_int8(f"budget cos≥{middle:g} → INT8", best, calibration))
    rows.append(_int8("FP32 → INT8", rows[0], calibration))
    return rows


def _target_line(rows: list[Row], reference: Row) -> str:
    """Which variants meet the issue's target: >= 2x fewer factorized parameters, <= 0.5 points lost, faster."""
    met = [row for row in rows if row.report and "INT8" not in row.name and row.factorized[1]
           and row.factorized[0] / row.factorized[1] >= 2 and 100 * (reference.accuracy - row.accuracy) <= 0.5
           and row.latency and row.latency.ratio_vs_reference and row.latency.ratio_low > 1.0]
    if not met:
        return ("**Target (≥2x fewer parameters in the factorized layers, ≤0.5 points top-1, faster on ORT): "
                "not met.**")
    best = max(met, key=lambda r: r.factorized[0] / r.factorized[1])
    before, after = best.factorized
    return (f"**Target met** by {'; '.join(r.name for r in met)}. Most compressed: {best.name}, "
            f"{before / after:.1f}x fewer parameters in the factorized layers, "
            f"{100 * (best.accuracy - reference.accuracy):+.2f} points top-1, "
            f"{best.latency.ratio_vs_reference:.2f}x faster "
            f"(IQR {best.latency.ratio_low:.2f}–{best.latency.ratio_high:.2f}).")


def classifier_section(settings: Settings, plot_path: Path) -> str:
    from toolchain.onnx_io import load_onnx

    model = load_onnx(fc_net_onnx())
    calib, hold, hold_labels, test, test_labels = _fashion_sets(settings)
    calibration, holdout = _feeds("image", calib, 16), _feeds("image", hold, 64)
    rows = _classifier_rows(model, settings, calibration, holdout, hold_labels)
    _measure_agreement(rows, holdout)
    _log(f"accuracy on {len(test)} test images")
    for row in rows:
        row.accuracy = _top1(row.model, test, test_labels, "image")
    _log("timing (interleaved rounds, batch 1)")
    _time_rows(rows, "image", (1, 1, 28, 28), settings.plan)
    reference = rows[0]
    return "\n\n".join([
        "### FcHeavyNet (AlexNet-style head) on Fashion-MNIST",
        "Conv 1→16 (5x5, stride 2) and 16→32 (3x3, stride 2), then Linear 1568→1024→1024→10; "
        f"AdamW, {TRAINING['epochs']} epochs on the 60k training images. Calibration: {len(calib)} training images; "
        f"held-out: {len(hold)} other training "
        f"images (the budget is checked there); top-1 on {len(test)} test images. Latency: ONNX Runtime CPU, "
        f"{THREADS} threads, batch 1, {settings.plan.rounds} interleaved rounds x {settings.plan.runs_per_round} "
        "runs; speed-up is the median of per-round ratios to FP32 (IQR in brackets).",
        _classifier_table(rows, reference), _target_line(rows, reference), _plot(rows, reference, plot_path)])


def _summary_table(rows: list[Row], reference: Row, accuracy: bool) -> str:
    from toolchain.model_info import summarize

    lines = ["| variant | factorized / skipped | params | MACs | " + ("top-1 (Δ) | " if accuracy else "")
             + "holdout min cos / rel err | latency b=1 (speed-up) |",
             "|---|---|---|---|---|" + ("---|" if accuracy else "") + "---|"]
    for row in rows:
        info = summarize(row.model)
        layers = f"{len(row.report['layers'])} / {len(row.report['skipped'])}" if row.report else "—"
        top1 = ""
        if accuracy:
            delta = "" if row is reference else f" ({100 * (row.accuracy - reference.accuracy):+.2f})"
            top1 = f"{100 * row.accuracy:.2f}%{delta} | "
        lines.append(f"| {row.name} | {layers} | {_m(info.parameter_count)} | {_m(info.macs)} | {top1}"
                     f"{_holdout(row)} | {_speedup(row)} |")
    return "\n".join(lines)


def _skip_reasons(row: Row) -> str:
    from collections import Counter

    counts = Counter(s["reason"].split(":")[0].split(" (")[0] for s in row.report["skipped"])
    return "; ".join(f"{n}x {reason}" for reason, n in counts.most_common())


def _ranks_text(row: Row, limit: int = 6) -> str:
    layers = row.report["layers"]
    text = ", ".join(f"{r['layer']} (rank {r['rank']}/{r['full_rank']})" for r in layers[:limit])
    return text + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def example_section(settings: Settings) -> str:
    from toolchain.onnx_io import load_onnx

    model = load_onnx(example_onnx())
    calib, hold, hold_labels, test, test_labels = _fashion_sets(settings)
    calibration, holdout = _feeds("image", calib, 16), _feeds("image", hold, 64)
    rows = [Row("FP32", model)]
    rows += [_lowrank(f"budget cos≥{budget:g}", model, {"mode": "budget", "min_cosine": budget}, calibration, holdout,
                      hold_labels) for budget in (0.999, 0.99)]
    rows.append(_lowrank("energy 0.9, no data", model, {"mode": "energy", "energy": 0.9}))
    _measure_agreement(rows, holdout)
    for row in rows:
        row.accuracy = _top1(row.model, test, test_labels, "image")
    _time_rows(rows, "image", (1, 1, 28, 28), settings.plan)
    notes = [f"{row.name}: factorized {_ranks_text(row)}; skipped: {_skip_reasons(row)}" for row in rows[1:]]
    return "\n\n".join(["### Bundled example (toolchain/examples/fashion_mnist)",
                        _summary_table(rows, rows[0], accuracy=True), "\n".join(f"- {n}" for n in notes)])


def mobilenet_section(settings: Settings) -> str:
    from toolchain.onnx_io import load_onnx

    model = load_onnx(mobilenet_onnx())
    calibration = _feeds("input", data.cnn_images("fashion", settings.cnn_calibration, "calibration", SEED), 1)
    holdout = _feeds("input", data.cnn_images("fashion", settings.cnn_holdout, "holdout", SEED), 1)
    rows = [Row("FP32", model)]
    for budget in (0.999, 0.99):
        try:
            rows.append(_lowrank(f"budget cos≥{budget:g}", model, {"mode": "budget", "min_cosine": budget},
                                 calibration, holdout))
        except ToolchainError as exc:  # an honest "nothing to gain" is a result, not a crash
            rows.append(Row(f"budget cos≥{budget:g}: nothing written ({exc})", model))
    rows.append(_lowrank("energy 0.9, no data", model, {"mode": "energy", "energy": 0.9}))
    measured = [row for row in rows if row.report or row is rows[0]]
    _measure_agreement(measured, holdout)
    _time_rows(measured, "input", (1, 3, 224, 224), settings.plan)
    notes = [f"{row.name}: factorized {_ranks_text(row)}; skipped: {_skip_reasons(row)}" for row in measured[1:]]
    notes += [row.name for row in rows if row not in measured]
    return "\n\n".join([
        "### MobileNetV2-sized network (bench/models.py, random weights, settled BatchNorm)",
        f"Calibration {settings.cnn_calibration} / held-out {settings.cnn_holdout} images "
        f"({data.describe_cnn_source('fashion')}); quality is agreement with FP32 (no trained weights).",
        _summary_table(measured, rows[0], accuracy=False), "\n".join(f"- {n}" for n in notes)])


def run(quick: bool) -> str:
    """The benchmark's Markdown section (and the plot file)."""
    settings = QUICK if quick else FULL
    plot_path = CACHE_DIR / "lowrank-quick.png" if quick else BENCH_DIR / "lowrank.png"
    started = time.perf_counter()
    sections = ["## Low-rank factorization (`--lowrank`)", classifier_section(settings, plot_path)]
    _log("bundled example")
    sections.append(example_section(settings))
    _log("MobileNetV2")
    sections.append(mobilenet_section(settings))
    sections.append(f"_{'Quick' if quick else 'Full'} run, {time.perf_counter() - started:.0f} s._")
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lowrank", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke check: fewer images and timing rounds")
    parser.add_argument("--md", type=Path, help="also write the Markdown section to this file")
    args = parser.parse_args(argv)
    text = run(args.quick)
    if args.md:
        args.md.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
