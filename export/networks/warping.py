"""W, the warping module: per-keypoint translations blended by a learned mask warp the feature volume.

Quirk kept on purpose: the identity grid is an align_corners=True style linspace in [-1, 1], but every
grid_sample uses align_corners=False; the trained weights expect exactly this mismatch.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from export.config import ArchConfig
from export.networks.blocks import ConvBlock

KP_VARIANCE = 0.01


def identity_grid(depth: int, height: int, width: int) -> torch.Tensor:
    """D x H x W x 3 grid of (x, y, z), each axis 2 * i / (n - 1) - 1 (the official rounding)."""
    z, y, x = (2 * (torch.arange(n, dtype=torch.float32) / (n - 1)) - 1 for n in (depth, height, width))
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def gaussian_heatmaps(grid: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
    """exp(-0.5 * |grid - kp|^2 / 0.01) for every keypoint: B x K x D x H x W."""
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / KP_VARIANCE)


def sample_volume(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear 5-D grid_sample with zero padding and align_corners=False, as the weights were trained."""
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gather_sample_volume(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """sample_volume from Floor, Gather and elementwise ops only, for backends without a 5-D GridSample
    (OpenVINO: "GridSample is only supported for 4D input tensors"). Same corners, weights and zero padding, so
    it equals sample_volume up to float rounding.

    volume N x C x D x H x W, grid N x Do x Ho x Wo x 3 (x, y, z in [-1, 1]) -> N x C x Do x Ho x Wo.
    """
    n, c, d, h, w = volume.shape
    table = volume.permute(0, 2, 3, 4, 1).reshape(n * d * h * w, c)  # one row of C values per voxel
    pos = ((grid + 1) * torch.tensor([w, h, d], dtype=grid.dtype) - 1) / 2  # align_corners=False unnormalise
    low = torch.floor(pos)
    # per axis and corner (lower, upper): the weight, zero outside the volume (zero padding), and the row offset
    weights = [low + 1 - pos, pos - low]
    offsets = []
    for step in (0, 1):
        index = low.long() + step
        inside = (index >= 0) & (index < torch.tensor([w, h, d]))
        weights[step] = weights[step] * inside.to(grid.dtype)
        offsets.append(index.clamp(min=0).minimum(torch.tensor([w - 1, h - 1, d - 1])) * torch.tensor([1, w, h * w]))
    batch = torch.arange(n).view(n, 1, 1, 1) * (d * h * w)
    out = torch.zeros(())
    for dz, dy, dx in itertools.product((0, 1), repeat=3):  # grid_sampler_3d's corner order: z, then y, then x
        weight = weights[dx][..., 0] * weights[dy][..., 1] * weights[dz][..., 2]
        row = batch + offsets[dx][..., 0] + offsets[dy][..., 1] + offsets[dz][..., 2]
        out = out + table[row] * weight.unsqueeze(-1)
    return out.permute(0, 4, 1, 2, 3).contiguous()


class Hourglass3d(nn.Module):
    """U-Net over the 3-D volume; H and W halve per level, depth is kept. Output: block_expansion + input."""

    def __init__(self, cin: int, block_expansion: int, max_features: int, num_blocks: int) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.down_blocks = nn.ModuleList(
            ConvBlock(
                cin if i == 0 else min(max_features, block_expansion * 2**i),
                min(max_features, block_expansion * 2 ** (i + 1)),
                dims=3,
                resample="down",
            )
            for i in range(num_blocks)
        )
        self.decoder = nn.Module()
        self.decoder.up_blocks = nn.ModuleList(
            ConvBlock(
                (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1)),
                min(max_features, block_expansion * 2**i),
                dims=3,
                resample="up",
            )
            for i in reversed(range(num_blocks))
        )
        self.out_channels = block_expansion + cin
        self.decoder.conv = nn.Conv3d(self.out_channels, self.out_channels, kernel_size=3, padding=1)
        self.decoder.norm = nn.BatchNorm3d(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.encoder.down_blocks:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.decoder.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.decoder.norm(self.decoder.conv(out)))


class DenseMotionNetwork(nn.Module):
    """Predicts the dense deformation (a softmax blend of K+1 sparse motions) and the occlusion map."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        k1 = cfg.num_kp + 1
        self.hourglass = Hourglass3d(
            k1 * (cfg.dm_compress + 1), cfg.dm_block_expansion, cfg.dm_max_features, cfg.dm_num_blocks
        )
        out = self.hourglass.out_channels
        self.mask = nn.Conv3d(out, k1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(cfg.reshape_channel, cfg.dm_compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(cfg.dm_compress)
        self.occlusion = nn.Conv2d(out * cfg.reshape_depth, 1, kernel_size=7, padding=3)
        self.register_buffer("grid", identity_grid(*cfg.volume_shape), persistent=False)
        #: sample with gather_sample_volume (set by WarpingNetwork.use_gather_sampling)
        self.gather_sampling = False

    def sparse_motions(self, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        """B x (K+1) x D x H x W x 3: the identity (background), then G - kp_driving[k] + kp_source[k], added in
        that order as the official code does (float32 rounding then agrees to the last bit)."""
        grid = self.grid[None, None]
        per_kp = grid - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        return torch.cat([grid.expand(per_kp.shape[0], 1, *grid.shape[2:]), per_kp], dim=1)

    def forward(
        self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feature = F.relu(self.norm(self.compress(feature_3d)))
        b, c, d, h, w = feature.shape
        motions = self.sparse_motions(kp_driving, kp_source)
        k1 = motions.shape[1]
        if self.gather_sampling:  # all K+1 motions sample the one feature volume: stack them along depth
            stacked = gather_sample_volume(feature, motions.reshape(b, k1 * d, h, w, 3))
            deformed = stacked.view(b, c, k1, d, h, w).transpose(1, 2)
        else:
            repeated = feature.unsqueeze(1).expand(b, k1, c, d, h, w).reshape(b * k1, c, d, h, w)
            deformed = sample_volume(repeated, motions.reshape(b * k1, d, h, w, 3)).view(b, k1, c, d, h, w)
        heat = gaussian_heatmaps(self.grid, kp_driving) - gaussian_heatmaps(self.grid, kp_source)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2)
        prediction = self.hourglass(torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w))
        mask = torch.softmax(self.mask(prediction), dim=1).unsqueeze(-1)
        deformation = (motions * mask).sum(dim=1)
        occlusion_map = torch.sigmoid(self.occlusion(prediction.view(b, -1, h, w)))
        return deformation, occlusion_map


class WarpingNetwork(nn.Module):
    """Warps f_s by the dense motion, flattens depth into channels, and masks by the occlusion map.

    forward returns (out, occlusion_map, deformation), or only `out` when `out_only` is set (for export).
    """

    def __init__(self, cfg: ArchConfig, out_only: bool = False) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(cfg)
        self.third = ConvBlock(cfg.w_max_features, cfg.w_out_channels, leaky=True)
        self.fourth = nn.Conv2d(cfg.w_out_channels, cfg.w_out_channels, kernel_size=1)
        self.out_only = out_only

    def use_gather_sampling(self) -> "WarpingNetwork":
        """Sample with gather_sample_volume instead of the 5-D grid_sample (the OpenVINO graph)."""
        self.dense_motion_network.gather_sampling = True
        return self

    def forward(
        self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        deformation, occlusion_map = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        sample = gather_sample_volume if self.dense_motion_network.gather_sampling else sample_volume
        warped = sample(feature_3d, deformation)
        b, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.view(b, c * d, h, w))) * occlusion_map
        if self.out_only:
            return out
        return out, occlusion_map, deformation
