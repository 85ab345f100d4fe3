"""What a compression step bought and cost: size, MACs, measured latency, accuracy or agreement.

A model is measured *after export*: the ONNX file is what ships, and its latency
on ONNX Runtime is what a user will see, whereas PyTorch's eager latency (or a
parameter count) says little about it. Unstructured sparsity, for example,
leaves both the ONNX size and the latency unchanged.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import UsageError, first_line
from toolchain.lazy import require

ONNX_OPSET = 17
_INPUT, _OUTPUT = "input", "output"
_WARMUP = 10
_EVAL_BATCH = 64


@dataclass
class ModelMeasure:
    """One model's numbers; ``accuracy``/``agreement`` are None when there was nothing to compare with."""

    parameters: int
    macs: int
    onnx_bytes: int
    latency_p50_ms: float
    latency_p90_ms: float
    accuracy: float | None  # top-1 on labelled held-out images, when labels are given
    agreement: float | None  # top-1 agreement with a reference (teacher) on held-out images
    nonzero_parameters: int | None = None  # differs from ``parameters`` only after unstructured pruning

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_nonzero(module: Any) -> int:
    return int(sum(int((p != 0).sum()) for p in module.parameters()))


def count_macs(module: Any, example: Any, *, onnx_path: Path | None = None) -> int:
    """Multiply-accumulates of one forward pass on ``example``.

    An ``nn.Module`` is counted by torch-pruning's counter. That counter hooks submodules, which
    TorchScript modules refuse, so those are counted on their exported ONNX graph instead
    (``onnx_macs``; ``onnx_path`` is that export when the caller already has it). The two counters
    differ a little: torch-pruning also counts BatchNorm and pooling, the ONNX count does not.
    """
    torch = require("torch", "Counting MACs")
    if isinstance(module, torch.jit.ScriptModule):
        if onnx_path is not None:
            return onnx_macs(onnx_path)
        with tempfile.TemporaryDirectory(prefix="edgekiln-macs-") as tmp:
            return onnx_macs(export_onnx(module, example, Path(tmp) / "model.onnx"))
    import torch_pruning as tp

    from toolchain.quiet import quiet

    with quiet():  # the counter may print unsupported-module notes
        macs, _params = tp.utils.count_ops_and_params(module, example)
    return int(macs)


def onnx_macs(path: Path) -> int:
    """Multiply-accumulates of an ONNX model at batch 1 (``edgekiln inspect``'s counter)."""
    from toolchain.model_info import summarize
    from toolchain.onnx_io import load_onnx

    return summarize(load_onnx(Path(path))).macs


def predict_logits(module: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """``module``'s first output on ``images`` in eval mode without gradients; the module's mode is restored."""
    torch = require("torch", "Running a PyTorch model")
    was_training = module.training
    module.eval()
    outputs: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch]))
                outputs.append(first_tensor(torch, module(chunk)).float().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32)


def output_shape(module: Any, example: np.ndarray, role: str = "model", hint: str | None = None) -> tuple[int, ...]:
    """The shape of ``module``'s first output on ``example``; a one-line error naming ``role`` if forward() fails."""
    try:
        return tuple(predict_logits(module, example).shape)
    except UsageError:
        raise
    except Exception as exc:  # the user's forward() failed
        raise UsageError(f"the {role} fails on an input of shape {tuple(example.shape)}: {first_line(exc)}",
                         hint=hint) from exc


def export_onnx(module: Any, example: Any, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Export with the TorchScript-based exporter and a dynamic batch axis, as ``convert`` does (opset 17 by default).

    The input is named ``input`` and the first output ``output``, for every model measured here.
    """
    torch = require("torch", "Exporting a PyTorch model")
    from toolchain.frontends.torch_frontend import export_to_proto
    from toolchain.onnx_io import save_onnx

    if not isinstance(example, torch.Tensor):
        example = torch.from_numpy(np.ascontiguousarray(example))
    kwargs = dict(input_names=[_INPUT], output_names=[_OUTPUT], opset_version=opset, dynamo=False,
                  do_constant_folding=True, dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}})
    was_training = module.training
    module.eval()
    try:
        save_onnx(export_to_proto(torch, module, (example,), kwargs), path)
    finally:
        module.train(was_training)
    return path


def measure_module(module: Any, example: Any, images: np.ndarray, *, labels: np.ndarray | None = None,
                   reference_logits: np.ndarray | None = None, iterations: int = 50,
                   workdir: Path | None = None, threads: int | None = None) -> ModelMeasure:
    """Export ``module`` to ONNX (kept in ``workdir`` if given, else a temp folder) and measure it there.

    ``module`` may be an ``nn.Module`` or TorchScript (see ``count_macs``).
    """
    parameters = count_parameters(module)
    with tempfile.TemporaryDirectory(prefix="edgekiln-measure-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        path = export_onnx(module, example, folder / "model.onnx")
        macs = count_macs(module, example, onnx_path=path)
        measured = measure_onnx(path, images, labels=labels, reference_logits=reference_logits,
                                iterations=iterations, parameters=parameters, macs=macs, threads=threads)
    measured.nonzero_parameters = count_nonzero(module)
    return measured


def measure_onnx(path: Path, images: np.ndarray, *, labels: np.ndarray | None = None,
                 reference_logits: np.ndarray | None = None, iterations: int = 50,
                 parameters: int | None = None, macs: int | None = None,
                 threads: int | None = None, integer_reference: bool = False) -> ModelMeasure:
    """Latency at batch 1 (median of ``iterations`` after a warm-up) and quality on ``images`` with ORT.

    ``parameters``/``macs`` are passed through (an ONNX file, a QDQ one in particular, does not
    say what its PyTorch source had); without them they are reported as 0. ``integer_reference``
    computes quality with exact integer arithmetic (a model for TensorRT or another CPU); latency
    always comes from this machine's own kernels.
    """
    from toolchain.runtime import OnnxRuntimeRunner

    if iterations < 1:
        raise UsageError(f"the number of timed iterations must be at least 1, got {iterations}")
    if len(images) == 0:
        raise UsageError("measuring a model needs at least one held-out image")
    runner = OnnxRuntimeRunner.from_path(Path(path), threads=threads)
    if len(runner.inputs) != 1:
        raise UsageError(f"'{Path(path).name}' has {len(runner.inputs)} inputs; measuring feeds one image input")
    info = runner.inputs[0]
    p50, p90 = _latency(runner, {info.name: images[:1].astype(info.dtype, copy=False)}, iterations)
    batch = info.shape[0] if isinstance(info.shape[0], int) else _EVAL_BATCH
    if integer_reference:
        runner = OnnxRuntimeRunner.from_path(Path(path), threads=threads, integer_reference=True)
    logits = onnx_logits(runner, images.astype(info.dtype, copy=False), batch)
    return ModelMeasure(parameters=parameters or 0, macs=macs or 0, onnx_bytes=_onnx_bytes(Path(path)),
                        latency_p50_ms=p50, latency_p90_ms=p90,
                        accuracy=None if labels is None else top1_match(logits, labels),
                        agreement=None if reference_logits is None else top1_agreement(logits, reference_logits))


def top1_agreement(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Share of samples whose arg-max class equals the reference's."""
    if len(logits) != len(reference_logits):
        raise UsageError(f"{len(logits)} predictions but {len(reference_logits)} reference outputs")
    return top1_match(logits, _argmax(reference_logits))


def top1_match(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose arg-max class equals ``labels``."""
    if len(logits) != len(labels):
        raise UsageError(f"{len(logits)} predictions but {len(labels)} labels")
    return float(np.mean(_argmax(logits) == np.asarray(labels).reshape(-1))) if len(labels) else 0.0


def _argmax(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).reshape(len(logits), -1).argmax(axis=1)


def _latency(runner: Any, feed: dict[str, np.ndarray], iterations: int) -> tuple[float, float]:
    from toolchain.bench import time_runs

    times = time_runs(runner, feed, warmup=_WARMUP, iterations=iterations)
    return statistics.median(times), float(np.percentile(times, 90))


def onnx_logits(runner: Any, images: np.ndarray, batch: int) -> np.ndarray:
    """The first output on all ``images``, ``batch`` at a time (a fixed-batch model gets a padded last batch)."""
    name, output = runner.inputs[0].name, runner.outputs[0].name
    chunks = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) < batch and isinstance(runner.inputs[0].shape[0], int):
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        chunks.append(runner.run_named({name: chunk}, [output])[output][:len(images) - start])
    return np.concatenate(chunks)


def _onnx_bytes(path: Path) -> int:
    data = path.parent / f"{path.name}.data"  # save_onnx's external-data file for large models
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def first_tensor(torch: Any, value: Any) -> Any:
    """The first tensor of a forward() result (the class scores), through nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict) and value:
        return first_tensor(torch, next(iter(value.values())))
    if isinstance(value, (list, tuple)) and value:
        return first_tensor(torch, value[0])
    raise UsageError(f"the model returns a {type(value).__name__}; measuring and training need a tensor of "
                     "class scores")
