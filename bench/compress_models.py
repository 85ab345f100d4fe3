"""The models ``bench.compress`` prunes and quantizes: a wide Fashion-MNIST CNN (trained here) and ResNet-18.

``WideFashionCNN`` is made for the pruning benchmark: the bundled example is so
small (about 40 µs per call) that ONNX Runtime's per-call overhead hides any saving,
so this one has 64-128 channels in every layer and about 30 M multiply-accumulates,
enough for the convolutions to dominate the batch-1 latency. It is trained once,
deterministically (seeded, one torch thread, fixed data order), and the weights are
cached in ``bench/.cache/compress/`` under a key of everything that determines them;
deleting the cache retrains the same weights.

The ResNet-18 is ``bench.models.ResNet18`` with random weights and BatchNorm
settled on real photos (``bench.models.settle_batchnorm``), as ``bench/run.py``
builds it with ``--cnn-data photos``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import data, models

CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "compress"
FASHION_INPUT = "1x1x28x28"
"""``--input`` spec of the Fashion-MNIST CNN (batch 1; exports get a dynamic batch axis)."""
MODEL_CLASS = "bench.compress_models:WideFashionCNN"
"""What ``edgekiln qat --model-class`` imports."""


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


WIDTHS = (64, 128, 128, 128)
CONV_LAYERS = ("features.0", "features.4", "features.8", "features.11")
"""The four convolutions' module names, in order (what a pruning report's ``channels`` is keyed by)."""


class WideFashionCNN(nn.Module):
    """Four 3x3 conv blocks (64, 128, 128, 128 channels) with BN + ReLU, two max-pools, GAP, Linear(128, 10).

    28x28 -> conv 64 -> pool 14x14 -> conv 128 -> pool 7x7 -> conv 128 -> conv 128 -> global average -> 10.
    About 29 M MACs and 0.37 M parameters: most of the work is in the 14x14 and 7x7 convolutions, whose
    input and output channels both shrink under channel pruning. ``widths`` builds the same network at
    other channel counts (the benchmark times what pruning to a given width would buy).
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int, int] = WIDTHS) -> None:
        super().__init__()
        first, second, third, fourth = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(1, first), nn.MaxPool2d(2),
            *_conv_bn_relu(first, second), nn.MaxPool2d(2),
            *_conv_bn_relu(second, third),
            *_conv_bn_relu(third, fourth))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(fourth, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@dataclass(frozen=True)
class TrainingPlan:
    """How ``WideFashionCNN`` is trained: AdamW, one-cycle learning rate, ``images`` chosen by ``seed``."""

    epochs: int
    images: int | None
    """Training images (seeded choice); None for all 60,000."""
    batch: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int = 1
    """Torch threads: fixed, because convolution results depend on how the work is split."""


FULL_TRAINING = TrainingPlan(epochs=2, images=None)
QUICK_TRAINING = TrainingPlan(epochs=1, images=6000)


@dataclass
class TrainedModel:
    weights: Path
    plan: TrainingPlan
    seconds: float
    """Training time when the weights were made (the cache keeps the first run's number)."""
    cached: bool
    digest: str
    """sha256 of the weights' values: the same on every retraining with the same torch version."""


def _cache_key(plan: TrainingPlan) -> str:
    source = inspect.getsource(WideFashionCNN) + inspect.getsource(_train)
    return hashlib.sha256(repr((asdict(plan), torch.__version__, source)).encode()).hexdigest()[:12]


def _train(plan: TrainingPlan, log: Callable[[str], None]) -> nn.Module:
    """Seeded, single-threaded training on Fashion-MNIST's training split (labels used: this is the original)."""
    torch.manual_seed(plan.seed)
    train = data.fashion_subset("train", plan.images, plan.seed)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    model = WideFashionCNN()
    steps = plan.epochs * ((len(x) + plan.batch - 1) // plan.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=plan.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(plan.seed)
    model.train()
    for epoch in range(plan.epochs):
        started = time.perf_counter()
        for batch in torch.randperm(len(x), generator=generator).split(plan.batch):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
        log(f"WideFashionCNN epoch {epoch + 1}/{plan.epochs} on {len(x)} images in "
            f"{time.perf_counter() - started:.0f} s")
    return model.eval()


def trained_fashion_cnn(plan: TrainingPlan, log: Callable[[str], None]) -> TrainedModel:
    """The trained weights' file, trained now if the cache has none for exactly this plan and code."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    key = _cache_key(plan)
    weights, meta = CACHE_DIR / f"wide-fashion-{key}.pth", CACHE_DIR / f"wide-fashion-{key}.json"
    if weights.is_file() and meta.is_file():
        seconds = float(json.loads(meta.read_text())["seconds"])
        return TrainedModel(weights, plan, seconds, True, _digest(weights))
    log(f"training WideFashionCNN ({plan.epochs} epoch(s), {plan.threads} torch thread(s); cached afterwards)")
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    started = time.perf_counter()
    try:
        model = _train(plan, log)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    partial = weights.with_suffix(".partial")
    torch.save(model.state_dict(), partial)
    partial.replace(weights)  # the rename makes an interrupted run leave no half file behind
    meta.write_text(json.dumps({"plan": asdict(plan), "seconds": seconds, "torch": torch.__version__}) + "\n")
    return TrainedModel(weights, plan, seconds, False, _digest(weights))


def load_fashion_cnn(weights: Path) -> nn.Module:
    model = WideFashionCNN()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def _digest(path: Path) -> str:
    """sha256 of the weights' values in key order: the file's own bytes also hold its archive name."""
    digest = hashlib.sha256()
    for name, tensor in torch.load(path, weights_only=True).items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --- ResNet-18 --------------------------------------------------------------------------------

RESNET_BATCHNORM_IMAGES = 64


def resnet18_on_photos(seed: int) -> nn.Module:
    """``bench.models.ResNet18`` (random weights, ``seed``) with BatchNorm settled on scikit-image photo crops.

    The state dict is cached; it is cheap to rebuild but costs a few seconds of 224x224 forward passes.
    """
    key = hashlib.sha256(repr((seed, RESNET_BATCHNORM_IMAGES, torch.__version__,
                               (Path(models.__file__)).read_bytes(), Path(data.__file__).read_bytes())).encode())
    path = CACHE_DIR / f"resnet18-photos-{key.hexdigest()[:12]}.pth"
    network = models.build("resnet18", seed)
    if path.is_file():
        network.load_state_dict(torch.load(path, weights_only=True))
        return network.eval()
    images = torch.from_numpy(data.cnn_images("photos", RESNET_BATCHNORM_IMAGES, "batchnorm", seed))
    models.settle_batchnorm(network, images.split(16), seed)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(network.state_dict(), partial)
    partial.replace(path)
    return network.eval()


def fashion_test_set(count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` (None: all 10,000) Fashion-MNIST test images, ``gray01``, and their labels."""
    test = data.fashion_subset("t10k", count, seed=None)
    return test.images, test.labels
