"""F, the appearance feature extractor: a 256x256 RGB crop -> the C x 16 x 64 x 64 feature volume f_s."""
from __future__ import annotations

import torch
from torch import nn

from export.config import ArchConfig
from export.networks.blocks import ConvBlock, ResBlock3d


class AppearanceFeatureExtractor(nn.Module):
    """2-D encoder whose 1x1 output channels are reinterpreted as (channel, depth), then 3-D residual blocks."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        be, top = cfg.f_block_expansion, cfg.f_max_features
        self.reshape = (cfg.reshape_channel, cfg.reshape_depth)
        self.first = ConvBlock(3, be)
        self.down_blocks = nn.ModuleList(
            ConvBlock(min(top, be * 2**i), min(top, be * 2 ** (i + 1)), resample="down")
            for i in range(cfg.f_num_down_blocks)
        )
        self.second = nn.Conv2d(min(top, be * 2**cfg.f_num_down_blocks), top, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.f_num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        return self.resblocks_3d(out.view(b, *self.reshape, h, w))
