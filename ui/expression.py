"""The window's Expression section: one live slider per editing control (core.edit), a reset button, and the
values as a plain dict for the settings file. A permanent smile, a head-tilt trim or wider eyes go on top of the
webcam's motion as the sliders move."""
from __future__ import annotations

import math
from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSlider, QWidget

from core.edit import EDIT_HELP, EDIT_RANGES, NO_EDIT, RATIO_CONTROLS, Edit

#: the row labels, in the order of the official demo's sheet
LABELS = {
    "head_pitch": "head pitch", "head_yaw": "head yaw", "head_roll": "head roll", "move_x": "move x",
    "move_y": "move y", "move_z": "zoom", "smile": "smile", "wink": "wink", "eyebrow": "eyebrow",
    "gaze_x": "gaze x", "gaze_y": "gaze y", "pouting": "pouting", "pursing": "pursing", "grin": "grin",
    "lip_open": "lips close/open", "target_eye_ratio": "eye opening", "target_lip_ratio": "lip opening",
}


def slider_step(name: str) -> float:
    """The value one slider notch moves: about 1/100 of the range, a power of ten, so the official ranges (and
    their defaults) fall on notches exactly."""
    low, high = EDIT_RANGES[name]
    return 10.0 ** (math.floor(math.log10(high - low)) - 2)


class ExpressionSection(QWidget):
    """Sliders for every control of an Edit; `on_change` runs after each change (the window pushes the options)."""

    def __init__(self, saved: object, on_change: Callable[[], None]) -> None:
        super().__init__()
        self.on_change = on_change
        self.sliders: dict[str, QSlider] = {}
        self.values: dict[str, QLabel] = {}
        self.switches: dict[str, QCheckBox] = {}  # the target ratios: off = the portrait's own opening
        form = QFormLayout(self)
        for name, (low, high) in EDIT_RANGES.items():
            step = slider_step(name)
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(round(low / step), round(high / step))
            slider.setToolTip(f"{EDIT_HELP[name]} ({low:g} to {high:g})")
            value = QLabel()
            value.setMinimumWidth(44)
            row = QHBoxLayout()
            if name in RATIO_CONTROLS:
                switch = QCheckBox()
                switch.setToolTip("off: the portrait keeps its own opening")
                switch.toggled.connect(slider.setEnabled)
                switch.toggled.connect(self._changed)
                self.switches[name] = switch
                row.addWidget(switch)
            row.addWidget(slider, 1)
            row.addWidget(value)
            self.sliders[name], self.values[name] = slider, value
            form.addRow(LABELS[name], row)
        self.reset_button = QPushButton("Reset expression")
        self.reset_button.setToolTip("every control back to its default: the portrait follows your face unchanged")
        self.reset_button.clicked.connect(self.reset)
        form.addRow(self.reset_button)
        self.set_edit(saved_edit(saved))
        for slider in self.sliders.values():
            slider.valueChanged.connect(self._changed)

    def _value(self, name: str) -> float | None:
        if name in self.switches and not self.switches[name].isChecked():
            return None
        return round(self.sliders[name].value() * slider_step(name), 6)

    def edit(self) -> Edit:
        """The Edit the sliders show."""
        return Edit(**{name: self._value(name) for name in EDIT_RANGES})

    def set_edit(self, edit: Edit) -> None:
        """Show `edit` (one change for the window, not one per slider)."""
        for widget in (*self.sliders.values(), *self.switches.values()):
            widget.blockSignals(True)
        for name in EDIT_RANGES:
            value = getattr(edit, name)
            if name in self.switches:
                self.switches[name].setChecked(value is not None)
                self.sliders[name].setEnabled(value is not None)
                value = sum(EDIT_RANGES[name]) / 2 if value is None else value  # parked mid-range while off
            self.sliders[name].setValue(round(value / slider_step(name)))
        for widget in (*self.sliders.values(), *self.switches.values()):
            widget.blockSignals(False)
        self._show_values()

    def reset(self) -> None:
        self.set_edit(NO_EDIT)
        self.on_change()

    def _changed(self) -> None:
        self._show_values()
        self.on_change()

    def _show_values(self) -> None:
        for name, label in self.values.items():
            value = self._value(name)
            label.setText("off" if value is None else f"{value:g}")


def saved_edit(saved: object) -> Edit:
    """The Edit of the settings file's values; a missing, hand-broken or out-of-range value is its default (a
    damaged file never stops the window)."""
    if not isinstance(saved, dict):
        return NO_EDIT
    good = {}
    for name, value in saved.items():
        try:
            Edit(**{name: value})
        except (TypeError, ValueError):
            continue
        good[name] = value
    return Edit(**good)
