"""Helpers of the window tests (test_ui, test_expression_ui): a recording processor factory and waits on the
window. The `video` and `make_window` fixtures that use them live in conftest.py."""
from __future__ import annotations

from pathlib import Path

from engines.layout import ModelsMissingError
from realtime.live_api import FakeProcessor

WAIT_MS = 15000


class Factory:
    """Records every processor it makes; `fail` makes it raise like a missing models folder."""

    def __init__(self, fail: bool = False) -> None:
        self.made: list[FakeProcessor] = []
        self.fail = fail

    def __call__(self, models_dir: Path | None, backend: str) -> FakeProcessor:
        if self.fail:
            raise ModelsMissingError(f"models folder {models_dir} is missing motion_extractor.onnx")
        processor = FakeProcessor(delay_s=0.003)
        processor.backend = f"fake {backend}"
        self.made.append(processor)
        return processor


def loaded(qtbot, window) -> None:
    """Wait for the models to load (on their worker thread) or fail."""
    qtbot.waitUntil(window.device_combo.isEnabled, timeout=WAIT_MS)


def flowing(qtbot, window, more: int = 3) -> None:
    start = window.frames_shown
    qtbot.waitUntil(lambda: window.frames_shown >= start + more, timeout=WAIT_MS)
