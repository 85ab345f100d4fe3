"""``edgekiln qat``: quantization-aware fine-tuning, exported as the same QDQ ONNX that PTQ writes.

Why this design, rather than ``torch.ao.quantization`` QAT exported through its
FakeQuantize-to-QuantizeLinear mapping: that route places quantizers by its own
rules (fused conv-bn-relu patterns, its own observers), so its graph and its
numbers would differ from the project's post-training INT8, and it needs an
FX-traceable model and a torch API that is being deprecated in favour of torchao.
Here only the *weights* are learned, and the ONNX is written by the project's PTQ
pass itself:

1. the FP32 model is exported to ONNX and quantized by ``edgekiln calibrate``'s
   code (``toolchain.api.calibrate``, guard off) on the training images: the PTQ
   baseline, and its activation ranges;
2. a fake-quant copy of the module (``fakequant``: ORT's int8 scheme for the
   target, activation ranges measured on the same images with float weights, hence
   equal to PTQ's; BatchNorm folded into the convolutions the export folds it into,
   so the weights it quantizes are bit for bit the ones ORT quantizes, with ORT's
   arithmetic) is fine-tuned by distillation from the FP32 model (``distill``),
   unlabelled images suffice;
3. the fine-tuned float weights are exported to ONNX again (same exporter, so the
   same tensor names) and quantized by ``quantize_static`` *with the PTQ ranges*:
   QAT and PTQ differ only in the weights, and the graph structure is the one
   every backend already accepts (TensorRT targets get ``to_tensorrt_qdq``'s form,
   checked by ``qdq_problems``);
4. the exported float weights are checked to be exactly the ones the fake-quant
   model quantized (a note names any layer that is not: its folding differs from the
   export's), ONNX Runtime runs the result and it is compared with the fake-quant
   torch model (top-1 agreement, cosine), and FP32, PTQ and QAT are measured side by
   side.

``weight_bits=4`` (ONNX Runtime targets only): the same flow with int4 per-channel
weights, ORT's int4 QDQ at opset 21, applied to Conv and Gemm/MatMul alike. ORT has
no int4 kernels, so it buys a smaller file, not speed; PTQ is then int4 as well.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ConversionError, UsageError, VerificationError
from toolchain.inputs import parse_kwargs

# The exported QDQ model must reproduce the fake-quant model it came from at least this well.
MIN_EXPORT_COSINE = 0.98
INT4_OPSET = 21


@dataclass(frozen=True)
class QatOptions:
    """Fine-tuning settings (``--epochs``, ``--lr`` ...); distillation from the FP32 model does the training."""

    epochs: int = 3
    lr: float = 1e-4
    """Adam learning rate; small, because the weights start trained and only need to adapt to rounding."""
    batch_size: int = 32
    temperature: float = 2.0
    hard_label_weight: float = 0.0
    """Cross-entropy on true labels mixed in (with --labels); 0 = match the FP32 model only."""
    patience: int = 2
    seed: int = 0
    weight_bits: int = 8

    def distill_options(self) -> Any:
        """The ``DistillOptions`` that fine-tune the fake-quant model."""
        from toolchain.compress.distill import DistillOptions

        return DistillOptions(self.epochs, self.temperature, self.hard_label_weight, self.lr, self.batch_size,
                              self.patience, self.seed)


@dataclass
class ExportCheck:
    """ONNX Runtime running the exported QDQ model versus the fake-quant torch model, on held-out images."""

    agreement: float
    min_cosine: float
    mean_cosine: float


@dataclass
class QatResult:
    output: Path
    ranges_path: Path
    target: str
    scheme: dict
    report: Any  # DistillReport
    fp32: Any  # ModelMeasure
    ptq: Any
    qat: Any
    export_check: ExportCheck
    images: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"output": str(self.output), "ranges": str(self.ranges_path), "target": self.target,
                "scheme": self.scheme, "report": self.report.to_dict(), "fp32": self.fp32.to_dict(),
                "ptq": self.ptq.to_dict(), "qat": self.qat.to_dict(), "export_check": asdict(self.export_check),
                "images": self.images, "seconds": self.seconds, "notes": list(self.notes)}


def api_qat(source: str | Path | None, output: str | Path, *, calib: str | Path, labels: bool = False,
            target: str = "x86", epochs: int = 3, lr: float = 1e-4, batch_size: int = 32, temperature: float = 2.0,
            hard_label_weight: float = 0.0, patience: int = 2, weight_bits: int = 8, holdout: int | None = None,
            count: int | None = None, seed: int = 0, preprocess: str | dict | None = None,
            model_class: str | None = None, weights: str | Path | None = None,
            model_kwargs: str | dict | None = None, trust_pickle: bool = False, inputs: Sequence[str] = (),
            iterations: int = 50, cache_dir: str | Path | None = None,
            progress: Callable[[Any], None] | None = None) -> QatResult:
    """``edgekiln qat``: fine-tune with fake quantization, write a QDQ ONNX, and measure FP32/PTQ/QAT."""
    from toolchain.compress import torch_io
    from toolchain.compress.data import load_images
    from toolchain.fileio import check_writable_destination

    started = time.perf_counter()
    options = QatOptions(epochs, lr, batch_size, temperature, hard_label_weight, patience, seed, weight_bits)
    output = Path(output)
    _check_request(output, target, options)
    check_writable_destination(output)
    model = torch_io.load_torch_module(Path(source) if source else None, model_class=model_class,
                                       weights=Path(weights) if weights else None,
                                       model_kwargs=parse_kwargs(model_kwargs, "--model-kwargs"),
                                       trust_pickle=trust_pickle, allow_torchscript=False)
    split = load_images(Path(calib), torch_io.input_shape(inputs), holdout=holdout, count=count, seed=seed,
                        preprocess=preprocess, labels=labels, cache_dir=Path(cache_dir) if cache_dir else None)
    with tempfile.TemporaryDirectory(prefix="edgekiln-qat-") as tmp:
        result = _Run(model, split, target, options, Path(tmp), iterations).run(output, progress)
    result.seconds = time.perf_counter() - started
    return result


def _check_request(output: Path, target: str, options: QatOptions) -> None:
    from toolchain.targets import get_target

    if output.suffix.lower() != ".onnx":
        raise UsageError(f"output '{output.name}' must end in .onnx (QAT writes a QDQ ONNX model)")
    get_target(target)
    if options.weight_bits not in (4, 8):
        raise UsageError(f"--weight-bits must be 8 or 4, got {options.weight_bits}")
    if options.weight_bits == 4 and get_target(target).backend != "onnxruntime":
        raise UsageError(
            f"--weight-bits 4 needs an ONNX Runtime target (x86), not {target}: TensorRT takes 4-bit weights only "
            "for MatMul/Gemm in its own weight-only form, and TFLite none from a QDQ model",
            hint="Use --weight-bits 8 for this target.")
    options.distill_options().check()


class _Run:
    """One QAT run's steps (export, PTQ, fine-tune, export again, verify, measure), sharing a work folder."""

    def __init__(self, model: Any, split: Any, target: str, options: QatOptions, workdir: Path,
                 iterations: int) -> None:
        from toolchain.passes.quantize import QuantizeConfig
        from toolchain.targets import get_target

        from toolchain.compress.fakequant import QuantScheme

        self.model, self.split, self.target, self.options = model, split, target, options
        self.workdir, self.iterations = workdir, iterations
        self.config = QuantizeConfig.for_target(target, method="minmax")
        self.notes: list[str] = []
        if self.config.depthwise_full_range:
            # The fake-quant model simulates one weight range for every layer: 7 bits on CPUs without VNNI.
            self.config = self.config.model_copy(update={"depthwise_full_range": False})
            self.notes.append("this CPU has no VNNI: QAT uses 7-bit int8 weights in every layer (reduce_range), and "
                              "so does the PTQ model it is compared with (edgekiln's PTQ alone keeps depthwise "
                              "convolutions at 8 bits)")
        self.scheme = QuantScheme.from_config(self.config, options.weight_bits)
        self.opset = get_target(target).opset
        if options.weight_bits == 4:
            # int4 DequantizeLinear exists from opset 21 on.
            self.opset = max(self.opset, INT4_OPSET)
            self.notes.append("4-bit weights: ONNX Runtime stores them packed (a smaller file) but has no int4 "
                              "kernels: it dequantizes them to float at run time, so this model runs slower "
                              "than an int8 one (compare the latencies)")
        self.is_tensorrt = get_target(target).backend == "tensorrt"

    def run(self, output: Path, progress: Callable[[Any], None] | None) -> QatResult:
        from toolchain.compress import fakequant
        from toolchain.compress.distill import distill
        from toolchain.compress.measure import predict_logits

        fp32_path = self._export(self.model, "fp32.onnx")
        ptq_path, ranges = self._ptq(fp32_path)
        student = fakequant.fake_quant_model(self.model, self.scheme)
        fakequant.calibrate(student, self.split.train, self.scheme)
        report = distill(self.model, student, self.split.train, self.split.held_out, self.options.distill_options(),
                         labels=self.split.train_labels if self.options.hard_label_weight > 0 else None,
                         held_out_labels=self.split.held_out_labels, progress=progress)
        tuned = self._export(fakequant.float_model(student, self.model), "tuned.onnx")
        unmatched = unmatched_weights(student, tuned)
        if unmatched:
            shown = ", ".join(unmatched[:3]) + (f" (+{len(unmatched) - 3} more)" if len(unmatched) > 3 else "")
            self.notes.append(f"the fake-quant model trained {len(unmatched)} layer(s) on weights that are not the "
                              f"exported ones ({shown}): the export transformed them (e.g. folded BatchNorm into a "
                              "convolution called twice, which one module cannot simulate), so the QDQ model may "
                              "not reproduce the fine-tuned one")
        qdq = self._quantize(tuned, ranges)
        check = export_check(qdq, predict_logits(student, self.split.held_out), self.split.held_out,
                             integer_reference=self.exact)
        measures = self._measure(fp32_path, ptq_path, qdq)
        ranges_path = _publish(qdq, ranges, output, self.split.spec)
        return QatResult(output, ranges_path, self.target, {**asdict(self.scheme), "method": self.config.method,
                                                             "per_channel_weights": True, "opset": self.opset},
                         report, *measures, check, self.split.summary, 0.0, self.notes)

    def _export(self, module: Any, name: str) -> Path:
        return export_onnx(module, self.split.held_out[:1], self.workdir / name, self.opset)

    def _ptq(self, fp32_path: Path) -> tuple[Path, Any]:
        """The project's post-training INT8 of the FP32 model on the training images, guard off."""
        from calibration.ranges import ActivationRanges
        from toolchain.passes.calibrate import CalibrationOptions, calibrate

        # The training images themselves, as arrays: PTQ's ranges and the fake-quant ranges are then
        # measured on bit-identical inputs (a folder would be re-split and re-decoded).
        samples = self.workdir / "train.npy"
        np.save(samples, self.split.train)
        path = self.workdir / "ptq.onnx"
        calibrate(fp32_path, path, CalibrationOptions(samples, count=len(self.split.train), holdout=0,
                                                      seed=self.options.seed), self.config, budget=None)
        ranges = ActivationRanges.load(path.with_suffix(".ranges.json"))
        if self.options.weight_bits == 4:  # same ranges, 4-bit weights: PTQ at the settings QAT uses
            from toolchain.onnx_io import load_onnx, save_onnx
            from toolchain.passes.quantize import named_copy, quantize_static

            save_onnx(quantize_static(named_copy(load_onnx(fp32_path)), ranges, self.config, weight_bits=4), path)
        if self.is_tensorrt:  # measure PTQ in the same form as the QAT output, so sizes compare like with like
            from toolchain.onnx_io import load_onnx, save_onnx

            save_onnx(_tensorrt_form(load_onnx(path)), path)
            self.notes.append("TensorRT form: float weights behind QuantizeLinear/DequantizeLinear pairs, so the "
                              "ONNX file is FP32-sized; the engine TensorRT builds from it holds int8 weights")
        return path, ranges

    def _quantize(self, tuned: Path, ranges: Any) -> Path:
        """``quantize_static`` of the fine-tuned model with PTQ's ranges (and TensorRT's form for TensorRT)."""
        from toolchain.onnx_io import load_onnx, save_onnx
        from toolchain.passes.quantize import named_copy, quantize_static

        model = named_copy(load_onnx(tuned))
        missing = sorted(set(ranges.ranges) - {v for n in model.graph.node for v in (*n.input, *n.output)}
                         - {i.name for i in model.graph.input})
        if missing:  # same module class and exporter, so this would be a bug, not a user error
            raise ConversionError(f"the fine-tuned model's ONNX lacks tensors the PTQ ranges name: {missing[:3]}")
        quantized = quantize_static(model, ranges, self.config, weight_bits=self.options.weight_bits)
        if self.is_tensorrt:
            quantized = _tensorrt_form(quantized)
        path = self.workdir / "qat.onnx"
        save_onnx(quantized, path)
        return path

    def _measure(self, fp32_path: Path, ptq_path: Path, qat_path: Path) -> tuple[Any, Any, Any]:
        from toolchain.compress.measure import count_parameters, measure_onnx, onnx_macs, predict_logits

        reference = predict_logits(self.model, self.split.held_out)
        parameters, macs = count_parameters(self.model), onnx_macs(fp32_path)
        return tuple(measure_onnx(path, self.split.held_out, labels=self.split.held_out_labels,
                                  reference_logits=reference, iterations=self.iterations, parameters=parameters,
                                  macs=macs, integer_reference=self.exact and path != fp32_path)
                     for path in (fp32_path, ptq_path, qat_path))

    @property
    def exact(self) -> bool:
        """Judge INT8 with exact integer arithmetic (TensorRT, or a CPU other than this one)."""
        return self.config.guard_runtime == "reference"


def export_onnx(module: Any, example: np.ndarray, path: Path, opset: int) -> Path:
    """The TorchScript-based exporter with a dynamic batch axis, at the target's opset (as ``convert``).

    ``measure.export_onnx`` at another opset: the same tensor names as every measured model.
    """
    from toolchain.compress.measure import export_onnx as export_at

    return export_at(module, example, path, opset)


def unmatched_weights(student: Any, path: Path) -> list[str]:
    """Layers of the fake-quant ``student`` whose float weight (BatchNorm folded where it folds it) is not, bit for
    bit, a weight of the exported FP32 ONNX at ``path``: the weights ORT quantizes would then not be the ones the
    fake-quant model quantized."""
    from onnx import numpy_helper

    from toolchain.compress import fakequant
    from toolchain.onnx_io import load_onnx

    model = load_onnx(Path(path))
    initializers = {t.name: t for t in model.graph.initializer}
    exported = [numpy_helper.to_array(initializers[name]) for node in model.graph.node
                if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                for name in node.input[1:2] if name in initializers]
    missing = []
    for name, weight in fakequant.exported_weights(student):
        candidates = (weight, weight.T) if weight.ndim == 2 else (weight,)
        if not any(np.array_equal(w, e) for w in candidates for e in exported if e.shape == w.shape):
            missing.append(name)
    return missing


def quantize_int4(model: Any, ranges: Any, config: Any) -> Any:
    """``quantize_static`` with int4 per-channel weights (needs opset 21); activations keep the config's type."""
    from toolchain.passes.quantize import quantize_static

    return quantize_static(model, ranges, config, weight_bits=4)


def _tensorrt_form(model: Any) -> Any:
    """Float weights behind Q/DQ pairs, float biases (what TensorRT parses); refuse anything it would reject."""
    from backends.tensorrt.qdq import qdq_problems, to_tensorrt_qdq

    converted, _counts = to_tensorrt_qdq(model)
    problems = qdq_problems(converted)
    if problems:
        raise ConversionError(f"the QAT model breaks TensorRT's QDQ rules: {problems[0]}"
                              + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    return converted


def export_check(path: Path, fake_quant_logits: np.ndarray, images: np.ndarray, *,
                 integer_reference: bool = False) -> ExportCheck:
    """Run the exported model in ONNX Runtime and compare it with the fake-quant torch model.

    The fake-quant model computes exact integer arithmetic; ``integer_reference`` makes ORT do the same
    where this CPU's INT8 kernels would not (a model for TensorRT, or for a CPU with VNNI run without it).
    """
    from toolchain.runtime import OnnxRuntimeRunner
    from toolchain.compress.measure import onnx_logits, top1_agreement

    runner = OnnxRuntimeRunner.from_path(path, integer_reference=integer_reference)
    logits = onnx_logits(runner, images.astype(np.float32, copy=False), 64)
    a = logits.reshape(len(logits), -1).astype(np.float64)
    b = fake_quant_logits.reshape(len(fake_quant_logits), -1).astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    check = ExportCheck(top1_agreement(logits, fake_quant_logits), float(cosine.min()), float(cosine.mean()))
    if check.mean_cosine < MIN_EXPORT_COSINE:
        raise VerificationError(f"the exported QDQ model does not reproduce the fake-quant model: mean cosine "
                                f"{check.mean_cosine:.4f} < {MIN_EXPORT_COSINE}, top-1 agreement {check.agreement:.2%}")
    return check


def _publish(qdq: Path, ranges: Any, output: Path, spec: dict) -> Path:
    """Write the QDQ model and its ranges (``<name>.ranges.json``, as ``calibrate`` does) atomically."""
    import shutil

    from calibration.ranges import ActivationRanges
    from toolchain.fileio import atomic_file

    ranges_path = output.with_suffix(".ranges.json")
    details = {**ranges.details, "preprocess": spec, "qat": True}
    with atomic_file(output) as tmp:
        shutil.copyfile(qdq, tmp)
    ActivationRanges(ranges.method, dict(ranges.ranges), details).save(ranges_path)
    return ranges_path
