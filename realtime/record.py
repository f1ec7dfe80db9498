"""The live loop's record-to-file sink: the animated frames as a video, in real time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from realtime.frames import LiveFrame
from render.outputs import VideoFile


class Recorder:
    """The live loop's record-to-file sink, in real time: each frame is written as often as the camera's clock
    says (a CPU that animates 1 frame a second still gives a 10 s video for 10 s of recording, each picture held
    until the next). Frames before the first output are skipped (the size is unknown); afterwards a frame
    without output is black."""

    #: the longest gap filled with the last picture (a suspended laptop must not write hours of frames)
    MAX_HOLD_S = 10.0

    def __init__(self, path: Path, fps: float = 30.0, overwrite: bool = False) -> None:
        self.video = VideoFile(path, fps, overwrite)
        self.path = self.video.path
        self.frames = 0  # written
        self.start_ts: float | None = None
        self._clock = 0  # frames the recording's duration stands for (more than written after a capped gap)
        self.saved = False  # the video is complete under its name

    def send(self, frame: LiveFrame) -> None:
        output = frame.result.output
        if output is None:
            if self.video.size is None:
                return
            w, h = self.video.size
            output = np.zeros((h, w, 3), np.uint8)
        if self.start_ts is None:
            self.start_ts = frame.capture_ts
        due = round((frame.capture_ts - self.start_ts) * self.video.fps) + 1  # frames the clock asks for so far
        copies = min(max(due - self._clock, 1), round(self.MAX_HOLD_S * self.video.fps))
        for _ in range(copies):
            self.video.write(output)
        self.frames += copies
        self._clock = max(self._clock + copies, due)

    def close(self) -> None:
        """Finish the video and rename it into place (render/outputs.py); until then it has a temporary name, so a
        killed app leaves no truncated file under the recording's name."""
        self.video.close()
        self.saved = self.frames > 0
