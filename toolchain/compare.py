"""``edgekiln compare``: several artifacts on the same inputs, each measured against the first.

Per output: max and mean absolute error, cosine, and top-k agreement for classifier
outputs. ``per_layer`` (ONNX models only) exposes every intermediate tensor the two
graphs share by name and ranks them by error, which locates where an INT8 or
low-rank model starts to diverge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from toolchain.artifact import Artifact
from toolchain.errors import UsageError, VerificationError
from toolchain.feeds import image_feeds, random_feeds
from toolchain.frontends.base import Feed
from toolchain.quality import describe_non_finite

_TOP_K = (1, 5)


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    mean_abs: float
    cosine: float
    top_k_agreement: dict[int, float] = field(default_factory=dict)


@dataclass
class Comparison:
    reference: str
    candidate: str
    samples: int
    outputs: list[OutputDiff]


@dataclass(frozen=True)
class LayerDiff:
    tensor: str
    producer: str
    op_type: str
    relative_error: float
    cosine: float


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return 1.0 if norm == 0 else float(a64 @ b64 / norm)


def _top_k(reference: np.ndarray, candidate: np.ndarray) -> dict[int, float]:
    """Fraction of rows whose top-1 of the candidate lies in the reference's top-k (k = 1, 5)."""
    if reference.ndim != 2 or reference.shape[1] < 2:
        return {}
    best = candidate.argmax(axis=1)
    ranked = np.argsort(-reference, axis=1)
    return {k: float((ranked[:, :k] == best[:, None]).any(axis=1).mean()) for k in _TOP_K if k <= reference.shape[1]}


def diff_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                 labels: tuple[str, str] = ("the reference", "the candidate")) -> list[OutputDiff]:
    """Per-output differences; NaN/Inf on either side is refused (NaN minus NaN has no error to show)."""
    diffs = []
    for name, ref in reference.items():
        if name not in candidate or candidate[name].shape != ref.shape:
            raise UsageError(f"output '{name}' is missing or has another shape in the candidate")
        for values, label, itself in ((ref, labels[0], " itself"), (candidate[name], labels[1], "")):
            found = describe_non_finite(values)
            if found:
                raise VerificationError(f"{label}{itself} gives non-finite outputs: output '{name}' has {found}, "
                                        "so there is nothing to compare",
                                        hint="Check that model's weights (a NaN or Inf weight?).")
        error = np.abs(ref.astype(np.float64) - candidate[name])
        diffs.append(OutputDiff(name, float(error.max()), float(error.mean()), _cosine(ref, candidate[name]),
                                _top_k(ref, candidate[name])))
    return diffs


def comparison_feeds(artifact: Artifact, calib: Path | None, count: int, seed: int,
                     preprocess: str | dict | None = None) -> list[Feed]:
    """Inputs for a comparison: images from ``calib``, preprocessed by ``preprocess`` when given, else by the
    artifact's manifest spec (inferred from the input shape for a bare .onnx file); without ``calib``,
    seeded random inputs."""
    from backends.registry import get_backend

    with get_backend(artifact.backend).load(artifact.model_path, artifact.runtime_options) as runner:
        inputs = runner.inputs
    if calib is None:
        return random_feeds(inputs, count=count, seed=seed)
    chosen = preprocess if preprocess is not None else artifact.preprocess
    return image_feeds(inputs, calib, count=count, seed=seed, preprocess=chosen)


def _run(artifact: Artifact, feeds: list[Feed]) -> dict[str, np.ndarray]:
    from backends.registry import get_backend

    with get_backend(artifact.backend).load(artifact.model_path, artifact.runtime_options) as runner:
        outputs = [runner.run(feed) for feed in feeds]
    return {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}


def compare_artifacts(paths: list[Path], *, calib: Path | None = None, count: int = 32,
                      seed: int = 0, preprocess: str | dict | None = None) -> list[Comparison]:
    """Run every artifact on the same feeds (from the first artifact's inputs and preprocessing)."""
    if len(paths) < 2:
        raise UsageError("compare needs at least two artifacts or models")
    artifacts = [Artifact.open(p) for p in paths]
    feeds = comparison_feeds(artifacts[0], calib, count, seed, preprocess)
    reference = _run(artifacts[0], feeds)
    return [Comparison(str(paths[0]), str(path), len(feeds),
                       diff_outputs(reference, _run(artifact, feeds), (str(paths[0]), str(path))))
            for path, artifact in zip(paths[1:], artifacts[1:])]


def _with_all_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            # Element type and shape left open: ONNX Runtime accepts untyped extra outputs.
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def _float_tensors(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Node outputs of the graph, mapped to the node that produces them."""
    return {out: node for node in model.graph.node for out in node.output if out}


def per_layer(reference_path: Path, candidate_path: Path, feeds: list[Feed], limit: int = 15) -> list[LayerDiff]:
    """Intermediate tensors present in both ONNX models, worst relative error first."""
    from toolchain.runtime import OnnxRuntimeRunner
    from toolchain.onnx_io import load_onnx

    reference, candidate = load_onnx(reference_path), load_onnx(candidate_path)
    ref_tensors, cand_tensors = _float_tensors(reference), _float_tensors(candidate)
    # Same name is not enough: quantizers fuse e.g. Relu into the quantization step, and the INT8
    # graph's tensor of that name is then the pre-activation Conv output. Compare like with like.
    shared = [name for name in ref_tensors
              if name in cand_tensors and cand_tensors[name].op_type == ref_tensors[name].op_type]
    if not shared:
        raise UsageError("the two models share no intermediate tensor names; --per-layer needs related ONNX models")
    ref_runner = OnnxRuntimeRunner.from_model(_with_all_outputs(reference, shared))
    cand_runner = OnnxRuntimeRunner.from_model(_with_all_outputs(candidate, shared))
    errors: dict[str, list[tuple[float, float]]] = {name: [] for name in shared}
    for feed in feeds:
        ref_values, cand_values = ref_runner.run_named(feed, shared), cand_runner.run_named(feed, shared)
        for name in shared:
            a, b = np.asarray(ref_values[name], np.float64), np.asarray(cand_values[name], np.float64)
            if a.shape != b.shape or not np.issubdtype(a.dtype, np.floating):
                continue
            errors[name].append((float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12)), _cosine(a, b)))
    rows = [LayerDiff(name, ref_tensors[name].name, ref_tensors[name].op_type,
                      max(e for e, _ in values), min(c for _, c in values))
            for name, values in errors.items() if values]
    return sorted(rows, key=lambda row: -row.relative_error)[:limit]
