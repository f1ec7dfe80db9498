"""Video files: the offline render's outputs and the live app's record-to-file sink.

Written as H.264 .mp4 (yuv420p, the format every player and video call app takes) through the ffmpeg binary that
the imageio-ffmpeg package ships, fed raw RGB frames on a pipe. The offline render passes its driving video as
`audio_from`, so a talking driver's sound stays with the animation, as in the official LivePortrait.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import cv2
import numpy as np

from core.images import letterbox

#: libx264 quality: visually lossless at a fraction of the raw size; veryfast keeps live recording light
X264_ARGS = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p")
#: yuv420p needs even sides: odd-sized portraits get one black row/column rather than being resampled
EVEN_PAD = "pad=ceil(iw/2)*2:ceil(ih/2)*2"
#: containers that take H.264 with AAC sound
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
#: ffmpeg without a console window on Windows
_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)


class RecordError(RuntimeError):
    """The video cannot be written; the message names the file and the fix."""


class RecordExistsError(RecordError, FileExistsError):
    """The target file exists and replacing it was not allowed."""


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Nothing the user made is replaced without asking: raise unless `path` is free or replacing was allowed."""
    if Path(path).exists() and not overwrite:
        raise RecordExistsError(f"{path} already exists; choose another name, or allow replacing it (--force on the command line)")


def check_target(path: Path, overwrite: bool) -> None:
    """An output file can be written: it is new (or replacing it was allowed) and its folder exists."""
    refuse_existing(path, overwrite)
    if not Path(path).parent.is_dir():
        raise RecordError(f"folder {Path(path).parent} does not exist; create it or choose another file")


def ffmpeg_exe() -> str:
    """The ffmpeg binary of imageio-ffmpeg (a pip package, so no system ffmpeg is needed)."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise RecordError(f"no ffmpeg to write videos with ({exc}); pip install imageio-ffmpeg") from exc


def has_audio(path: Path) -> bool:
    """Whether ffmpeg finds a sound track in the file (False for images, folders and silent videos)."""
    path = Path(path)
    if not path.is_file():
        return False
    probe = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, errors="replace",
        creationflags=_NO_WINDOW,
    )
    return re.search(r"Stream #\d+:\d+.*: Audio:", probe.stderr) is not None


class VideoFile:
    """An .mp4 written frame by frame from RGB frames; it never replaces an existing file unless allowed. The video
    size is the first frame's; later frames of another size (a new portrait) are letterboxed into it. With
    `audio_from`, that file's sound track is muxed in and cut to the video's length."""

    def __init__(self, path: Path, fps: float, overwrite: bool = False, audio_from: Path | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise RecordError(f"{self.path}: video files are written as {', '.join(VIDEO_SUFFIXES)}; use one of those endings")
        check_target(self.path, overwrite)
        self.fps = fps
        self.audio_from = audio_from
        self.exe = ffmpeg_exe()  # a missing ffmpeg is said before any slow work
        self.process: subprocess.Popen[bytes] | None = None
        self.size: tuple[int, int] | None = None

    def _start(self, width: int, height: int) -> subprocess.Popen[bytes]:
        command = [
            self.exe, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "-",
        ]
        if self.audio_from is not None:  # silence pads a shorter sound track, so -shortest only ever cuts sound
            command += ["-i", str(self.audio_from), "-map", "0:v", "-map", "1:a", "-af", "apad", "-c:a", "aac", "-shortest"]
        command += ["-vf", EVEN_PAD, *X264_ARGS, "-movflags", "+faststart", str(self.path)]
        try:
            return subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                creationflags=_NO_WINDOW, start_new_session=True,  # Ctrl+C stops us; we then finish the file
            )
        except OSError as exc:
            raise RecordError(f"cannot start ffmpeg for {self.path} ({exc}); pip install --force-reinstall imageio-ffmpeg") from exc

    def write(self, frame_rgb: np.ndarray) -> None:
        if self.process is None:
            height, width = frame_rgb.shape[:2]
            self.process, self.size = self._start(width, height), (width, height)
        w, h = self.size  # type: ignore[misc]
        if frame_rgb.shape[:2] != (h, w):
            frame_rgb = letterbox(frame_rgb, w, h)
        try:
            self.process.stdin.write(np.ascontiguousarray(frame_rgb, dtype=np.uint8).data)  # type: ignore[union-attr]
        except OSError:  # ffmpeg quit early (a full disk, say): its own last line says why
            self.close()
            raise RecordError(f"ffmpeg stopped taking frames for {self.path}; check the disk has space") from None

    def close(self) -> None:
        """Close the pipe, wait for ffmpeg; a failed encode raises with ffmpeg's last line."""
        process, self.process = self.process, None
        if process is None:
            return
        _, err = process.communicate()  # it ignores a broken pipe itself
        if process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise RecordError(
                f"writing {self.path} failed ({lines[-1] if lines else f'ffmpeg exit {process.returncode}'}); "
                "check the disk has space and the folder is writable"
            )


class ImageFile:
    """A one-frame render (a driving expression image or a one-frame template) as a picture, same interface as
    VideoFile; it never replaces an existing file unless allowed."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        check_target(self.path, overwrite)
        self.written = False

    def write(self, frame_rgb: np.ndarray) -> None:
        if self.written:
            raise RecordError(f"{self.path} is a picture and holds one frame; name the output .mp4 for an animation")
        ok, data = cv2.imencode(self.path.suffix, np.ascontiguousarray(frame_rgb[..., ::-1]))
        if not ok:
            raise RecordError(f"cannot encode {self.path}; use a .png or .jpg name")
        try:
            data.tofile(str(self.path))  # tofile, unlike cv2.imwrite, takes non-ASCII paths on Windows
        except OSError as exc:
            raise RecordError(f"cannot write {self.path} ({exc.strerror}); check the disk and the folder") from exc
        self.written = True

    def close(self) -> None:
        pass

