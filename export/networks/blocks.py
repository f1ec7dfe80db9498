"""Small building blocks shared by F, W and G: conv + BatchNorm + activation, 2-D or 3-D, with resampling.

Attribute names (`conv`, `norm`) are fixed because the official checkpoints address them by those names.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Resample = Literal["none", "down", "up"]


class ConvBlock(nn.Module):
    """conv -> BatchNorm -> ReLU/LeakyReLU(0.01), with optional nearest x2 upsampling before or 2x average
    pooling after. In 3-D only H and W are resampled: the depth axis of the feature volume stays 16."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        dims: Literal[2, 3] = 2,
        kernel: int = 3,
        leaky: bool = False,
        resample: Resample = "none",
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.conv = conv(cin, cout, kernel_size=kernel, padding=kernel // 2)
        self.norm = norm(cout)
        self.leaky = leaky
        self.resample = resample
        self.factor = (2, 2) if dims == 2 else (1, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        x = self.norm(self.conv(x))
        x = F.leaky_relu(x, 0.01) if self.leaky else F.relu(x)
        if self.resample == "down":
            pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
            x = pool(x, kernel_size=self.factor)
        return x


class ResBlock3d(nn.Module):
    """Pre-activation 3-D residual block: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with ReLU between them and none after the last (keys 0, 2, 4, ...)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(cin, cout))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
