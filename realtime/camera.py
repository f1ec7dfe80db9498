"""Driving-frame sources: a webcam by index, or a video file that stands in for one.

A source's read() blocks for at most about one frame interval and returns an RGB uint8 frame or None; it never
raises for an unplugged or busy camera. Instead `status` says what is wrong and the camera is reopened every few
seconds, so the capture thread (and stop()) stay responsive.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

import cv2
import numpy as np

#: how long read() waits between reopen attempts of a failed camera, and how long it sleeps per call meanwhile
REOPEN_EVERY_S = 2.0
IDLE_SLEEP_S = 0.05


class CameraError(ValueError):
    """A camera specification that can never work (e.g. a video path that does not exist)."""


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own warnings off while a camera index is tried: an absent camera is expected, and `status` says
    it in one line (OpenCV would print two lines of its internals on every retry)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


class FrameSource(Protocol):
    """What the capture thread reads from."""

    fps: float
    status: str  # empty when frames flow, else a user-facing message

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class CameraSource:
    """A webcam through cv2.VideoCapture, with the requested resolution and fps (the driver may pick others).

    The device is opened by the first read(), on the capture thread after it closed the previous source: opening
    it here, while the loop still holds the same webcam (a new resolution), would find it busy."""

    def __init__(self, index: int, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        self.index, self.width, self.height = index, width, height
        self.fps = fps
        self.status = ""
        self.cap: cv2.VideoCapture | None = None
        self.next_open = 0.0

    def _open(self) -> None:
        self.next_open = time.monotonic() + REOPEN_EVERY_S
        with _quiet_opencv():
            cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            self.status = (
                f"{self._absent()}; retrying every {REOPEN_EVERY_S:g} s - plug it in, close the other app, "
                "or choose another camera or a video file"
            )
            return
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        self.fps = cap.get(cv2.CAP_PROP_FPS) or self.fps
        self.cap, self.status = cap, ""

    def _absent(self) -> str:
        return f"no camera at index {self.index} (unplugged or used by another app)"

    def probe(self) -> None:
        """Open and release the camera once, now: a headless run without it fails at once with CameraError
        rather than retrying forever (the window keeps retrying: its user can plug the camera in). Released again
        so the capture thread opens it on its own thread, as drivers expect."""
        self._open()
        if self.cap is None:
            raise CameraError(f"{self._absent()}; plug it in, close the other app, or pass a video file as --camera")
        self.close()
        self.next_open = 0.0

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            if time.monotonic() >= self.next_open:
                self._open()
            else:
                time.sleep(IDLE_SLEEP_S)
            return None
        ok, frame = self.cap.read()
        if not ok or frame is None:
            self.close()
            self.status = f"camera {self.index} stopped sending frames; reopening every {REOPEN_EVERY_S:g} s"
            self.next_open = time.monotonic() + REOPEN_EVERY_S
            return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class VideoFileSource:
    """A video file played like a live camera: at its own fps, in real time, looping forever.

    Frames are paced against a clock so timestamps advance like a webcam's; if the reader falls behind by more
    than a frame the clock is reset rather than bursting frames to catch up (a camera never bursts).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CameraError(f"video file {self.path} does not exist; choose an existing .mp4/.avi or a camera index")
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise CameraError(f"cannot decode {self.path}; convert it to H.264 .mp4 or choose a camera index")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.status = ""
        self.due = time.monotonic()

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if not ok:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
            if not ok:
                self.status = f"{self.path.name} has no readable frames"
                time.sleep(IDLE_SLEEP_S)
                return None
        now = time.monotonic()
        if self.due > now:
            time.sleep(self.due - now)
        elif now - self.due > 1.0 / self.fps:
            self.due = now
        self.due += 1.0 / self.fps
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.cap.release()


def open_camera(spec: str | int | Path, width: int = 640, height: int = 480, fps: float = 30.0) -> FrameSource:
    """A camera index ("0", 0) opens a webcam; anything else is a video file path."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CameraSource(int(spec), width, height, fps)
    return VideoFileSource(Path(spec))


def list_cameras(max_index: int = 5) -> list[int]:
    """Indices in [0, max_index) where a camera opens and delivers a frame."""
    found = []
    with _quiet_opencv():
        for index in range(max_index):
            cap = cv2.VideoCapture(index)
            try:
                if cap.isOpened() and cap.read()[0]:
                    found.append(index)
            finally:
                cap.release()
    return found
