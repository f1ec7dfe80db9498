"""The three stitching/retargeting MLPs; input and output widths follow from the 21 keypoints."""
from __future__ import annotations

import torch
from torch import nn

from export.config import ArchConfig
from export.networks.blocks import mlp


def retargeting_widths(name: str, num_kp: int) -> tuple[int, ...]:
    """Layer widths of one MLP: stitching [x_s, x_d] -> delta + (dx, dy); lip/eye [x_s, ratios] -> delta."""
    n = 3 * num_kp
    widths = {
        "stitching": (2 * n, 128, 128, 64, n + 2),
        "lip": (n + 2, 128, 128, 64, n),
        "eye": (n + 3, 256, 256, 128, 128, 64, n),
    }
    return widths[name]


class RetargetingMLP(nn.Module):
    """One MLP under the attribute name `mlp`, as the checkpoint's keys expect."""

    def __init__(self, name: str, cfg: ArchConfig) -> None:
        super().__init__()
        self.mlp = mlp(retargeting_widths(name, cfg.num_kp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
