"""ImageNet-sized reference architectures, written out because torchvision is not installable here.

Both follow torchvision's definitions layer for layer (same parameter counts:
ResNet-18 11,689,512; MobileNetV2 1.0 3,504,872), with its weight init. The
weights are random (fixed seed): the benchmark measures speed and size, and
INT8-vs-FP32 agreement, not ImageNet accuracy.

A freshly initialised network has BatchNorm running stats of 0/1, so activations
grow or collapse layer by layer and calibration ranges would be meaningless.
``settle_batchnorm`` therefore estimates the running stats from real images and
gives the affine parameters a spread like a trained network's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

NUM_CLASSES = 1000
INPUT_SHAPE: tuple[int, int, int, int] = (1, 3, 224, 224)
GAMMA_RANGE = (0.5, 1.5)
"""BatchNorm scale drawn uniformly from this range per channel (see ``settle_batchnorm``)."""
BETA_STD = 0.1
"""BatchNorm shift drawn from N(0, BETA_STD) per channel."""


# --- ResNet-18 --------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet-18: BasicBlocks [2, 2, 2, 2], 64-512 channels, (N, 3, 224, 224) -> (N, 1000) logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        in_channels = 64
        for index, channels in enumerate((64, 128, 256, 512)):
            stride = 1 if index == 0 else 2
            stages += [BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1)]
            in_channels = channels
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _init_resnet(model: nn.Module) -> None:
    # torchvision's ResNet init; the Linear keeps PyTorch's default.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


# --- MobileNetV2 ------------------------------------------------------------------------------


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels as torchvision does: to a multiple of 8, never below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1, 1))
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


# (expansion t, channels c, repeats n, first stride s), from the MobileNetV2 paper / torchvision.
_MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                          (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0: (N, 3, 224, 224) -> (N, 1000) logits."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: float = 1.0) -> None:
        super().__init__()
        in_channels = _make_divisible(32 * width)
        last_channels = _make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [_conv_bn_relu6(3, in_channels, 3, 2)]
        for expand, channels, repeats, stride in _MOBILENET_V2_SETTINGS:
            out_channels = _make_divisible(channels * width)
            for index in range(repeats):
                layers.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expand))
                in_channels = out_channels
        layers.append(_conv_bn_relu6(in_channels, last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))
        _init_mobilenet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _init_mobilenet(model: nn.Module) -> None:
    # torchvision's MobileNetV2 init.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


# --- construction -----------------------------------------------------------------------------

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}
"""Benchmark name -> class; the class is also what ``edgekiln convert --model-class`` imports."""


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, seed: int) -> nn.Module:
    """A randomly initialised network; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    return ARCHITECTURES[name]()


@torch.no_grad()
def settle_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], seed: int) -> None:
    """Give every BatchNorm a trained-looking state: data-estimated running stats, spread affine params.

    gamma ~ U(GAMMA_RANGE) and beta ~ N(0, BETA_STD) per channel (trained networks' per-channel scales
    differ, which is what makes per-channel weight quantization matter); the running mean and
    variance are then the exact averages over ``batches`` (momentum=None), so each layer's
    inference-mode output is normalised on real images rather than on the 0/1 init values.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        channels = norm.num_features
        low, high = GAMMA_RANGE
        norm.weight.copy_(low + (high - low) * torch.rand(channels, generator=generator))
        norm.bias.copy_(BETA_STD * torch.randn(channels, generator=generator))
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
    model.train()
    for batch in batches:
        model(batch)
    for norm in norms:
        norm.momentum = 0.1  # back to the default, so the saved module is an ordinary one
    model.eval()
