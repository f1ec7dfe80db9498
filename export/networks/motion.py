"""M, the motion extractor: ConvNeXt-V2 tiny with seven linear heads (pose bins, t, exp, scale, kp)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.config import ArchConfig

#: M's outputs, in the order forward returns them (the exported graph's output order)
MOTION_OUTPUTS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")

LN_EPS = 1e-6
GRN_EPS = 1e-6


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of an NCHW tensor (biased variance), used by the stem and the downsamplers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + LN_EPS)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation on NHWC: y = gamma * (x * N) + beta + x, N = G / (mean_c G + eps),
    G = the per-channel L2 norm over H and W. Zero gamma/beta make it the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + GRN_EPS)
        return self.gamma * (x * n) + self.beta + x


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear C->4C -> exact GELU -> GRN -> Linear 4C->C, plus the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """Backbone plus heads; attribute names match the checkpoint's `detector.` sub-keys."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        dims = cfg.m_dims
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0]))]
            + [
                nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
                for i in range(len(dims) - 1)
            ]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth))) for dim, depth in zip(dims, cfg.m_depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        n = 3 * cfg.num_kp
        self.fc_kp = nn.Linear(dims[-1], n)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_yaw = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_roll = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], n)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean(dim=(-2, -1)))
        heads = {name: getattr(self, f"fc_{name}")(x) for name in MOTION_OUTPUTS}
        return tuple(heads[name] for name in MOTION_OUTPUTS)


class MotionExtractor(nn.Module):
    """Wraps the backbone as `detector`, as the official checkpoint does; returns MOTION_OUTPUTS in order."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.detector = ConvNeXtV2(cfg)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector(image)
