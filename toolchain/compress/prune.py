"""``edgekiln prune``: structured channel pruning, recovered by distillation, measured after export.

``prune_module`` prunes a copy of the model (the original stays the teacher) in
``steps`` increments up to ``ratio`` of the channels of every unprotected layer;
after each increment the copy is fine-tuned by distillation from the original on
unlabelled images (``recover_epochs``). Every stage is measured the same way
(``measure``): parameters, MACs, ONNX size, ONNX Runtime latency, and agreement
with the original (or accuracy, with labels) on held-out images.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.compress import pruners, torch_io
from toolchain.compress.checks import is_whole_number
from toolchain.compress.data import ImageSplit, load_images
from toolchain.compress.measure import ModelMeasure, measure_module, predict_logits
from toolchain.errors import UsageError
from toolchain.inputs import parse_kwargs
from toolchain.lazy import require

__all__ = ["PruneOptions", "PruneReport", "PruneResult", "StepRecord", "api_prune", "prune_module", "save_pruned"]

log = logging.getLogger("edgekiln.compress")

UNSTRUCTURED_WARNING = ("unstructured pruning only zeroes weights: the tensors keep their shapes, so dense "
                        "kernels (ONNX Runtime, TFLite, TensorRT) run no faster and the file is no smaller")


@dataclass(frozen=True)
class PruneOptions:
    """How to prune (each field is one ``edgekiln prune`` flag)."""

    ratio: float
    """Share of each unprotected layer's output channels to remove, in (0, 1) (``--ratio``)."""
    importance: str = "l1"
    """Channel score: l1 (weight magnitude), bn (BatchNorm scale), taylor (weight x gradient) (``--importance``)."""
    steps: int = 1
    """Prune in this many equal increments, recovering after each (``--steps``)."""
    keep: tuple[str, ...] = ()
    """Module names never pruned, e.g. 'classifier.4' (``--keep``); the final layer is always kept."""
    unstructured: bool = False
    """Zero individual weights by L1 magnitude instead of removing channels (``--unstructured``)."""
    round_to: int | None = None
    """Keep channel counts a multiple of this (``--round-to``): CPU kernels work in blocks of 8/16 channels,
    and the benchmark measured 44/89 channels at 1.07x but 32/80 at 2.09x (bench/compress.md)."""
    recover_epochs: int = 3
    """Epochs of distillation from the original after each step; 0 skips recovery (``--recover-epochs``)."""
    seed: int = 0
    """Seed of the data split, Taylor batches and recovery training (``--seed``)."""
    taylor_batches: int = 4
    """Batches of 32 training images whose gradients score channels for ``importance='taylor'``."""
    latency_iterations: int = 50
    """Timed ONNX Runtime runs per measurement (median reported)."""

    def validate(self) -> None:
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
            raise UsageError(f"--ratio must be between 0 and 1 (exclusive), got {ratio!r}",
                             hint="It is the share of channels removed, e.g. 0.5 for half.")
        if self.importance not in pruners.IMPORTANCES:
            raise UsageError(f"unknown --importance '{self.importance}'; use one of {', '.join(pruners.IMPORTANCES)}")
        if self.unstructured and self.importance != "l1":
            raise UsageError("--unstructured masks weights by L1 magnitude; --importance applies to channel "
                             "pruning only")
        if self.round_to is not None and not is_whole_number(self.round_to, 1):
            raise UsageError(f"--round-to must be a whole number of at least 1, got {self.round_to!r}")
        if self.round_to is not None and self.unstructured:
            raise UsageError("--round-to applies to channel pruning, not --unstructured")
        for name in ("steps", "taylor_batches", "latency_iterations"):
            value = getattr(self, name)
            if not is_whole_number(value, 1):
                raise UsageError(f"{name.replace('_', ' ')} must be a whole number of at least 1, got {value!r}")
        if not is_whole_number(self.recover_epochs, 0):
            raise UsageError(f"--recover-epochs must be 0 or more, got {self.recover_epochs!r}")


@dataclass
class StepRecord:
    """The model after one pruning increment (``stage='pruned'``) or after its recovery (``'recovered'``)."""

    step: int
    stage: str
    target_ratio: float
    measure: ModelMeasure
    seconds: float
    distill: Any = None  # the DistillReport of a 'recovered' record


@dataclass
class PruneReport:
    mode: str  # "structured" or "unstructured"
    ratio: float
    importance: str
    before: ModelMeasure
    after_pruning: ModelMeasure
    after_recovery: ModelMeasure | None
    steps: list[StepRecord]
    channels: dict[str, tuple[int, int]]  # layer -> (output channels before, after)
    sparsity: dict[str, float]  # unstructured: layer -> share of zero weights
    protected: list[str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> ModelMeasure:
        return self.after_recovery or self.after_pruning

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneResult:
    output: Path
    source_format: str
    data_summary: str
    report: PruneReport
    seconds: float


def prune_module(module: Any, example: Any, options: PruneOptions, *,
                 data: ImageSplit | None) -> tuple[Any, PruneReport]:
    """Prune a copy of ``module`` and recover it by distillation from ``module`` on ``data``'s images.

    ``module`` keeps its weights (it is only put in eval mode); ``data`` None skips recovery and quality.
    """
    torch = require("torch", "Pruning a PyTorch model")
    options.validate()
    _check_data(options, data)
    teacher = module.eval()
    student = copy.deepcopy(teacher)
    protected = _protected(torch, student, example, options.keep)
    images = data.held_out if data is not None else example.numpy()
    reference = predict_logits(teacher, images) if data is not None else None
    measure = _Measurer(example, images, data, reference, options.latency_iterations)
    report = _empty_report(options, measure(teacher), [name for name, _ in protected])
    channels_before = _out_channels(torch, student)
    pruner = _make_pruner(torch, student, example, options, [layer for _, layer in protected])
    train_logits = predict_logits(teacher, data.train) if options.importance == "taylor" else None
    for step in range(1, options.steps + 1):
        _prune_step(torch, pruner, student, options, data, train_logits, step, report, measure)
        if options.recover_epochs and data is not None:
            _recover_step(teacher, student, options, data, step, report, measure)
    pruner.finalize()
    _summarise(torch, report, student, channels_before, options)
    return student.eval(), report


def _check_data(options: PruneOptions, data: ImageSplit | None) -> None:
    if data is None and options.importance == "taylor":
        raise UsageError("--importance taylor needs training images for its gradients; pass --calib DIR")


def _protected(torch: Any, student: Any, example: Any, keep: tuple[str, ...]) -> list[tuple[str, Any]]:
    chosen = dict(pruners.resolve_keep(student, keep))
    for name, layer in pruners.final_layers(torch, student, example):
        chosen.setdefault(name, layer)
    return list(chosen.items())


def _make_pruner(torch: Any, student: Any, example: Any, options: PruneOptions, protected: list[Any]):
    if options.unstructured:
        return pruners.unstructured_pruner(torch, student, ratio=options.ratio, steps=options.steps,
                                           protected=protected)
    return pruners.structured_pruner(torch, student, example, ratio=options.ratio, steps=options.steps,
                                     importance=options.importance, protected=protected, round_to=options.round_to)


def _prune_step(torch: Any, pruner: Any, student: Any, options: PruneOptions, data: ImageSplit | None,
                train_logits: np.ndarray | None, step: int, report: PruneReport, measure: _Measurer) -> None:
    started = time.perf_counter()
    if train_logits is not None and data is not None:
        pruners.taylor_gradients(torch, student, train_logits, data.train, options.taylor_batches,
                                 options.seed + step)
    pruner.step()
    student.zero_grad(set_to_none=True)  # Taylor's gradients must not leak into recovery's optimiser
    target = options.ratio * step / options.steps
    measured = measure(student)
    report.steps.append(StepRecord(step, "pruned", target, measured, time.perf_counter() - started))
    report.after_pruning = measured
    log.info("step %d/%d: pruned to %.0f%% (%s parameters, %s)", step, options.steps, 100 * target,
             f"{measured.parameters:,}", _quality_text(measured))


def _recover_step(teacher: Any, student: Any, options: PruneOptions, data: ImageSplit, step: int,
                  report: PruneReport, measure: _Measurer) -> None:
    from toolchain.compress.distill import DistillOptions, distill

    started = time.perf_counter()
    result = distill(teacher, student, data.train, data.held_out,
                     DistillOptions(epochs=options.recover_epochs, seed=options.seed),
                     labels=data.train_labels, held_out_labels=data.held_out_labels, progress=_log_epoch)
    measured = measure(student)
    report.steps.append(StepRecord(step, "recovered", options.ratio * step / options.steps, measured,
                                   time.perf_counter() - started, result))
    report.after_recovery = measured
    log.info("step %d/%d: recovered (%s)", step, options.steps, _quality_text(measured))


def _log_epoch(record: Any) -> None:
    log.info("  distillation epoch %d: loss %.4f, agreement %.2f%%", record.epoch, record.loss,
             100 * record.agreement)


def _quality_text(measured: ModelMeasure) -> str:
    if measured.accuracy is not None:
        return f"accuracy {measured.accuracy:.2%}"
    if measured.agreement is not None:
        return f"agreement {measured.agreement:.2%}"
    return "no held-out images"


class _Measurer:
    """Measures a model at any stage on the same held-out images, against the same reference outputs."""

    def __init__(self, example: Any, images: np.ndarray, data: ImageSplit | None, reference: np.ndarray | None,
                 iterations: int) -> None:
        self.example, self.images, self.reference, self.iterations = example, images, reference, iterations
        self.labels = data.held_out_labels if data is not None else None

    def __call__(self, module: Any) -> ModelMeasure:
        # Masks made permanent on a copy: export, parameter counts and zeros then see plain weights.
        return measure_module(pruners.plain_copy(module), self.example, self.images, labels=self.labels,
                              reference_logits=self.reference, iterations=self.iterations)


def _empty_report(options: PruneOptions, before: ModelMeasure, protected: list[str]) -> PruneReport:
    report = PruneReport(mode="unstructured" if options.unstructured else "structured", ratio=options.ratio,
                         importance=options.importance, before=before, after_pruning=before, after_recovery=None,
                         steps=[], channels={}, sparsity={}, protected=protected)
    if options.unstructured:
        report.warnings.append(UNSTRUCTURED_WARNING)
        log.warning(UNSTRUCTURED_WARNING)
    return report


def _out_channels(torch: Any, module: Any) -> dict[str, int]:
    return {name: int(sub.weight.shape[0]) for name, sub in module.named_modules()
            if isinstance(sub, pruners.prunable_types(torch))}


def _summarise(torch: Any, report: PruneReport, student: Any, before: dict[str, int], options: PruneOptions) -> None:
    after = _out_channels(torch, student)
    report.channels = {name: (count, after[name]) for name, count in before.items() if name in after}
    if options.unstructured:
        report.sparsity = {name: float((sub.weight == 0).float().mean()) for name, sub in student.named_modules()
                           if isinstance(sub, pruners.prunable_types(torch))}
    elif report.after_pruning.parameters == report.before.parameters:
        report.warnings.append("nothing was pruned: no layer had channels left to remove at this ratio")
    if options.recover_epochs and report.after_recovery is None:
        report.notes.append("not recovered: recovery needs images (--calib)")
    if report.after_recovery is not None:
        report.notes.append("recovery keeps the epoch with the best agreement on the held-out images, which "
                            "therefore also chose it")


def api_prune(source: Path | None, output: Path, *, ratio: float, importance: str = "l1", steps: int = 1,
              keep: tuple[str, ...] | list[str] = (), unstructured: bool = False, round_to: int | None = None,
              calib: Path | None = None,
              labels: Path | None = None, recover_epochs: int = 3, model_class: str | None = None,
              weights: Path | None = None, model_kwargs: str | dict | None = None, trust_pickle: bool = False,
              inputs: tuple[str, ...] | list[str] = (), preprocess: str | dict | None = None, holdout: int | None = None,
              train_count: int | None = None, seed: int = 0, latency_iterations: int = 50,
              cache_dir: Path | None = None, no_cache: bool = False) -> PruneResult:
    """``edgekiln prune``: load, prune, recover, measure and save (TorchScript .pt or torch.export .pt2).

    ``calib`` is an unlabelled image folder; ``labels`` a class-per-sub-folder one (it then supplies the
    images too, and accuracy is reported). ``cache_dir`` is edgekiln's cache root, as for ``calibrate``.
    """
    from toolchain.passes.calibrate import calibration_cache_dir

    started = time.perf_counter()
    options = PruneOptions(ratio=ratio, importance=importance, steps=steps, keep=tuple(keep), round_to=round_to,
                           unstructured=unstructured, recover_epochs=recover_epochs, seed=seed,
                           latency_iterations=latency_iterations)
    options.validate()  # option mistakes fail before the model and the images are loaded
    output = Path(output)
    torch_io.check_save_suffix(output, allow_state_dict=False)
    loaded = torch_io.load_module(Path(source) if source else None, inputs=inputs, model_class=model_class,
                                  weights=weights, model_kwargs=parse_kwargs(model_kwargs, "--model-kwargs"),
                                  trust_pickle=trust_pickle)
    # Untraceable models fail now, not at the end.
    torch_io.check_saveable(loaded.module, loaded.example, None, output, allow_state_dict=False)
    data = _data(calib, labels, loaded.input_shape, holdout, train_count, seed, preprocess,
                 calibration_cache_dir(cache_dir, no_cache))
    pruned, report = prune_module(loaded.module, loaded.example, options, data=data)
    save_pruned(pruned, loaded.example, output)
    return PruneResult(output, loaded.source_format, data.summary, report, time.perf_counter() - started)


def save_pruned(module: Any, example: Any, output: Path) -> Path:
    """Write a pruned ``module`` as TorchScript (``.pt``, trace checked) or a ``torch.export`` program (``.pt2``).

    A state dict is refused: the pruned layers no longer fit the original class's shapes.
    """
    return torch_io.save_module(module, example, None, output, allow_state_dict=False)


def _data(calib: Path | None, labels: Path | None, input_shape: tuple[int, ...], holdout: int | None,
          count: int | None, seed: int, preprocess: str | dict | None, cache_dir: Path | None) -> ImageSplit:
    """Images from ``labels`` (a class-per-sub-folder folder) when given, else unlabelled from ``calib``."""
    if labels is not None and calib is not None and Path(labels).resolve() != Path(calib).resolve():
        raise UsageError("--calib and --labels name different folders; the training and held-out images come "
                         "from one folder", hint="Pass the labelled folder as --labels alone.")
    folder = labels if labels is not None else calib
    if folder is None:
        raise UsageError("pruning needs images to recover and measure on: pass --calib DIR (or --labels DIR)")
    return load_images(Path(folder), input_shape, holdout=holdout, count=count, seed=seed, preprocess=preprocess,
                       labels=labels is not None, cache_dir=cache_dir)
