"""The INT8 accuracy guard: measure, locate the damage, fall back, or refuse.

After static quantization the INT8 model is compared with the FP32 model on
held-out samples that calibration never saw. If the drop is over budget, each
weighted layer's sensitivity is measured one layer at a time (only that layer
quantized, the rest float), the most sensitive layers are kept in float, and
quantization is retried with the same activation ranges, until the budget holds
or too much would have to stay float. A model that still misses the budget is
never returned: the caller gets a ``VerificationError`` with the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from calibration.ranges import ActivationRanges
from toolchain.errors import VerificationError
from toolchain.frontends.base import Feed
from toolchain.passes.quantize import QuantizeConfig, quantizable_nodes, quantize_static

# Fallback schedule: how many of the most sensitive layers to keep in float per retry.
_FALLBACK_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# Samples used for the one-layer-at-a-time ranking (the final check uses every held-out sample).
_SENSITIVITY_SAMPLES = 16


@dataclass(frozen=True)
class Budget:
    max_drop: float = 1.0
    """Percentage points of top-1 that may be lost: accuracy with labels, else agreement with FP32."""
    min_cosine: float = 0.99
    """Lowest cosine similarity between FP32 and INT8 outputs over the held-out samples."""


@dataclass(frozen=True)
class Quality:
    samples: int
    min_cosine: float
    max_abs: dict[str, float]
    top1_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None

    @property
    def drop_points(self) -> float | None:
        """Accuracy lost in points when labels exist, else disagreement with FP32 in points."""
        if self.accuracy_reference is not None and self.accuracy_candidate is not None:
            return 100.0 * (self.accuracy_reference - self.accuracy_candidate)
        if self.top1_agreement is not None:
            return 100.0 * (1.0 - self.top1_agreement)
        return None

    def misses(self, budget: Budget) -> list[str]:
        """Plain-language reasons the budget is missed (empty when it holds)."""
        reasons = []
        drop = self.drop_points
        if drop is not None and drop > budget.max_drop + 1e-9:
            kind = "top-1 accuracy lost" if self.accuracy_reference is not None else "top-1 disagreement with FP32"
            reasons.append(f"{kind} {drop:.2f} points > {budget.max_drop:g}")
        if self.min_cosine < budget.min_cosine:
            reasons.append(f"cosine {self.min_cosine:.4f} < {budget.min_cosine:g}")
        return reasons

    def to_dict(self) -> dict:
        data = asdict(self)
        data["drop_points"] = self.drop_points
        return data


@dataclass
class Attempt:
    kept_float: list[str]
    quality: Quality


@dataclass
class GuardReport:
    budget: Budget
    attempts: list[Attempt] = field(default_factory=list)
    sensitivity: list[tuple[str, str, float]] = field(default_factory=list)
    """(node name, op type, 1 - cosine of the final outputs with only that node quantized), worst first."""

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def passed(self) -> bool:
        return not self.final.quality.misses(self.budget)

    def to_dict(self) -> dict:
        return {"budget": asdict(self.budget), "passed": self.passed,
                "attempts": [{"kept_float": a.kept_float, "quality": a.quality.to_dict()} for a in self.attempts],
                "sensitivity": [{"node": n, "op_type": t, "score": s} for n, t, s in self.sensitivity]}


def _run_all(model: onnx.ModelProto, feeds: Sequence[Feed], config: QuantizeConfig | None = None) -> dict[str, np.ndarray]:
    """Every output over ``feeds``; INT8 models run as ``config.guard_runtime`` says (host kernels or exact)."""
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    exact = config is not None and config.guard_runtime == "reference"
    runner = OnnxRuntimeRunner.from_model(model, integer_reference=exact)
    outputs = [runner.run(feed) for feed in feeds]
    return {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return 1.0 if norm == 0 else float(a64 @ b64 / norm)


def _is_scores(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1


def compare_quality(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    labels: np.ndarray | None = None) -> Quality:
    """FP32-vs-INT8 quality on the same samples; top-1 figures use the first (N, classes) output."""
    names = list(reference)
    per_sample_cosines = []
    for name in names:
        ref, cand = reference[name], candidate[name]
        rows = ref.reshape(ref.shape[0], -1) if ref.ndim else ref.reshape(1, -1)
        cand_rows = cand.reshape(rows.shape)
        per_sample_cosines += [_cosine(r, c) for r, c in zip(rows, cand_rows)]
    max_abs = {n: float(np.abs(reference[n].astype(np.float64) - candidate[n]).max()) for n in names}
    scores = next((n for n in names if _is_scores(reference[n])), None)
    samples = len(next(iter(reference.values())))
    if scores is None:
        return Quality(samples, min(per_sample_cosines), max_abs)
    ref_top1, cand_top1 = reference[scores].argmax(1), candidate[scores].argmax(1)
    agreement = float((ref_top1 == cand_top1).mean())
    if labels is None or len(labels) != len(ref_top1):
        return Quality(samples, min(per_sample_cosines), max_abs, agreement)
    return Quality(samples, min(per_sample_cosines), max_abs, agreement,
                   float((ref_top1 == labels).mean()), float((cand_top1 == labels).mean()))


def layer_sensitivity(model: onnx.ModelProto, ranges: ActivationRanges, config: QuantizeConfig,
                      feeds: Sequence[Feed]) -> list[tuple[str, str, float]]:
    """Quantize one weighted layer at a time and rank layers by the damage to the final outputs."""
    scores = []
    subset = list(feeds)[:_SENSITIVITY_SAMPLES]
    # Its own FP32 run: feeds may be batches of different sizes, so slicing a full reference is fragile.
    subset_reference = _run_all(model, subset)
    for node in quantizable_nodes(model):
        single = quantize_static(model, ranges, config.model_copy(update={"nodes_to_quantize": (node.name,),
                                                                          "nodes_to_exclude": ()}))
        outputs = _run_all(single, subset, config)
        worst = min(_cosine(subset_reference[n], outputs[n]) for n in outputs)
        scores.append((node.name, node.op_type, 1.0 - worst))
    return sorted(scores, key=lambda item: -item[2])


def guarded_quantize(model: onnx.ModelProto, ranges: ActivationRanges, config: QuantizeConfig,
                     holdout: Sequence[Feed], budget: Budget, labels: np.ndarray | None = None,
                     max_float_fraction: float = 0.5) -> tuple[onnx.ModelProto, GuardReport]:
    """Quantize, check on ``holdout``, and keep the most sensitive layers in float until ``budget`` holds."""
    reference = _run_all(model, holdout)
    report = GuardReport(budget)
    quantized = quantize_static(model, ranges, config)
    report.attempts.append(Attempt(list(config.nodes_to_exclude), compare_quality(
        reference, _run_all(quantized, holdout, config), labels)))
    if report.passed:
        return quantized, report
    report.sensitivity = layer_sensitivity(model, ranges, config, holdout)
    # At least two: an outlier tensor is quantized if either its producer or its consumer is,
    # so rescuing it means keeping both of them in float. Never all of them: a model with every
    # weighted layer in float is an FP32 model, not the INT8 model that was asked for.
    limit = min(max(2, int(len(report.sensitivity) * max_float_fraction)), len(report.sensitivity) - 1)
    for step in (s for s in _FALLBACK_STEPS if s <= limit):
        kept = [name for name, _, _ in report.sensitivity[:step]]
        candidate_config = config.model_copy(update={"nodes_to_exclude": tuple(config.nodes_to_exclude) + tuple(kept)})
        quantized = quantize_static(model, ranges, candidate_config)
        report.attempts.append(Attempt(kept, compare_quality(reference, _run_all(quantized, holdout, candidate_config),
                                                             labels)))
        if report.passed:
            return quantized, report
    final = report.final.quality
    raise VerificationError(
        f"INT8 misses the accuracy budget on {final.samples} held-out samples even with "
        f"{len(report.final.kept_float)} layer(s) kept in float: {'; '.join(final.misses(budget))}",
        hint="No model was written. Raise --max-drop, try --method entropy|percentile, more --calib-size, "
             "or use fp16/dynamic quantization.")
