"""Strict loading of the official checkpoints (or fake ones in the same layout) into our networks.

Only `torch.load(weights_only=True)` is used, so a checkpoint can never run code. Every failure a user can
cause (no folder, a missing, truncated or foreign file, the wrong architecture) becomes a CheckpointError
whose one-line message names the file and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.config import OFFICIAL, ArchConfig, ArchFileError, arch_for, preset_name
from engines.layout import ARCH_FILE, CHECKPOINTS, RETARGETING_CHECKPOINT, RETARGETING_KEYS
from export.networks import NETWORK_NAMES, build_network, check_network_name

GET_WEIGHTS = "python -m export download --to {dir}` (or `python -m export fake-weights --to {dir}` for tests)"
DDP_PREFIX = "module."
#: how many key names a missing/unexpected message lists
NAMED_KEYS = 3


class CheckpointError(RuntimeError):
    """A weights folder or checkpoint file that cannot be loaded; the message says which and how to fix it."""


def checkpoint_path(weights_dir: Path, name: str) -> Path:
    """The file that holds network `name` (the three MLPs share the retargeting file)."""
    check_network_name(name)
    return Path(weights_dir) / CHECKPOINTS.get(name, RETARGETING_CHECKPOINT)


def read_checkpoint(path: Path, weights_dir: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) of one file, with a clear message for a missing or damaged file."""
    fix = GET_WEIGHTS.format(dir=weights_dir)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; get the weights with `{fix}")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:  # torch.load raises many unrelated types (RuntimeError, KeyError, EOFError...)
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); delete it and get it again "
            f"with `{fix}"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, not a state_dict")
    return data


def network_state(data: dict[str, Any], path: Path, name: str) -> dict[str, Any]:
    """The state_dict of one network from its checkpoint's contents: the file itself, or for the MLPs a
    "module."-stripped sub-dict of the shared retargeting file."""
    if name not in RETARGETING_KEYS:
        return data
    sub_key = RETARGETING_KEYS[name]
    if not isinstance(data.get(sub_key), dict):
        raise CheckpointError(
            f"checkpoint {path} has no {sub_key!r} state_dict (it holds {sorted(map(str, data))[:NAMED_KEYS]}); "
            "it is not LivePortrait's stitching_retargeting_module.pth"
        )
    # the release was saved from DDP-wrapped modules; the official loader drops every "module." as we do
    return {key.replace(DDP_PREFIX, ""): value for key, value in data[sub_key].items()}


def check_state(state: dict[str, Any], model: nn.Module, path: Path, cfg: ArchConfig) -> None:
    """Compare keys and shapes before loading, so the message names the offending tensors."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    hint = f"it does not match the {preset_name(cfg)} architecture"
    if cfg == OFFICIAL:
        hint += f"; weights written by `fake-weights --reduced` need their {ARCH_FILE}"
    else:
        hint += f" (chosen by {ARCH_FILE})"
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:NAMED_KEYS])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:NAMED_KEYS])})")
        raise CheckpointError(f"checkpoint {path} has {' and '.join(parts)}; {hint}")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"checkpoint {path}: tensor {key!r} has shape {list(value.shape)}, expected {list(shape)}; {hint}"
            )


def require_dir(weights_dir: Path) -> None:
    """Fail with the how-to-get-weights message when the folder is absent."""
    if not Path(weights_dir).is_dir():
        raise CheckpointError(
            f"weights directory {weights_dir} does not exist; get the weights with "
            f"`{GET_WEIGHTS.format(dir=weights_dir)}"
        )


def folder_arch(weights_dir: Path) -> ArchConfig:
    """The architecture of an existing weights folder (its arch file's preset, else official)."""
    require_dir(weights_dir)
    try:
        return arch_for(weights_dir)
    except ArchFileError as exc:
        raise CheckpointError(str(exc)) from exc


def _loaded(name: str, data: dict[str, Any], path: Path, cfg: ArchConfig) -> nn.Module:
    """Network `name` built for `cfg` with its part of a checkpoint's contents loaded strictly, in eval mode."""
    model = build_network(name, cfg)
    state = network_state(data, path, name)
    check_state(state, model, path, cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_network(weights_dir: Path, name: str, cfg: ArchConfig | None = None) -> nn.Module:
    """Network `name` with its checkpoint loaded strictly, in eval mode; `cfg` defaults to the folder's."""
    weights_dir = Path(weights_dir)
    if cfg is None:
        cfg = folder_arch(weights_dir)
    else:
        require_dir(weights_dir)
    path = checkpoint_path(weights_dir, name)
    return _loaded(name, read_checkpoint(path, weights_dir), path, cfg)


def load_all(weights_dir: Path) -> dict[str, nn.Module]:
    """Every network of NETWORK_NAMES, loaded strictly with the folder's architecture; each checkpoint file is
    read once (the three MLPs, last in NETWORK_NAMES, share one) and only the latest one is held in memory."""
    weights_dir = Path(weights_dir)
    cfg = folder_arch(weights_dir)
    nets: dict[str, nn.Module] = {}
    held: tuple[Path, dict[str, Any]] | None = None
    for name in NETWORK_NAMES:
        path = checkpoint_path(weights_dir, name)
        if held is None or held[0] != path:
            held = (path, read_checkpoint(path, weights_dir))
        nets[name] = _loaded(name, held[1], path, cfg)
    return nets
