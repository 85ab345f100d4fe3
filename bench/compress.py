"""Compression benchmark (issue #10): channel pruning with distillation recovery, unstructured pruning, QAT vs PTQ.

    python -m bench.compress                   # full run (~20 min on 2 cores): bench/compress.md + bench/compress.json
    python -m bench.compress --quick           # smoke check (~1-2 min): bench/.cache/compress-quick.{md,json}
    python -m bench.compress --only qat        # one section (fashion, resnet18, qat); writes to bench/.cache/
    python -m bench.compress --render bench/compress.json   # rewrite the Markdown from a saved JSON record

Everything goes through the shipped code: ``toolchain.compress.prune.prune_module`` (pruning and its
distillation recovery), ``toolchain.compress.measure`` (parameters, MACs, ONNX export),
``toolchain.compress.qat.api_qat`` (QAT) and ``toolchain.api.calibrate`` (post-training INT8). This
file only chooses the data, evaluates the exported ONNX models on held-out data and times them with
ONNX Runtime, interleaved across variants (``bench.timing``), as ``bench/run.py`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine, timing

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache" / "compress"
SEED = 0
THREADS = 2
"""ONNX Runtime intra-op threads for latency and evaluation, as in ``bench/run.py``."""
SECTIONS = ("fashion", "resnet18", "qat")
INPUT = "input"
"""The input name ``toolchain.compress.measure.export_onnx`` (and so every model here) uses."""
LATENCY_TARGET = 1.6
ACCURACY_TARGET_POINTS = 1.0
QAT_RECOVERY_TARGET = 0.5
KEY_RATIO = 0.5
ALIGNMENTS = (8, 16)
"""Channel multiples the pruned widths are rounded down to for the latency-only comparison."""



@dataclasses.dataclass(frozen=True)
class Settings:
    plan: timing.TimingPlan
    training: Any  # bench.compress_models.TrainingPlan (imported lazily: it pulls in torch)
    ratios: tuple[float, ...]
    recover_images: int
    """Fashion-MNIST training images, labels unused, that distillation recovery trains on."""
    recover_holdout: int
    """Other training images: distillation's early stopping (held-out agreement with the unpruned model)."""
    recover_epochs: int
    test_images: int | None
    """Fashion-MNIST test images for accuracy; None for all 10,000."""
    resnet_ratios: tuple[float, ...]
    resnet_train: int
    resnet_holdout: int
    resnet_eval: int
    resnet_recover_epochs: int
    qat_images: int
    qat_holdout: int
    qat_epochs: int
    name: str = "full"
    """Names the work folder, so a quick run never overwrites a full run's models."""
    measure_iterations: int = 20
    """Latency runs inside the shipped ``measure`` calls; the quoted latencies come from the interleaved timing."""
    torch_threads: int = 1
    """Torch threads for training: on this shared 2-core machine one thread trains 2-4x faster than two,
    whose threads wait on each other whenever a neighbour's process takes a core (measured while writing this)."""


def _settings(quick: bool) -> Settings:
    from bench.compress_models import FULL_TRAINING, QUICK_TRAINING

    if quick:
        return Settings(timing.TimingPlan(rounds=3, runs_per_round=5, warmup=2), QUICK_TRAINING, ratios=(0.5,),
                        recover_images=1500, recover_holdout=300, recover_epochs=1, test_images=2000,
                        resnet_ratios=(0.5,), resnet_train=8, resnet_holdout=8, resnet_eval=8,
                        resnet_recover_epochs=1, qat_images=600, qat_holdout=200, qat_epochs=1,
                        name="quick", measure_iterations=3)
    return Settings(timing.TimingPlan(rounds=15, runs_per_round=20, warmup=10), FULL_TRAINING,
                    ratios=(0.3, 0.5, 0.7), recover_images=20000, recover_holdout=2000, recover_epochs=3,
                    test_images=None, resnet_ratios=(0.3, 0.5, 0.7), resnet_train=128, resnet_holdout=32,
                    resnet_eval=64, resnet_recover_epochs=3, qat_images=3000, qat_holdout=1000, qat_epochs=3)


def _log(message: str) -> None:
    print(f"[compress {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- records ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Quality:
    """How a variant's outputs compare with the unpruned FP32 model's (and with labels, where there are any)."""

    top1: float | None = None
    """Top-1 accuracy on the labelled test images."""
    loss_points: float | None = None
    """FP32's top-1 minus this variant's, in points (positive: worse than FP32)."""
    loss_se: float | None = None
    """Standard error of ``loss_points`` (paired per image: both models ran on the same images)."""
    agreement: float | None = None
    """Share of evaluation images whose arg-max class equals FP32's."""
    cosine_mean: float | None = None
    cosine_min: float | None = None
    heldout_agreement: float | None = None
    """Agreement with FP32 on the held-out split, as the shipped code measured it (its own number)."""


@dataclasses.dataclass
class Variant:
    name: str
    kind: str
    """fp32, structured, unstructured, ptq or qat."""
    ratio: float | None
    parameters: int
    nonzero_parameters: int
    macs: int
    onnx_bytes: int
    stages: dict[str, Quality]
    """``pruned`` (right after pruning), ``recovered`` (after distillation), or ``final`` (no stages)."""
    onnx: str
    """The model that was timed."""
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    distill: dict | None = None
    """The shipped ``DistillReport`` of the recovery or QAT fine-tuning, as a dict."""
    latency: dict | None = None
    """``bench.timing.LatencySummary`` as a dict."""
    notes: list[str] = dataclasses.field(default_factory=list)
    channels: dict[str, tuple[int, int]] | None = None
    """Pruned layers' output channels, before and after (the shipped report's ``channels``)."""


# --- shared helpers ---------------------------------------------------------------------------


def _runner(path: Path):
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_path(Path(path), threads=THREADS)


def _logits(path: Path, images: np.ndarray, batch: int) -> np.ndarray:
    """The first output of ``path`` (dynamic batch axis) on ``images``, ``batch`` at a time, in float64."""
    runner = _runner(path)
    chunks = [next(iter(runner.run({INPUT: images[i:i + batch]}).values())) for i in range(0, len(images), batch)]
    return np.concatenate(chunks).reshape(len(images), -1).astype(np.float64)


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return (reference * candidate).sum(1) / np.maximum(norms, 1e-30)


def _paired_loss(reference_correct: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """Points of top-1 lost against the reference and the standard error of that difference.

    Paired: both models saw the same images, so only the images on which exactly one of them is right
    carry information, and the error is much smaller than two independent accuracies' would be.
    """
    diff = reference_correct.astype(np.float64) - correct.astype(np.float64)
    se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return 100 * float(diff.mean()), 100 * float(se)


class LabelledEval:
    """Top-1 on labelled images, and the loss against the FP32 model on the same images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.reference_correct: np.ndarray | None = None
        self.reference_classes: np.ndarray | None = None

    def __call__(self, path: Path) -> Quality:
        classes = _logits(path, self.images, 500).argmax(1)
        correct = classes == self.labels
        if self.reference_correct is None:  # the first model evaluated is FP32
            self.reference_correct, self.reference_classes = correct, classes
        loss, se = _paired_loss(self.reference_correct, correct)
        return Quality(top1=float(correct.mean()), loss_points=loss, loss_se=se,
                       agreement=float((classes == self.reference_classes).mean()))


class AgreementEval:
    """Agreement with the FP32 model's logits (no labels: the model has random weights)."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self.images, self.batch = images, batch
        self.reference: np.ndarray | None = None

    def __call__(self, path: Path) -> Quality:
        logits = _logits(path, self.images, self.batch)
        if self.reference is None:
            self.reference = logits
        cosines = _cosines(self.reference, logits)
        return Quality(agreement=float((logits.argmax(1) == self.reference.argmax(1)).mean()),
                       cosine_mean=float(cosines.mean()), cosine_min=float(cosines.min()))


def _time_paths(paths: dict[str, Path], image: np.ndarray, plan: timing.TimingPlan) -> tuple[dict, dict]:
    """Interleaved batch-1 timing of ONNX files; the first is the reference. Returns summaries and run info."""
    feed = {INPUT: np.ascontiguousarray(image[None] if image.ndim == 3 else image)}
    runners = {name: _runner(path) for name, path in paths.items()}
    load_before = machine.load_average()
    started = time.perf_counter()
    samples = timing.interleaved({name: (lambda r=r: r.run(feed)) for name, r in runners.items()}, plan)
    seconds = time.perf_counter() - started
    load_after = machine.load_average()
    summary = timing.summarize(samples, reference=next(iter(paths)))
    info = {"seconds": seconds, "load_1min_before": load_before[0] if load_before else None,
            "load_1min_after": load_after[0] if load_after else None}
    return {name: dataclasses.asdict(latency) for name, latency in summary.items()}, info


def _time_variants(variants: list[Variant], image: np.ndarray, plan: timing.TimingPlan) -> dict[str, Any]:
    """Interleaved batch-1 timing of every variant's ONNX; the first variant is the reference."""
    latencies, info = _time_paths({v.name: Path(v.onnx) for v in variants}, image, plan)
    for variant in variants:
        variant.latency = latencies[variant.name]
    return info


def _export(module: Any, example: Any, path: Path) -> Path:
    from toolchain.compress.measure import export_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(module, example, path)


def _fp32_variant(module: Any, example: Any, path: Path, evaluate: Callable[[Path], Quality]) -> Variant:
    from toolchain.compress.measure import count_macs, count_nonzero, count_parameters

    _export(module, example, path)
    return Variant("FP32 (unpruned)", "fp32", None, count_parameters(module), count_nonzero(module),
                   count_macs(module, example), path.stat().st_size, {"final": evaluate(path)}, str(path))


def _prune_variant(teacher: Any, example: Any, split: Any, ratio: float, unstructured: bool, epochs: int,
                   settings: Settings, evaluate: Callable[[Path], Quality], work: Path) -> Variant:
    """Prune with the shipped ``prune_module`` twice: once without recovery (the pruned model), once with it.

    ``prune_module`` returns only its final model, so the accuracy right after pruning needs a run with
    ``recover_epochs=0``. Pruning is deterministic (L1 magnitudes), and the second run's own record of
    its pruned stage is checked against the first run's, so both describe the same pruned model.
    """
    from toolchain.compress.prune import PruneOptions, prune_module

    kind = "unstructured" if unstructured else "structured"
    name = f"{kind} {ratio:.0%}"
    slug = f"{kind}-{round(100 * ratio)}"
    options = PruneOptions(ratio=ratio, unstructured=unstructured, recover_epochs=0, seed=SEED,
                           latency_iterations=settings.measure_iterations)
    _log(f"{name}: pruning")
    started = time.perf_counter()
    pruned, bare = prune_module(teacher, example, options, data=split)
    seconds = {"prune_and_measure": time.perf_counter() - started}
    pruned_path = _export(pruned, example, work / f"{slug}-pruned.onnx")
    stages = {"pruned": _with_heldout(evaluate(pruned_path), bare.after_pruning.agreement)}
    final, report, path, notes = bare.after_pruning, bare, pruned_path, []
    if epochs:
        _log(f"{name}: pruning again and recovering by distillation ({epochs} epoch(s) at most)")
        started = time.perf_counter()
        recovered, report = prune_module(teacher, example, dataclasses.replace(options, recover_epochs=epochs),
                                         data=split)
        seconds["prune_recover_and_measure"] = time.perf_counter() - started
        notes += _same_start(bare, report)
        path = _export(recovered, example, work / f"{slug}-recovered.onnx")
        stages["recovered"] = _with_heldout(evaluate(path), report.after_recovery.agreement)
        final = report.after_recovery
    distill = report.steps[-1].distill.to_dict() if epochs and report.steps[-1].distill else None
    return Variant(name, kind, ratio, final.parameters, final.nonzero_parameters or final.parameters, final.macs,
                   final.onnx_bytes, stages, str(path), seconds, distill, notes=notes + list(report.warnings),
                   channels=dict(report.channels) if not unstructured else None)


def _with_heldout(quality: Quality, heldout: float | None) -> Quality:
    return dataclasses.replace(quality, heldout_agreement=heldout)


def _same_start(bare: Any, recovering: Any) -> list[str]:
    """A note (the record keeps it) when the recovering run did not start from the same pruned model."""
    a, b = bare.after_pruning, recovering.after_pruning
    if (a.parameters, a.nonzero_parameters, a.agreement) == (b.parameters, b.nonzero_parameters, b.agreement):
        return []
    return [f"the recovering run's pruned stage differs from the pruning-only run's: parameters "
            f"{a.parameters}/{b.parameters}, non-zero {a.nonzero_parameters}/{b.nonzero_parameters}, "
            f"held-out agreement {a.agreement}/{b.agreement}"]


def _image_split(train: np.ndarray, held_out: np.ndarray, summary: str) -> Any:
    from toolchain.compress.data import ImageSplit

    return ImageSplit(train=train, held_out=held_out, train_labels=None, held_out_labels=None, class_names=None,
                      summary=summary)


# --- section 1: the wide Fashion-MNIST CNN ------------------------------------------------------


def _fashion_pools(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Distillation images and held-out images: disjoint seeded choices from the training split, no labels."""
    from bench import data

    pool = data.fashion_subset("train", settings.recover_images + settings.recover_holdout, seed=SEED + 1)
    order = np.random.default_rng(SEED + 1).permutation(len(pool.images))
    return pool.images[order[:settings.recover_images]], pool.images[order[settings.recover_images:]]


def _trained_cnn(settings: Settings) -> tuple[Any, Path, dict[str, Any]]:
    """The trained wide CNN, its weights file, and how it was trained (for the record)."""
    from bench import compress_models as cm

    trained = cm.trained_fashion_cnn(settings.training, _log)
    info = {"weights": str(trained.weights.relative_to(REPO_DIR)), "plan": dataclasses.asdict(trained.plan),
            "training_seconds": trained.seconds, "cached": trained.cached, "weights_sha256_16": trained.digest}
    return cm.load_fashion_cnn(trained.weights), trained.weights, info


def fashion_section(settings: Settings) -> dict[str, Any]:
    import torch

    from bench import compress_models as cm

    teacher, _weights, training = _trained_cnn(settings)
    train, held_out = _fashion_pools(settings)
    split = _image_split(train, held_out, f"{len(train)} training images + {len(held_out)} held-out, no labels")
    test_x, test_y = cm.fashion_test_set(settings.test_images)
    evaluate = LabelledEval(test_x, test_y)
    example = torch.from_numpy(np.ascontiguousarray(held_out[:1]))
    work = CACHE_DIR / f"onnx-{settings.name}" / "fashion"
    variants = [_fp32_variant(teacher, example, work / "fp32.onnx", evaluate)]
    for unstructured in (False, True):
        for ratio in settings.ratios:
            variants.append(_prune_variant(teacher, example, split, ratio, unstructured, settings.recover_epochs,
                                           settings, evaluate, work))
    _log(f"fashion: timing {len(variants)} variants, {settings.plan.rounds} interleaved rounds")
    timing_info = _time_variants(variants, test_x[0], settings.plan)
    _log("fashion: timing the same network at the pruned and at 8-aligned channel counts")
    alignment = _alignment(variants, example, test_x[0], settings.plan, work / "alignment")
    return {"training": training, "test_images": len(test_y), "distill_images": len(train),
            "heldout_images": len(held_out), "recover_epochs": settings.recover_epochs, "timing": timing_info,
            "variants": [dataclasses.asdict(v) for v in variants], "alignment": alignment}


def _alignment(variants: list[Variant], example: Any, image: np.ndarray, plan: timing.TimingPlan,
               work: Path) -> dict[str, Any]:
    """Latency of ``WideFashionCNN`` at each pruned variant's channel counts and at those rounded down to 8 and 16.

    torch-pruning keeps 44 of 64 channels at 30%, and ONNX Runtime's blocked (NCHWc) convolutions work on
    blocks of 16 channels with AVX-512, so the widths themselves decide much of the speed. Random weights:
    this is latency only, on the identical architecture at other widths.
    """
    import torch

    from bench.compress_models import CONV_LAYERS, WIDTHS, WideFashionCNN
    from toolchain.compress.measure import count_macs

    rows = {"as trained": WIDTHS}
    for variant in variants:
        if variant.kind == "structured" and variant.channels:
            widths = tuple(variant.channels[name][1] for name in CONV_LAYERS)
            rows[f"{variant.name}, as pruned"] = widths
            for multiple in ALIGNMENTS:
                rounded = tuple(max(multiple, w - w % multiple) for w in widths)
                if rounded != widths and rounded not in rows.values():
                    rows[f"{variant.name}, rounded down to x{multiple}"] = rounded
    paths, macs = {}, {}
    for label, widths in rows.items():
        torch.manual_seed(SEED)
        model = WideFashionCNN(widths=widths).eval()
        macs[label] = count_macs(model, example)
        paths[label] = _export(model, example, work / f"{'-'.join(map(str, widths))}.onnx")
    latencies, info = _time_paths(paths, image, plan)
    return {"timing": info, "rows": [{"label": label, "widths": list(widths), "macs": macs[label],
                                      "latency": latencies[label]} for label, widths in rows.items()]}


# --- section 2: ResNet-18 --------------------------------------------------------------------


def resnet_section(settings: Settings) -> dict[str, Any]:
    import torch

    from bench import compress_models as cm
    from bench import data

    _log("resnet18: building the network (BatchNorm settled on photo crops)")
    teacher = cm.resnet18_on_photos(SEED)
    train = data.cnn_images("photos", settings.resnet_train, "calibration", SEED)
    held_out = data.cnn_images("photos", settings.resnet_holdout, "holdout", SEED)
    # Another seed: crops never used for training or early stopping, only to compare with FP32.
    evaluation = data.cnn_images("photos", settings.resnet_eval, "holdout", SEED + 1)
    split = _image_split(train, held_out, f"{len(train)} + {len(held_out)} photo crops")
    evaluate = AgreementEval(evaluation, batch=16)
    example = torch.from_numpy(np.ascontiguousarray(held_out[:1]))
    work = CACHE_DIR / f"onnx-{settings.name}" / "resnet18"
    variants = [_fp32_variant(teacher, example, work / "fp32.onnx", evaluate)]
    for ratio in settings.resnet_ratios:
        variants.append(_prune_variant(teacher, example, split, ratio, False, settings.resnet_recover_epochs,
                                       settings, evaluate, work))
    variants.append(_prune_variant(teacher, example, split, KEY_RATIO, True, 0, settings, evaluate, work))
    reference = evaluate.reference if evaluate.reference is not None else np.zeros((1, 2))
    ordered = np.sort(reference, axis=1)
    # How decisively the random-weight network picks its top class: the top-1 lead over the runner-up,
    # in units of the logits' spread. A small lead means tiny output changes flip top-1.
    lead = float(np.mean((ordered[:, -1] - ordered[:, -2]) / np.maximum(reference.std(axis=1), 1e-12)))
    _log(f"resnet18: timing {len(variants)} variants, {settings.plan.rounds} interleaved rounds")
    timing_info = _time_variants(variants, evaluation[0], settings.plan)
    return {"train_images": len(train), "heldout_images": len(held_out), "eval_images": len(evaluation),
            "eval_distinct_fp32_classes": int(len(np.unique(reference.argmax(1)))), "fp32_top1_lead_over_std": lead,
            "recover_epochs": settings.resnet_recover_epochs, "photos": data.describe_cnn_source("photos"),
            "timing": timing_info, "variants": [dataclasses.asdict(v) for v in variants]}


# --- section 3: QAT vs PTQ -------------------------------------------------------------------


def _png_folder(images: np.ndarray, indices: np.ndarray, folder: Path) -> Path:
    """Training images as a flat, unlabelled PNG folder: the image source ``edgekiln qat --calib`` reads."""
    from PIL import Image

    marker = folder.with_name(folder.name + ".complete")  # beside the folder: inside, it would be a sample
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    raw = np.rint(images[:, 0] * 255).astype(np.uint8)  # exact: the images are pixel / 255
    for pixels, index in zip(raw, indices):
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")
    marker.write_text("")
    return folder


def _qat_images(settings: Settings) -> Path:
    from bench import data

    pool = data.fashion_subset("train", settings.qat_images + settings.qat_holdout, seed=SEED + 2)
    return _png_folder(pool.images, pool.indices, CACHE_DIR / f"qat-images-{len(pool.indices)}-seed{SEED + 2}")


def _run_qat(folder: Path, weights: Path, bits: int, settings: Settings, work: Path) -> Any:
    from bench.compress_models import FASHION_INPUT, MODEL_CLASS
    from toolchain.compress.qat import api_qat

    _log(f"qat: api_qat, {bits}-bit weights, {settings.qat_epochs} epoch(s) at most")
    return api_qat(None, work / f"qat{bits}.onnx", calib=folder, labels=False, target="x86",
                   epochs=settings.qat_epochs, weight_bits=bits, holdout=settings.qat_holdout,
                   count=settings.qat_images, seed=SEED, model_class=MODEL_CLASS, weights=weights,
                   inputs=[FASHION_INPUT], iterations=settings.measure_iterations, cache_dir=CACHE_DIR / "images")


def _qat_split(folder: Path, settings: Settings) -> Any:
    """The split ``api_qat`` made of the folder (same call, same seed), for reproducing its PTQ baseline."""
    from toolchain.compress.data import load_images

    return load_images(folder, (1, 1, 28, 28), holdout=settings.qat_holdout, count=settings.qat_images, seed=SEED,
                       preprocess=None, labels=False, cache_dir=CACHE_DIR / "images")


def _ptq(teacher: Any, split: Any, bits: int, work: Path) -> Path:
    """The post-training baseline exactly as ``api_qat`` builds it (``toolchain.api.calibrate``, guard off).

    ``api_qat`` keeps its PTQ model in a temporary folder, so it is rebuilt here with the same calls on
    the same training images; the record compares the two (ranges files and held-out agreement).
    """
    from calibration.ranges import ActivationRanges
    from toolchain import api
    from toolchain.compress import qat
    from toolchain.onnx_io import load_onnx, save_onnx
    from toolchain.passes.quantize import QuantizeConfig, named_copy
    from toolchain.targets import get_target

    opset = max(get_target("x86").opset, qat.INT4_OPSET) if bits == 4 else get_target("x86").opset
    fp32 = qat.export_onnx(teacher, split.held_out[:1], work / f"ptq-source-opset{opset}.onnx", opset)
    samples = work / "qat-train.npy"
    np.save(samples, split.train)
    path = work / f"ptq{bits}.onnx"
    api.calibrate(fp32, path, calib=samples, target="x86", calib_size=len(split.train), holdout=0, seed=SEED,
                  no_cache=True, method="minmax", guard=False)
    if bits == 4:
        ranges = ActivationRanges.load(path.with_suffix(".ranges.json"))
        save_onnx(qat.quantize_int4(named_copy(load_onnx(fp32)), ranges,
                                    QuantizeConfig.for_target("x86", method="minmax")), path)
    return path


def _same_ptq(mine: Path, result: Any, split: Any, teacher: Any) -> dict[str, Any]:
    """Does the rebuilt PTQ model equal the one ``api_qat`` measured? Same ranges, same held-out agreement."""
    from calibration.ranges import ActivationRanges
    from toolchain.compress.measure import predict_logits, top1_agreement

    ours = ActivationRanges.load(mine.with_suffix(".ranges.json")).ranges
    theirs = ActivationRanges.load(result.ranges_path).ranges
    agreement = top1_agreement(_logits(mine, split.held_out, 500), predict_logits(teacher, split.held_out))
    return {"same_ranges": dict(ours) == dict(theirs), "heldout_agreement_rebuilt": agreement,
            "heldout_agreement_api_qat": result.ptq.agreement,
            "same_agreement": abs(agreement - result.ptq.agreement) < 1e-12}


def _quant_variant(name: str, kind: str, path: Path, fp32: Variant, evaluate: LabelledEval,
                   heldout: float | None, **extra: Any) -> Variant:
    # A quantized file keeps the FP32 model's parameters and MACs; what changes is their width on disk.
    return Variant(name, kind, None, fp32.parameters, fp32.nonzero_parameters, fp32.macs, path.stat().st_size,
                   {"final": _with_heldout(evaluate(path), heldout)}, str(path), **extra)


def qat_section(settings: Settings) -> dict[str, Any]:
    import torch

    from bench import compress_models as cm

    teacher, weights, training = _trained_cnn(settings)
    test_x, test_y = cm.fashion_test_set(settings.test_images)
    evaluate = LabelledEval(test_x, test_y)
    work = CACHE_DIR / f"onnx-{settings.name}" / "qat"
    work.mkdir(parents=True, exist_ok=True)
    folder = _qat_images(settings)
    split = _qat_split(folder, settings)
    example = torch.from_numpy(np.ascontiguousarray(split.held_out[:1]))
    fp32 = _fp32_variant(teacher, example, work / "fp32.onnx", evaluate)
    variants, checks, export_checks, peak = [fp32], {}, {}, {}
    for bits in (8, 4):
        started = time.perf_counter()
        result = _run_qat(folder, weights, bits, settings, work)
        qat_seconds = time.perf_counter() - started
        peak[f"after_api_qat_{bits}bit_mb"] = _peak_rss_mb()
        ptq_path = _ptq(teacher, split, bits, work)
        checks[bits] = _same_ptq(ptq_path, result, split, teacher)
        export_checks[bits] = dataclasses.asdict(result.export_check)
        label = "INT8" if bits == 8 else "4-bit weights"
        variants.append(_quant_variant(f"PTQ {label}", "ptq", ptq_path, fp32, evaluate, result.ptq.agreement,
                                       notes=[f"{bits}-bit weights"]))
        variants.append(_quant_variant(f"QAT {label}", "qat", result.output, fp32, evaluate, result.qat.agreement,
                                       seconds={"api_qat": qat_seconds}, distill=result.report.to_dict(),
                                       notes=[f"{bits}-bit weights", *result.notes]))
    _log(f"qat: timing {len(variants)} variants, {settings.plan.rounds} interleaved rounds")
    timing_info = _time_variants(variants, test_x[0], settings.plan)
    return {"training": training, "test_images": len(test_y), "qat_images": len(split.train),
            "heldout_images": len(split.held_out), "epochs": settings.qat_epochs, "images": split.summary,
            "ptq_rebuilt_equals_api_qat": checks, "export_check": export_checks, "peak_rss": peak,
            "timing": timing_info, "variants": [dataclasses.asdict(v) for v in variants]}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- Markdown ---------------------------------------------------------------------------------


def _count(value: int) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.2f} G"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.1f} K"


def _size(value: int) -> str:
    return f"{value / 1e6:.2f} MB" if value >= 1e6 else f"{value / 1e3:.0f} KB"


def _share(value: float, reference: float) -> str:
    return f"{100 * value / reference:.0f}%"


def _speed(variant: dict) -> str:
    latency = variant.get("latency")
    if not latency:
        return "— | —"
    ms = latency["median_ms"]
    ms_text = f"{ms:.3f}" if ms < 1 else f"{ms:.1f}"
    if variant["kind"] == "fp32":
        return f"{ms_text} | 1.00x"
    return f"{ms_text} | {_ratio_text(latency)}"


def _ratio_text(latency: dict) -> str:
    return f"**{latency['ratio_vs_reference']:.2f}x** ({latency['ratio_low']:.2f}–{latency['ratio_high']:.2f})"


def _top1(quality: dict | None, fp32: bool = False) -> str:
    if not quality or quality.get("top1") is None:
        return "—"
    text = f"{100 * quality['top1']:.2f}%"
    if fp32:
        return text
    return f"{text} ({-quality['loss_points']:+.2f} ± {quality['loss_se']:.2f})"


def _agreement(quality: dict | None) -> str:
    if not quality or quality.get("agreement") is None:
        return "—"
    return f"{100 * quality['agreement']:.0f}% / {quality['cosine_mean']:.3f} / {quality['cosine_min']:.3f}"


def _variant(section: dict, kind: str, ratio: float | None = None) -> dict | None:
    return next((v for v in section["variants"] if v["kind"] == kind and (ratio is None or v["ratio"] == ratio)),
                None)


def _kept_epoch(variant: dict) -> str:
    report = variant.get("distill")
    if not report:
        return "—"
    return f"{report['best_epoch']} of {len(report['epochs'])}"


def _latency_verdict(variant: dict | None, label: str) -> tuple[str, str, str]:
    target = f"{label}: 50% channel pruning ≥ {LATENCY_TARGET}x lower latency (ORT CPU, batch 1, {THREADS} threads)"
    if not variant or not variant.get("latency"):
        return target, "not measured", "—"
    latency = variant["latency"]
    ratio, low, high = latency["ratio_vs_reference"], latency["ratio_low"], latency["ratio_high"]
    verdict = "**met**" if ratio >= LATENCY_TARGET else "**not met**"
    if low <= LATENCY_TARGET <= high:
        verdict += " (borderline)"
    return target, f"{ratio:.2f}x (rounds' IQR {low:.2f}–{high:.2f}x)", verdict


def _accuracy_verdict(variant: dict | None) -> tuple[str, str, str]:
    target = (f"Wide Fashion-MNIST CNN: 50% channel pruning loses ≤ {ACCURACY_TARGET_POINTS:g} point top-1 after "
              f"recovery")
    quality = (variant or {}).get("stages", {}).get("recovered")
    if not quality:
        return target, "not measured", "—"
    loss = quality["loss_points"]
    verdict = "**met**" if loss <= ACCURACY_TARGET_POINTS else "**not met**"
    fp32_top1 = 100 * (quality["top1"] + loss / 100)
    return target, (f"{loss:.2f} ± {quality['loss_se']:.2f} points lost ({fp32_top1:.2f}% → "
                    f"{100 * quality['top1']:.2f}%)"), verdict


def _qat_recovery(section: dict, label: str) -> dict[str, Any]:
    """PTQ's loss, QAT's loss, the share QAT recovered, and whether PTQ's loss is measurable (> 2 SE)."""
    ptq, qat = _variant_named(section, f"PTQ {label}"), _variant_named(section, f"QAT {label}")
    if not ptq or not qat:
        return {}
    p, q = ptq["stages"]["final"], qat["stages"]["final"]
    measurable = p["loss_points"] > 2 * p["loss_se"] and p["loss_points"] > 0
    share = (p["loss_points"] - q["loss_points"]) / p["loss_points"] if p["loss_points"] > 0 else None
    return {"ptq_loss": p["loss_points"], "ptq_se": p["loss_se"], "qat_loss": q["loss_points"],
            "qat_se": q["loss_se"], "measurable": measurable, "recovered_share": share}


def _variant_named(section: dict, name: str) -> dict | None:
    return next((v for v in section["variants"] if v["name"] == name), None)


def _qat_verdict(section: dict, label: str) -> tuple[str, str, str]:
    target = f"QAT recovers ≥ {QAT_RECOVERY_TARGET:.0%} of the top-1 PTQ lost ({label})"
    numbers = _qat_recovery(section, label)
    if not numbers:
        return target, "not measured", "—"
    measured = (f"PTQ {-numbers['ptq_loss']:+.2f} ± {numbers['ptq_se']:.2f}, "
                f"QAT {-numbers['qat_loss']:+.2f} ± {numbers['qat_se']:.2f} points vs FP32")
    if not numbers["measurable"]:
        return target, measured + "; PTQ's loss is within 2 standard errors of zero", "n/a: nothing to recover"
    share = numbers["recovered_share"]
    verdict = "**met**" if share >= QAT_RECOVERY_TARGET else "**not met**"
    return target, measured + f"; QAT recovered {share:.0%}", verdict


def _targets(record: dict) -> list[tuple[str, str, str]]:
    rows = []
    fashion, resnet, qat = (record["sections"].get(name) for name in SECTIONS)
    if fashion:
        rows.append(_latency_verdict(_variant(fashion, "structured", KEY_RATIO), "Wide Fashion-MNIST CNN"))
        rows.append(_accuracy_verdict(_variant(fashion, "structured", KEY_RATIO)))
    if resnet:
        rows.append(_latency_verdict(_variant(resnet, "structured", KEY_RATIO), "ResNet-18-sized CNN"))
    if qat:
        rows += [_qat_verdict(qat, "INT8"), _qat_verdict(qat, "4-bit weights")]
    return rows


def _machine_text(record: dict) -> str:
    info, before, after = record["machine"], record["load_before"], record["load_after"]
    cpu, versions = info["cpu"], info["versions"]
    load = lambda values: " / ".join(f"{v:.2f}" for v in values) if values else "unknown"  # noqa: E731
    return (f"**Machine.** {cpu['model']}, {cpu['logical_cpus']} logical CPUs; flags: {', '.join(cpu['flags'])}. "
            f"{info['platform']}. " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". "
            f"Shared with other engineers' jobs, so timings are noisy: load average (1/5/15 min) {load(before)} at "
            f"the start, {load(after)} at the end.")


def _method_text(record: dict) -> str:
    plan = record["settings"]["plan"]
    return (f"**Latency.** ONNX Runtime CPU provider, batch 1, `intra_op_num_threads={THREADS}`, graph "
            f"optimisation ALL, one session per variant. After {plan['warmup']} warm-up runs per variant, "
            f"{plan['rounds']} rounds; each round times every variant for {plan['runs_per_round']} runs (fewer "
            f"once {plan['max_block_seconds']:g} s have passed, at least {plan['min_runs']}), in an order rotated "
            f"each round. *ms* is the median of all of a variant's runs; *x faster* is the median over rounds of "
            f"(unpruned model's round median ÷ the variant's round median), with the rounds' interquartile range "
            f"in brackets, as in BENCHMARKS.md. **Training** (the original model, distillation recovery, QAT) runs "
            f"in PyTorch with {record['settings']['torch_threads']} torch thread (faster than two on this shared "
            f"machine). **Accuracy** is on the Fashion-MNIST test images; ± is the standard error of the paired "
            f"difference from FP32 (both models on the same images). **Parameters and MACs** are "
            f"`toolchain.compress.measure.count_parameters` / `count_macs` (torch-pruning's counter, dense: it "
            f"counts zeroed weights too).")


def _fashion_markdown(section: dict) -> str:
    fp32 = _variant(section, "fp32")
    training = section["training"]
    plan = training["plan"]
    head = (f"`bench.compress_models.WideFashionCNN`: four 3x3 conv blocks (64, 128, 128, 128 channels, BatchNorm, "
            f"ReLU; max-pool after the first two), global average pool, Linear(128, 10); "
            f"{_count(fp32['parameters'])} parameters, {_count(fp32['macs'])} MACs. Trained here with labels: "
            f"AdamW, one-cycle lr {plan['lr']:g}, {plan['epochs']} epochs on "
            f"{'all 60,000' if plan['images'] is None else plan['images']} training images, seed {plan['seed']}, "
            f"{training['training_seconds']:.0f} s on {plan['threads']} torch thread (weights cached in "
            f"`bench/.cache/compress/`, sha256 {training['weights_sha256_16']}…, and retrained identically when "
            f"missing). Top-1 on {section['test_images']:,} test images: "
            f"**{100 * fp32['stages']['final']['top1']:.2f}%**.")
    data_text = (f"Pruning: `prune_module` with L1 importance, one step, the classifier protected (the shipped "
                 f"default). Recovery: the shipped distillation (`prune_module(recover_epochs="
                 f"{section['recover_epochs']})`, KL at T=4 against the unpruned model, Adam 1e-3, batch 64) on "
                 f"{section['distill_images']:,} training images **without labels**; {section['heldout_images']:,} "
                 f"other training images are its held-out split (it keeps the epoch with the best agreement there). "
                 f"Unstructured rows zero the same share of every layer's weights (L1, `--unstructured`), "
                 f"classifier kept.")
    lines = ["| variant | params (% FP32) | non-zero params | MACs (% FP32) | ONNX | top-1 after pruning (Δ) | "
             "top-1 after recovery (Δ) | epoch kept | ms | x faster (IQR) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in section["variants"]:
        pruned, recovered = v["stages"].get("pruned"), v["stages"].get("recovered")
        final = v["stages"].get("final")
        lines.append(
            f"| {v['name']} | {_count(v['parameters'])} ({_share(v['parameters'], fp32['parameters'])}) | "
            f"{_count(v['nonzero_parameters'])} | {_count(v['macs'])} ({_share(v['macs'], fp32['macs'])}) | "
            f"{_size(v['onnx_bytes'])} | {_top1(final, True) if final else _top1(pruned)} | {_top1(recovered)} | "
            f"{_kept_epoch(v)} | {_speed(v)} |")
    return "\n\n".join(["## Wide Fashion-MNIST CNN: channel and unstructured pruning", head, data_text,
                        "\n".join(lines), _timing_line(section), _fashion_paragraph(section),
                        _alignment_markdown(section)])


def _timing_line(section: dict) -> str:
    info = section["timing"]
    before, after = info.get("load_1min_before"), info.get("load_1min_after")
    load = f"; 1-minute load average {before:.2f} at the start, {after:.2f} at the end" if before is not None else ""
    return f"_Timing took {info['seconds']:.0f} s{load}. Δ: points of top-1 against FP32, ± its standard error._"


def _fashion_paragraph(section: dict) -> str:
    fp32 = _variant(section, "fp32")
    structured = [v for v in section["variants"] if v["kind"] == "structured" and v.get("latency")]
    key = _variant(section, "structured", KEY_RATIO)
    parts = []
    if structured:
        speed = "; ".join(f"{v['ratio']:.0%} of channels: MACs {_share(v['macs'], fp32['macs'])}, "
                          f"{v['latency']['ratio_vs_reference']:.2f}x faster" for v in structured)
        parts.append(f"**Latency.** {speed}. Latency does not follow MACs: it depends on the channel counts "
                     f"pruning leaves (next table). ")
    if key and key.get("latency"):
        ratio = key["latency"]["ratio_vs_reference"]
        parts[-1] += (f"At the key 50% row the speed-up is {ratio:.2f}x, so the latency target "
                      f"({LATENCY_TARGET}x) is {'met' if ratio >= LATENCY_TARGET else 'missed'}; 50% of 64 and 128 "
                      f"lands on 32 and 64 channels, which ONNX Runtime's kernels handle well.")
    if key and key["stages"].get("recovered"):
        pruned, recovered = key["stages"]["pruned"], key["stages"]["recovered"]
        loss, se = recovered["loss_points"], recovered["loss_se"]
        verdict = "met" if loss <= ACCURACY_TARGET_POINTS else "missed"
        close = abs(loss - ACCURACY_TARGET_POINTS) < 2 * se
        margin = " (narrowly: the bound is within two standard errors)" if close else ""
        report = key.get("distill") or {}
        rising = (" Held-out agreement was still rising at the last epoch, so the shipped default of "
                  f"{len(report.get('epochs', []))} epochs is not where recovery ends."
                  if report and report.get("best_epoch") == len(report.get("epochs", [])) else "")
        parts.append(f"**Accuracy.** Right after pruning, the 50% model keeps {100 * pruned['top1']:.2f}% top-1 "
                     f"(L1 pruning of a BatchNorm network wrecks it before any fine-tuning); distillation from the "
                     f"original on unlabelled images brings it to {100 * recovered['top1']:.2f}%, "
                     f"{loss:.2f} ± {se:.2f} points below FP32: the accuracy target (≤ {ACCURACY_TARGET_POINTS:g} "
                     f"point) is {verdict}{margin}.{rising}")
    unstructured = [v for v in section["variants"] if v["kind"] == "unstructured" and v.get("latency")]
    if unstructured:
        ratios = ", ".join(f"{v['latency']['ratio_vs_reference']:.2f}x" for v in unstructured)
        shares = ", ".join(f"{v['ratio']:.0%}" for v in unstructured)
        best = max((v["stages"]["recovered"]["loss_points"] for v in unstructured if v["stages"].get("recovered")),
                   default=None)
        accuracy = (f" After recovery they are accurate (at most {best:.2f} points below FP32), but that buys "
                    f"nothing on these targets." if best is not None else "")
        parts.append(f"**Unstructured pruning** zeroes weights but keeps every tensor's shape: the ONNX file is the "
                     f"same size, the dense MAC count is unchanged, and ONNX Runtime's dense kernels run at the same "
                     f"speed ({ratios} against FP32 at {shares}).{accuracy} Zeros pay off only with a sparse kernel "
                     f"or a compressed file, and none of the project's backends uses either.")
    return "\n\n".join(parts)


def _alignment_markdown(section: dict) -> str:
    alignment = section.get("alignment")
    if not alignment:
        return ""
    lines = ["| channels (conv 1 / 2 / 3 / 4) | network | MACs | ms | x faster (IQR) |", "|---|---|---:|---:|---:|"]
    for row in alignment["rows"]:
        latency = row["latency"]
        speed = ("1.00x" if latency["ratio_vs_reference"] is None or row is alignment["rows"][0]
                 else _ratio_text(latency))
        lines.append(f"| {' / '.join(map(str, row['widths']))} | {row['label']} | {_count(row['macs'])} | "
                     f"{latency['median_ms']:.3f} | {speed} |")
    odd = next((row["widths"] for row in alignment["rows"] if row["label"].endswith("as pruned")
                and any(w % 16 for w in row["widths"])), None)
    example = f" such as {odd[0]} and {odd[1]}" if odd else ""
    return ("**Why 30% and 70% gain less than 50%: channel counts.** The same network, random weights, built at the "
            "channel counts each pruned model has and at those counts rounded down to a multiple of 8 and of 16, "
            "timed the same way (latency only). ONNX Runtime's convolutions use a blocked memory layout (NCHWc, 16 "
            f"channels per block with AVX-512, as here), and channel counts{example} fall off that fast path."
            "\n\n" + "\n".join(lines) + "\n\n" + _alignment_conclusion(alignment))


def _alignment_conclusion(alignment: dict) -> str:
    texts = []
    for row in alignment["rows"]:
        if not row["label"].endswith(", as pruned"):
            continue
        name = row["label"][: -len(", as pruned")]
        rounded = [r for r in alignment["rows"] if r["label"].startswith(f"{name}, rounded")]
        if rounded:
            texts.append(f"{name}: {row['latency']['ratio_vs_reference']:.2f}x as pruned, "
                         + ", ".join(f"{r['latency']['ratio_vs_reference']:.2f}x at "
                                     f"{' / '.join(map(str, r['widths']))}" for r in rounded))
    if not texts:
        return ""
    return ("Rounding the kept channels down to a multiple of 8 or 16 (torch-pruning's `round_to`, which the shipped "
            "pruner does not pass) would change the speed-up: " + "; ".join(texts) + ".")


def _resnet_markdown(section: dict) -> str:
    fp32 = _variant(section, "fp32")
    head = (f"`bench.models.ResNet18` ({_count(fp32['parameters'])} parameters, {_count(fp32['macs'])} MACs, "
            f"1x3x224x224) with **random weights** (seed {SEED}) and BatchNorm settled on photo crops, so there is no "
            f"accuracy: quality is agreement with the unpruned model on {section['eval_images']} photo crops never "
            f"used for training or early stopping ({section['photos']}; another seed than the training crops). "
            f"Over those crops the unpruned model's top-1 takes {section['eval_distinct_fp32_classes']} distinct "
            f"classes, so top-1 agreement is not trivially high. Recovery: the shipped distillation "
            f"(`recover_epochs={section['recover_epochs']}`) on {section['train_images']} crops, early stopping on "
            f"{section['heldout_images']} others, batch 64: at most "
            f"{section['recover_epochs'] * math.ceil(section['train_images'] / 64)} optimiser steps; the unstructured "
            f"row is not recovered.")
    lines = ["| variant | params (% FP32) | MACs (% FP32) | ONNX | after pruning: top-1 agr. / cos mean / min | "
             "after recovery: top-1 agr. / cos mean / min | epoch kept | ms | x faster (IQR) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in section["variants"]:
        pruned = v["stages"].get("pruned")
        lines.append(
            f"| {v['name']} | {_count(v['parameters'])} ({_share(v['parameters'], fp32['parameters'])}) | "
            f"{_count(v['macs'])} ({_share(v['macs'], fp32['macs'])}) | {_size(v['onnx_bytes'])} | "
            f"{_agreement(pruned) if pruned else 'reference'} | {_agreement(v['stages'].get('recovered'))} | "
            f"{_kept_epoch(v)} | {_speed(v)} |")
    return "\n\n".join(["## ResNet-18-sized CNN: channel pruning", head, "\n".join(lines), _timing_line(section),
                        _resnet_paragraph(section)])


def _resnet_paragraph(section: dict) -> str:
    fp32, key = _variant(section, "fp32"), _variant(section, "structured", KEY_RATIO)
    structured = [v for v in section["variants"] if v["kind"] == "structured" and v.get("latency")]
    if not key or not key.get("latency"):
        return ""
    ratio = key["latency"]["ratio_vs_reference"]
    speed = "; ".join(f"{v['ratio']:.0%}: MACs {_share(v['macs'], fp32['macs'])}, "
                      f"{v['latency']['ratio_vs_reference']:.2f}x{_stem_channels(v)}" for v in structured)
    parts = [f"**Latency.** {speed}. At 50% the latency target ({LATENCY_TARGET}x) is "
             f"{'met' if ratio >= LATENCY_TARGET else 'missed'}. As on the small model, the channel counts matter "
             f"too: 50% keeps multiples of 32, while 30% leaves counts such as{_stem_after(section, 0.3)} that are "
             f"off ONNX Runtime's 16-channel blocks, so it gains less than its halved MACs suggest."]
    recoveries = [f"{v['ratio']:.0%}: held-out agreement by epoch "
                  + " → ".join(_percent(a) for a in [v["distill"]["agreement_before"]]
                               + [e["agreement"] for e in v["distill"]["epochs"]])
                  + f", epoch {v['distill']['best_epoch']} kept" for v in structured if v.get("distill")]
    pruned, recovered = key["stages"]["pruned"], key["stages"].get("recovered") or key["stages"]["pruned"]
    parts.append(f"**Agreement.** The pruned network computes a different function: at 50%, top-1 agreement with "
                 f"the original is {100 * pruned['agreement']:.0f}% (logit cosine {pruned['cosine_mean']:.2f}) right "
                 f"after pruning and {100 * recovered['agreement']:.0f}% ({recovered['cosine_mean']:.2f}) after "
                 f"recovery. The short distillation lowers its loss but does not move top-1 agreement on the "
                 f"held-out crops (" + "; ".join(recoveries) + "), so the shipped early stopping mostly hands back "
                 f"the pruned weights. With random weights the top class leads the runner-up by little "
                 f"({section.get('fp32_top1_lead_over_std', float('nan')):.2f} of the logits' standard deviation on "
                 f"average, over 1000 classes), so small output changes flip top-1, and matching the teacher's soft "
                 f"outputs on {section['train_images']} crops does not restore the order. This measures how far "
                 f"pruning moves the outputs, not what a trained ResNet would lose: "
                 f"that needs trained weights and a real (unlabelled) data set, which this machine does not have.")
    return "\n\n".join(parts)


def _stem_after(section: dict, ratio: float) -> str:
    variant = _variant(section, "structured", ratio)
    channels = (variant or {}).get("channels") or {}
    return f" {channels['stem.0'][1]} (of 64)" if "stem.0" in channels else " 44 (of 64)"


def _stem_channels(variant: dict) -> str:
    channels = (variant.get("channels") or {}).get("stem.0")
    return f" (stem {channels[0]} → {channels[1]} channels)" if channels else ""


def _qat_markdown(section: dict) -> str:
    fp32 = _variant(section, "fp32")
    head = (f"The same trained `WideFashionCNN` ({100 * fp32['stages']['final']['top1']:.2f}% top-1). "
            f"`toolchain.compress.qat.api_qat(target='x86')` on a folder of "
            f"{section['qat_images'] + section['heldout_images']:,} "
            f"training images written as PNG, unlabelled: it calibrates PTQ with "
            f"`toolchain.api.calibrate` (MinMax, uint8 activations, int8 symmetric per-channel weights, guard off) on "
            f"the {section['qat_images']:,} training images, fine-tunes a fake-quant copy by distillation "
            f"(≤ {section['epochs']} epochs, Adam 1e-4, early stopping on the {section['heldout_images']:,} held-out "
            f"images) and quantizes the fine-tuned weights with PTQ's ranges. `weight_bits=4` is the same with int4 "
            f"per-channel weights (opset 21). `api_qat` keeps its PTQ model in a temporary folder, so the PTQ rows "
            f"are rebuilt with the same calls on the same images: " + _ptq_check_text(section) + ".")
    lines = ["| variant | top-1 (Δ ± SE) | held-out agr. with FP32 (ORT) | fake-quant model's held-out agr.: "
             "start → kept | ORT vs fake-quant: top-1 agr. / min cos | ONNX (% FP32) | epoch kept | ms | "
             "x faster (IQR) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in section["variants"]:
        final = v["stages"]["final"]
        lines.append(f"| {v['name']} | {_top1(final, v['kind'] == 'fp32')} | "
                     f"{_percent(final.get('heldout_agreement'))} | "
                     f"{_fake_quant_progress(v)} | {_export_check(section, v)} | {_size(v['onnx_bytes'])} "
                     f"({_share(v['onnx_bytes'], fp32['onnx_bytes'])}) | {_kept_epoch(v)} | {_speed(v)} |")
    return "\n\n".join(["## QAT vs post-training quantization (wide Fashion-MNIST CNN)", head, "\n".join(lines),
                        _timing_line(section), _qat_paragraph(section), _fidelity_paragraph(section)])


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _fake_quant_progress(variant: dict) -> str:
    report = variant.get("distill")
    if variant["kind"] != "qat" or not report:
        return "—"
    return f"{_percent(report['agreement_before'])} → {_percent(report['agreement_after'])}"


def _bits(variant: dict) -> str:
    return "4" if "4-bit" in variant["name"] else "8"


def _export_check(section: dict, variant: dict) -> str:
    check = section["export_check"].get(_bits(variant)) if variant["kind"] == "qat" else None
    return "—" if not check else f"{_percent(check['agreement'])} / {check['min_cosine']:.4f}"


def _versus_fp32(loss: float, se: float) -> str:
    return f"{abs(loss):.2f} ± {se:.2f} points {'below' if loss > 0 else 'above'} FP32"


def _fidelity_paragraph(section: dict) -> str:
    """Does the fake-quant model QAT trains behave like the ONNX model it exports? Compare them at the start.

    At epoch 0 the fake-quant model has the FP32 weights and PTQ's activation ranges, so it should score what
    the PTQ ONNX model scores on the same held-out images; a gap means the training optimises another model.
    """
    texts = []
    for label in ("INT8", "4-bit weights"):
        ptq, qat = _variant_named(section, f"PTQ {label}"), _variant_named(section, f"QAT {label}")
        if not ptq or not qat or not qat.get("distill"):
            continue
        start, exported = qat["distill"]["agreement_before"], ptq["stages"]["final"]["heldout_agreement"]
        texts.append(f"{label}: {_percent(start)} for the fake-quant model vs {_percent(exported)} for the PTQ ONNX "
                     f"model")
    if not texts:
        return ""
    text = ("**Does the fake-quant model match the exported one?** Before fine-tuning, the fake-quant model QAT "
            "trains has the FP32 weights and should behave like the PTQ ONNX model. Held-out agreement with FP32: "
            + "; ".join(texts) + ".")
    four = _variant_named(section, "QAT 4-bit weights")
    ptq4 = _variant_named(section, "PTQ 4-bit weights")
    gaps = [abs(_variant_named(section, f"QAT {label}")["distill"]["agreement_before"]
                - _variant_named(section, f"PTQ {label}")["stages"]["final"]["heldout_agreement"])
            for label in ("INT8", "4-bit weights")
            if _variant_named(section, f"QAT {label}") and _variant_named(section, f"QAT {label}").get("distill")]
    if gaps and max(gaps) <= 0.01:
        text += (" They match within a point of agreement, so the fine-tuning optimises the model that gets "
                 "exported (the export check column says the same after fine-tuning).")
    if four and ptq4 and four.get("distill") and abs(four["distill"]["agreement_before"]
                                                     - ptq4["stages"]["final"]["heldout_agreement"]) > 0.01:
        text += (" At 4 bits they differ: QAT fine-tunes a model that is not the one it exports. The cause, found "
                 "while writing this benchmark: ONNX Runtime's symmetric int4 range is [-8, 7] with scale "
                 "absmax / 7.5, so a channel's largest-magnitude weight divides to exactly ±7.5. +7.5 is clipped to "
                 "7 whichever way it rounds, but -7.5 is a tie between -8 and -7, both representable. `fakequant` "
                 "quantizes the convolution's own weight and ONNX Runtime the BatchNorm-folded one, and the last "
                 "bit of float error decides the tie differently in the two: a full int4 step on the dominant weight "
                 "of a third to a half of the channels (on the first 3x3 convolution, 6% of its weights, and a 10% "
                 "difference in its output). At int8 the extremes (±127.5) are "
                 "clipped to ±127 on both sides, so no tie decides anything and the two models differ only by "
                 "rounding noise.")
    return text


def _ptq_check_text(section: dict) -> str:
    checks = section["ptq_rebuilt_equals_api_qat"]
    texts = []
    for bits, check in checks.items():
        same = check["same_ranges"] and check["same_agreement"]
        texts.append(f"{bits}-bit {'identical' if same else 'DIFFERENT'} (ranges "
                     f"{'equal' if check['same_ranges'] else 'differ'}, held-out agreement "
                     f"{_percent(check['heldout_agreement_rebuilt'])} here vs "
                     f"{_percent(check['heldout_agreement_api_qat'])} "
                     f"in `api_qat`'s own measurement)")
    return "; ".join(texts)


def _qat_paragraph(section: dict) -> str:
    parts = []
    for label in ("INT8", "4-bit weights"):
        numbers = _qat_recovery(section, label)
        if not numbers:
            continue
        if not numbers["measurable"]:
            parts.append(f"**{label}:** PTQ is {_versus_fp32(numbers['ptq_loss'], numbers['ptq_se'])}, within "
                         f"noise of zero: there is nothing for QAT to recover (QAT is "
                         f"{_versus_fp32(numbers['qat_loss'], numbers['qat_se'])}). The recovery target cannot be "
                         f"evaluated at this setting.")
        else:
            share = numbers["recovered_share"]
            parts.append(f"**{label}:** PTQ loses {numbers['ptq_loss']:.2f} ± {numbers['ptq_se']:.2f} points; QAT "
                         f"loses {numbers['qat_loss']:.2f} ± {numbers['qat_se']:.2f}, i.e. it recovers {share:.0%} of "
                         f"PTQ's loss: the target (≥ {QAT_RECOVERY_TARGET:.0%}) is "
                         f"{'met' if share >= QAT_RECOVERY_TARGET else 'missed'}.")
        qat = _variant_named(section, f"QAT {label}")
        if qat and qat.get("distill") and qat["distill"]["best_epoch"] > 0:
            trained, exported = qat["distill"]["agreement_after"], qat["stages"]["final"]["heldout_agreement"]
            if trained - exported > 0.01:
                parts[-1] += (f" The fake-quant model it fine-tuned reached {_percent(trained)} held-out agreement "
                              f"with FP32, the exported ONNX model {_percent(exported)}: the export keeps only part "
                              f"of what the fine-tuning gained (see the next paragraph).")
        if qat and qat.get("distill") and qat["distill"]["best_epoch"] == 0:
            parts[-1] += (" No fine-tuning epoch beat the starting weights on held-out agreement, so `api_qat` "
                          "handed back the FP32 weights: its model is the PTQ model.")
    four = _variant_named(section, "QAT 4-bit weights")
    eight = _variant_named(section, "QAT INT8")
    if four and eight and four.get("latency") and eight.get("latency"):
        parts.append(f"Speed: INT8 runs {eight['latency']['ratio_vs_reference']:.2f}x against FP32; 4-bit weights "
                     f"{four['latency']['ratio_vs_reference']:.2f}x, because ONNX Runtime has no int4 convolution: "
                     f"it dequantizes the weights to float at run time. 4-bit buys a smaller file, not speed.")
    return "\n\n".join(parts)


def _sources_text(record: dict) -> str:
    changed = _changed_sources(record)
    if changed:
        return (f"**Warning: the shipped code changed while this ran** ({', '.join(f'`{c}`' for c in changed)}): "
                "a section may have run an older version than the one committed.")
    digests = record.get("sources_before")
    if not digests:
        return ""
    return ("**Code measured:** sha256 (first 12 hex digits) of the files exercised, unchanged during the run: "
            + ", ".join(f"`{name}` {digest}" for name, digest in digests.items()) + ".")


def render(record: dict) -> str:
    targets = _targets(record)
    sections = record["sections"]
    parts = [
        "# Compression benchmark: pruning, distillation recovery, QAT vs PTQ (issue #10)",
        f"Generated by `{record['command']}` ({record['mode']} run, {record['started_utc']}, "
        f"{record['seconds'] / 60:.1f} min); raw numbers in `bench/compress.json`. Regenerate with "
        "`python -m bench.compress` (full) or `python -m bench.compress --quick` (smoke check, writes to "
        "`bench/.cache/`); `--render bench/compress.json` rewrites this file from the JSON.",
        _machine_text(record), _method_text(record), _sources_text(record),
        "## Targets", "| target | measured | verdict |\n|---|---|---|\n"
        + "\n".join(f"| {t} | {m} | {v} |" for t, m, v in targets),
        "*Borderline*: the target lies inside the interquartile range of the per-round ratios, so another run on "
        "this noisy machine can land on the other side of it."]
    if "fashion" in sections:
        parts.append(_fashion_markdown(sections["fashion"]))
    if "resnet18" in sections:
        parts.append(_resnet_markdown(sections["resnet18"]))
    if "qat" in sections:
        parts.append(_qat_markdown(sections["qat"]))
    notes = [note for section in sections.values() for v in section["variants"] for note in v.get("notes", [])
             if "differs" in note]
    if notes:
        parts.append("## Inconsistencies found while measuring\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(p for p in parts if p) + "\n"


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compress", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, one ratio, few rounds (smoke check)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 15, quick 3)")
    parser.add_argument("--md", type=Path, help="Markdown output (default: bench/compress.md for a full run)")
    parser.add_argument("--json", type=Path, help="JSON output (default: bench/compress.json for a full run)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only rewrite the Markdown from this JSON record")
    return parser.parse_args(argv)


def _mode(args: argparse.Namespace) -> str:
    parts = (["quick"] if args.quick else []) + ([f"only {', '.join(args.only)}"] if args.only else [])
    parts += [f"{args.rounds} rounds"] if args.rounds else []
    return "; ".join(parts) or "full"


def _outputs(args: argparse.Namespace, mode: str) -> tuple[Path, Path]:
    # Only a full run replaces the committed record; anything else goes to the cache folder.
    if mode == "full":
        return args.md or BENCH_DIR / "compress.md", args.json or BENCH_DIR / "compress.json"
    stem = "compress-quick" if args.quick else "compress-partial"
    return args.md or BENCH_DIR / ".cache" / f"{stem}.md", args.json or BENCH_DIR / ".cache" / f"{stem}.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


SHIPPED_CODE = ("toolchain/compress", "toolchain/passes/quantize.py", "toolchain/calibrate.py", "toolchain/api.py")
"""The code the benchmark exercises; its digests are recorded so that a number can be traced to a version."""


def _source_digests() -> dict[str, str]:
    import hashlib

    files: list[Path] = []
    for entry in SHIPPED_CODE:
        path = REPO_DIR / entry
        files += sorted(path.glob("*.py")) if path.is_dir() else [path] if path.is_file() else []
    return {str(f.relative_to(REPO_DIR)): hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in files}


def _changed_sources(record: dict) -> list[str]:
    before, after = record.get("sources_before", {}), record.get("sources_after", {})
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def _show_progress() -> None:
    """Print the shipped code's own progress lines (pruning steps, distillation epochs) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(name)s: %(message)s"))
    logger = logging.getLogger("edgekiln")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _run_sections(names: list[str], settings: Settings) -> dict[str, dict]:
    runners = {"fashion": fashion_section, "resnet18": resnet_section, "qat": qat_section}
    results = {}
    for name in names:
        started = time.perf_counter()
        results[name] = runners[name](settings)
        results[name]["seconds"] = time.perf_counter() - started
        _log(f"{name}: done in {results[name]['seconds'] / 60:.1f} min")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        record = json.loads(args.render.read_text(encoding="utf-8"))
        md = args.md or args.render.with_suffix(".md")
        md.write_text(render(record), encoding="utf-8")
        _log(f"wrote {md}")
        return 0
    import torch

    _show_progress()
    settings = _settings(args.quick)
    if args.rounds:
        settings = dataclasses.replace(settings, plan=dataclasses.replace(settings.plan, rounds=args.rounds))
    torch.set_num_threads(settings.torch_threads)
    mode = _mode(args)
    names = [n for n in SECTIONS if not args.only or n in args.only]
    started, started_utc = time.perf_counter(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = machine.load_average()
    sources_before = _source_digests()
    sections = _run_sections(names, settings)
    command = shlex.join(["python", "-m", "bench.compress", *(sys.argv[1:] if argv is None else argv)])
    record = {"command": command, "mode": mode, "started_utc": started_utc,
              "seconds": time.perf_counter() - started, "machine": machine.describe(), "load_before": load_before,
              "load_after": machine.load_average(), "settings": dataclasses.asdict(settings),
              "peak_rss_mb": _peak_rss_mb(), "sources_before": sources_before, "sources_after": _source_digests(),
              "sections": sections}
    record["targets"] = [dict(zip(("target", "measured", "verdict"), row)) for row in _targets(record)]
    md_path, json_path = _outputs(args, mode)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n", encoding="utf-8")
    md_path.write_text(render(json.loads(json_path.read_text(encoding="utf-8"))), encoding="utf-8")
    _log(f"done in {record['seconds'] / 60:.1f} min: wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
