"""Animation options: one plain dataclass with the `LivePortraitProcess` node's names and defaults."""
from __future__ import annotations

from dataclasses import dataclass, fields

DEVICES = ("CPU", "CUDA")

#: (min, max) of every numeric option: the node's ranges, shared by validation, the window and the ComfyUI node
OPTION_RANGES: dict[str, tuple[float, float]] = {
    "dsize": (64, 2048),
    "scale": (1.0, 4.0),
    "vx_ratio": (-1.0, 1.0),
    "vy_ratio": (-1.0, 1.0),
    "eyes_retargeting_multiplier": (0.01, 10.0),
    "lip_retargeting_multiplier": (0.01, 10.0),
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

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
