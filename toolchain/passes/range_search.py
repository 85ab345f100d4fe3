"""Per-tensor activation ranges chosen by quantization error, not by one global rule.

MinMax keeps every outlier (a few large values leave the bulk of a tensor a handful of levels);
a global percentile clips every tensor alike, whether its tail matters or not. Here each tensor
gets the range that minimises the mean squared error of quantizing its own calibration values
(the MSE criterion of NNCF's and AIMET's range estimators, and of Nagel et al., "A White Paper on
Neural Network Quantization", 2021, section 3.4): a histogram of the tensor over its MinMax range
is collected on the calibration feeds, and candidate ranges clipping its low and high ends are
scored on that histogram with the exact quantizer the backend uses (asymmetric uint8/int8 or
symmetric int8, zero point on the integer grid, zero representable).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from calibration.ranges import ActivationRanges
from toolchain.frontends.base import Feed
from toolchain.passes.tensor_stats import stream

HISTOGRAM_BINS = 2048
# Fractions of the MinMax bound tried for each end of the range (1.0 keeps MinMax).
_SHRINK = np.concatenate([np.linspace(0.2, 0.9, 15), np.linspace(0.91, 1.0, 10)])


@dataclass
class RangeSearchReport:
    """What the search changed: tensors narrowed, and the quantization error before and after."""

    tensors: int = 0
    narrowed: int = 0
    mse_before: float = 0.0
    """Sum over tensors of the MinMax range's quantization MSE relative to the tensor's variance."""
    mse_after: float = 0.0
    largest_cuts: list[tuple[str, float]] = field(default_factory=list)
    """(tensor, share of the MinMax width kept) for the most-narrowed tensors."""

    def summary(self) -> str:
        reduction = 1.0 - self.mse_after / self.mse_before if self.mse_before > 0 else 0.0
        return (f"range search (MSE): {self.narrowed} of {self.tensors} activation ranges narrowed; relative "
                f"quantization error summed over tensors {self.mse_before:.3g} -> {self.mse_after:.3g} "
                f"({100 * reduction:.0f}% less)")


def _levels(activation_type: str, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -127, 127  # ORT and TensorRT: symmetric int8 uses +-127
    return (0, 255) if activation_type == "uint8" else (-128, 127)


def quantization_mse(centres: np.ndarray, counts: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                     qmin: int, qmax: int, symmetric: bool) -> np.ndarray:
    """Mean squared error of quantizing a histogram (``centres``, ``counts``) with each candidate range."""
    lows, highs = np.minimum(lows, 0.0), np.maximum(highs, 0.0)  # zero must be representable
    if symmetric:
        amax = np.maximum(np.abs(lows), np.abs(highs))
        scales = np.maximum(amax / qmax, 1e-12)
        zeros = np.zeros_like(scales)
    else:
        scales = np.maximum((highs - lows) / (qmax - qmin), 1e-12)
        zeros = np.round(qmin - lows / scales)
    q = np.clip(np.round(centres[None, :] / scales[:, None]) + zeros[:, None], qmin, qmax)
    error = (q - zeros[:, None]) * scales[:, None] - centres[None, :]
    return (error ** 2 * counts[None, :]).sum(1) / max(counts.sum(), 1.0)


def best_range(counts: np.ndarray, low: float, high: float, activation_type: str,
               symmetric: bool) -> tuple[float, float, float, float]:
    """(low, high, mse of MinMax, mse of the chosen range) for a histogram over [low, high]."""
    qmin, qmax = _levels(activation_type, symmetric)
    edges = np.linspace(low, high, len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    grid_low = low * (_SHRINK if low < 0 else np.ones(1))
    grid_high = high * (_SHRINK if high > 0 else np.ones(1))
    lows, highs = (a.ravel() for a in np.meshgrid(grid_low, grid_high))
    errors = quantization_mse(centres, counts.astype(np.float64), lows, highs, qmin, qmax, symmetric)
    base = float(errors[-1])  # the last candidate is (low, high) itself: both shrink grids end at 1.0
    best = int(np.argmin(errors))
    if errors[best] >= base * (1 - 1e-6):
        return low, high, base, base
    return float(lows[best]), float(highs[best]), base, float(errors[best])


def search_ranges(model: onnx.ModelProto, feeds: Iterable[Feed], ranges: ActivationRanges,
                  activation_type: str, symmetric: bool) -> tuple[ActivationRanges, RangeSearchReport]:
    """Ranges of ``ranges``' tensors narrowed to their lowest-MSE quantization range on ``feeds``."""
    names = [name for name, (lo, hi) in ranges.ranges.items() if hi - lo > 0]
    histograms: dict[str, np.ndarray] = {name: np.zeros(HISTOGRAM_BINS, np.int64) for name in names}
    bounds = {name: (min(ranges.ranges[name][0], 0.0), max(ranges.ranges[name][1], 0.0)) for name in names}
    variance_sums: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in names}

    def consume(values: dict[str, np.ndarray]) -> None:
        for name in names:
            value = values.get(name)
            if value is None or value.dtype.kind != "f":
                continue
            lo, hi = bounds[name]
            flat = value.ravel()
            index = np.clip(((flat - lo) * (HISTOGRAM_BINS / (hi - lo))).astype(np.int64), 0, HISTOGRAM_BINS - 1)
            histograms[name] += np.bincount(index, minlength=HISTOGRAM_BINS)
            sums = variance_sums[name]
            sums[0] += flat.size
            sums[1] += float(flat.sum(dtype=np.float64))
            sums[2] += float(np.square(flat, dtype=np.float64).sum())

    stream(model, feeds, names, consume)
    report = RangeSearchReport()
    found = dict(ranges.ranges)
    cuts = []
    for name in names:
        counts = histograms[name]
        if counts.sum() == 0:
            continue
        n, total, squares = variance_sums[name]
        variance = max(squares / n - (total / n) ** 2, 1e-12)
        lo, hi = bounds[name]
        new_lo, new_hi, before, after = best_range(counts, lo, hi, activation_type, symmetric)
        report.tensors += 1
        report.mse_before += before / variance
        report.mse_after += after / variance
        if (new_lo, new_hi) != (lo, hi):
            report.narrowed += 1
            found[name] = (new_lo, new_hi)
            cuts.append((name, (new_hi - new_lo) / (hi - lo)))
    report.largest_cuts = sorted(cuts, key=lambda item: item[1])[:5]
    details = {**ranges.details, "range_search": "mse", "range_search_bins": HISTOGRAM_BINS}
    return ActivationRanges(ranges.method, found, details), report
