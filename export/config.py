"""Every width of the LivePortrait architecture, as one frozen record with two presets.

The reduced preset keeps the graph (block counts, depths, spatial sizes, 21 keypoints, the MLPs) and only
shrinks channels, so the whole pipeline can be exercised on a CPU in tests with fake weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engines.layout import ARCH_FILE


class ArchFileError(ValueError):
    """The arch file beside the weights is unreadable or names an unknown preset."""

#: side of the square crop that F and M take
IMAGE_SIZE = 256


@dataclass(frozen=True)
class ArchConfig:
    """Channel widths of F, M, W and G; the defaults are the official models.yaml values."""

    # F, appearance_feature_extractor
    f_block_expansion: int = 64
    f_max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    f_num_down_blocks: int = 2
    f_num_resblocks: int = 6
    # M, motion_extractor (ConvNeXt-V2 tiny)
    m_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    m_depths: tuple[int, int, int, int] = (3, 3, 9, 3)
    num_kp: int = 21
    num_bins: int = 66
    # W, warping_module
    w_block_expansion: int = 64
    w_max_features: int = 512
    w_num_down_blocks: int = 2
    dm_block_expansion: int = 32
    dm_max_features: int = 1024
    dm_num_blocks: int = 5
    dm_compress: int = 4
    # G, spade_generator
    g_input_channels: int = 256
    g_out_channels: int = 64
    g_num_middle_blocks: int = 6
    spade_hidden: int = 128

    def __post_init__(self) -> None:
        # W reads F's volume flattened to 2-D and G reads W's output: the widths must chain.
        if self.w_max_features != self.reshape_channel * self.reshape_depth:
            raise ValueError(
                f"w_max_features ({self.w_max_features}) must equal reshape_channel*reshape_depth "
                f"({self.reshape_channel * self.reshape_depth})"
            )
        if self.f_max_features != self.reshape_channel * self.reshape_depth:
            raise ValueError(
                f"f_max_features ({self.f_max_features}) must equal reshape_channel*reshape_depth "
                f"({self.reshape_channel * self.reshape_depth})"
            )
        if self.g_input_channels != self.w_out_channels:
            raise ValueError(
                f"g_input_channels ({self.g_input_channels}) must equal the warping output width "
                f"({self.w_out_channels})"
            )

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of the feature volume f_s: 16 x 64 x 64 for the 256 x 256 input."""
        side = IMAGE_SIZE // 2**self.f_num_down_blocks
        return self.reshape_depth, side, side

    @property
    def w_out_channels(self) -> int:
        """Width of W's `out` (256 official): block_expansion * 2**num_down_blocks."""
        return self.w_block_expansion * 2**self.w_num_down_blocks


OFFICIAL = ArchConfig()

#: same graph, 1/8 to 1/16 of the channels. W stays the slowest reduced net (~0.6 s on CPU): its 7x7x7 mask conv
#: at 16x64x64 reads (21+1) * (compress+1) + dm_block_expansion channels, and compress 1 is the floor.
REDUCED = ArchConfig(
    f_block_expansion=8,
    f_max_features=64,
    reshape_channel=4,
    m_dims=(16, 32, 64, 128),
    w_block_expansion=4,
    w_max_features=64,
    dm_block_expansion=4,
    dm_max_features=32,
    dm_compress=1,
    g_input_channels=16,
    g_out_channels=8,
    spade_hidden=8,
)

PRESETS = {"official": OFFICIAL, "reduced": REDUCED}


def arch_for(weights_dir: Path) -> ArchConfig:
    """The architecture of the weights in `weights_dir`: the arch file's preset, else the official one."""
    path = Path(weights_dir) / ARCH_FILE
    if not path.is_file():
        return OFFICIAL
    try:
        preset = json.loads(path.read_text(encoding="utf-8"))["preset"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchFileError(
            f"{path} is not a valid arch file ({exc}); it must be JSON like {{\"preset\": \"reduced\"}}"
        ) from exc
    if preset not in PRESETS:
        raise ArchFileError(f"{path} names unknown preset {preset!r}; use one of {sorted(PRESETS)}")
    return PRESETS[preset]


def arch_file_text(preset: str) -> str:
    """The arch file content that names `preset`."""
    if preset not in PRESETS:
        raise ArchFileError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
    return json.dumps({"preset": preset}) + "\n"


def preset_name(cfg: ArchConfig) -> str:
    """The preset's name for messages ("official", "reduced"), or "custom"."""
    return next((name for name, preset in PRESETS.items() if preset == cfg), "custom")
