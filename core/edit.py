"""Expression and pose editing: the official demo's "image retargeting" sliders as one value object.

Each expression control adds fixed multiples of its value to entries of the expression tensor exp (21 keypoints x
3 axes), as ../shared/design/expression_editing.md records from the official demo; the pose controls turn the head
by degrees on top of the composed rotation, move_z scales the head, and the two target ratios ask the eye / lip
retargeting MLPs for a given eye- or lip-opening. Every default is exactly a no-op: the animation path skips an
Edit whose values are all defaults, so its output stays bit-identical to the unedited path.

This module only holds the values and the exp additions (numpy only, so core.options can carry an Edit); the
rotation and the keypoint composition live in core.motion beside the rest of the motion math.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np

#: (min, max) of every control: the official demo's slider ranges (degrees for the head, ratios for the targets)
EDIT_RANGES: dict[str, tuple[float, float]] = {
    "head_pitch": (-15.0, 15.0),
    "head_yaw": (-25.0, 25.0),
    "head_roll": (-15.0, 15.0),
    "move_x": (-0.19, 0.19),
    "move_y": (-0.19, 0.19),
    "move_z": (0.9, 1.2),
    "smile": (-0.3, 1.3),
    "wink": (0.0, 39.0),
    "eyebrow": (-30.0, 30.0),
    "gaze_x": (-30.0, 30.0),
    "gaze_y": (-63.0, 63.0),
    "pouting": (-0.09, 0.09),
    "pursing": (-20.0, 15.0),
    "grin": (0.0, 15.0),
    "lip_open": (-90.0, 120.0),
    "target_eye_ratio": (0.0, 0.8),
    "target_lip_ratio": (0.0, 0.8),
}

#: one line per control for the command line, the window's tooltips and the ComfyUI node
EDIT_HELP: dict[str, str] = {
    "head_pitch": "head pitch offset, degrees (nod)",
    "head_yaw": "head yaw offset, degrees (turn)",
    "head_roll": "head roll offset, degrees (tilt)",
    "move_x": "move the face horizontally",
    "move_y": "move the face vertically",
    "move_z": "zoom: scales the head (1 = unchanged)",
    "smile": "smile",
    "wink": "wink",
    "eyebrow": "eyebrow raise (+) / frown (-)",
    "gaze_x": "gaze horizontal",
    "gaze_y": "gaze vertical",
    "pouting": "lip variation 0: pouting",
    "pursing": "lip variation 1: pursing",
    "grin": "lip variation 2: grin",
    "lip_open": "lip variation 3: close (-) <-> open (+)",
    "target_eye_ratio": "target eye-open ratio (eye retargeting MLP); unset keeps the portrait's own",
    "target_lip_ratio": "target lip-open ratio (lip retargeting MLP); unset keeps the portrait's own",
}

#: the expression controls in the official order of application (the sheet's step 2)
EXP_CONTROLS = ("gaze", "smile", "wink", "eyebrow", "pouting", "pursing", "grin", "lip_open", "move_x", "move_y")
POSE_CONTROLS = ("head_pitch", "head_yaw", "head_roll")
RATIO_CONTROLS = ("target_eye_ratio", "target_lip_ratio")

X, Y, Z = 0, 1, 2
#: an addition to exp: (keypoint, axis, amount)
Addition = tuple[int, int, float]


@dataclass(frozen=True)
class Edit:
    """Every control of the official editing sheet; the defaults change nothing."""

    head_pitch: float = 0.0
    head_yaw: float = 0.0
    head_roll: float = 0.0
    move_x: float = 0.0
    move_y: float = 0.0
    move_z: float = 1.0
    smile: float = 0.0
    wink: float = 0.0
    eyebrow: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    pouting: float = 0.0
    pursing: float = 0.0
    grin: float = 0.0
    lip_open: float = 0.0
    target_eye_ratio: float | None = None
    target_lip_ratio: float | None = None

    def __post_init__(self) -> None:
        for name, (low, high) in EDIT_RANGES.items():
            value = getattr(self, name)
            if value is None and name in RATIO_CONTROLS:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")

    @property
    def is_noop(self) -> bool:
        """True when every control is at its default (the animation path then skips the edit entirely)."""
        return self == NO_EDIT

    @property
    def turns_head(self) -> bool:
        return any(getattr(self, name) != 0.0 for name in POSE_CONTROLS)

    def changed(self) -> dict[str, float]:
        """The controls that differ from their defaults (what the settings file and a summary line need)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(NO_EDIT, k)}

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Edit:
        """An Edit from saved values; unknown keys are ignored (a settings file from another version)."""
        return cls(**{k: v for k, v in values.items() if k in EDIT_RANGES})  # type: ignore[arg-type]


NO_EDIT = Edit()


def _gaze(x: float, y: float) -> list[Addition]:
    out: list[Addition] = []
    if x > 0:
        out += [(11, X, 0.0007 * x), (15, X, 0.001 * x)]
    else:
        out += [(11, X, 0.001 * x), (15, X, 0.0007 * x)]
    out += [(11, Y, -0.001 * y), (15, Y, -0.001 * y)]
    b = -y / 2
    return out + [(11, Y, -0.001 * b), (13, Y, 0.0003 * b), (15, Y, -0.001 * b), (16, Y, 0.0003 * b)]


def _eyebrow(v: float) -> list[Addition]:
    if v > 0:
        return [(1, Y, 0.001 * v), (2, Y, -0.001 * v)]
    return [(1, X, -0.001 * v), (2, X, 0.001 * v), (1, Y, 0.0003 * v), (2, Y, -0.0003 * v)]


def _linear(*entries: Addition) -> Callable[[float], list[Addition]]:
    """A control whose additions are fixed coefficients times its value."""
    return lambda v: [(k, axis, c * v) for k, axis, c in entries]


#: the sheet's table: control -> its additions for value v (gaze takes both gaze values)
_ADDITIONS: dict[str, Callable[[float], list[Addition]]] = {
    "smile": _linear((20, Y, -0.01), (14, Y, -0.02), (17, Y, 0.0065), (17, Z, 0.003), (13, Y, -0.00275),
                     (16, Y, -0.00275), (3, Y, -0.0035), (7, Y, -0.0035)),
    "wink": _linear((11, Y, 0.001), (13, Y, -0.0003), (17, X, 0.0003), (17, Y, 0.0003), (3, Y, -0.0003)),
    "eyebrow": _eyebrow,
    "pouting": _linear((19, X, 1.0)),
    "pursing": _linear((14, Y, 0.001), (3, Y, -0.0005), (7, Y, -0.0005), (17, Z, -0.0005)),
    "grin": _linear((20, Z, -0.001), (20, Y, -0.001), (14, Y, -0.001)),
    "lip_open": _linear((19, Y, 0.001), (19, Z, 0.0001), (17, Y, -0.0001)),
    "move_x": _linear((5, X, -1.0)),  # the official demo flips move x's sign before adding it
    "move_y": _linear((5, Y, 1.0)),
}


def exp_additions(edit: Edit) -> list[Addition]:
    """Every (keypoint, axis, amount) the edit adds to exp, in the official order; controls at 0 add nothing."""
    out: list[Addition] = []
    for control in EXP_CONTROLS:
        if control == "gaze":
            if edit.gaze_x != 0 or edit.gaze_y != 0:
                out += _gaze(edit.gaze_x, edit.gaze_y)
        elif getattr(edit, control) != 0:
            out += _ADDITIONS[control](getattr(edit, control))
    return out


def edit_exp(exp: np.ndarray, edit: Edit) -> np.ndarray:
    """exp (21, 3) with the edit's additions applied one by one in float32, as the official demo adds them."""
    out = np.array(exp, dtype=np.float32, copy=True)
    for k, axis, amount in exp_additions(edit):
        out[k, axis] += np.float32(amount)
    return out
