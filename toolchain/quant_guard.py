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
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import onnx

from calibration.ranges import ActivationRanges
from toolchain.errors import UsageError, VerificationError
from toolchain.frontends.base import Feed
from toolchain.quality import (broken_floor, expected_top1_losses, guess_task, match_detections, mean_lower_bound,
                               non_finite, rate_lower_bound, sample_cosines, yolo_layout)
from toolchain.passes.quantize import QuantizeConfig, quantize_static
from toolchain.sensitivity import SENSITIVITY_METRIC, concatenated, layer_sensitivity, run_all, with_float_biases

# Fallback schedule: how many of the most sensitive layers to keep in float per retry.
_FALLBACK_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# Single layers tried as the first one kept in float (the most sensitive few by the one-layer ranking).
_FIRST_STEP_CHOICES = 3
# A miss this many times the budget (and at least HOPELESS_POINTS points), with 95% confidence, is structural,
# not noise between neighbouring steps: see ``Quality.hopeless``.
HOPELESS_FACTOR = 10.0
HOPELESS_POINTS = 10.0


@dataclass(frozen=True)
class Budget:
    max_drop: float = 1.0
    """Percentage points of top-1 accuracy that may be lost: measured with labels, else expected by the FP32
    model's own probabilities (``expected_top1_losses``). Judged by a one-sided 95% lower bound on the
    observed drop, so it means the same for 40 or 400 samples."""
    min_cosine: float = 0.99
    """Per-sample cosine between FP32 and INT8 outputs (channels scaled alike) under which a sample counts as
    diverged. The share of diverged samples is held to ``max_drop`` by the same 95% lower bound, and one sample
    under ``broken_floor(min_cosine)`` fails on its own: a broken output, not rounding noise."""
    min_detections_kept: float = 0.9
    """Detectors: the share of the FP32 model's detections the INT8 model must keep (IoU 0.5, score 0.25)."""
    task: str = "auto"
    """What the outputs are: classify, detect, generic, or auto (guessed from their shapes, and said)."""


@dataclass(frozen=True)
class Quality:
    samples: int
    min_cosine: float
    max_abs: dict[str, float]
    top1_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    task: str = "classify"
    mean_cosine: float | None = None
    lost: int | None = None
    """Samples the candidate gets wrong that the reference gets right (labels), or top-1 flips."""
    gained: int = 0
    """Samples the candidate gets right that the reference gets wrong (labels only)."""
    detections: dict | None = None
    """Detectors: FP32 detections, candidate detections, and how many of FP32's the candidate matched."""
    non_finite: tuple[str, ...] = ()
    """Outputs of the candidate holding NaN or Inf."""
    ties: int = 0
    """Top-1 changes between classes both models score within ``TIE_FRACTION`` of each other: counted as agreeing."""
    of_samples: int | None = None
    """Set when the check stopped early, certain to fail: the held-out samples there were (``samples``:
    how many were compared)."""
    cosines: tuple[float, ...] = ()
    """Per sample, its lowest cosine over the outputs (empty in records from before the share rule)."""
    expected_losses: tuple[float, ...] = ()
    """Classifiers without labels, per sample: the top-1 accuracy the candidate is expected to lose by FP32's
    own probabilities (``expected_top1_losses``); empty with labels and in records from before it."""

    @property
    def labelled(self) -> bool:
        return self.accuracy_reference is not None and self.accuracy_candidate is not None

    @property
    def drop_points(self) -> float | None:
        """Accuracy lost in points: measured with labels, else expected by FP32's probabilities (older records:
        disagreement with FP32)."""
        if self.labelled:
            return 100.0 * (self.accuracy_reference - self.accuracy_candidate)
        if self.expected_losses:
            return 100.0 * float(np.mean(self.expected_losses))
        if self.top1_agreement is not None:
            return 100.0 * (1.0 - self.top1_agreement)
        return None

    @property
    def drop_bound_points(self) -> float | None:
        """A one-sided 95% lower bound on the drop in points: what the budget is compared with."""
        if self.drop_points is None:
            return None
        if not self.labelled and self.expected_losses:
            return 100.0 * mean_lower_bound(self.expected_losses)
        if self.lost is None:  # a record from before the bound existed
            return self.drop_points
        return 100.0 * (rate_lower_bound(self.lost, self.samples) - self.gained / max(self.samples, 1))

    def _drop_kind(self) -> str:
        if self.labelled:
            return "top-1 accuracy lost"
        if self.expected_losses:
            return (f"top-1 accuracy lost by FP32's own probabilities ({self.lost} top-1 change"
                    f"{'s' if self.lost != 1 else ''} of {self.samples})")
        return "top-1 disagreement with FP32"

    @property
    def detections_kept(self) -> float | None:
        if not self.detections or not self.detections.get("reference"):
            return None
        return self.detections["matched"] / self.detections["reference"]

    def misses(self, budget: Budget) -> list[str]:
        """Plain-language reasons the budget is missed (empty when it holds)."""
        if self.non_finite:
            return [f"non-finite outputs (NaN/Inf) in {', '.join(self.non_finite)}"]
        reasons = []
        bound = self.drop_bound_points
        if bound is not None and bound > budget.max_drop + 1e-9:
            reasons.append(f"{self._drop_kind()} {self.drop_points:.2f} points on {self.samples} samples (at least "
                           f"{bound:.2f} with 95% confidence) > {budget.max_drop:g}")
        # A detector is judged by its detections: its score channels near zero make any cosine harsh.
        if self.task != "detect":
            reasons.extend(self._cosine_misses(budget))
        kept = self.detections_kept
        if kept is not None and kept < budget.min_detections_kept:
            reasons.append(f"keeps {kept:.0%} of the FP32 model's {self.detections['reference']} detections "
                           f"< {budget.min_detections_kept:.0%}")
        return reasons

    def hopeless(self, budget: Budget) -> bool:
        """Misses ``budget`` by far: non-finite outputs, or a 95% lower bound on the top-1 loss or on the share
        of diverged samples over ``HOPELESS_FACTOR`` times ``max_drop`` (and ``HOPELESS_POINTS``), or a detector
        keeping under half the detections it must. With the most float layers the fallback allows, such a model
        does not meet the budget with fewer: steps' outcomes are noisy near the budget (the zoo's mini-Xception
        met it with 6 layers in float and missed it with 8), not 10 points away from it."""
        if self.non_finite:
            return True
        far = max(HOPELESS_POINTS, HOPELESS_FACTOR * budget.max_drop)
        bound = self.drop_bound_points
        if bound is not None and bound > far:
            return True
        if self.task != "detect" and 100.0 * rate_lower_bound(self.diverged_under(budget.min_cosine), self.samples) > far:
            return True
        kept = self.detections_kept
        return kept is not None and kept < budget.min_detections_kept / 2

    def diverged_under(self, min_cosine: float) -> int:
        """How many samples' cosine is under ``min_cosine`` (a record without per-sample cosines: 0 or all)."""
        if not self.cosines:
            return self.samples if self.min_cosine < min_cosine else 0
        return int(sum(c < min_cosine for c in self.cosines))

    def _cosine_misses(self, budget: Budget) -> list[str]:
        floor = broken_floor(budget.min_cosine)
        if self.min_cosine < floor:
            return [f"a sample's cosine is {self.min_cosine:.4f} < {floor:g} (a broken output, not rounding noise; "
                    f"the floor is 1 - 10 x (1 - --min-cosine))"]
        diverged = self.diverged_under(budget.min_cosine)
        bound = 100.0 * rate_lower_bound(diverged, self.samples)
        if bound <= budget.max_drop + 1e-9:
            return []
        return [f"{diverged} of {self.samples} samples have a cosine under {budget.min_cosine:g} "
                f"({100.0 * diverged / max(self.samples, 1):.2f}%, at least {bound:.2f} with 95% confidence) "
                f"> {budget.max_drop:g}; lowest {self.min_cosine:.4f}"]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["non_finite"] = list(self.non_finite)
        data["cosines"] = [round(c, 6) for c in self.cosines]
        data["expected_losses"] = [round(c, 6) for c in self.expected_losses]
        data["drop_points"] = self.drop_points
        data["drop_bound_points"] = self.drop_bound_points
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Quality":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["non_finite"] = tuple(values.get("non_finite", ()))
        values["cosines"] = tuple(values.get("cosines", ()))
        values["expected_losses"] = tuple(values.get("expected_losses", ()))
        return cls(**values)


@dataclass
class Attempt:
    kept_float: list[str]
    quality: Quality


@dataclass
class GuardReport:
    budget: Budget
    attempts: list[Attempt] = field(default_factory=list)
    sensitivity: list[tuple[str, str, float]] = field(default_factory=list)
    """(node name, op type, ``SENSITIVITY_METRIC`` with only that node quantized), worst first."""

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def passed(self) -> bool:
        return not self.final.quality.misses(self.budget)

    def to_dict(self) -> dict:
        return {"budget": asdict(self.budget), "passed": self.passed,
                "attempts": [{"kept_float": a.kept_float, "quality": a.quality.to_dict()} for a in self.attempts],
                "sensitivity": [{"node": n, "op_type": t, "score": s} for n, t, s in self.sensitivity],
                "sensitivity_metric": SENSITIVITY_METRIC}


def _run_all(model: onnx.ModelProto, feeds: Sequence[Feed], config: QuantizeConfig | None = None) -> dict[str, np.ndarray]:
    """Every output over ``feeds``; INT8 models run as ``config.guard_runtime`` says (host kernels or exact)."""
    return concatenated(run_all(model, feeds, config))


# Two classes whose logits are this share of the sample's logit range apart are tied.
TIE_FRACTION = 0.01


def tied_flips(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per sample: the top-1 class changed, but both models score the two classes within ``TIE_FRACTION``
    of their logit range, so the change is rounding noise between near-equal classes, not a disagreement.
    Both sides must see the tie: a broken model whose logits moved far still counts as disagreeing (and
    fails the cosine check besides)."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    rows = np.arange(len(ref))
    ref_top, cand_top = ref.argmax(1), cand.argmax(1)
    ref_tol, cand_tol = TIE_FRACTION * np.ptp(ref, axis=1), TIE_FRACTION * np.ptp(cand, axis=1)
    ref_sees_tie = ref[rows, cand_top] >= ref[rows, ref_top] - ref_tol
    cand_sees_tie = cand[rows, ref_top] >= cand[rows, cand_top] - cand_tol
    return (ref_top != cand_top) & ref_sees_tie & cand_sees_tie


def compare_quality(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    labels: np.ndarray | None = None, task: str = "auto",
                    scaled_by: dict[str, np.ndarray] | None = None) -> Quality:
    """FP32-vs-INT8 quality on the same samples (see ``toolchain.quality`` for why each metric is so).

    ``task`` picks the task metric: top-1 agreement (and accuracy with labels) on the ``[N, classes]``
    output for ``classify``, detections kept for ``detect``, cosines only for ``generic``; ``auto``
    guesses it from the reference's output shapes. ``scaled_by``: when ``reference`` is the first part
    of a larger set, that set's FP32 outputs (channel scaling as over the whole set).
    """
    broken = non_finite(reference)
    if broken:
        raise VerificationError(f"the FP32 model itself gives NaN/Inf in {', '.join(broken)} on the held-out "
                                f"samples, so nothing can be compared with it",
                                hint="Check the source model and the preprocessing (--preprocess).")
    names = list(reference)
    samples = len(next(iter(reference.values())))
    max_abs = {n: float(np.abs(reference[n].astype(np.float64) - candidate[n]).max()) for n in names}
    bad = tuple(non_finite(candidate))
    per_output = [sample_cosines(reference[n], candidate[n], (scaled_by or {}).get(n)) for n in names]
    cosines = np.concatenate(per_output)
    if bad or not np.isfinite(cosines).all():
        return Quality(samples, float("nan"), max_abs, non_finite=bad or tuple(names), task=task)
    chosen = guess_task(reference) if task in ("auto", None) else task
    # A sample is as faithful as its worst output; outputs without one row per sample count one by one.
    per_sample = (np.min(per_output, axis=0) if all(len(c) == samples for c in per_output) else cosines)
    common = {"samples": samples, "min_cosine": float(cosines.min()), "max_abs": max_abs, "task": chosen,
              "mean_cosine": float(cosines.mean()), "cosines": tuple(float(c) for c in per_sample)}
    if chosen == "detect":
        layout = yolo_layout(reference)
        if layout is None:
            raise UsageError("--task detect needs a YOLO-style output ([N, 4 + classes, anchors] or its "
                             "transpose); this model's outputs are " +
                             ", ".join(f"{n} {list(a.shape)}" for n, a in reference.items()),
                             hint="Use --task generic to compare the raw outputs.")
        match = match_detections(reference, candidate, layout)
        return Quality(**common, detections={"reference": match.reference, "candidate": match.candidate,
                                              "matched": match.matched, "output": layout.output})
    scores = next((n for n in names if reference[n].ndim == 2 and reference[n].shape[1] > 1), None)
    if chosen != "classify" or scores is None:
        return Quality(**common)
    ref_top1, cand_top1 = reference[scores].argmax(1), candidate[scores].argmax(1)
    flips = (ref_top1 != cand_top1) & ~tied_flips(reference[scores], candidate[scores])
    agreement = float(1.0 - flips.mean())
    if labels is None or len(labels) != len(ref_top1):
        losses = expected_top1_losses(reference[scores], cand_top1)
        return Quality(**common, top1_agreement=agreement, lost=int(flips.sum()),
                       ties=int(((ref_top1 != cand_top1) & ~flips).sum()),
                       expected_losses=tuple(float(v) for v in losses))
    ref_right, cand_right = ref_top1 == labels, cand_top1 == labels
    return Quality(**common, top1_agreement=agreement, accuracy_reference=float(ref_right.mean()),
                   accuracy_candidate=float(cand_right.mean()), lost=int((ref_right & ~cand_right).sum()),
                   gained=int((~ref_right & cand_right).sum()))


def guarded_quantize(model: onnx.ModelProto, ranges: ActivationRanges, config: QuantizeConfig,
                     holdout: Sequence[Feed], budget: Budget, labels: np.ndarray | None = None,
                     max_float_fraction: float = 0.5,
                     reference: onnx.ModelProto | None = None,
                     bias_source: onnx.ModelProto | None = None,
                     stop_early: bool = True, refuse_hopeless: bool = True) -> tuple[onnx.ModelProto, GuardReport]:
    """Quantize, check on ``holdout``, and keep the most sensitive layers in float until ``budget`` holds.

    ``reference`` is the FP32 model the INT8 model must match; pass it when ``model`` is not that model
    (after bias correction its biases carry the INT8 corrections). Default: ``model`` itself.
    ``bias_source``: ``model`` before bias correction; layers kept in float (and, in the sensitivity
    ranking, every layer but the one measured) take their biases from it. ``stop_early``: a fallback
    attempt stops comparing once it cannot pass any more (a broken sample, or so many diverged ones that
    their share's bound is over budget whatever follows); the decisions are the same as with every sample
    compared, and the last attempt of a refusal is measured on every sample. ``refuse_hopeless``: when no
    single layer in float is enough, the largest step the schedule allows is tried next, and a model it
    leaves ``Quality.hopeless`` is refused at once instead of walking the steps between (bench/guard.md);
    otherwise the schedule goes on in order and that attempt stands for its last step, so what is handed
    over is the plain schedule's."""
    fp32_model = reference if reference is not None else model
    judge = _Judge(run_all(fp32_model, holdout), holdout, labels, budget)
    report = GuardReport(budget)
    quantized = quantize_static(model, ranges, config)
    report.attempts.append(Attempt(list(config.nodes_to_exclude), judge(quantized, config)))
    if report.passed:
        return quantized, report
    report.sensitivity = layer_sensitivity(model, ranges, config, holdout, fp32_model, bias_source)
    # At least two: an outlier tensor is quantized if either its producer or its consumer is,
    # so rescuing it means keeping both of them in float. Never all of them: a model with every
    # weighted layer in float is an FP32 model, not the INT8 model that was asked for.
    limit = min(max(2, int(len(report.sensitivity) * max_float_fraction)), len(report.sensitivity) - 1)
    ranked = [name for name, _, _ in report.sensitivity]
    steps = [s for s in _FALLBACK_STEPS if s <= limit]

    def attempt(kept: list[str], early: bool) -> tuple[onnx.ModelProto, Attempt, QuantizeConfig]:
        chosen = config.model_copy(update={"nodes_to_exclude": tuple(config.nodes_to_exclude) + tuple(kept)})
        candidate = quantize_static(with_float_biases(model, bias_source, kept), ranges, chosen)
        return candidate, Attempt(kept, judge(candidate, chosen, early)), chosen

    largest: tuple[onnx.ModelProto, Attempt, QuantizeConfig] | None = None
    for index, step in enumerate(steps):
        if index == 1 and refuse_hopeless and len(steps) > 2:
            # Judged on every sample: how far it misses decides, not just that it misses.
            largest = attempt(ranked[:steps[-1]], False)
            report.attempts.append(largest[1])
            if largest[1].quality.hopeless(budget):
                raise budget_error(report, limit, bias_corrected=config.bias_correction, hopeless=True)
        if largest is not None and step == steps[-1]:
            # Already measured; listed last so the report reads in the schedule's order.
            report.attempts = [a for a in report.attempts if a is not largest[1]] + [largest[1]]
            quantized, _, candidate_config = largest
            if report.passed:
                return quantized, report
            break
        # The one-layer ranking is a proxy: for the first float layer, where it matters most and costs
        # least, the next candidates are tried too (one layer each) before spending a second one.
        choices = [[name] for name in ranked[:_FIRST_STEP_CHOICES]] if step == 1 else [ranked[:step]]
        for kept in choices:
            quantized, last, candidate_config = attempt(kept, stop_early)
            report.attempts.append(last)
            if report.passed:
                return quantized, report
    if report.final.quality.of_samples is not None:  # the refusal names figures over every sample
        report.attempts[-1] = Attempt(report.final.kept_float, judge(quantized, candidate_config))
    raise budget_error(report, limit, bias_corrected=config.bias_correction)


class _Judge:
    """Compares candidates with the FP32 outputs on the held-out samples, feed by feed when allowed to
    stop early (hand-written: the guard's own metrics decide when a candidate cannot pass any more)."""

    def __init__(self, reference: list[dict[str, np.ndarray]], holdout: Sequence[Feed],
                 labels: np.ndarray | None, budget: Budget) -> None:
        self.runs, self.holdout, self.labels, self.budget = reference, list(holdout), labels, budget
        self.reference = concatenated(reference)
        self.task = guess_task(self.reference) if budget.task in ("auto", None) else budget.task
        self.total = len(next(iter(self.reference.values())))
        self.diverged = 0

    def __call__(self, quantized: onnx.ModelProto, config: QuantizeConfig, stop_early: bool = False) -> Quality:
        # Detectors are judged by their detections over the whole set, so they are always compared whole.
        if not stop_early or self.task == "detect":
            return compare_quality(self.reference, _run_all(quantized, self.holdout, config), self.labels,
                                   self.budget.task)
        from toolchain.runtime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner.from_model(quantized, integer_reference=config.guard_runtime == "reference")
        outputs: list[dict[str, np.ndarray]] = []
        compared, self.diverged = 0, 0
        for feed, expected in zip(self.holdout, self.runs):
            found = runner.run(feed)
            outputs.append(found)
            compared += len(next(iter(expected.values())))
            if len(outputs) < len(self.holdout) and self._certain_to_fail(expected, found):
                labels = self.labels[:compared] if self.labels is not None else None
                quality = compare_quality(concatenated(self.runs[:len(outputs)]), concatenated(outputs), labels,
                                          self.task, scaled_by=self.reference)
                return replace(quality, of_samples=len(next(iter(self.reference.values()))))
        return compare_quality(self.reference, concatenated(outputs), self.labels, self.budget.task)

    def _certain_to_fail(self, expected: dict[str, np.ndarray], found: dict[str, np.ndarray]) -> bool:
        """A non-finite output or a broken sample fails whatever follows, and so do enough diverged samples
        that their share's lower bound is over budget even if every remaining sample is faithful (the bound
        grows with the count at a fixed total)."""
        floor = broken_floor(self.budget.min_cosine)
        lowest = None
        for name, array in expected.items():
            cosines = sample_cosines(array, found[name], self.reference[name])
            if not np.isfinite(cosines).all() or cosines.min() < floor:
                return True
            lowest = cosines if lowest is None or len(lowest) != len(cosines) else np.minimum(lowest, cosines)
        self.diverged += int((lowest < self.budget.min_cosine).sum()) if lowest is not None else 0
        return 100.0 * rate_lower_bound(self.diverged, self.total) > self.budget.max_drop + 1e-9


def float_layers_note(kept: list[str], model_bytes: int | None = None, all_int8_bytes: int | None = None) -> str | None:
    """One line for the console: how many layers the guard kept in float, which, and (when known) the size cost."""
    if not kept:
        return None

    def size(count: int) -> str:
        return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 1024:.1f} KiB"

    cost = f"; {size(all_int8_bytes)} with every layer INT8" if model_bytes and all_int8_bytes else ""
    sizes = f" (model {size(model_bytes)}{cost})" if model_bytes else ""
    shown = "; ".join(kept[:3]) + (f"; and {len(kept) - 3} more (the manifest lists all)" if len(kept) > 3 else "")
    return f"{len(kept)} layer(s) kept in float to meet the accuracy budget{sizes}: {shown}"


def refusal_hint(bias_corrected: bool, methods: bool = True) -> str:
    """What a refused INT8 build can try next (bias correction first where it was off: bench/tflite_agreement.md)."""
    tries = [] if bias_corrected else ["--bias-correction"]
    if methods:
        tries.append("--method entropy|percentile")
    tried = f"try {' or '.join(tries)}, " if tries else ""
    return ("No model was written for this target. Raise --max-drop or lower --min-cosine, " + tried
            + "give more or more representative --calib images, or use fp16/dynamic quantization.")


def budget_error(report: GuardReport, fallback_limit: int, bias_corrected: bool = False,
                 hopeless: bool = False) -> VerificationError:
    """The refusal: what was missed, by how much, which layers were tried in float, and the guard's record.
    ``hopeless``: the largest fallback step missed by far, so the steps between were not tried."""
    final, first = report.final.quality, report.attempts[0].quality
    tried = len(report.attempts) - 1
    if tried:
        worst = ", ".join(f"{n} ({s:.3g})" for n, _, s in report.sensitivity[:3])
        skipped = "; missed by far, so fewer were not tried" if hopeless else ""
        fallback = (f"even with the {len(report.final.kept_float)} most sensitive of {len(report.sensitivity)} "
                    f"layers kept in float ({tried} attempt{'s' if tried != 1 else ''}{skipped}; "
                    f"most sensitive: {worst})")
    else:
        fallback = ("and no layer could be kept in float (the model has too few weighted layers)"
                    if fallback_limit < 1 else "")
    error = VerificationError(
        f"INT8 misses the accuracy budget on {final.samples} held-out samples {fallback}: "
        f"{'; '.join(final.misses(report.budget))} (first attempt: {'; '.join(first.misses(report.budget))})",
        hint=refusal_hint(bias_corrected))
    error.report = report.to_dict()  # type: ignore[attr-defined]  # the build reports the attempts
    return error
