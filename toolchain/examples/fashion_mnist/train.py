"""Reproducible training of the bundled Fashion-MNIST example.

    python -m toolchain.examples.fashion_mnist.train [--epochs N] [--seed S]
        [--data-dir DIR] [--out-dir DIR]

Reads the IDX files of Debian's ``dataset-fashion-mnist`` package, trains
``FashionCNN`` on all 60k training images, evaluates on the 10k test images and
writes ``weights.pth``, ``training.json`` and ``samples/`` into the output folder
(default: this package's folder, i.e. the files that are committed).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from toolchain.errors import InputFileError, ToolchainError
from toolchain.examples.fashion_mnist import CLASS_NAMES, PREPROCESS, SAMPLE_FOLDERS, weights_path
from toolchain.examples.fashion_mnist.model import FashionCNN
from toolchain.fileio import atomic_directory, atomic_file

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_EPOCHS = 4
DEFAULT_SEED = 0
BATCH_SIZE = 128
LEARNING_RATE = 2e-3
SAMPLES_PER_CLASS = 30
MODEL_KWARGS: dict[str, Any] = {"num_classes": len(CLASS_NAMES), "width": 16}

_IDX_UBYTE = 0x08  # the only IDX element type Fashion-MNIST uses
_APT_HINT = "Install the dataset with: apt-get install dataset-fashion-mnist (or pass --data-dir)."


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes into an array of its stored shape."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise InputFileError(f"Fashion-MNIST file '{path}' does not exist", hint=_APT_HINT) from None
    except (OSError, EOFError) as exc:
        raise InputFileError(f"cannot read Fashion-MNIST file '{path}': {exc}") from exc
    # Header: two zero bytes, element type, number of dims, then one big-endian uint32 per dim.
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UBYTE:
        raise InputFileError(f"'{path}' is not an IDX file of unsigned bytes")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header_end])
    if len(data) - header_end != int(np.prod(shape)):
        raise InputFileError(f"'{path}' is truncated or has trailing data (header says shape {shape})")
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of the ``train`` or ``t10k`` split."""
    if not data_dir.is_dir():
        raise InputFileError(f"Fashion-MNIST folder '{data_dir}' does not exist", hint=_APT_HINT)
    images = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise InputFileError(f"'{split}' files in '{data_dir}' have shapes {images.shape} and {labels.shape}")
    return images, labels


def to_input(images: np.ndarray) -> torch.Tensor:
    """The ``gray01`` preset: uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # A fixed thread count keeps the run short on small machines and its float reductions repeatable.
    torch.set_num_threads(2)


def train_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """Adam with a cosine learning-rate decay; plain tensor batching so shuffling is seeded and serial."""
    steps_per_epoch = (len(x) + BATCH_SIZE - 1) // BATCH_SIZE
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{epochs}: train loss {total / len(x):.4f}", flush=True)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x) == y).float().mean().item()


def pick_samples(labels: np.ndarray, per_class: int = SAMPLES_PER_CLASS) -> dict[int, list[int]]:
    """The first ``per_class`` test-set indices of each class: deterministic and traceable."""
    picked: dict[int, list[int]] = {}
    for label in range(len(CLASS_NAMES)):
        indices = np.flatnonzero(labels == label)[:per_class]
        if len(indices) < per_class:
            raise InputFileError(f"test set has only {len(indices)} images of class {CLASS_NAMES[label]}")
        picked[label] = [int(i) for i in indices]
    return picked


def write_samples(images: np.ndarray, picked: dict[int, list[int]], dest: Path) -> None:
    """``dest/<label>_<class_name>/<test_index:05d>.png``, replaced as a whole so no stale images remain."""
    with atomic_directory(dest) as tmp:
        for label, indices in picked.items():
            class_dir = tmp / SAMPLE_FOLDERS[label]
            class_dir.mkdir()
            for index in indices:
                Image.fromarray(images[index]).save(class_dir / f"{index:05d}.png", optimize=True)


def save_weights(model: nn.Module, dest: Path) -> int:
    """Save the state dict atomically; return its size in bytes."""
    # Serialising to memory first keeps the archive's inner name independent of the temp file's name.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with atomic_file(dest) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def write_record(record: dict[str, Any], dest: Path) -> None:
    with atomic_file(dest) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def run(epochs: int, seed: int, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Train, evaluate and write all artifacts; return the training record."""
    # Read the data (and fail on a missing dataset) before spending minutes on training.
    train_images, train_labels = load_split(data_dir, "train")
    test_images, test_labels = load_split(data_dir, "t10k")
    out_dir.mkdir(parents=True, exist_ok=True)
    picked = pick_samples(test_labels)

    seed_everything(seed)
    model = FashionCNN(**MODEL_KWARGS)
    x_train, y_train = to_input(train_images), torch.from_numpy(train_labels.astype(np.int64))
    started = time.perf_counter()
    train_model(model, x_train, y_train, epochs, seed)
    train_seconds = time.perf_counter() - started

    x_test, y_test = to_input(test_images), torch.from_numpy(test_labels.astype(np.int64))
    test_accuracy = accuracy(model, x_test, y_test)
    sample_indices = torch.tensor([i for indices in picked.values() for i in indices])
    sample_accuracy = accuracy(model, x_test[sample_indices], y_test[sample_indices])

    weights_bytes = save_weights(model, out_dir / "weights.pth")
    write_samples(test_images, picked, out_dir / "samples")
    record: dict[str, Any] = {
        "seed": seed,
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "model_kwargs": MODEL_KWARGS,
        "preprocess": PREPROCESS,
        "torch_version": torch.__version__,
        "train_images": len(train_images),
        "test_images": len(test_images),
        "test_accuracy": round(test_accuracy, 4),
        "sample_images": len(sample_indices),
        "sample_accuracy": round(sample_accuracy, 4),
        "train_time_seconds": round(train_seconds, 1),
        "parameter_count": sum(p.numel() for p in model.parameters()),
        "weights_bytes": weights_bytes,
    }
    write_record(record, out_dir / "training.json")
    return record


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m toolchain.examples.fashion_mnist.train",
        description="Train the bundled Fashion-MNIST example model reproducibly.",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"default {DEFAULT_SEED}")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"default {DEFAULT_DATA_DIR}")
    parser.add_argument(
        "--out-dir", type=Path, default=weights_path().parent, help="default: the package folder"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        record = run(args.epochs, args.seed, args.data_dir, args.out_dir)
    except ToolchainError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
