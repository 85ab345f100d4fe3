"""``edgekiln distill`` and ``edgekiln qat``: thin Click commands over ``distill.api_distill`` and ``qat.api_qat``.

Only click is imported here; torch and the rest load when a command runs. Epoch
progress goes to the ``edgekiln`` logger (stderr), the result tables to stdout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from toolchain.json_output import echo_json, json_flag

_path = click.Path(path_type=Path)
_log = logging.getLogger("edgekiln")


def _log_epoch(record: Any) -> None:
    accuracy = "" if record.accuracy is None else f", accuracy {record.accuracy:.2%}"
    _log.info(f"epoch {record.epoch}: loss {record.loss:.4f}, agreement {record.agreement:.2%}{accuracy} "
              f"({record.seconds:.1f} s)")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def print_epochs(report: Any) -> None:
    from toolchain.report import print_table, say

    rows = [(r.epoch, f"{r.loss:.4f}", _percent(r.agreement), _percent(r.accuracy), f"{r.seconds:.1f}",
             "kept" if r.epoch == report.best_epoch else "") for r in report.epochs]
    print_table(f"training (held-out agreement before: {_percent(report.agreement_before)})",
                ["epoch", "loss", "agreement", "accuracy", "seconds", ""], rows)
    if report.best_epoch == 0:
        say("  no epoch beat the starting weights, which are kept")
    if report.stopped_early:
        say(f"  stopped early after epoch {report.epochs[-1].epoch}: no gain for the last epochs")


def print_measures(title: str, measures: list[tuple[str, Any]]) -> None:
    from toolchain.model_info import human_bytes, human_count
    from toolchain.report import print_table

    rows = [(name, human_count(m.parameters), human_count(m.macs), human_bytes(m.onnx_bytes),
             f"{m.latency_p50_ms:.3f}", f"{m.latency_p90_ms:.3f}", _percent(m.accuracy), _percent(m.agreement))
            for name, m in measures]
    print_table(title, ["model", "parameters", "MACs", "ONNX size", "p50 ms", "p90 ms", "accuracy", "agreement"],
                rows)


def _training_options(command: Any) -> Any:
    """Flags shared by both commands: the image split, the optimizer and early stopping."""
    options = [
        click.option("--labels", is_flag=True,
                     help="The image folder has one sub-folder per class: report accuracy, allow hard labels."),
        click.option("--input", "input_shape", required=True, metavar="[NAME:]SHAPE",
                     help="Model input shape, e.g. 1x3x224x224 (PyTorch models do not record it)."),
        click.option("--preprocess", default=None, metavar="PRESET",
                     help="Image preprocessing preset (imagenet, yolo, raw01, raw255, gray01); "
                          "default from the shape."),
        click.option("--holdout", type=int, default=None,
                     help="Held-out images, never trained on, for agreement/accuracy and early stopping "
                          "(default: 40% of the folder, 16 to 128, at most half)."),
        click.option("--count", type=int, default=None, help="Most training images (default: all the others)."),
        click.option("--batch-size", type=int, default=None, help="Training batch size (distill 64, qat 32)."),
        click.option("--lr", type=float, default=None, help="Adam learning rate (distill 1e-3, qat 1e-4)."),
        click.option("--temperature", type=float, default=None,
                     help="Softmax temperature of the soft targets (distill 4, qat 2)."),
        click.option("--hard-label-weight", type=float, default=None,
                     help="Share of cross-entropy on the true labels, with --labels (distill 0.5, qat 0)."),
        click.option("--patience", type=int, default=2, show_default=True,
                     help="Epochs without a held-out gain before stopping."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, shuffling and init."),
        click.option("--iterations", type=int, default=50, show_default=True, help="Timed runs per latency measure."),
        click.option("--cache-dir", type=_path, default=None, help="Cache of preprocessed images (default: none)."),
        click.option("--trust-pickle", is_flag=True, help="Allow unpickling a whole model object (runs its code)."),
        json_flag,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _print_result(result: Any, as_json: bool, title: str, measures: list[tuple[str, Any]]) -> bool:
    """``result`` as JSON, or its images, epochs and measures tables; True when the tables were printed."""
    if as_json:
        echo_json(result)
        return False
    from toolchain.report import say

    say(f"images: {result.images}")
    print_epochs(result.report)
    print_measures(title, measures)
    return True


def _given(**values: Any) -> dict:
    """Only the flags the user set, so the API's defaults (which differ between commands) apply otherwise."""
    return {k: v for k, v in values.items() if v is not None}


@click.command()
@click.option("--teacher", "teacher_source", type=_path, default=None,
              help="Teacher model: TorchScript .pt, a pickled module, or a state dict with --teacher-class.")
@click.option("--teacher-class", default=None, metavar="MODULE:CLASS", help="Teacher architecture for a state dict.")
@click.option("--teacher-weights", type=_path, default=None, help="Teacher state dict (default: --teacher).")
@click.option("--teacher-kwargs", default=None, metavar="JSON", help="Constructor arguments of --teacher-class.")
@click.option("--student-class", "--student", "student_class", required=True, metavar="MODULE:CLASS",
              help="Student architecture: package.module:Class or path/to/file.py:Class.")
@click.option("--student-weights", type=_path, default=None, help="Start the student from this state dict.")
@click.option("--student-kwargs", default=None, metavar="JSON", help="Constructor arguments of the student.")
@click.option("--images", type=_path, required=True, help="Folder of training images (no labels needed).")
@click.option("--epochs", type=int, default=5, show_default=True, help="Most training epochs.")
@click.option("-o", "--output", type=_path, required=True,
              help="Student file: .pt (TorchScript, traced and checked), .pt2 (torch.export) or .pth (state dict).")
@_training_options
def distill(teacher_source: Path | None, teacher_class: str | None, teacher_weights: Path | None,
            teacher_kwargs: str | None, student_class: str, student_weights: Path | None, student_kwargs: str | None,
            images: Path, epochs: int, output: Path, input_shape: str, as_json: bool, batch_size: int | None,
            lr: float | None, temperature: float | None, hard_label_weight: float | None, **options: Any) -> None:
    """Train a smaller student to reproduce a teacher on unlabelled images (knowledge distillation).

    \b
    edgekiln distill --teacher model.pt --student-class mynets.py:Small --images imgs/ \\
        --input 1x3x224x224 --epochs 10 -o small.pt
    """
    from toolchain.compress.distill import api_distill

    result = api_distill(teacher_source, student_class, output, images=images, student_weights=student_weights,
                         student_kwargs=student_kwargs, teacher_class=teacher_class, teacher_weights=teacher_weights,
                         teacher_kwargs=teacher_kwargs, inputs=[input_shape], epochs=epochs,
                         progress=None if as_json else _log_epoch,
                         **_given(batch_size=batch_size, lr=lr, temperature=temperature,
                                  hard_label_weight=hard_label_weight), **options)
    title = "teacher vs student (ONNX Runtime on this CPU, held-out images; agreement with the teacher)"
    if not _print_result(result, as_json, title, [("teacher", result.teacher), ("student", result.student)]):
        return
    from toolchain.report import say

    say(f"wrote {result.output} ({result.seconds:.1f} s)")


@click.command()
@click.argument("source", type=_path, required=False)
@click.option("--calib", type=_path, required=True,
              help="Folder of images: ranges, fine-tuning and held-out measurement (no labels needed).")
@click.option("--epochs", type=int, default=3, show_default=True, help="Most fine-tuning epochs.")
@click.option("--target", default="x86", show_default=True,
              help="Device profile; picks the INT8 scheme (uint8 activations for ONNX Runtime, symmetric int8 "
                   "for TensorRT, int8 for TFLite).")
@click.option("--weight-bits", type=click.Choice(["8", "4"]), default="8", show_default=True,
              help="Weight bits; 4 (ONNX Runtime targets only) stores int4 QDQ weights at opset 21: a smaller "
                   "file, not a faster one (ONNX Runtime has no int4 kernels).")
@click.option("--model-class", default=None, metavar="MODULE:CLASS", help="Architecture for a state dict.")
@click.option("--weights", type=_path, default=None, help="State dict for --model-class (default: SOURCE).")
@click.option("--model-kwargs", default=None, metavar="JSON", help="Constructor arguments of --model-class.")
@click.option("-o", "--output", type=_path, required=True, help="QDQ ONNX model to write.")
@_training_options
def qat(source: Path | None, calib: Path, epochs: int, target: str, weight_bits: str, model_class: str | None,
        weights: Path | None, model_kwargs: str | None, output: Path, input_shape: str, as_json: bool,
        batch_size: int | None, lr: float | None, temperature: float | None, hard_label_weight: float | None,
        **options: Any) -> None:
    """Quantization-aware fine-tuning to a QDQ INT8 ONNX model, compared with FP32 and post-training INT8.

    \b
    edgekiln qat --model-class mynets.py:Net --weights net.pth --input 1x3x224x224 \\
        --calib imgs/ --epochs 3 --target x86 -o net.qdq.onnx
    """
    from toolchain.compress.qat import api_qat

    result = api_qat(source, output, calib=calib, target=target, epochs=epochs, weight_bits=int(weight_bits),
                     model_class=model_class, weights=weights, model_kwargs=model_kwargs, inputs=[input_shape],
                     progress=None if as_json else _log_epoch,
                     **_given(batch_size=batch_size, lr=lr, temperature=temperature,
                              hard_label_weight=hard_label_weight), **options)
    title = (f"FP32 vs post-training INT8 vs QAT INT8 for {target} (ONNX Runtime on this CPU, held-out images; "
             "agreement with FP32)")
    if not _print_result(result, as_json, title, [("fp32", result.fp32), ("ptq int8", result.ptq),
                                                  ("qat int8", result.qat)]):
        return
    from toolchain.report import say

    check = result.export_check
    say(f"exported QDQ vs fake-quant PyTorch: top-1 agreement {check.agreement:.2%}, "
        f"cosine min {check.min_cosine:.5f} / mean {check.mean_cosine:.5f}")
    for note in result.notes:
        say(f"  note: {note}")
    say(f"wrote {result.output} and {result.ranges_path.name} ({result.seconds:.1f} s)")
