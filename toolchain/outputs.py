"""Presenting and saving model outputs for ``edgekiln run``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.fileio import atomic_file
from toolchain.frontends.base import Feed


def _softmax(row: np.ndarray) -> np.ndarray:
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def describe_outputs(outputs: Feed, *, top_k: int = 5, labels: list[str] | None = None) -> str:
    """Shape and statistics per output; for (N, classes) outputs also the top-k classes of each row."""
    lines: list[str] = []
    for name, value in outputs.items():
        array = np.asarray(value)
        stats = (f"min {array.min():.4g}, max {array.max():.4g}, mean {array.mean():.4g}"
                 if array.size and np.issubdtype(array.dtype, np.number) else "")
        lines.append(f"{name}: shape {'x'.join(map(str, array.shape))} {array.dtype} {stats}".rstrip())
        if array.ndim == 2 and array.shape[1] > 1 and np.issubdtype(array.dtype, np.floating) and top_k > 0:
            for row_index, row in enumerate(array[:8]):
                probabilities = _softmax(row.astype(np.float64))
                best = np.argsort(-row)[:top_k]
                shown = ", ".join(f"{labels[i] if labels else i} ({probabilities[i]:.3f})" for i in best)
                lines.append(f"  [{row_index}] top-{len(best)}: {shown}")
    return "\n".join(lines)


def save_outputs(outputs: Feed, path: Path) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **outputs)
