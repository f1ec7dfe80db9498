"""Our PyTorch implementation of the seven LivePortrait networks, keyed by the names the app uses.

Module attribute names reproduce the official state_dict keys exactly, so the release checkpoints load
strictly; `fold_spectral_norm` turns G into plain convs before export.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils import remove_spectral_norm

from export.config import IMAGE_SIZE, ArchConfig
from engines.layout import RETARGETING_KEYS
from export.networks.appearance import AppearanceFeatureExtractor
from export.networks.motion import MOTION_OUTPUTS, MotionExtractor
from export.networks.retargeting import RetargetingMLP, retargeting_widths
from export.networks.spade import SPADEGenerator
from export.networks.warping import WarpingNetwork

NETWORK_NAMES = (
    "appearance_feature_extractor",
    "motion_extractor",
    "warping_module",
    "spade_generator",
    "stitching",
    "lip",
    "eye",
)

#: graph input and output names of each exported network (the models-folder contract); W exports `out` only
NETWORK_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "appearance_feature_extractor": (("source_image",), ("feature_3d",)),
    "motion_extractor": (("image",), MOTION_OUTPUTS),
    "warping_module": (("feature_3d", "kp_driving", "kp_source"), ("out",)),
    "spade_generator": (("feature",), ("image",)),
    "stitching": (("x",), ("delta",)),
    "lip": (("x",), ("delta",)),
    "eye": (("x",), ("delta",)),
}

_BUILDERS: dict[str, Callable[[ArchConfig], nn.Module]] = {
    "appearance_feature_extractor": AppearanceFeatureExtractor,
    "motion_extractor": MotionExtractor,
    "warping_module": WarpingNetwork,
    "spade_generator": SPADEGenerator,
    **{name: (lambda cfg, name=name: RetargetingMLP(name, cfg)) for name in RETARGETING_KEYS},
}


class UnknownNetworkError(ValueError):
    """A network name that is not one of NETWORK_NAMES."""


def check_network_name(name: str) -> None:
    """The one place an unknown network name is refused (building, input shapes, checkpoint lookup)."""
    if name not in _BUILDERS:
        raise UnknownNetworkError(f"unknown network {name!r}; use one of {', '.join(NETWORK_NAMES)}")


def build_network(name: str, cfg: ArchConfig) -> nn.Module:
    """A freshly initialised network of the given architecture, in eval mode."""
    check_network_name(name)
    return _BUILDERS[name](cfg).eval()


def input_shapes(name: str, cfg: ArchConfig) -> dict[str, tuple[int, ...]]:
    """Batch-1 shape of every input of one network, by graph input name."""
    check_network_name(name)
    d, h, w = cfg.volume_shape
    kp = (1, cfg.num_kp, 3)
    shapes = {
        "appearance_feature_extractor": [(1, 3, IMAGE_SIZE, IMAGE_SIZE)],
        "motion_extractor": [(1, 3, IMAGE_SIZE, IMAGE_SIZE)],
        "warping_module": [(1, cfg.reshape_channel, d, h, w), kp, kp],
        "spade_generator": [(1, cfg.g_input_channels, h, w)],
        **{n: [(1, retargeting_widths(n, cfg.num_kp)[0])] for n in RETARGETING_KEYS},
    }[name]
    return dict(zip(NETWORK_IO[name][0], shapes))


def example_inputs(name: str, cfg: ArchConfig, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Plausible inputs for tracing and tests: images in [0, 1], keypoints in [-0.5, 0.5], small features."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for input_name, shape in input_shapes(name, cfg).items():
        if input_name in ("source_image", "image"):
            tensors.append(torch.rand(shape, generator=gen))
        elif input_name.startswith("kp_"):
            tensors.append(torch.rand(shape, generator=gen) - 0.5)
        else:
            tensors.append(torch.randn(shape, generator=gen) * 0.1)
    return tuple(tensors)


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    """Replace every spectral-normed weight by weight_orig / sigma, sigma = u . (W_mat @ v) with the stored
    u and v (no power iteration: what eval mode computes), so the exported graph has no spectral-norm ops."""
    for sub in module.modules():
        if hasattr(sub, "weight_orig"):
            remove_spectral_norm(sub)
    return module
