"""The bundled Fashion-MNIST CNN.

Only Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear (and Dropout, which is
an identity at inference) so every backend converts it without special cases.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # The conv bias is redundant before BatchNorm, so leave it out.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2),
    )


class FashionCNN(nn.Module):
    """Three conv blocks and a two-layer head: (N, 1, 28, 28) in [0, 1] -> (N, num_classes) logits."""

    def __init__(self, num_classes: int = 10, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(1, width),  # 28 -> 14
            _conv_block(width, 2 * width),  # 14 -> 7
            _conv_block(2 * width, 4 * width),  # 7 -> 3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * 3 * 3, 4 * width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
