"""Metrics that compare a lossy model's outputs with the FP32 model's, chosen so a broken model fails them.

Each one closes a way a simpler check was fooled:

- *Non-finite outputs* (NaN compared with NaN "agrees"): any NaN/Inf in either side is its own failure.
- *Mixed scales in one output* (a YOLO head holds box coordinates in pixels beside class scores in
  0..1, and a cosine over it is the boxes' cosine): outputs with channels are compared per channel after
  scaling every channel by the FP32 model's spread, so each channel weighs the same.
- *A task metric where the outputs are not logits*: detections of the candidate are matched with the
  FP32 model's (same class, IoU >= 0.5, above one score threshold) and the share kept is reported.
- *Budgets that mean different things for 40 and 400 samples*: a disagreement rate is compared with
  the budget through a one-sided 95% Wilson bound, so the guard refuses when the samples show that the
  true rate is over budget, whatever their number.

Written here because no well-kept library compares two models' raw outputs this way (pycocotools and
torchmetrics score predictions against ground truth and bring a framework along); numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from toolchain.settings import TaskChoice

Task = Literal["classify", "detect", "generic"]
TASKS: tuple[str, ...] = get_args(TaskChoice)

DETECTION_SCORE = 0.25
"""Score threshold above which a detection counts (the usual default of YOLO tools)."""
DETECTION_IOU = 0.5
"""A candidate detection matches an FP32 one of the same class at this IoU or more."""
NMS_IOU = 0.5
MATCH_SCORE_MARGIN = 0.8
"""An FP32 detection counts as kept when the candidate's match scores at least this share of the
threshold: a score moving from 0.26 to 0.24 is jitter at the threshold, not a lost object."""
_Z_95 = 1.6449  # one-sided 95% normal quantile


@dataclass(frozen=True)
class YoloLayout:
    """Where boxes and class scores sit in a YOLO-style head: ``[N, 4 + classes, anchors]`` (v5 without
    objectness, v8, v11) or transposed ``[N, anchors, 4 + classes]``; boxes are centre x, centre y, w, h."""

    output: str
    channels_first: bool
    classes: int


def yolo_layout(outputs: dict[str, np.ndarray]) -> YoloLayout | None:
    """The first output shaped like a YOLO head: 3-D, one axis 5..300 wide, the other at least 8x wider."""
    for name, array in outputs.items():
        if array.ndim != 3:
            continue
        channels, anchors = array.shape[1], array.shape[2]
        if 5 <= channels <= 300 and anchors >= 8 * channels:
            return YoloLayout(name, True, channels - 4)
        if 5 <= anchors <= 300 and channels >= 8 * anchors:
            return YoloLayout(name, False, anchors - 4)
    return None


def guess_task(outputs: dict[str, np.ndarray]) -> Task:
    """``classify`` when the only output is ``[N, classes]`` (unless its rows are unit vectors: an embedding);
    ``detect`` for a YOLO-style head; else ``generic``."""
    first = next(iter(outputs.values()))
    if first.ndim == 2 and first.shape[1] > 1 and len(outputs) == 1:
        norms = np.linalg.norm(first.astype(np.float64), axis=1)
        if np.allclose(norms, 1.0, atol=0.01) and (first < 0).any():  # L2-normalised: an embedding, not scores
            return "generic"
        return "classify"
    if yolo_layout(outputs) is not None:
        return "detect"
    return "generic"


def non_finite(outputs: dict[str, np.ndarray]) -> list[str]:
    """Names of outputs holding NaN or Inf."""
    return [name for name, array in outputs.items()
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all()]


def describe_non_finite(array: np.ndarray) -> str:
    """``"12 NaN values"``, ``"3 Inf values"`` or ``"2 NaN and 1 Inf values"``; empty when all are finite."""
    if not np.issubdtype(array.dtype, np.floating):
        return ""
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    parts = [f"{count} {kind}" for count, kind in ((nan, "NaN"), (inf, "Inf")) if count]
    return f"{' and '.join(parts)} values" if parts else ""


def constant_outputs(outputs: dict[str, np.ndarray]) -> list[str]:
    """Outputs identical for every sample (a model that ignores its input), when there are two or more."""
    found = []
    for name, array in outputs.items():
        if len(array) >= 2 and np.issubdtype(array.dtype, np.floating) and np.ptp(array, axis=0).max() == 0:
            found.append(name)
    return found


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    dots = (a64 * b64).sum(1)
    # Two all-zero rows are the same; one all-zero row against a non-zero one is not.
    both_zero = (np.linalg.norm(a64, axis=1) == 0) & (np.linalg.norm(b64, axis=1) == 0)
    return np.where(both_zero, 1.0, dots / np.where(norms == 0, 1.0, norms) * (norms != 0))


def sample_cosines(reference: np.ndarray, candidate: np.ndarray, scaled_by: np.ndarray | None = None) -> np.ndarray:
    """One cosine per sample; outputs with a channel axis (3-D and up) are first scaled per channel.

    Each channel is centred and divided by the FP32 model's spread of that channel (over samples and
    positions), so a channel of pixel coordinates and a channel of probabilities weigh the same. A
    channel that is constant in the FP32 model keeps its raw values (it has no spread to scale by).
    ``scaled_by``: the FP32 outputs of a larger set the samples belong to, whose spread to use, so a
    sample's cosine does not depend on how many of the set were compared so far.
    """
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64).reshape(ref.shape)
    if ref.ndim >= 3:
        axes = tuple(i for i in range(ref.ndim) if i != 1)
        stats = ref if scaled_by is None else scaled_by.astype(np.float64)
        centre = stats.mean(axis=axes, keepdims=True)
        spread = stats.std(axis=axes, keepdims=True)
        spread = np.where(spread > 0, spread, 1.0)
        ref, cand = (ref - centre) / spread, (cand - centre) / spread
    return _cosines(ref, cand)


def _decode(array: np.ndarray, layout: YoloLayout, score: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sample: (boxes as x1 y1 x2 y2, class ids) above ``score`` after class-aware NMS."""
    heads = array if not layout.channels_first else array.transpose(0, 2, 1)  # -> [N, anchors, 4 + classes]
    found = []
    for head in heads.astype(np.float64):
        scores = head[:, 4:]
        classes, best = scores.argmax(1), scores.max(1)
        keep = best >= score
        centre, size = head[keep, :2], head[keep, 2:4]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        order = np.argsort(-best[keep], kind="stable")
        boxes, cls = boxes[order], classes[keep][order]
        kept: list[int] = []
        for i in range(len(boxes)):
            same = [j for j in kept if cls[j] == cls[i]]
            if not same or _iou(boxes[i], boxes[same]).max() < NMS_IOU:
                kept.append(i)
        found.append((boxes[kept], cls[kept]))
    return found


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class DetectionMatch:
    reference: int
    """FP32 detections above the score threshold, after NMS."""
    candidate: int
    """Candidate detections above ``MATCH_SCORE_MARGIN`` times the threshold, after NMS."""
    matched: int
    """FP32 detections the candidate also found (same class, IoU >= 0.5), each matched at most once."""

    @property
    def kept(self) -> float | None:
        """Share of the FP32 model's detections the candidate keeps (None when FP32 found none)."""
        return self.matched / self.reference if self.reference else None


def match_detections(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                     layout: YoloLayout, score: float = DETECTION_SCORE) -> DetectionMatch:
    """Greedy one-to-one matching of the candidate's detections with the FP32 model's, sample by sample."""
    total_ref = total_cand = matched = 0
    for (ref_boxes, ref_cls), (cand_boxes, cand_cls) in zip(_decode(reference[layout.output], layout, score),
                                                             _decode(candidate[layout.output], layout,
                                                                     score * MATCH_SCORE_MARGIN)):
        total_ref, total_cand = total_ref + len(ref_boxes), total_cand + len(cand_boxes)
        free = np.ones(len(cand_boxes), bool)
        for box, cls in zip(ref_boxes, ref_cls):
            options = np.flatnonzero(free & (cand_cls == cls))
            if not len(options):
                continue
            ious = _iou(box, cand_boxes[options])
            best = int(ious.argmax())
            if ious[best] >= DETECTION_IOU:
                free[options[best]] = False
                matched += 1
    return DetectionMatch(total_ref, total_cand, matched)


def rate_lower_bound(events: int, trials: int) -> float:
    """One-sided 95% Wilson lower bound of a rate seen as ``events`` in ``trials`` (0 when there are none)."""
    if trials <= 0 or events <= 0:
        return 0.0
    p, z2 = events / trials, _Z_95 ** 2
    centre = p + z2 / (2 * trials)
    margin = _Z_95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials ** 2))
    return max(0.0, (centre - margin) / (1 + z2 / trials))


def mean_lower_bound(values: np.ndarray | list[float]) -> float:
    """One-sided 95% lower bound of the mean of ``values`` (normal approximation; 0 for fewer than two)."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return 0.0
    return max(0.0, float(array.mean() - _Z_95 * array.std(ddof=1) / math.sqrt(len(array))))


def class_probabilities(scores: np.ndarray) -> np.ndarray:
    """[N, classes] probabilities: rows of non-negative scores up to 1 (softmax or sigmoid outputs) scaled to
    sum to 1, anything else (logits) through a softmax."""
    values = scores.astype(np.float64)
    if values.min() >= 0.0 and values.max() <= 1.0:
        return values / np.maximum(values.sum(axis=1, keepdims=True), 1e-12)
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def expected_top1_losses(reference_scores: np.ndarray, candidate_top1: np.ndarray) -> np.ndarray:
    """Per sample, the top-1 accuracy the candidate's choice is expected to lose by the reference model's own
    probabilities: p(reference's class) - p(candidate's class), 0 where they agree, in [0, 1].

    Without labels, a top-1 change costs accuracy only as far as the reference was sure: a change between two
    classes it holds equally likely (ordinary photos through an ImageNet model, whose top-1 probability is
    often 0.2) costs next to nothing, a change away from a class it holds at 0.9 costs 0.9. Counting every
    change as a point lost made the guard's verdict on 30-50 held-out samples a coin flip for INT8 models
    that lose under a point of expected accuracy (issue #42)."""
    probabilities = class_probabilities(reference_scores)
    rows = np.arange(len(probabilities))
    return np.clip(probabilities.max(axis=1) - probabilities[rows, candidate_top1], 0.0, 1.0)


BROKEN_FACTOR = 10.0
"""A sample whose cosine misses 1 this many times more than ``--min-cosine`` allows is a broken output."""


def broken_floor(min_cosine: float) -> float:
    """The per-sample cosine under which one sample fails the guard on its own: 1 - 10 x (1 - min_cosine),
    0.9 for the default 0.99. Above it, samples under ``min_cosine`` are counted and their share is budgeted."""
    return 1.0 - BROKEN_FACTOR * (1.0 - min_cosine)


def smallest_refused_rate(trials: int, budget: float) -> float:
    """The lowest observed rate (a count over ``trials``) whose lower bound exceeds ``budget``: what the
    budget means at this sample count, for messages and plans."""
    for events in range(trials + 1):
        if rate_lower_bound(events, trials) > budget:
            return events / trials
    return 1.0
