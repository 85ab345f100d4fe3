"""Streaming statistics of a float model's intermediate tensors over calibration feeds.

The post-training passes (``equalize``, ``bias_correction``, ``range_search``) all need values of
intermediate tensors on the calibration set. Keeping every tensor of every sample in memory does not
scale (EfficientNet-Lite0 holds ~20 MB of activations per image), so the model is run once per feed
with the wanted tensors added as outputs, and each pass folds what it needs into running sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx

from toolchain.frontends.base import Feed


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include the tensors ``names`` (in that order)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    # Graph inputs are not added: ``stream`` hands them over from the feed.
    present = {o.name for o in copy.graph.output} | {i.name for i in copy.graph.input}
    for name in names:
        if name not in present:
            # ORT accepts an output without type information; shape inference is not needed for it.
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return copy


def stream(model: onnx.ModelProto, feeds: Iterable[Feed], names: Sequence[str],
           consume: Callable[[dict[str, np.ndarray]], None], threads: int | None = None) -> int:
    """Run ``model`` on every feed and hand ``consume`` the values of ``names`` (plus the model's outputs).

    A name that is a graph input is given its fed value. Returns the number of feeds run.
    """
    from toolchain.runtime import bounded_run, session_options

    import onnxruntime as ort

    augmented = with_outputs(model, names)
    session = ort.InferenceSession(augmented.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    wanted = [o.name for o in session.get_outputs()]
    count = 0
    for feed in feeds:
        values = bounded_run(session, wanted, feed)
        consume({**feed, **dict(zip(wanted, values))})
        count += 1
    return count


def channel_axis_stats(value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-channel (axis 1, or the last axis of a 2-D tensor) min, max and sum, and the count per channel."""
    array = np.asarray(value, np.float64)
    if array.ndim < 2:
        array = array.reshape(1, -1)
    moved = np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)
    return moved.min(1), moved.max(1), moved.sum(1), moved.shape[1]
