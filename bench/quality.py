"""Does a variant still compute the same thing? Top-1 accuracy where labels exist, agreement with FP32 elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Feed = dict[str, np.ndarray]
Predict = Callable[[Feed], np.ndarray]
"""Runs one feed and returns the first output (the logits)."""


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator > 0 else float(np.array_equal(a, b))


def agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict[str, float]:
    """Logit cosine similarity (mean and worst) and how often the arg-max class is the same."""
    cosines = [_cosine(r, c) for r, c in zip(reference, candidate)]
    same = [int(np.argmax(r) == np.argmax(c)) for r, c in zip(reference, candidate)]
    return {"cosine_mean": float(np.mean(cosines)), "cosine_min": float(np.min(cosines)),
            "top1_agreement": float(np.mean(same)), "samples": len(cosines)}


def outputs(predict: Predict, feeds: Sequence[Feed]) -> list[np.ndarray]:
    return [predict(feed) for feed in feeds]


def top1_accuracy(predict: Predict, input_name: str, images: np.ndarray, labels: np.ndarray,
                  batch: int = 500) -> float:
    """Share of ``images`` whose arg-max logit is the label (the model must have a dynamic batch axis)."""
    correct = 0
    for start in range(0, len(images), batch):
        logits = predict({input_name: images[start: start + batch]})
        correct += int((logits.argmax(axis=1) == labels[start: start + batch]).sum())
    return correct / len(images)
