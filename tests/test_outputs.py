"""Video files: H.264 written through imageio-ffmpeg's ffmpeg, a driving video's sound muxed in, one-line errors."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from render.outputs import RecordError, VideoFile, ffmpeg_exe, has_audio


def probe(path: Path) -> str:
    """ffmpeg's own description of a media file (streams, duration)."""
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def duration_s(path: Path) -> float:
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", probe(path)).groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def clip(path: Path, seconds: float, sound: bool) -> Path:
    """A generated test clip (ffmpeg's test pattern), with a 440 Hz tone when `sound`."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size=160x120:rate=25:duration={seconds}"]
    if sound:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", *inputs, "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def frames_of(count: int, height: int, width: int) -> list[np.ndarray]:
    """Smooth, different frames (H.264 is lossy: gradients survive it closely, noise would not)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return [
        np.stack([(xx * 200 // width + 20 * i), (yy * 200 // height), np.full_like(xx, 40 * i)], -1).astype(np.uint8)
        for i in range(count)
    ]


def test_frames_come_back_from_h264_and_odd_sides_get_one_black_line(tmp_path: Path, read_video) -> None:
    out = tmp_path / "odd.mp4"
    frames = frames_of(5, 501, 375)
    video = VideoFile(out, 25)
    for frame in frames:
        video.write(frame)
    video.close()
    info = probe(out)
    assert re.search(r"Video: h264 .*yuv420p.*376x502", info), info
    assert "Audio:" not in info and not has_audio(out)
    back = read_video(out)
    assert len(back) == 5
    for sent, got in zip(frames, back):
        assert got.shape == (502, 376, 3)
        assert np.abs(got[:501, :375].astype(int) - sent).mean() < 2.0
        luma = cv2.cvtColor(got, cv2.COLOR_RGB2GRAY).astype(int)
        assert luma[-1].mean() < 20 and luma[:, -1].mean() < 20 < 120 < luma[-2].mean()  # padding is black


def test_the_driving_videos_sound_is_kept_and_cut_to_the_animation(tmp_path: Path, read_video) -> None:
    talking = clip(tmp_path / "talking.mp4", 2.0, sound=True)
    silent = clip(tmp_path / "silent.mp4", 0.4, sound=False)
    assert has_audio(talking) and not has_audio(silent) and not has_audio(tmp_path / "nothing.mp4")
    out = tmp_path / "out.mp4"
    video = VideoFile(out, 25, audio_from=talking)
    for frame in frames_of(10, 120, 160):
        video.write(frame)
    video.close()
    assert re.search(r"Audio: aac", probe(out)) and len(read_video(out)) == 10
    # 10 frames at 25 fps: the 2 s of sound are cut to the video, to within one AAC frame (23 ms), however slowly the
    # frames came (the sound is muxed in after the last frame)
    assert abs(duration_s(out) - 0.4) <= 0.025

    short = clip(tmp_path / "short.mp4", 0.2, sound=True)
    out = tmp_path / "longer.mp4"
    video = VideoFile(out, 25, audio_from=short)
    for frame in frames_of(20, 120, 160):
        video.write(frame)
    video.close()
    assert len(read_video(out)) == 20 and abs(duration_s(out) - 0.8) <= 0.025  # a shorter sound never cuts the video


def test_bad_names_and_failed_encodes_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"out\.gif: video files are written as \.mp4, \.mov, \.mkv; use one of"):
        VideoFile(tmp_path / "out.gif", 25)
    with pytest.raises(RecordError, match=r"folder .*missing does not exist; create it or choose another file"):
        VideoFile(tmp_path / "missing" / "out.mp4", 25)
    folder = tmp_path / "gone"
    folder.mkdir()
    video = VideoFile(folder / "out.mp4", 25)
    folder.rmdir()  # the folder went away between choosing the file and the first frame
    with pytest.raises(RecordError, match=r"writing .*gone/out\.mp4 failed after 0 frames \(No such file or directory\); out\.mp4 was not created - check the disk"):
        for frame in frames_of(3, 480, 640):
            video.write(frame)
        video.close()


def test_an_encoder_that_dies_mid_recording_is_a_record_error(tmp_path: Path) -> None:
    """What the live loop's recorder sink sees when ffmpeg is killed (or the disk fills): a RecordError it reports
    and drops the sink for, never a BrokenPipeError traceback."""
    video = VideoFile(tmp_path / "live.mp4", 30)
    frames = frames_of(2, 480, 640)
    video.write(frames[0])
    video.process.kill()
    video.process.wait()
    with pytest.raises(RecordError, match=r"live\.mp4 failed after 1 frame \(ffmpeg exit -9\); live\.mp4 was not created - check the disk has space"):
        video.write(frames[1])
    video.close()  # already finished: nothing left to do


def test_the_live_recorder_keeps_real_time_when_frames_come_slowly(tmp_path: Path, read_video) -> None:
    """A CPU animating about one frame a second: each picture is held until the next, so seconds stay seconds."""
    from realtime.live_api import FrameResult
    from realtime.frames import LiveFrame
    from realtime.record import Recorder

    recorder = Recorder(tmp_path / "live.mp4", fps=10)
    pictures = frames_of(4, 120, 160)
    camera = np.zeros((48, 64, 3), np.uint8)
    for ts, picture in zip((100.0, 101.0, 101.05, 102.0), pictures):
        recorder.send(LiveFrame(camera, FrameResult(picture), ts, 0))
    recorder.send(LiveFrame(camera, FrameResult(pictures[0]), 200.0, 0))  # after a 98 s stall: 10 s held at most
    recorder.close()
    assert recorder.frames == 1 + 10 + 1 + 9 + 100
    back = read_video(tmp_path / "live.mp4")
    assert len(back) == recorder.frames
    def shown(index: int) -> int:
        """Which picture frame `index` of the video shows (the pictures differ by 20+ levels, H.264 by ~2)."""
        return int(np.argmin([np.abs(back[index].astype(int) - p).mean() for p in pictures]))

    # picture 0 for 1 frame, 1 held for its second (10 frames), 2 at once replaced by 3 (9), then 0 for the 10 s cap
    assert [shown(i) for i in (0, 1, 10, 11, 12, 20, 120)] == [0, 1, 1, 2, 3, 3, 0]


def test_the_sound_starts_where_the_animation_starts(tmp_path: Path) -> None:
    """`render --start S`: the driving video's sound is taken from S's time on, so it stays in step."""
    late = tmp_path / "late.mp4"  # silent for 1 s, then a tone
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=2",
                    "-f", "lavfi", "-i", "aevalsrc=exprs='if(gt(t,1),0.5*sin(2*PI*440*t),0)':d=2",
                    "-pix_fmt", "yuv420p", str(late)], check=True)

    def loudness_db(audio_start: float) -> float:
        out = tmp_path / f"from{audio_start}.mp4"
        video = VideoFile(out, 25, audio_from=late, audio_start=audio_start)
        for frame in frames_of(10, 120, 160):
            video.write(frame)
        video.close()
        stats = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(out), "-af", "volumedetect", "-f", "null", "-"],
                               capture_output=True, text=True).stderr
        return float(re.search(r"mean_volume: (-?[\d.]+) dB", stats).group(1))

    assert loudness_db(0.0) < -60 and loudness_db(1.2) > -20  # the first 0.4 s of each: silence, then the tone
