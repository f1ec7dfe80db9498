"""Animation options: one plain dataclass with the `LivePortraitProcess` node's names and defaults, plus the
official pipeline's animation_region and driving_multiplier and the editing controls (an Edit) that the app and
the command line offer."""
from __future__ import annotations

from dataclasses import dataclass, fields

from core.edit import NO_EDIT, Edit

DEVICES = ("CPU", "CUDA")
#: what the driving motion moves (the official `animation_region`): everything, the expression only, the head pose
#: only, the lips only or the eyes only
ANIMATION_REGIONS = ("all", "exp", "pose", "lip", "eyes")
#: the official `driving_option` of a driving video: "expression-friendly" scales the motion by the ratio of the
#: source's and the first driving frame's keypoint hull sizes (core.motion.motion_multiplier); "pose-friendly"
#: transfers it unscaled, as the LivePortraitProcess node always has (our default)
DRIVING_OPTIONS = ("pose-friendly", "expression-friendly")

#: (min, max) of every numeric option (the node's own ranges for its options), shared by validation, the window,
#: the command line and the ComfyUI node
OPTION_RANGES: dict[str, tuple[float, float]] = {
    "dsize": (64, 2048),
    "scale": (1.0, 4.0),
    "vx_ratio": (-1.0, 1.0),
    "vy_ratio": (-1.0, 1.0),
    "eyes_retargeting_multiplier": (0.01, 10.0),
    "lip_retargeting_multiplier": (0.01, 10.0),
    "driving_multiplier": (0.0, 2.0),
}


@dataclass
class ProcessOptions:
    """Everything that changes how a source is animated; shared by render, the live app and the ComfyUI node."""

    dsize: int = 512
    scale: float = 2.3
    vx_ratio: float = 0.0
    vy_ratio: float = -0.125
    lip_zero: bool = True
    eye_retargeting: bool = False
    eyes_retargeting_multiplier: float = 1.0
    lip_retargeting: bool = False
    lip_retargeting_multiplier: float = 1.0
    stitching: bool = True
    relative: bool = True
    onnx_device: str = "CPU"
    animation_region: str = "all"
    driving_multiplier: float = 1.0
    edit: Edit = NO_EDIT

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject out-of-range values with a message naming the option and its range."""
        for name, (low, high) in OPTION_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
        if self.onnx_device not in DEVICES:
            raise ValueError(f"onnx_device must be one of {', '.join(DEVICES)}, got {self.onnx_device!r}")
        if self.animation_region not in ANIMATION_REGIONS:
            raise ValueError(
                f"animation_region must be one of {', '.join(ANIMATION_REGIONS)}, got {self.animation_region!r}"
            )
        if not isinstance(self.edit, Edit):
            raise ValueError(f"edit must be a core.edit.Edit, got {type(self.edit).__name__}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


#: the official pipeline's options that the LivePortraitProcess node does not have (the app and CLI offer them)
PIPELINE_OPTIONS = ("animation_region", "driving_multiplier", "edit")
#: the LivePortraitProcess node's inputs, in its order
NODE_OPTIONS = tuple(name for name in ProcessOptions.names() if name not in PIPELINE_OPTIONS)
