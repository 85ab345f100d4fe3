"""Top-1/top-5 accuracy of an artifact on a labelled image folder (one sub-folder per class)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolchain.artifact import Artifact
from toolchain.errors import UsageError
from toolchain.feeds import resolve_preprocess

_CHUNK = 64


@dataclass(frozen=True)
class EvalResult:
    images: int
    classes: int
    top1: float
    top5: float
    skipped: int

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(artifact_path: Path, labels_dir: Path, preprocess: str | dict | None = None) -> EvalResult:
    """Run every labelled image through the artifact with its own preprocessing spec.

    ``preprocess`` applies only to a bare .onnx file, which carries no spec of its own.
    """
    from backends.registry import get_backend
    from calibration.folder import labelled_folder, load_images

    artifact = Artifact.open(artifact_path)
    samples, class_names = labelled_folder(labels_dir)
    with get_backend(artifact.backend).load(artifact.model_path, artifact.runtime_options) as runner:
        if len(runner.inputs) != 1 or len(runner.outputs) < 1:
            raise UsageError("accuracy evaluation needs a model with one image input")
        info = runner.inputs[0]
        spec = resolve_preprocess(artifact.preprocess or preprocess, info)
        dynamic_batch = isinstance(info.shape[0], str)
        step = _CHUNK if dynamic_batch else 1
        correct1 = correct5 = seen = skipped = 0
        for start in range(0, len(samples), _CHUNK):
            chunk = samples[start:start + _CHUNK]
            images, bad = load_images([p for p, _ in chunk], spec)
            bad_paths = {p for p, _ in bad}
            labels = np.array([label for path, label in chunk if path not in bad_paths])
            skipped += len(bad)
            images = images.astype(info.dtype, copy=False)
            logits = np.concatenate([runner.run({info.name: images[i:i + step]})[runner.outputs[0].name]
                                     for i in range(0, len(images), step)])
            if logits.ndim != 2 or logits.shape[1] < len(class_names):
                raise UsageError(f"the model's output {logits.shape} is not a score per class for "
                                 f"{len(class_names)} classes")
            top5 = np.argsort(-logits, axis=1)[:, :5]
            correct1 += int((top5[:, 0] == labels).sum())
            correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
            seen += len(labels)
    return EvalResult(seen, len(class_names), correct1 / max(seen, 1), correct5 / max(seen, 1), skipped)
