"""The window's Expression section: every slider reaches the processor live, reset, and the values are saved with
the settings and come back (also from the command line)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.edit import EDIT_RANGES, NO_EDIT, Edit
from core.options import ProcessOptions
from tests.windows import WAIT_MS, Factory, flowing
from ui.expression import ExpressionSection, saved_edit, slider_step


def test_every_slider_reaches_the_processor_and_reset_clears_them(qtbot, make_window, media_dir: Path, tmp_path) -> None:
    factory = Factory()
    window = make_window(factory)
    processor = factory.made[0]
    window.load_portrait(media_dir / "portraits" / "s0.jpg")
    flowing(qtbot, window)
    section = window.expression
    assert window.sections.tabText(window.sections.indexOf(section.parentWidget().parentWidget())) == "Expression"
    assert list(section.sliders) == list(EDIT_RANGES)
    expected: dict[str, float] = {}
    for name, (low, high) in EDIT_RANGES.items():
        if name in section.switches:
            section.switches[name].setChecked(True)
        slider = section.sliders[name]
        slider.setValue(slider.maximum() - 3)  # near the top of the official range
        expected[name] = round(high - 3 * slider_step(name), 6)
        qtbot.waitUntil(lambda: getattr(processor.options.edit, name) == pytest.approx(expected[name]), timeout=WAIT_MS)
        assert section.values[name].text() == f"{expected[name]:g}"
    assert processor.options.edit == Edit(**expected)
    section.switches["target_eye_ratio"].setChecked(False)  # off: the portrait's own opening again
    qtbot.waitUntil(lambda: processor.options.edit.target_eye_ratio is None, timeout=WAIT_MS)
    assert section.values["target_eye_ratio"].text() == "off"
    section.reset_button.click()
    qtbot.waitUntil(lambda: processor.options.edit == NO_EDIT, timeout=WAIT_MS)
    assert window.current_options() == ProcessOptions(onnx_device=window.current_options().onnx_device)


def test_the_edit_is_saved_with_the_settings_and_comes_back(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window()
    window.expression.sliders["smile"].setValue(round(0.5 / slider_step("smile")))
    window.expression.sliders["head_yaw"].setValue(round(-12.5 / slider_step("head_yaw")))
    window.close()
    saved = json.loads((tmp_path / "config" / "settings.json").read_text())
    assert saved["options"]["edit"] == {"head_yaw": -12.5, "smile": 0.5}
    again = make_window()
    assert again.current_options().edit == Edit(smile=0.5, head_yaw=-12.5)


def test_command_line_edit_starts_with_the_window(qtbot, make_window, media_dir: Path) -> None:
    factory = Factory()
    options = ProcessOptions(edit=Edit(smile=0.4, target_lip_ratio=0.3))
    window = make_window(factory, options=options)
    assert window.current_options().edit == options.edit
    assert window.expression.switches["target_lip_ratio"].isChecked()
    assert not window.expression.switches["target_eye_ratio"].isChecked()


def test_a_damaged_saved_edit_falls_back_control_by_control(qtbot) -> None:
    assert saved_edit({"smile": 0.5, "wink": 99, "gaze_x": "left", "nonsense": 1}) == Edit(smile=0.5)
    assert saved_edit(["not", "a", "dict"]) == NO_EDIT
    changes: list[int] = []
    section = ExpressionSection({"grin": 3}, lambda: changes.append(1))
    qtbot.addWidget(section)
    assert section.edit() == Edit(grin=3.0) and changes == []  # showing saved values is not a change
