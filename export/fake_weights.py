"""Random weights in exactly the official release layout, so every tool runs without the real download.

The files have the official names, keys and shapes (the retargeting file even keeps the DDP "module."
prefix), so the loading code is exercised exactly as with the release. `reduced=True` writes the narrow
architecture and the arch file that names it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from export.config import OFFICIAL, REDUCED, arch_file_text
from engines.layout import ARCH_FILE, CHECKPOINTS, FACE_MODELS, RETARGETING_CHECKPOINT, RETARGETING_KEYS, WEIGHT_FILES
from export.networks import NETWORK_NAMES, build_network
from export.networks.motion import GRN, ChannelsFirstLayerNorm

#: spread of the non-identity values given to normalisation layers (see `vary_normalisation`)
NORM_SPREAD = 0.1
BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)
#: factor on M's scale, t and exp heads (see `tame_motion_heads`)
HEAD_SHRINK = 0.1


def vary_normalisation(model: nn.Module, gen: torch.Generator) -> None:
    """Give BatchNorm, LayerNorm and GRN non-trivial affine values and running stats (variance stays
    positive). Default init makes them identities, which would hide a wrongly exported normalisation."""

    def jitter(tensor: torch.Tensor, centre: float) -> None:
        tensor.copy_(centre + NORM_SPREAD * torch.randn(tensor.shape, generator=gen))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BATCH_NORMS):
                jitter(module.running_mean, 0.0)
                module.running_var.copy_(1.0 + NORM_SPREAD * torch.rand(module.running_var.shape, generator=gen))
            if isinstance(module, (*BATCH_NORMS, nn.LayerNorm, ChannelsFirstLayerNorm)):
                jitter(module.weight, 1.0)
                jitter(module.bias, 0.0)
            if isinstance(module, GRN):
                jitter(module.gamma, 0.0)
                jitter(module.beta, 0.0)


def tame_motion_heads(model: nn.Module) -> None:
    """Scale M's scale/t/exp heads down and centre the scale on 1, so fake keypoint transforms look like real
    ones (positive scale near 1, small expression and translation) and the motion math stays in range."""
    with torch.no_grad():
        for head in (model.detector.fc_scale, model.detector.fc_t, model.detector.fc_exp):
            head.weight.mul_(HEAD_SHRINK)
            head.bias.mul_(HEAD_SHRINK)
        model.detector.fc_scale.bias.add_(1.0)


def weight_files(reduced: bool) -> list[str]:
    """Every file write_fake_weights writes, relative to the weights folder."""
    return WEIGHT_FILES + [ARCH_FILE] if reduced else list(WEIGHT_FILES)


def write_fake_weights(to: Path, seed: int = 0, reduced: bool = False, overwrite: bool = False) -> list[Path]:
    """Write seeded random weights (and the face stand-in models) into `to`; returns the files written."""
    to = Path(to)
    existing = [to / rel for rel in weight_files(reduced) if (to / rel).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; choose an empty folder or pass --force (overwrite=True) to replace it"
        )
    cfg = REDUCED if reduced else OFFICIAL
    written: list[Path] = []

    def save(obj: dict, rel: str) -> None:
        path = to / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)
        written.append(path)

    retargeting: dict[str, dict[str, torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        for name in NETWORK_NAMES:
            model = build_network(name, cfg)
            vary_normalisation(model, gen)
            if name == "motion_extractor":
                tame_motion_heads(model)
            state = model.state_dict()
            if name in RETARGETING_KEYS:
                retargeting[RETARGETING_KEYS[name]] = {f"module.{key}": value for key, value in state.items()}
            else:
                save(state, CHECKPOINTS[name])
    save(retargeting, RETARGETING_CHECKPOINT)

    arch_path = to / ARCH_FILE
    if reduced:
        arch_path.write_text(arch_file_text("reduced"), encoding="utf-8")
        written.append(arch_path)
    else:
        arch_path.unlink(missing_ok=True)  # a stale reduced marker would misdescribe these official weights

    from export.face_standins import write_face_models

    write_face_models(to, seed)
    return written + [to / rel for rel in FACE_MODELS.values()]
