"""Video files and pictures: the offline render's outputs and the live app's record-to-file sink.

Written as H.264 .mp4 (yuv420p, the format every player and video call app takes) through the ffmpeg binary that
the imageio-ffmpeg package ships, fed raw RGB frames on a pipe. The offline render passes its driving video as
`audio_from`, so a talking driver's sound stays with the animation, as in the official LivePortrait.

Every file is written under a temporary name beside its target and renamed into place only when complete
(engines/files.py): an interrupted or failed run leaves the final name as it was, never a truncated video.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from core.images import letterbox
from engines.files import atomic_output, partial_file, publish

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


class Interrupted(KeyboardInterrupt):
    """Ctrl+C (or SIGTERM) during a render; the message says how far it got and that no output was replaced."""


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Nothing the user made is replaced without asking: raise unless `path` is free or replacing was allowed."""
    if Path(path).exists() and not overwrite:
        raise RecordExistsError(f"{path} already exists; choose another name, or allow replacing it (--force on the command line)")


def check_target(path: Path, overwrite: bool) -> None:
    """An output file can be written: it is new (or replacing it was allowed), its folder exists, and it is not a
    link to a missing file (writing would create a file wherever the link points)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise RecordError(f"{path} is a link to {os.readlink(path)}, which does not exist; give a real file name")
    refuse_existing(path, overwrite)
    if not path.parent.is_dir():
        raise RecordError(f"folder {path.parent} does not exist; create it or choose another file")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same file on disk where both exist (symlinks, hard links, `..`, a
    case-insensitive disk); where neither exists yet, the same full path ignoring case (one file on Windows and
    macOS). A path that exists and one that does not are different files."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    if a.exists() or b.exists():
        return False
    return str(a.resolve()).casefold() == str(b.resolve()).casefold()


def refuse_overlap(inputs: Mapping[str, Path | None], outputs: Mapping[str, Path | None]) -> None:
    """An output never replaces an input and two outputs of one run never share a file, with or without
    --force; checked before any slow work. Keys name the files in the message ("driving input", "crop output")."""
    named = [(what, Path(path)) for what, path in outputs.items() if path is not None]
    for i, (what, path) in enumerate(named):
        for role, source in inputs.items():
            if source is not None and same_file(path, source):
                raise RecordError(
                    f"the {what} {path} is the {role} {source}; an input is never overwritten (not even with --force), "
                    "choose another name"
                )
        for other, earlier in named[:i]:
            if same_file(path, earlier):
                raise RecordError(f"the {other} {earlier} and the {what} {path} are the same file; give each its own name")


def left_as_it_was(path: Path) -> str:
    """What an abandoned output left under its final name, for the user."""
    return f"{Path(path).name} is left as it was" if Path(path).exists() else f"{Path(path).name} was not created"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


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


def _ffmpeg_reason(stderr: bytes, returncode: int) -> str:
    """Why ffmpeg failed: its own last line of error output, else its exit code."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"ffmpeg exit {returncode}"


class VideoFile:
    """An .mp4 written frame by frame from RGB frames; it never replaces an existing file unless allowed. The video
    size is the first frame's; later frames of another size (a new portrait) are letterboxed into it. With
    `audio_from`, that file's sound track from `audio_start` seconds on is muxed in and cut to the video's length.
    ffmpeg writes a temporary file beside the target; close() renames it into place, discard() removes it."""

    def __init__(
        self, path: Path, fps: float, overwrite: bool = False, audio_from: Path | None = None, audio_start: float = 0.0
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise RecordError(f"{self.path}: video files are written as {', '.join(VIDEO_SUFFIXES)}; use one of those endings")
        check_target(self.path, overwrite)
        self.target = self.path.resolve()  # through a link to an existing file: that file is the one replaced
        self.fps = fps
        self.overwrite = overwrite
        self.audio_from = audio_from
        self.audio_start = audio_start
        self.exe = ffmpeg_exe()  # a missing ffmpeg is said before any slow work
        self.process: subprocess.Popen[bytes] | None = None
        self.partial: Path | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0  # handed to ffmpeg
        self.finished = False

    def _start(self, width: int, height: int) -> subprocess.Popen[bytes]:
        try:
            self.partial = partial_file(self.target)
        except OSError as exc:
            raise RecordError(self._failed(exc.strerror or str(exc))) from None
        command = [
            self.exe, "-hide_banner", "-loglevel", "error", "-y",  # -y: only ever our own empty temporary file
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "-",
        ]
        command += ["-vf", EVEN_PAD, *X264_ARGS, "-movflags", "+faststart", str(self.partial)]
        try:
            return subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                creationflags=_NO_WINDOW, start_new_session=True,  # Ctrl+C stops us; we then finish the file
            )
        except OSError as exc:
            self.discard()
            raise RecordError(f"cannot start ffmpeg for {self.path} ({exc}); pip install --force-reinstall imageio-ffmpeg") from exc

    def _failed(self, reason: str) -> str:
        return (
            f"writing {self.path} failed after {plural(self.frames, 'frame')} ({reason}); {left_as_it_was(self.path)} - "
            "check the disk has space and the folder is writable"
        )

    def write(self, frame_rgb: np.ndarray) -> None:
        if self.finished:
            raise RecordError(f"{self.path} is already finished; start a new file for more frames")
        if self.process is None:
            height, width = frame_rgb.shape[:2]
            self.process, self.size = self._start(width, height), (width, height)
        w, h = self.size  # type: ignore[misc]
        if frame_rgb.shape[:2] != (h, w):
            frame_rgb = letterbox(frame_rgb, w, h)
        try:
            self.process.stdin.write(np.ascontiguousarray(frame_rgb, dtype=np.uint8).data)  # type: ignore[union-attr]
        except OSError:  # ffmpeg quit early (a full disk, say): its own last line says why
            reason = self._end(kill=False) or "ffmpeg stopped taking frames"
            self.discard()
            raise RecordError(self._failed(reason)) from None
        self.frames += 1

    def _end(self, kill: bool) -> str | None:
        """Stop feeding ffmpeg and wait for it; why it failed, or None. The partial file stays for close()."""
        process, self.process = self.process, None
        self.finished = True
        if process is None:
            return None
        if kill:
            process.kill()
        _, err = process.communicate()  # it ignores a broken pipe itself
        return None if process.returncode == 0 else _ffmpeg_reason(err, process.returncode)

    def close(self) -> None:
        """Finish the file and rename it into place; a failed encode removes it and raises with ffmpeg's last line
        and the number of frames written. Closing again does nothing."""
        partial, self.partial = self.partial, None
        try:
            reason = self._end(kill=False)
        except BaseException:
            if partial is not None:
                partial.unlink(missing_ok=True)
            raise
        if reason is not None:
            if partial is not None:
                partial.unlink(missing_ok=True)
            raise RecordError(self._failed(reason))
        if partial is not None and self.audio_from is not None and self.frames:
            partial = self._with_sound(partial)
        if partial is not None:
            self._publish(partial)

    def _with_sound(self, video: Path) -> Path:
        """The finished video with `audio_from`'s sound from `audio_start` on, padded with silence or cut to exactly
        the video's length (frames / fps), in a new temporary file; the silent one is removed. A second pass over
        finished files, because -shortest on the frame pipe let the sound run up to a second past a video whose
        frames came slowly."""
        try:
            muxed = partial_file(self.target)
        except OSError as exc:
            video.unlink(missing_ok=True)
            raise RecordError(self._failed(exc.strerror or str(exc))) from None
        command = [
            self.exe, "-hide_banner", "-loglevel", "error", "-y", "-i", str(video),
            "-ss", f"{self.audio_start:.3f}", "-i", str(self.audio_from), "-map", "0:v", "-map", "1:a",
            "-c:v", "copy", "-af", "apad", "-c:a", "aac", "-t", f"{self.frames / self.fps:.6f}",
            "-movflags", "+faststart", str(muxed),
        ]
        try:
            result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, creationflags=_NO_WINDOW)
        except BaseException:
            muxed.unlink(missing_ok=True)
            raise
        finally:
            video.unlink(missing_ok=True)
        if result.returncode != 0:
            muxed.unlink(missing_ok=True)
            raise RecordError(self._failed(_ffmpeg_reason(result.stderr, result.returncode)))
        return muxed

    def _publish(self, partial: Path) -> None:
        """Rename the finished video into place; if that fails, it stays under its temporary name, and is said."""
        kept = f"the finished video ({plural(self.frames, 'frame')}) is kept as {partial}"
        try:
            publish(partial, self.target, self.overwrite)
        except FileExistsError:
            raise RecordExistsError(f"{self.path} appeared while it was being written and is left as it was; {kept}") from None
        except OSError as exc:
            raise RecordError(f"cannot rename the video to {self.path} ({exc.strerror or exc}); {kept}") from None

    def discard(self) -> None:
        """Abandon the file (an interrupted render): ffmpeg is stopped, its temporary file removed, the target
        keeps what it held."""
        partial, self.partial = self.partial, None
        try:
            self._end(kill=True)
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)


class ImageFile:
    """A one-frame render (a driving expression image or a one-frame template) as a picture, same interface as
    VideoFile; it never replaces an existing file unless allowed, and appears whole or not at all."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        check_target(self.path, overwrite)
        self.overwrite = overwrite
        self.frames = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        if self.frames:
            raise RecordError(f"{self.path} is a picture and holds one frame; name the output .mp4 for an animation")
        ok, data = cv2.imencode(self.path.suffix, np.ascontiguousarray(frame_rgb[..., ::-1]))
        if not ok:
            raise RecordError(f"cannot encode {self.path}; use a .png or .jpg name")
        try:
            with atomic_output(self.path.resolve(), self.overwrite) as partial:
                partial.write_bytes(data.tobytes())  # a plain write: cv2.imwrite cannot take non-ASCII paths on Windows
        except FileExistsError:
            raise RecordExistsError(f"{self.path} appeared while it was being written and is left as it was; choose another name") from None
        except OSError as exc:
            raise RecordError(
                f"cannot write {self.path} ({exc.strerror or exc}); {left_as_it_was(self.path)} - check the disk and the folder"
            ) from None
        self.frames = 1

    def close(self) -> None:
        pass

    def discard(self) -> None:
        pass
