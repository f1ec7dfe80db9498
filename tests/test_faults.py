"""Nothing lost, nothing hangs: each case of the fault matrix (issue 11) reproduced and its new behaviour asserted.

Outputs: interrupted or failed writes leave the final name as it was and say how many frames were written; an
output that is an input (or another output) is refused even with --force. Loop: stop() races are made
deterministic with sinks and cameras that block on a threading.Event, never with sleeps. Inputs: oversized
templates are refused before allocating, a 0..255 ComfyUI IMAGE is refused.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import pytest

import main
from core.motion import Motion
from core.options import ProcessOptions
from core.templates import MAX_FRAMES, TemplateError, load_template, save_template
from realtime.camera import VideoFileSource
from realtime.frames import LiveFrame
from realtime.live_api import FakeProcessor
from realtime.loop import LiveLoop, run_headless
from render.offline import make_template, render
from render.outputs import Interrupted, RecordError, VideoFile
from tests.dev import dev_module
from tests.loops import ListSink, SyntheticCamera, noise_portrait, wait_for

REPO = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------------------------
class StubAnimator:
    """The Animator as render() uses it, without networks: frame i is a flat picture of grey level 20 * i."""

    def __init__(self) -> None:
        self.timer = SimpleNamespace(reset=lambda: None, ms={})

    def prepare_source(self, image: np.ndarray, options: ProcessOptions) -> np.ndarray:
        return image

    def keypoints(self, src: np.ndarray, motion: Motion, *rest: object) -> float:
        return motion.scale

    def render(self, src: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        return np.full((64, 64, 3), int(level), np.uint8), np.full(src.shape, int(level), np.uint8)


def inputs(folder: Path, frames: int = 10) -> tuple[Path, Path]:
    """A 64x48 portrait and a template of `frames` frames (scale = 20 * i picks each frame's grey level)."""
    source = folder / "portrait.png"
    cv2.imwrite(str(source), np.asarray(noise_portrait(48, 64)))
    template = folder / "motion.npz"
    save_template(template, [Motion(np.eye(3), np.zeros((21, 3)), 20.0 * i, np.zeros(3)) for i in range(frames)], 25)
    return source, template


def stop_after(count: int, interrupt: Iterator[None]) -> Callable[[Iterable, int], Iterator]:
    """A progress wrapper that lets `count` frames through, then runs `interrupt` (raise, or signal ourselves)."""

    def progress(frames: Iterable, total: int) -> Iterator:
        for i, frame in enumerate(frames):
            if i == count:
                next(interrupt)
            yield frame

    return progress


def ctrl_c() -> Iterator[None]:
    raise KeyboardInterrupt
    yield


def leftovers(folder: Path, *keep: Path) -> list[str]:
    """Files in `folder` other than `keep`: a temporary output that was not cleaned up shows here."""
    return sorted(p.name for p in folder.iterdir() if p not in keep)


def camera_video(path: Path, frames: int = 5) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (32, 24))
    for i in range(frames):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    return path


# -- 1. interrupted and failed writes ------------------------------------------------------------------------
def test_1_ctrl_c_mid_render_leaves_the_old_output_and_says_how_far_it_got(tmp_path: Path) -> None:
    source, template = inputs(tmp_path)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's earlier render")
    with pytest.raises(Interrupted) as err:
        render(StubAnimator(), source, template, out, ProcessOptions(), overwrite=True,
               progress=stop_after(3, ctrl_c()))
    assert str(err.value) == "interrupted after 3 of 10 frames; out.mp4 is left as it was"
    assert out.read_bytes() == b"the user's earlier render"
    assert leftovers(tmp_path, source, template, out) == []


def test_1_sigterm_mid_render_is_an_interrupt_that_writes_nothing(tmp_path: Path) -> None:
    def terminate() -> Iterator[None]:
        # main.py's SIGTERM handler, called as the signal would call it (a real signal to the test process can
        # land on a native library's thread, e.g. OpenVINO's, and crash the whole run)
        main._terminated(signal.SIGTERM, None)
        yield

    source, template = inputs(tmp_path)
    out, crops = tmp_path / "out.mp4", tmp_path / "crops.mp4"
    with pytest.raises(Interrupted) as err:
        render(StubAnimator(), source, template, out, ProcessOptions(), crop_out=crops,
               progress=stop_after(2, terminate()))
    assert str(err.value) == "interrupted after 2 of 10 frames; out.mp4 was not created; crops.mp4 was not created"
    assert leftovers(tmp_path, source, template) == []


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads ffmpeg's state from Linux's /proc")
def test_1_a_killed_recording_never_replaces_the_file_under_its_name(tmp_path: Path) -> None:
    """SIGKILL gives no chance to clean up. ffmpeg (in its own session) still finishes what it was given, but into
    the temporary file: the old file under the recording's name (replacing was allowed) is left as it was."""
    out = tmp_path / "rec.mp4"
    out.write_bytes(b"yesterday's recording")
    code = (
        "import os, signal, sys, numpy as np\n"
        "from realtime.record import Recorder\n"
        "from realtime.frames import LiveFrame\n"
        "from realtime.live_api import FrameResult\n"
        "recorder = Recorder(sys.argv[1], fps=25, overwrite=True)\n"
        "for i in range(10):\n"
        "    picture = np.full((48, 64, 3), 20 * i, np.uint8)\n"
        "    recorder.send(LiveFrame(picture, FrameResult(picture), i / 25, i))\n"
        "print(recorder.video.process.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    ffmpeg = Path(f"/proc/{int(done.stdout)}/stat")
    wait_for(lambda: not ffmpeg.exists() or ffmpeg.read_text().split()[2] == "Z", 60)  # it finished its file
    assert out.read_bytes() == b"yesterday's recording"
    assert [name.startswith("rec.mp4.") and name.endswith(".partial.mp4") for name in leftovers(tmp_path, out)] == [True]


#: writes a video and a picture under a file-size limit (RLIMIT_FSIZE: writes past it fail as on a full disk) and
#: prints each error message
FULL_DISK = """
import resource, sys
import numpy as np
from render.outputs import ImageFile, RecordError, VideoFile
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
noise = np.random.default_rng(0).integers(0, 255, (60, 120, 160, 3), dtype=np.uint8)  # H.264 cannot shrink it
for limit, name in ((100_000, "mid.mp4"), (0, "full.mp4"), (0, "full.png")):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # ffmpeg inherits it when it starts
    try:
        if name.endswith(".png"):
            ImageFile(sys.argv[1] + "/" + name).write(noise[0])
        else:
            video = VideoFile(sys.argv[1] + "/" + name, 25)
            for frame in noise:
                video.write(frame)
            video.close()
        print("no error")
    except RecordError as exc:
        print(exc)
"""


def test_1_a_full_disk_leaves_no_file_and_says_why_and_how_far(tmp_path: Path) -> None:
    resource = pytest.importorskip("resource")  # POSIX: a file-size limit stands in for a full disk
    assert resource
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    mid, full_video, full_picture = done.stdout.splitlines()
    assert mid.startswith(f"writing {tmp_path}/mid.mp4 failed after ") and " frames (" in mid, mid
    assert "mid.mp4 was not created - check the disk has space" in mid
    assert full_video.startswith(f"writing {tmp_path}/full.mp4 failed after ") and "full.mp4 was not created" in full_video
    assert full_picture == (f"cannot write {tmp_path}/full.png (File too large); full.png was not created - "
                            "check the disk and the folder")
    assert leftovers(tmp_path) == []  # no 0-byte video or picture, no temporary file


def test_1_a_file_that_appears_while_recording_is_kept_and_so_is_the_new_video(tmp_path: Path) -> None:
    """Two apps recording to one name: neither file is lost; the second says where its video is."""
    video = VideoFile(tmp_path / "rec.mp4", 25)
    video.write(np.zeros((48, 64, 3), np.uint8))
    (tmp_path / "rec.mp4").write_bytes(b"the other app's recording")
    with pytest.raises(RecordError) as err:
        video.close()
    (kept,) = leftovers(tmp_path, tmp_path / "rec.mp4")
    assert str(err.value) == (f"{tmp_path / 'rec.mp4'} appeared while it was being written and is left as it was; "
                              f"the finished video (1 frame) is kept as {tmp_path / kept}")
    assert (tmp_path / "rec.mp4").read_bytes() == b"the other app's recording" and (tmp_path / kept).stat().st_size > 0


# -- 2, 3, 4. outputs that would destroy inputs or each other ------------------------------------------------
def test_2_an_output_that_is_an_input_is_refused_even_with_force(tmp_path: Path) -> None:
    source, template = inputs(tmp_path)
    driving = camera_video(tmp_path / "driving.mp4")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.mp4").symlink_to(driving)
    kept = driving.read_bytes()
    for out in (driving, tmp_path / "sub" / ".." / "driving.mp4", tmp_path / "link.mp4"):
        with pytest.raises(RecordError) as err:
            render(StubAnimator(), source, driving, out, ProcessOptions(), overwrite=True)
        assert str(err.value) == (f"the output {out} is the driving input {driving}; an input is never overwritten "
                                  "(not even with --force), choose another name")
    with pytest.raises(RecordError, match=r"the crop output .*portrait\.png is the portrait .*portrait\.png"):
        render(StubAnimator(), source, template, tmp_path / "x.mp4", ProcessOptions(), crop_out=source, overwrite=True)
    with pytest.raises(RecordError, match=r"the template .*driving\.mp4 is the driving input .*driving\.mp4"):
        make_template(StubAnimator(), driving, driving, overwrite=True)
    with pytest.raises(RecordError, match=r"the recording .*driving\.mp4 is the camera video .*driving\.mp4"):
        run_headless(FakeProcessor(), VideoFileSource(driving), record=driving, overwrite=True)
    assert driving.read_bytes() == kept and source.is_file()


def test_3_two_outputs_of_one_run_never_share_a_file(tmp_path: Path) -> None:
    source, template = inputs(tmp_path)
    for out, crops in ((tmp_path / "s.mp4", tmp_path / "s.mp4"), (tmp_path / "S.mp4", tmp_path / "s.mp4")):
        with pytest.raises(RecordError) as err:
            render(StubAnimator(), source, template, out, ProcessOptions(), crop_out=crops, overwrite=True)
        assert str(err.value) == f"the output {out} and the crop output {crops} are the same file; give each its own name"
    assert leftovers(tmp_path, source, template) == []


def test_4_an_output_through_a_dangling_link_is_refused(tmp_path: Path) -> None:
    source, template = inputs(tmp_path)
    link = tmp_path / "out.mp4"
    link.symlink_to(tmp_path / "elsewhere" / "planted.mp4")
    for overwrite in (False, True):
        with pytest.raises(RecordError) as err:
            render(StubAnimator(), source, template, link, ProcessOptions(), overwrite=overwrite)
        assert str(err.value) == f"{link} is a link to {tmp_path / 'elsewhere' / 'planted.mp4'}, which does not exist; give a real file name"
    assert not (tmp_path / "elsewhere").exists()


def test_a_render_through_a_link_to_an_existing_file_replaces_that_file_with_force(tmp_path: Path) -> None:
    source, template = inputs(tmp_path, frames=3)
    real = tmp_path / "real.mp4"
    real.write_bytes(b"old")
    link = tmp_path / "link.mp4"
    link.symlink_to(real)
    assert render(StubAnimator(), source, template, link, ProcessOptions(), overwrite=True).frames == 3
    assert link.is_symlink() and real.stat().st_size > 1000
    assert leftovers(tmp_path, source, template, real, link) == []


# -- 5, 6. stop() races --------------------------------------------------------------------------------------
class GateSink:
    """A sink whose first send blocks until `release` is set (a recorder writing held copies of a long stall)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def send(self, frame: LiveFrame) -> None:
        if "closed" in self.events:
            self.events.append("send after close")
        if not self.entered.is_set():
            self.entered.set()
            self.events.append("send")
            self.release.wait()
            self.events.append("sent")

    def close(self) -> None:
        self.events.append("closed")


class GateCamera(SyntheticCamera):
    """A camera whose third read() blocks until `release` is set (a driver stuck in a read)."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.events: list[str] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def read(self) -> np.ndarray:
        if self.n == 2:
            self.entered.set()
            self.events.append("reading")
            self.release.wait()
            self.events.append("read")
        return super().read()

    def close(self) -> None:
        self.events.append("closed")
        super().close()


def thread(loop: LiveLoop, name: str) -> threading.Thread:
    return next(t for t in loop.threads if t.name == f"live-{name}")


class ObservedLoop(LiveLoop):
    """Says when stop() has given up on the threads and turns to the sinks."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.closing_sinks = threading.Event()

    def _close_sinks(self, wait_s: float) -> bool:
        self.closing_sinks.set()
        return super()._close_sinks(wait_s)


def test_5_stop_lets_a_send_in_progress_finish_before_closing_the_sink() -> None:
    """A recorder writing the held copies of a long frame when the app stops: its file is finished, not cut."""
    sink = GateSink()
    loop = ObservedLoop(FakeProcessor(), SyntheticCamera(0.002), [sink])
    loop.start()
    assert sink.entered.wait(10)
    stopper = threading.Thread(target=loop.stop, args=(0.01,))
    stopper.start()
    assert loop.closing_sinks.wait(10)  # the threads' deadline passed: stop() now waits for the send lock
    assert sink.events == ["send"]
    sink.release.set()
    stopper.join(10)
    assert sink.events == ["send", "sent", "closed"]
    assert loop.stop(10) and loop.threads == []


def test_5_a_send_stuck_past_the_grace_is_left_to_the_output_thread() -> None:
    sink = GateSink()
    loop = LiveLoop(FakeProcessor(), SyntheticCamera(0.002), [sink])
    loop.sink_grace_s = 0.0
    loop.start()
    assert sink.entered.wait(10)
    assert not loop.stop(timeout=0.01)  # the output thread is inside send(): stop() does not wait for it
    assert sink.events == ["send"]  # not closed under the send
    with pytest.raises(RuntimeError, match="still running"):
        loop.start()  # a second set of threads beside the old one is refused
    output = thread(loop, "output")
    sink.release.set()
    output.join(10)
    assert sink.events == ["send", "sent", "closed"]  # closed by the output thread once its send returned
    assert loop.stop(timeout=10) and loop.threads == []


def test_a_finished_video_is_never_written_again(tmp_path: Path) -> None:
    """What a late send used to do to a closed recording: ffmpeg restarted with -y over the finished file."""
    video = VideoFile(tmp_path / "rec.mp4", 25)
    for level in (10, 20, 30):
        video.write(np.full((48, 64, 3), level, np.uint8))
    video.close()
    finished = (tmp_path / "rec.mp4").read_bytes()
    with pytest.raises(RecordError, match=r"rec\.mp4 is already finished; start a new file for more frames"):
        video.write(np.zeros((48, 64, 3), np.uint8))
    assert (tmp_path / "rec.mp4").read_bytes() == finished


def test_6_the_camera_is_closed_only_after_its_read_returned_and_a_queued_one_too() -> None:
    camera, queued = GateCamera(), SyntheticCamera(0.0)
    loop = LiveLoop(FakeProcessor(), camera, [])
    loop.start()
    assert camera.entered.wait(10)
    assert not loop.stop(timeout=0.01)
    assert camera.events == ["reading"] and thread(loop, "capture").is_alive()
    with pytest.raises(RuntimeError, match="still running"):
        loop.start()
    loop.set_camera(queued)  # queued under the lock while the stuck capture thread still owns the cameras
    capture = thread(loop, "capture")
    camera.release.set()
    capture.join(10)
    assert camera.events == ["reading", "read", "closed"] and queued.closed
    assert loop.stop(timeout=10) and loop.threads == []


# -- 7. failing sinks ---------------------------------------------------------------------------------------
class Exploding:
    """A sink whose send fails and whose close fails too (a recorder on a full disk)."""

    def send(self, frame: LiveFrame) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        raise RecordError("closing failed too")


def test_7_a_sink_whose_close_raises_never_kills_the_output_thread(caplog: pytest.LogCaptureFixture) -> None:
    good = ListSink()
    loop = LiveLoop(FakeProcessor(), SyntheticCamera(0.002), [Exploding(), good])
    loop.start()
    try:
        wait_for(lambda: len(good.frames) >= 3)  # the output thread lived on after the failure
        assert thread(loop, "output").is_alive()
        assert loop.stats().sink_error == "Exploding stopped: disk full"
    finally:
        assert loop.stop(2.0)
    quiet = LiveLoop(FakeProcessor(), SyntheticCamera(0.002), [type("Stuck", (Exploding,), {"send": lambda s, f: None})()])
    quiet.start()
    wait_for(lambda: quiet.delivered >= 1)
    assert quiet.stop(2.0)  # close() raising at stop is reported, not raised
    assert quiet.stats().sink_error == "Stuck stopped: closing failed too"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no traceback anywhere


@pytest.mark.timeout(60)  # before the fix this run never ended
def test_7_a_headless_run_whose_only_output_fails_says_so_once_and_ends() -> None:
    class DeadCam:
        width, height, fps, device = 1280, 720, 30.0, "fake0"

        def send(self, frame: np.ndarray) -> None:
            raise OSError("device gone")

        def close(self) -> None:
            pass

    lines: list[str] = []
    stats = run_headless(FakeProcessor(), SyntheticCamera(0.002), True, None,
                         vcam_backend=lambda w, h, fps: DeadCam(), report=lines.append, report_every_s=60)
    assert stats.sink_error == "VirtualCamSink stopped: device gone"
    assert [line for line in lines if line.startswith("error")] == ["error: VirtualCamSink stopped: device gone"]


@pytest.mark.timeout(60)
def test_7_and_8_headless_failures_exit_non_zero_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import realtime.live
    from realtime.record import Recorder

    monkeypatch.setattr(realtime.live, "make_processor", lambda models, backend: FakeProcessor())
    source = tmp_path / "portrait.png"
    cv2.imwrite(str(source), noise_portrait(48, 64))
    out = tmp_path / "rec.mp4"

    def full_disk(self: Recorder, frame: LiveFrame) -> None:
        raise RecordError("writing rec.mp4 failed after 0 frames (No space left on device)")

    monkeypatch.setattr(Recorder, "send", full_disk)
    code = main.main(["live", "--source", str(source), "--camera", str(camera_video(tmp_path / "cam.mp4")),
                      "--no-window", "--record", str(out), "--frames", "1000"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and not out.exists()
    assert err.count("error: Recorder stopped: writing rec.mp4 failed after 0 frames (No space left on device)") == 1

    # 8. no webcam: one line at once, not a retry every 2 s forever
    code = main.main(["live", "--source", str(source), "--camera", "97", "--no-window", "--record", str(out),
                      "--frames", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "WARN" not in err
    assert err.splitlines()[-1] == ("error: no camera at index 97 (unplugged or used by another app); plug it in, "
                                    "close the other app, or pass a video file as --camera")


def test_8_frames_below_one_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.main(["live", "--source", "p.png", "--no-window", "--virtual-cam", "--frames", "-1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("argument --frames: must be 1 or more, got -1")
    with pytest.raises(ValueError, match="--frames must be 1 or more, got 0"):
        run_headless(FakeProcessor(), SyntheticCamera(0.0), frames=0)


# -- 10, 11. inputs -----------------------------------------------------------------------------------------
def test_10_a_template_declaring_millions_of_frames_is_refused_before_allocating(tmp_path: Path) -> None:
    """A few hundred bytes declaring 4 million frames (2.1 GB of exp as float64): the headers are read, not the data."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, shape in (("scale", (4_000_000, 1)), ("R", (4_000_000, 3, 3)), ("exp", (4_000_000, 21, 3)),
                            ("t", (4_000_000, 3)), ("fps", ())):
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": shape})
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError) as err:
            load_template(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"{path}: array 'scale' has shape (4000000, 1), too large for a template "
                              f"(at most {MAX_FRAMES} frames, an hour at 30 fps); shorten the driving video")
    assert peak < 10_000_000, f"{peak} bytes allocated"


def test_11_a_comfyui_image_in_0_to_255_is_refused_with_the_range() -> None:
    torch = dev_module("torch", "torch")
    from comfyui_liveportrait_rt.nodes import image_batch_to_uint8
    from core.images import ImageInputError

    pixels = torch.full((1, 8, 8, 3), 128.0)
    pixels[0, 0, 0] = 255.0
    with pytest.raises(ImageInputError) as err:
        image_batch_to_uint8(pixels, "source_image")
    assert str(err.value) == ("source_image has values from 128 to 255, but a ComfyUI IMAGE holds 0..1; scale it to "
                              "0..1 first (pixels in 0..255: divide by 255)")
    assert image_batch_to_uint8(pixels / 255, "source_image")[0, 0, 0, 0] == 255
