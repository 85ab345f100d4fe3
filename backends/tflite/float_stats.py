"""What every tensor of the float TFLite model holds on real samples, for judging its INT8 twin layer by layer.

Why not the quantization debugger's own float values: the debugger hands its comparison functions tensors read
back from an interpreter whose arena is reused between ops (measured on YOLOv8n: a Sigmoid whose "float"
output had an RMS of 1.8, and NaNs), so a relative error made from them ranked layers at random (scores up
to 1e11). The debugger's NumericVerify differences are computed inside the op and are sound; the float
magnitudes come from here: the float model run once per sample with every tensor preserved and no delegate.

Mixed-range joins: TFLite's INT8 CONCATENATION gives all its inputs the output's scale, so an input whose
range is much narrower than the widest one keeps only a few of the 256 levels (YOLOv8's output joins boxes in
input pixels, 0..320, with class scores in 0..1: every score becomes 0 or 1.27). Such joins are found here
from the measured ranges, before any INT8 model is judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_LEVELS = 16
"""An input of a shared-scale join that would keep fewer int8 levels than this is judged lost."""
_JOINS = ("CONCATENATION", "PACK")


@dataclass(frozen=True)
class TensorStats:
    rms: float
    max_abs: float


@dataclass(frozen=True)
class Join:
    """A shared-scale op whose narrowest input keeps too few int8 levels."""

    op: str
    tensor: str
    levels: float
    """int8 levels left to the narrowest input (256 * its range / the widest range)."""
    ranges: tuple[float, ...]
    """max |x| of each input on the samples."""


def float_tensor_stats(model: bytes, samples: Iterable[Sequence[np.ndarray]]) -> tuple[dict[str, TensorStats],
                                                                                       list[Join]]:
    """RMS and max |x| of every float tensor over ``samples`` (TFLite layout), and the lossy joins."""
    from backends.tflite.runner import make_interpreter

    # No delegate: XNNPACK computes in its own buffers, out of reach of preserve_all_tensors.
    interpreter = make_interpreter(model, xnnpack=False, preserve_all_tensors=True)
    inputs = interpreter.get_input_details()
    floats = [d for d in interpreter.get_tensor_details() if d["dtype"] == np.float32]
    squares: dict[int, float] = {}
    counts: dict[int, int] = {}
    peaks: dict[int, float] = {}
    for batch in samples:
        for detail, value in zip(inputs, batch):
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        for detail in floats:
            try:
                value = np.asarray(interpreter.get_tensor(detail["index"]), np.float64)
            except ValueError:  # a tensor with no data (an optional input)
                continue
            if value.size == 0 or not np.isfinite(value).all():
                continue
            index = detail["index"]
            squares[index] = squares.get(index, 0.0) + float(np.sum(value ** 2))
            counts[index] = counts.get(index, 0) + value.size
            peaks[index] = max(peaks.get(index, 0.0), float(np.max(np.abs(value))))
    names = {d["index"]: d["name"] for d in floats}
    stats = {names[i]: TensorStats(float(np.sqrt(squares[i] / counts[i])), peaks[i]) for i in squares}
    joins = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only listing of ops and their tensors
        if op["op_name"] not in _JOINS or not len(op["outputs"]):
            continue
        ranges = tuple(peaks.get(int(i), 0.0) for i in op["inputs"] if int(i) >= 0)
        widest = max(ranges, default=0.0)
        narrowest = min((r for r in ranges if r > 0), default=widest)
        if widest > 0 and len(ranges) > 1:
            levels = 256 * narrowest / widest
            if levels < MIN_LEVELS:
                joins.append(Join(op["op_name"], names.get(int(op["outputs"][0]), ""), levels, ranges))
    return stats, joins
