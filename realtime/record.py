"""Record-to-file sink: the animated portrait as an .mp4 (mp4v), one video frame per live frame."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from realtime.loop import LiveFrame
from realtime.vcam import letterbox


class RecordError(RuntimeError):
    """The recording cannot be written; the message names the file and the fix."""


class RecordExistsError(RecordError, FileExistsError):
    """The target file exists and overwriting was not allowed."""


class Recorder:
    """Writes each frame's output; the video size is the first output's, later portraits are letterboxed into it.

    Frames before the first output are skipped (the size is unknown); afterwards a frame without output is black,
    so the recording keeps real time.
    """

    def __init__(self, path: Path, fps: float = 30.0, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise RecordExistsError(
                f"{self.path} already exists; choose another file name or allow overwriting it"
            )
        if not self.path.parent.is_dir():
            raise RecordError(f"folder {self.path.parent} does not exist; create it or record somewhere else")
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def send(self, frame: LiveFrame) -> None:
        output = frame.result.output
        if self.writer is None:
            if output is None:
                return
            self._open(output.shape[1], output.shape[0])
        assert self.writer is not None and self.size is not None
        w, h = self.size
        if output is None:
            output = np.zeros((h, w, 3), np.uint8)
        elif output.shape[:2] != (h, w):
            output = letterbox(output, w, h)
        self.writer.write(cv2.cvtColor(output, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if not writer.isOpened():
            raise RecordError(f"cannot write {self.path}: check the folder is writable and the name ends in .mp4")
        self.writer, self.size = writer, (width, height)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
