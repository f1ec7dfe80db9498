"""The live window with the real processor on the reduced models, a shared driving video as the camera and a
shared portrait (pytest-qt, offscreen). A CPU frame takes seconds here, so the waits are generous."""
from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest

from realtime.live import LiveProcessor, make_processor
from ui.app import make_window

WAIT_MS = 60000


def test_real_processor_streams_switches_portrait_and_closes(
    qtbot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reduced_models: Path, media_dir: Path
) -> None:
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))  # never read the user's settings
    first, second = media_dir / "portraits" / "s6.jpg", media_dir / "portraits" / "s5.jpg"
    _, window = make_window(
        reduced_models, "cpu", make_processor, camera=str(media_dir / "driving" / "d10.mp4"), portrait=first,
        settings_path=tmp_path / "settings.json",
    )
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.processor is not None, timeout=WAIT_MS)  # loaded on a worker thread
    assert isinstance(window.processor, LiveProcessor)
    assert window.backend_label.text() == "processor: onnxruntime-cpu (ONNX Runtime on the CPU, as asked.)"
    assert window.messages == {}

    def animated(shape: tuple[int, ...]) -> bool:
        frame = window.last_frame
        return frame is not None and frame.result.output is not None and frame.result.output.shape == shape

    first_shape, second_shape = cv2.imread(str(first)).shape, cv2.imread(str(second)).shape
    assert first_shape != second_shape
    qtbot.waitUntil(lambda: animated(first_shape), timeout=WAIT_MS)
    assert window.last_frame.result.face_found and window.status_line.text() == "tracking"
    assert {"motion", "warp+decode", "paste-back", "process"} <= set(window.loop.stats().timings)

    # a new portrait and every animation control reach the real processor (together: a frame takes seconds here),
    # and the animation goes on with both
    window.load_portrait(second)
    changes = {
        "dsize": 256, "scale": 2.0, "vx_ratio": 0.05, "vy_ratio": -0.2, "lip_zero": False, "eye_retargeting": True,
        "eyes_retargeting_multiplier": 1.5, "lip_retargeting": True, "lip_retargeting_multiplier": 0.5,
        "stitching": False, "relative": False,
    }
    for name, value in changes.items():
        widget = window.option_widgets[name]
        widget.setChecked(value) if isinstance(value, bool) else widget.setValue(value)
    window.smoothing_slider.setValue(50)
    window.lock_scale_check.setChecked(True)
    processor = window.processor
    qtbot.waitUntil(lambda: all(getattr(processor.options, k) == pytest.approx(v) for k, v in changes.items()),
                    timeout=WAIT_MS)
    assert processor.smoother.strength == pytest.approx(0.5) and processor.lock_scale
    assert processor.source.dsize == 256  # the crop options prepared the portrait again
    shown = window.frames_shown
    qtbot.waitUntil(lambda: window.frames_shown >= shown + 1 and animated(second_shape), timeout=WAIT_MS)
    assert "portrait" not in window.messages

    # closing aborts the frame in flight rather than waiting for it: the next warp is held inside its ONNX Runtime
    # run until the processor is interrupted, so a close that waited for the frame would never end
    threads = list(window.loop.threads)
    assert {t.name for t in threads} == {"live-capture", "live-process", "live-render", "live-output"}
    warp = processor.animator.nets.runners["warping_module"]
    entered, interrupted, outcome = threading.Event(), threading.Event(), []
    real_interrupt, session = warp.interrupt, warp.session

    def interrupt() -> None:
        real_interrupt()
        interrupted.set()

    def held_run(*args):
        entered.set()
        interrupted.wait(WAIT_MS / 1000)
        try:
            return session.run(*args)
        except Exception as exc:
            outcome.append(exc)
            raise

    monkeypatch.setattr(warp, "interrupt", interrupt)
    monkeypatch.setattr(warp, "session", SimpleNamespace(run=held_run))
    qtbot.waitUntil(entered.is_set, timeout=WAIT_MS)
    window.close()
    assert not any(t.is_alive() for t in threads)
    assert window.loop is None
    assert len(outcome) == 1  # ONNX Runtime stopped the run: the terminate flag reached it
