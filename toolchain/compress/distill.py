"""Knowledge distillation: train a (smaller) student to reproduce a frozen teacher's outputs.

Loss (Hinton et al., 2015): KL divergence between the teacher's and the student's
softmax at temperature T, scaled by T² so its gradients keep their size as T
changes; with labels, ``hard_label_weight`` of ordinary cross-entropy is mixed in.
The teacher's outputs are the labels, so unlabelled images are enough.

The student is measured after every epoch on held-out images (top-1 agreement with
the teacher, and accuracy when labels exist), training stops once agreement has not
improved for ``patience`` epochs, and the student ends with the weights of its best
epoch. Epoch 0 is the starting point: a fine-tuning run that only makes things worse
(QAT with too high a learning rate, say) hands back the weights it started from.

No augmentation: the teacher's logits are computed once, before training, which
only holds for fixed inputs; and flips or crops are not label-preserving for every
task (digits, text, left/right classes). Callers that want augmentation can pass
augmented arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.compress.checks import is_whole_number
from toolchain.errors import UsageError
from toolchain.inputs import parse_kwargs
from toolchain.lazy import require

_PURPOSE = "Distillation"
_IMPROVEMENT = 1e-9  # agreement is a ratio of counts; anything above float noise is a real gain


@dataclass(frozen=True)
class DistillOptions:
    epochs: int = 5
    """Most passes over the training images (early stopping may end sooner)."""
    temperature: float = 4.0
    """Softmax temperature of the soft targets; higher shows more of the teacher's ranking of wrong classes."""
    hard_label_weight: float = 0.5
    """Share of cross-entropy on true labels in the loss, when labels are given (0 = teacher only)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 64
    patience: int = 2
    """Epochs without a gain in held-out agreement before stopping."""
    seed: int = 0
    """Seeds weight-independent randomness: shuffling and dropout."""

    def check(self) -> None:
        """Plain-sentence errors for values that cannot work."""
        if not is_whole_number(self.epochs, 1):
            raise UsageError(f"--epochs must be a whole number of at least 1, got {self.epochs!r}")
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.hard_label_weight <= 1.0:
            raise UsageError(f"--hard-label-weight must be between 0 and 1, got {self.hard_label_weight}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if not is_whole_number(self.batch_size, 1):
            raise UsageError(f"--batch-size must be a whole number of at least 1, got {self.batch_size!r}")
        if not is_whole_number(self.patience, 0):
            raise UsageError(f"--patience must be a whole number of at least 0, got {self.patience!r}")


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    """Mean training loss over the epoch."""
    agreement: float
    """Top-1 agreement with the teacher on the held-out images after the epoch."""
    accuracy: float | None
    """Top-1 accuracy on the held-out images, when they are labelled."""
    seconds: float


@dataclass
class DistillReport:
    epochs: list[EpochRecord]
    best_epoch: int
    """The epoch whose weights the student kept; 0 means none beat the starting weights."""
    agreement_before: float
    agreement_after: float
    stopped_early: bool
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def distill(teacher: Any, student: Any, train: np.ndarray, held_out: np.ndarray, options: DistillOptions, *,
            labels: np.ndarray | None = None, held_out_labels: np.ndarray | None = None,
            progress: Callable[[EpochRecord], None] | None = None) -> DistillReport:
    """Train ``student`` in place to match ``teacher`` on ``train``; returns per-epoch numbers.

    ``train``/``held_out`` are preprocessed float32 NCHW arrays. The teacher is only run in eval
    mode without gradients; the global RNG state is restored afterwards.
    """
    torch = require("torch", _PURPOSE)
    options.check()
    _check_data(train, held_out, labels, held_out_labels)
    teacher.eval()
    check_output_shapes(teacher, student, train[:1])
    if not any(p.requires_grad for p in student.parameters()):
        raise UsageError("the student has no trainable parameters")
    from toolchain.compress.measure import predict_logits

    # The teacher is frozen and the inputs are fixed, so its logits are the same every epoch.
    targets = predict_logits(teacher, train)
    reference = predict_logits(teacher, held_out)
    with torch.random.fork_rng(devices=[]):  # seeding must not leak into the caller's RNG
        torch.manual_seed(options.seed)
        return _Trainer(torch, student, options, reference, held_out_labels).run(
            train, targets, labels, held_out, progress)


def check_output_shapes(teacher: Any, student: Any, example: np.ndarray) -> None:
    """A one-line error when teacher and student disagree on the output shape of one example."""
    from toolchain.compress.measure import output_shape

    shapes = [output_shape(module, example, role) for role, module in (("teacher", teacher), ("student", student))]
    if shapes[0] != shapes[1]:
        raise UsageError(f"teacher and student outputs differ in shape: {tuple(shapes[0])} vs {tuple(shapes[1])}",
                         hint="The student must predict the same classes as the teacher (check its num_classes).")


def _check_data(train: np.ndarray, held_out: np.ndarray, labels: np.ndarray | None,
                held_out_labels: np.ndarray | None) -> None:
    if len(train) == 0 or len(held_out) == 0:
        raise UsageError(f"distillation needs training and held-out images; got {len(train)} and {len(held_out)}")
    if train.shape[1:] != held_out.shape[1:]:
        raise UsageError(f"training images {train.shape[1:]} and held-out images {held_out.shape[1:]} differ in shape")
    for name, values, data in (("training", labels, train), ("held-out", held_out_labels, held_out)):
        if values is not None and len(values) != len(data):
            raise UsageError(f"{len(values)} {name} labels for {len(data)} {name} images")


class _Trainer:
    """One distillation run: epochs, held-out measurement, early stopping, best weights."""

    def __init__(self, torch: Any, student: Any, options: DistillOptions, reference: np.ndarray,
                 held_out_labels: np.ndarray | None) -> None:
        self.torch, self.student, self.options = torch, student, options
        self.reference, self.held_out_labels = reference, held_out_labels
        self.optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=options.lr)
        self.generator = torch.Generator().manual_seed(options.seed)

    def run(self, train: np.ndarray, targets: np.ndarray, labels: np.ndarray | None, held_out: np.ndarray,
            progress: Callable[[EpochRecord], None] | None) -> DistillReport:
        agreement_before, accuracy_before = self._evaluate(held_out)
        best = (agreement_before, 0, self._snapshot())
        records: list[EpochRecord] = []
        for epoch in range(1, self.options.epochs + 1):
            started = time.perf_counter()
            loss = self._epoch(train, targets, labels)
            agreement, accuracy = self._evaluate(held_out)
            record = EpochRecord(epoch, loss, agreement, accuracy, time.perf_counter() - started)
            records.append(record)
            if progress is not None:
                progress(record)
            if agreement > best[0] + _IMPROVEMENT:
                best = (agreement, epoch, self._snapshot())
            elif epoch - best[1] > self.options.patience:
                break
        self.student.load_state_dict(best[2])
        self.student.eval()
        kept = records[best[1] - 1] if best[1] else None
        return DistillReport(records, best[1], agreement_before, best[0],
                             stopped_early=len(records) < self.options.epochs, accuracy_before=accuracy_before,
                             accuracy_after=kept.accuracy if kept else accuracy_before)

    def _epoch(self, train: np.ndarray, targets: np.ndarray, labels: np.ndarray | None) -> float:
        from toolchain.compress.measure import first_tensor

        torch, functional = self.torch, self.torch.nn.functional
        self.student.train()
        order = torch.randperm(len(train), generator=self.generator).numpy()
        total, seen = 0.0, 0
        for start in range(0, len(train), self.options.batch_size):
            index = order[start:start + self.options.batch_size]
            inputs = torch.from_numpy(np.ascontiguousarray(train[index]))
            logits = first_tensor(torch, self.student(inputs))
            loss = self._loss(functional, logits, torch.from_numpy(targets[index]),
                              None if labels is None else torch.from_numpy(np.asarray(labels)[index]).long())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        return total / seen

    def _loss(self, functional: Any, logits: Any, teacher: Any, labels: Any | None) -> Any:
        temperature = self.options.temperature
        # Class scores on axis 1 (classification (N, C), or dense (N, C, ...)): flatten the rest.
        student_log = functional.log_softmax(_classes_last(logits) / temperature, dim=-1)
        teacher_log = functional.log_softmax(_classes_last(teacher) / temperature, dim=-1)
        soft = functional.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean")
        soft = soft * temperature * temperature
        weight = self.options.hard_label_weight
        if labels is None or weight == 0:
            return soft
        return (1.0 - weight) * soft + weight * functional.cross_entropy(logits, labels)

    def _evaluate(self, held_out: np.ndarray) -> tuple[float, float | None]:
        from toolchain.compress.measure import predict_logits, top1_agreement, top1_match

        logits = predict_logits(self.student, held_out)
        accuracy = None if self.held_out_labels is None else top1_match(logits, self.held_out_labels)
        return top1_agreement(logits, self.reference), accuracy

    def _snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}


def _classes_last(logits: Any) -> Any:
    if logits.dim() <= 2:
        return logits
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


# --- edgekiln distill -----------------------------------------------------------------------------


@dataclass
class DistillResult:
    output: Path
    report: DistillReport
    teacher: Any  # ModelMeasure
    student: Any  # ModelMeasure, after distillation
    images: str
    """How the image folder was split (counts, classes, skipped files)."""
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"output": str(self.output), "report": self.report.to_dict(), "teacher": self.teacher.to_dict(),
                "student": self.student.to_dict(), "images": self.images, "seconds": self.seconds,
                "notes": list(self.notes)}


def api_distill(teacher_source: str | Path | None, student_class: str, output: str | Path, *,
                images: str | Path, labels: bool = False, student_weights: str | Path | None = None,
                student_kwargs: str | dict | None = None, teacher_class: str | None = None,
                teacher_weights: str | Path | None = None, teacher_kwargs: str | dict | None = None,
                trust_pickle: bool = False, inputs: Sequence[str] = (), epochs: int = 5,
                temperature: float = 4.0, hard_label_weight: float = 0.5, lr: float = 1e-3, batch_size: int = 64,
                patience: int = 2, holdout: int | None = None, count: int | None = None, seed: int = 0,
                preprocess: str | dict | None = None, iterations: int = 50, cache_dir: str | Path | None = None,
                progress: Callable[[EpochRecord], None] | None = None) -> DistillResult:
    """``edgekiln distill``: train ``student_class`` on ``images`` to reproduce the teacher, measure both, save.

    ``labels`` True reads one sub-folder per class: accuracy is reported and ``hard_label_weight``
    of cross-entropy is mixed in. The output's suffix picks the format (.pt TorchScript, .pt2, .pth).
    """
    from toolchain.compress import torch_io
    from toolchain.compress.data import load_images

    started = time.perf_counter()
    options = DistillOptions(epochs, temperature, hard_label_weight, lr, batch_size, patience, seed)
    options.check()
    output = Path(output)
    torch_io.check_save_suffix(output)
    shape = torch_io.input_shape(inputs)
    teacher = torch_io.load_torch_module(
        Path(teacher_source) if teacher_source else None, model_class=teacher_class,
        weights=Path(teacher_weights) if teacher_weights else None,
        model_kwargs=parse_kwargs(teacher_kwargs, "--teacher-kwargs"), trust_pickle=trust_pickle)
    torch = require("torch", _PURPOSE)
    with torch.random.fork_rng(devices=[]):  # a fresh student's initial weights come from the seed too
        torch.manual_seed(seed)
        student = torch_io.build_module(student_class, weights=Path(student_weights) if student_weights else None,
                                        model_kwargs=parse_kwargs(student_kwargs, "--student-kwargs"))
    split = load_images(Path(images), shape, holdout=holdout, count=count, seed=seed, preprocess=preprocess,
                        labels=labels, cache_dir=Path(cache_dir) if cache_dir else None)
    example = split.held_out[:1]
    check_output_shapes(teacher, student, example)  # before anything slow
    torch_io.check_saveable(student, example, split.held_out, output)
    report = distill(teacher, student, split.train, split.held_out, options, labels=split.train_labels,
                     held_out_labels=split.held_out_labels, progress=progress)
    teacher_measure, student_measure = _measure_pair(teacher, student, split, iterations)
    torch_io.save_module(student, example, split.held_out, output)
    return DistillResult(output, report, teacher_measure, student_measure, split.summary,
                         time.perf_counter() - started)


def _measure_pair(teacher: Any, student: Any, split: Any, iterations: int) -> tuple[Any, Any]:
    """Teacher and student exported to ONNX and measured the same way, agreement against the teacher."""
    torch = require("torch", _PURPOSE)
    from toolchain.compress.measure import measure_module, predict_logits

    reference = predict_logits(teacher, split.held_out)
    example = torch.from_numpy(np.ascontiguousarray(split.held_out[:1]))
    measures = [measure_module(module, example, split.held_out, labels=split.held_out_labels,
                               reference_logits=reference, iterations=iterations) for module in (teacher, student)]
    return measures[0], measures[1]
