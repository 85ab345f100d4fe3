"""Task metrics that a broken model cannot pass, and runners for built artifacts.

- classify: top-1 agreement with FP32 only on samples whose FP32 top-1 leads its runner-up (tied logits
  would make a coin flip look like a disagreement or an agreement), plus per-sample cosine of the logits.
- detect (YOLOv8 head): the model's boxes decoded, scored, non-maximum suppressed; each FP32 detection
  above the score threshold must be found again by the other model (same class, IoU >= 0.5).
- text-map (DBNet): the binary text mask at the DB threshold, compared by intersection over union.
- every output: cosine per output and, for outputs whose channels have different scales (boxes in pixels
  next to scores in 0..1), per channel after dividing by that channel's FP32 spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCORE_THRESHOLD = 0.25
MATCH_IOU = 0.5
NMS_IOU = 0.45
DB_THRESHOLD = 0.3
THREADS = 2


# --- inputs ------------------------------------------------------------------------------------


def preprocess(spec: dict[str, Any], files: Sequence[Path]) -> np.ndarray:
    """The batch of model inputs for ``files`` under the manifest's preprocessing spec (edgekiln's own
    reference implementation: what the artifact was calibrated and verified with)."""
    from PIL import Image

    from calibration.spec import PreprocessSpec

    parsed = PreprocessSpec.from_dict(spec)
    arrays = []
    for path in files:
        with Image.open(path) as image:
            arrays.append(parsed.apply(image))
    return np.stack(arrays)


# --- runners -----------------------------------------------------------------------------------


class OnnxModel:
    """An ONNX file in ONNX Runtime (CPU, 2 threads), fed one sample at a time."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        if len(self.input_names) != 1:
            raise ValueError("image metrics need a single-input model")
        rows = [self.session.run(None, {self.input_names[0]: sample[None]}) for sample in batch]
        return [np.concatenate([r[k] for r in rows]) for k in range(len(self.output_names))]


class ArtifactModel:
    """A built artifact through its backend's runner (TFLite: NCHW/NHWC and int8 I/O handled by edgekiln)."""

    def __init__(self, folder: Path) -> None:
        from backends.registry import get_backend
        from toolchain.artifact import Artifact

        self.artifact = Artifact.open(folder)
        # A TensorRT bundle's model.onnx is what the device builds its engine from: it runs in ONNX Runtime here.
        if self.artifact.backend in ("onnxruntime", "tensorrt"):
            self.onnx: OnnxModel | None = OnnxModel(self.artifact.model_path)
            self.runner = None
        else:
            self.onnx = None
            options = {**self.artifact.runtime_options, "threads": THREADS}
            self.runner = get_backend(self.artifact.backend).load(self.artifact.model_path, options)

    def __call__(self, batch: np.ndarray, input_name: str, output_names: Sequence[str]) -> list[np.ndarray]:
        if self.onnx is not None:
            return self.onnx(batch)
        rows = [self.runner.run({input_name: sample[None]}) for sample in batch]
        return [np.concatenate([np.asarray(r[name]) for r in rows]).astype(np.float32) for name in output_names]


# --- comparisons -------------------------------------------------------------------------------


def _cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = other.reshape(len(other), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two all-zero vectors agree; one zero vector against a non-zero one does not.
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
    return np.where(both_zero, 1.0, cos)


@dataclass(frozen=True)
class OutputDiff:
    name: str
    finite: bool
    cosine_mean: float
    cosine_min: float
    channel_cosine_min: float | None
    """Worst per-channel cosine (axis 1, each channel divided by its FP32 spread); None for 2-D outputs."""
    max_abs: float


def compare_output(name: str, reference: np.ndarray, other: np.ndarray) -> OutputDiff:
    finite = bool(np.isfinite(other).all())
    if reference.shape != other.shape:
        raise AssertionError(f"{name}: shape {other.shape} != FP32 {reference.shape}")
    safe = np.nan_to_num(other, nan=0.0, posinf=0.0, neginf=0.0)
    cos = _cosines(reference, safe)
    channel = None
    if reference.ndim >= 3 and reference.shape[1] > 1:
        axes = tuple(i for i in range(reference.ndim) if i != 1)
        spread = reference.std(axis=axes, keepdims=True) + 1e-12
        per_channel = [
            _cosines(np.take(reference / spread, [c], axis=1).reshape(1, -1),
                     np.take(safe / spread, [c], axis=1).reshape(1, -1))[0]
            for c in range(reference.shape[1])]
        channel = float(min(per_channel))
    return OutputDiff(name, finite, float(cos.mean()), float(cos.min()), channel,
                      float(np.abs(reference - safe).max()))


@dataclass(frozen=True)
class ClassAgreement:
    samples: int
    decisive: int
    """Samples whose FP32 top-1 leads the runner-up by at least ``margin`` (only these are counted)."""
    agreement: float | None
    cosine_mean: float
    cosine_min: float
    fp32_classes: int
    """Distinct FP32 top-1 classes over the samples: 1 would make agreement trivially high."""


def class_agreement(reference: np.ndarray, other: np.ndarray, margin: float = 1e-3) -> ClassAgreement:
    ref = reference.reshape(len(reference), -1)
    oth = np.nan_to_num(other.reshape(len(other), -1), nan=-np.inf)
    top2 = np.sort(ref, axis=1)[:, -2:]
    spread = np.abs(ref).max(axis=1) + 1e-12
    decisive = (top2[:, 1] - top2[:, 0]) / spread >= margin
    agree = ref.argmax(axis=1) == oth.argmax(axis=1)
    cos = _cosines(reference, np.nan_to_num(other))
    return ClassAgreement(len(ref), int(decisive.sum()),
                          float(agree[decisive].mean()) if decisive.any() else None,
                          float(cos.mean()), float(cos.min()), len(set(ref.argmax(axis=1).tolist())))


# --- detection -----------------------------------------------------------------------------------


def yolo_detections(output: np.ndarray, threshold: float = SCORE_THRESHOLD) -> list[np.ndarray]:
    """Per image, rows (x1, y1, x2, y2, score, class) after per-class NMS, from a YOLOv8 head
    [N, 4 + classes, anchors] (box centre/size, then class scores)."""
    found = []
    for image in output:
        rows = image.T
        boxes, scores = rows[:, :4], rows[:, 4:]
        classes = scores.argmax(axis=1)
        best = scores.max(axis=1)
        keep = np.isfinite(best) & (best >= threshold)
        cx, cy, w, h = boxes[keep].T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        found.append(_nms(np.column_stack([xyxy, best[keep], classes[keep]])))
    return found


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def _nms(rows: np.ndarray) -> np.ndarray:
    kept = []
    for cls in np.unique(rows[:, 5]) if len(rows) else []:
        candidates = rows[rows[:, 5] == cls]
        candidates = candidates[np.argsort(-candidates[:, 4])]
        while len(candidates):
            kept.append(candidates[0])
            candidates = candidates[1:][_iou(candidates[0], candidates[1:, :4]) < NMS_IOU]
    return np.array(kept).reshape(-1, 6)


@dataclass(frozen=True)
class DetectionMatch:
    reference: int
    """FP32 detections above the score threshold."""
    other: int
    matched: int
    """FP32 detections found again (same class, IoU >= 0.5, each other detection used once)."""

    @property
    def kept(self) -> float | None:
        return self.matched / self.reference if self.reference else None

    @property
    def precision(self) -> float | None:
        return self.matched / self.other if self.other else None


def match_detections(reference: list[np.ndarray], other: list[np.ndarray]) -> DetectionMatch:
    matched = 0
    for ref, oth in zip(reference, other):
        used = np.zeros(len(oth), bool)
        for det in ref[np.argsort(-ref[:, 4])]:
            same = (oth[:, 5] == det[5]) & ~used
            if not same.any():
                continue
            ious = np.where(same, _iou(det, oth[:, :4]), 0.0)
            best = int(ious.argmax())
            if ious[best] >= MATCH_IOU:
                used[best] = True
                matched += 1
    return DetectionMatch(sum(map(len, reference)), sum(map(len, other)), matched)


@dataclass(frozen=True)
class MaskOverlap:
    reference_pixels: int
    iou: float | None


def text_mask_iou(reference: np.ndarray, other: np.ndarray, threshold: float = DB_THRESHOLD) -> MaskOverlap:
    a = reference > threshold
    b = np.nan_to_num(other) > threshold
    union = int((a | b).sum())
    return MaskOverlap(int(a.sum()), float((a & b).sum() / union) if union else None)


def as_dict(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {**asdict(value), **{k: getattr(value, k) for k in ("kept", "precision") if hasattr(value, k)}}
    return value
