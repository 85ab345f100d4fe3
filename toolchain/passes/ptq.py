"""Post-training quantization passes, in order, each measured: equalization, range search, learned
rounding (opt-in), bias correction.

``prepare_int8`` takes the FP32 model (BatchNorm folded) and its calibration feeds and returns the float
model to quantize (equalized, biases corrected), the activation ranges to quantize it with, and a report
of what each pass changed. The returned model is *not* the FP32 reference any more (its biases carry the
INT8 model's corrections): the accuracy guard compares against the model that came in.

Each enabled pass is measured where it acts: the INT8 model's outputs against FP32's on the first
``MEASURE_SAMPLES`` calibration feeds (the held-out samples stay the guard's), mean and lowest cosine,
after every step, so the report says what each pass bought on this model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from calibration.ranges import ActivationRanges
from toolchain.frontends.base import Feed
from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static

MEASURE_SAMPLES = 16


@dataclass
class StepQuality:
    step: str
    mean_cosine: float
    min_cosine: float


@dataclass
class PtqReport:
    notes: list[str] = field(default_factory=list)
    """One line per pass: what it changed."""
    steps: list[StepQuality] = field(default_factory=list)
    """INT8-vs-FP32 cosine on calibration feeds after each step (empty when not measured)."""
    details: dict = field(default_factory=dict)
    uncorrected: onnx.ModelProto | None = field(default=None, repr=False)
    """The model before bias correction (equalized; None without bias correction): the biases a layer kept
    in float by the guard must have, since each correction is for that layer's own INT8 error."""

    def lines(self) -> list[str]:
        measured = []
        if self.steps:
            measured = ["INT8 vs FP32 on " + f"{self.details.get('measured_on', 0)} calibration samples, mean / lowest "
                        "cosine: " + "; ".join(f"{s.step} {s.mean_cosine:.4f} / {s.min_cosine:.4f}" for s in self.steps)]
        return self.notes + measured

    def to_dict(self) -> dict:
        return {"notes": self.notes, "details": self.details,
                "steps": [{"step": s.step, "mean_cosine": s.mean_cosine, "min_cosine": s.min_cosine}
                          for s in self.steps]}


def _cosines(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> np.ndarray:
    from toolchain.quality import sample_cosines

    values = []
    for ref_outputs, cand_outputs in zip(reference, candidate):
        for ref, cand in zip(ref_outputs, cand_outputs):
            values.append(sample_cosines(ref, cand))
    return np.concatenate(values) if values else np.ones(1)


class _Meter:
    """Runs the FP32 model once and each step's INT8 model on the same few calibration feeds."""

    def __init__(self, reference: onnx.ModelProto, feeds: Sequence[Feed], config: QuantizeConfig) -> None:
        self.feeds = list(feeds[:MEASURE_SAMPLES])
        self.exact = config.guard_runtime == "reference"
        self.reference = self._run(reference, exact=False)

    def _run(self, model: onnx.ModelProto, exact: bool) -> list[list[np.ndarray]]:
        from toolchain.runtime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner.from_model(model, integer_reference=exact)
        return [list(runner.run(feed).values()) for feed in self.feeds]

    def measure(self, step: str, quantized: onnx.ModelProto) -> StepQuality:
        cosines = np.nan_to_num(_cosines(self.reference, self._run(quantized, self.exact)), nan=-1.0)
        return StepQuality(step, float(cosines.mean()), float(cosines.min()))


def prepare_int8(model: onnx.ModelProto, feeds: Sequence[Feed], config: QuantizeConfig,
                 measure: bool = True) -> tuple[onnx.ModelProto, ActivationRanges, PtqReport]:
    """The float model to quantize, its activation ranges, and what each enabled pass did (module doc)."""
    from toolchain.passes.bias_correction import correct_biases
    from toolchain.passes.equalize import equalize
    from toolchain.passes.range_search import search_ranges
    from toolchain.passes.weight_rounding import round_weights

    feeds = list(feeds)
    report = PtqReport()
    # Measured only when a pass runs: plain MinMax has nothing to compare, and measuring it would cost a
    # quantization and two runs over the samples (bench/build_overhead.md).
    any_pass = (config.equalize or config.range_search == "mse" or config.weight_rounding == "learned"
                or config.bias_correction)
    meter = _Meter(model, feeds, config) if measure and feeds and any_pass else None
    if meter is not None:
        report.details["measured_on"] = len(meter.feeds)
    current = model
    if config.equalize:
        if meter is not None:  # the baseline the passes are measured against
            plain = compute_ranges(model, feeds, config)
            report.steps.append(meter.measure("none", quantize_static(model, plain, config)))
        current, equalized = equalize(current, feeds)
        report.notes.append(equalized.summary())
        report.details["equalized_pairs"] = [list(p) for p in equalized.pairs]
        report.details["equalize_skipped"] = [list(p) for p in equalized.skipped]
    ranges = compute_ranges(current, feeds, config)
    quantized = None
    if meter is not None:
        quantized = quantize_static(current, ranges, config)
        report.steps.append(meter.measure("+ equalization" if config.equalize else "none", quantized))
    if config.range_search == "mse":
        ranges, searched = search_ranges(current, feeds, ranges, config.activation_type, config.activation_symmetric)
        report.notes.append(searched.summary())
        quantized = None
        if meter is not None:
            quantized = quantize_static(current, ranges, config)
            report.steps.append(meter.measure("+ range search", quantized))
    if config.weight_rounding == "learned":
        current, rounded = round_weights(current, feeds, reduce_range=config.reduce_range,
                                         depthwise_full_range=config.depthwise_full_range,
                                         per_channel=config.per_channel and config.weight_type == "int8"
                                         and config.weight_symmetric)
        report.notes.append(rounded.summary())
        quantized = None
        if meter is not None:
            quantized = quantize_static(current, ranges, config)
            report.steps.append(meter.measure("+ learned rounding", quantized))
    if config.bias_correction:
        quantized = quantized or quantize_static(current, ranges, config)
        report.uncorrected = current
        current, corrected = correct_biases(current, quantized, feeds)
        report.notes.append(corrected.summary())
        if meter is not None:
            report.steps.append(meter.measure("+ bias correction", quantize_static(current, ranges, config)))
    return current, ranges, report
