"""Video files: the offline render's outputs and the live app's record-to-file sink, as .mp4 (mp4v)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from realtime.loop import LiveFrame
from realtime.vcam import letterbox


class RecordError(RuntimeError):
    """The video cannot be written; the message names the file and the fix."""


class RecordExistsError(RecordError, FileExistsError):
    """The target file exists and replacing it was not allowed."""


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Nothing the user made is replaced without asking: raise unless `path` is free or replacing was allowed."""
    if Path(path).exists() and not overwrite:
        raise RecordExistsError(f"{path} already exists; choose another name, or allow replacing it (--force on the command line)")


class VideoFile:
    """An .mp4 written frame by frame from RGB frames; it never replaces an existing file unless allowed. The video
    size is the first frame's; later frames of another size (a new portrait) are letterboxed into it."""

    def __init__(self, path: Path, fps: float, overwrite: bool = False) -> None:
        self.path = Path(path)
        refuse_existing(self.path, overwrite)
        if not self.path.parent.is_dir():
            raise RecordError(f"folder {self.path.parent} does not exist; create it or choose another file")
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None

    def write(self, frame_rgb: np.ndarray) -> None:
        if self.writer is None:
            height, width = frame_rgb.shape[:2]
            writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not writer.isOpened():
                raise RecordError(f"cannot write {self.path}: check the folder is writable and the name ends in .mp4")
            self.writer, self.size = writer, (width, height)
        w, h = self.size  # type: ignore[misc]
        if frame_rgb.shape[:2] != (h, w):
            frame_rgb = letterbox(frame_rgb, w, h)
        self.writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class Recorder:
    """The live loop's record-to-file sink. Frames before the first output are skipped (the size is unknown);
    afterwards a frame without output is black, so the recording keeps real time."""

    def __init__(self, path: Path, fps: float = 30.0, overwrite: bool = False) -> None:
        self.video = VideoFile(path, fps, overwrite)
        self.path = self.video.path
        self.frames = 0

    def send(self, frame: LiveFrame) -> None:
        output = frame.result.output
        if output is None:
            if self.video.size is None:
                return
            w, h = self.video.size
            output = np.zeros((h, w, 3), np.uint8)
        self.video.write(output)
        self.frames += 1

    def close(self) -> None:
        self.video.close()
