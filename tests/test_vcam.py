"""Virtual camera sink against a fake pyvirtualcam backend: letterbox geometry, RGB order, fps, no-device message."""
from __future__ import annotations

import numpy as np
import pytest

from realtime.live_api import FrameResult
from core.images import letterbox
from realtime.frames import LiveFrame
from realtime.vcam import VirtualCameraUnavailable, VirtualCamSink, install_hint


def live(output: np.ndarray | None) -> LiveFrame:
    return LiveFrame(np.zeros((4, 4, 3), np.uint8), FrameResult(output), 0.0, 0)


def test_portrait_letterboxed_centered_rgb(fake_cam) -> None:
    portrait = np.zeros((512, 256, 3), np.uint8)
    portrait[..., 0] = 200  # pure red in RGB
    sink = VirtualCamSink(fps=25.0, backend=fake_cam.open)
    cam = sink.cam
    assert (cam.width, cam.height, cam.fps) == (1280, 720, 25.0)
    sink.send(live(portrait))
    out = cam.sent[-1]
    # 512x256 scaled by 720/512 -> 720x360, centred: bars of (1280-360)/2 = 460 px
    red = np.nonzero(out[360, :, 0])[0]
    assert (red[0], red[-1]) == (460, 819)
    assert out[0, 460, 0] == 200 and out[719, 819, 0] == 200
    assert out[:, :460].max() == 0 and out[:, 820:].max() == 0
    assert out[..., 1:].max() == 0  # no channel swap
    sink.send(live(None))
    assert cam.sent[-1].max() == 0
    sink.close()
    assert cam.closed


def test_letterbox_wide_image_gets_top_bottom_bars() -> None:
    out = letterbox(np.full((100, 400, 3), 9, np.uint8), 200, 200)
    rows = np.nonzero(out[:, 100, 0])[0]
    assert (rows[0], rows[-1]) == (75, 124) and out.shape == (200, 200, 3)


def test_no_device_message_names_install_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(w: int, h: int, fps: float) -> None:
        raise RuntimeError("'v4l2loopback' backend: No v4l2 loopback device found at /dev/video[0-99].")

    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(VirtualCameraUnavailable) as info:
        VirtualCamSink(backend=missing)
    assert str(info.value) == (
        "virtual camera unavailable ('v4l2loopback' backend: No v4l2 loopback device found at /dev/video[0-99].); "
        "to enable it, install v4l2loopback and load it: sudo apt install v4l2loopback-dkms && "
        "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=LivePortrait"
    )
    assert "OBS Studio 26" in install_hint("win32") and "OBS Studio 30" in install_hint("darwin")
