"""Virtual camera sink: the animated portrait as a webcam other apps (Zoom, Meet, OBS) can pick.

pyvirtualcam drives OBS's virtual camera on Windows/macOS and v4l2loopback on Linux. Video apps expect a
landscape 16:9 stream, so the portrait is letterboxed into 1280x720 by default.
"""
from __future__ import annotations

import sys
from typing import Callable, Protocol

import numpy as np

from core.images import letterbox
from realtime.frames import LiveFrame


class VirtualCameraUnavailable(RuntimeError):
    """No virtual camera device exists; the message tells how to install one for this OS."""


class CameraBackend(Protocol):
    """The part of pyvirtualcam.Camera we use (a fake with this interface stands in for tests)."""

    width: int
    height: int
    fps: float
    device: str

    def send(self, frame: np.ndarray) -> None: ...

    def sleep_until_next_frame(self) -> None: ...

    def close(self) -> None: ...


def install_hint(platform: str = sys.platform) -> str:
    """How to get a virtual camera device on `platform` (a sys.platform value)."""
    if platform.startswith("linux"):
        return (
            "install v4l2loopback and load it: sudo apt install v4l2loopback-dkms && "
            "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=LivePortrait"
        )
    if platform == "darwin":
        return "install OBS Studio 30 or newer, then click Start Virtual Camera in OBS once to install it"
    return "install OBS Studio 26 or newer (it includes the virtual camera), then restart this app"


def _pyvirtualcam(width: int, height: int, fps: float) -> CameraBackend:
    import pyvirtualcam

    return pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB)


class VirtualCamSink:
    """Sends each frame's animated portrait (black while there is none) to a virtual camera, in RGB order."""

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        backend: Callable[[int, int, float], CameraBackend] | None = None,
    ) -> None:
        try:
            self.cam = (backend or _pyvirtualcam)(width, height, fps)
        except Exception as exc:  # pyvirtualcam raises plain RuntimeError/ImportError when no device exists
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise VirtualCameraUnavailable(
                f"virtual camera unavailable ({reason}); to enable it, {install_hint()}"
            ) from exc
        self.status = f"virtual camera on: {self.cam.device} {self.cam.width}x{self.cam.height} @ {self.cam.fps:g} fps"
        self.black = np.zeros((self.cam.height, self.cam.width, 3), np.uint8)

    def send(self, frame: LiveFrame) -> None:
        output = frame.result.output
        self.cam.send(self.black if output is None else letterbox(output, self.cam.width, self.cam.height))

    def close(self) -> None:
        self.cam.close()
