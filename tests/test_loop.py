"""The live loop with a fast fake processor and a synthetic camera: bounded queues, latency, memory, control flow."""
from __future__ import annotations

import threading
import time
import tracemalloc
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.camera import CameraError, CameraSource, VideoFileSource, open_camera
from core.images import SourceError
from realtime.frames import LiveFrame
from realtime.live_api import FakeProcessor, FrameResult
from realtime.loop import DropOldestQueue, LiveLoop, run_headless
from core.options import ProcessOptions
from realtime.record import Recorder
from render.outputs import RecordExistsError
from tests.loops import ListSink, SyntheticCamera, noise_portrait, wait_for


def test_drop_oldest_queue() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(2)
    for i in range(5):
        q.put(i)
    assert len(q) == 2 and q.dropped == 3
    assert [q.get(0), q.get(0), q.get(0)] == [3, 4, None]
    with pytest.raises(ValueError, match="queue size must be >= 1, got 0"):
        DropOldestQueue(0)


def test_2000_frames_bounded_queues_latency_and_memory() -> None:
    processor = FakeProcessor(delay_s=0.001)
    sink = ListSink()
    loop = LiveLoop(processor, SyntheticCamera(0.0005), [sink])
    loop.set_source(noise_portrait())
    tracemalloc.start()
    try:
        loop.start()
        wait_for(lambda: loop.delivered >= 200, 60)
        mem_early = tracemalloc.get_traced_memory()[0]
        max_q = 0
        while loop.delivered < 2000:
            max_q = max(max_q, len(loop.captured_q), len(loop.output_q))
            time.sleep(0.001)
        mem_late = tracemalloc.get_traced_memory()[0]
    finally:
        assert loop.stop(2.0)
        tracemalloc.stop()
    stats = loop.stats()
    assert max_q <= 1
    assert stats.captured >= stats.processed >= stats.delivered >= 2000
    assert stats.dropped_capture == stats.captured - stats.processed - len(loop.captured_q)
    # the camera outruns the processor, so frames are dropped instead of queued (bench.live measures the latency)
    assert stats.dropped_capture > 0
    assert all(f.latency_ms >= 0 and f.result.output is not None for f in sink.frames)
    assert set(stats.timings) == {"motion", "render", "process"}
    assert all(f.process_ms >= 1.0 for f in sink.frames)  # the fake sleeps 1 ms per frame
    assert mem_late - mem_early < 2_000_000, f"memory grew by {mem_late - mem_early} bytes"
    assert sink.closed


def test_controls_apply_on_processing_thread_without_restart() -> None:
    processor = FakeProcessor()
    loop = LiveLoop(processor, SyntheticCamera(0.002), [])
    loop.start()
    try:
        options = ProcessOptions(scale=2.0, vx_ratio=0.1, relative=False)
        loop.set_options(options, 0.4, True)
        wait_for(lambda: processor.options is options)
        assert (processor.smoothing, processor.lock_scale) == (0.4, True)
        loop.recalibrate()
        wait_for(lambda: processor.recalibrations == 1)
        loop.set_source(noise_portrait()).result(5)
        failed = loop.set_source(np.zeros((20, 20, 3), np.uint8))
        with pytest.raises(SourceError, match="no face found in the portrait"):
            failed.result(5)
        assert processor.sources_set == 1
        # a new processor gets the current options and portrait before its first frame
        replacement = FakeProcessor()
        loop.set_processor(replacement).result(5)
        assert replacement.options is options and replacement.sources_set == 1
        assert processor.closed and not replacement.closed
        seen = replacement.frames
        wait_for(lambda: replacement.frames > seen + 3)
        new_camera = SyntheticCamera(0.002)
        old_camera = loop.source
        loop.set_camera(new_camera)
        wait_for(lambda: new_camera.n > 3)
        assert loop.source is new_camera and old_camera.closed
    finally:
        assert loop.stop(2.0)
    assert replacement.closed and new_camera.closed


def test_processor_failure_keeps_stream_and_reports() -> None:
    class Broken(FakeProcessor):
        def process(self, frame_rgb: np.ndarray) -> FrameResult:
            if self.frames % 2 == 0:
                self.frames += 1
                raise RuntimeError("CUDA out of memory")
            return super().process(frame_rgb)

    statuses: list[str] = []  # every delivered frame's status, in order
    sink = ListSink()
    sink.send = lambda frame: statuses.append(frame.result.status)
    loop = LiveLoop(Broken(), SyntheticCamera(0.002), [sink])
    loop.start()
    failed, working = "processing failed: CUDA out of memory", "choose a portrait to animate"
    try:
        wait_for(lambda: loop.stats().errors >= 3 and {failed, working} <= set(statuses))
    finally:
        loop.stop()
    # a failed frame reaches the sinks with the error as its status, and the stream goes on
    assert set(statuses) == {failed, working}


def test_no_processor_still_shows_camera() -> None:
    sink = ListSink()
    loop = LiveLoop(None, SyntheticCamera(0.002), [sink])
    loop.start()
    try:
        wait_for(lambda: len(sink.frames) >= 2)
    finally:
        loop.stop()
    assert sink.frames[-1].result.output is None and sink.frames[-1].result.status == "no models loaded"
    assert sink.frames[-1].camera.shape == (48, 64, 3)
    stats = loop.stats()
    assert stats.fps > 0 and stats.latency_p50_ms == stats.latency_p95_ms == 0  # nothing animated: no latency yet


def test_broken_sink_is_removed_others_continue() -> None:
    class Full:
        closed = False

        def send(self, frame: LiveFrame) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            self.closed = True

    bad, good = Full(), ListSink()
    loop = LiveLoop(FakeProcessor(), SyntheticCamera(0.002), [bad, good])
    loop.start()
    try:
        wait_for(lambda: len(good.frames) >= 3)
        assert loop.sinks == [good] and bad.closed
        assert loop.stats().sink_error == "Full stopped: disk full"
    finally:
        loop.stop()
    assert bad.closed and loop.sinks == []


def test_run_headless_with_fake_vcam_and_recording(tmp_path: Path, fake_cam) -> None:
    processor = FakeProcessor()
    processor.set_source(noise_portrait(60, 40))
    lines: list[str] = []
    out = tmp_path / "rec.mp4"
    stats = run_headless(
        processor, SyntheticCamera(0.002), virtual_cam=True, frames=30, record=out,
        vcam_backend=fake_cam.open, report=lines.append, report_every_s=0.01,
    )
    assert stats.delivered >= 30
    assert lines[0] == "virtual camera on: fake0 1280x720 @ 1000 fps"
    assert any("fps | latency p50" in line for line in lines[1:])
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 40 and cap.get(cv2.CAP_PROP_FRAME_HEIGHT) == 60
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) >= 30
    cap.release()
    with pytest.raises(RecordExistsError, match=r"rec.mp4 already exists; choose another name, or allow replacing it"):
        Recorder(out)


def test_run_headless_without_vcam_device_keeps_running() -> None:
    def no_device(w: int, h: int, fps: float):
        raise RuntimeError("'v4l2loopback' backend: No v4l2 loopback device found")

    lines: list[str] = []
    stop = threading.Event()

    def report(line: str) -> None:
        lines.append(line)
        if "fps" in line:
            stop.set()  # frames=None runs until told to stop

    stats = run_headless(FakeProcessor(), SyntheticCamera(0.002), True, None, vcam_backend=no_device, report=report,
                         report_every_s=0.05, stop_event=stop)
    assert stats.delivered >= 1 and "fps | latency" in lines[-1]
    assert lines[1] == f"processor: {FakeProcessor.backend}"
    assert lines[0].startswith("virtual camera unavailable ('v4l2loopback' backend: No v4l2 loopback device found)")


def test_video_file_loops_at_its_own_fps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import realtime.camera

    sleeps: list[float] = []
    clock = {"now": 100.0}  # a fake clock: reading takes no time, sleeping moves it on

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(realtime.camera, "time", types.SimpleNamespace(monotonic=lambda: clock["now"], sleep=sleep))
    path = tmp_path / "five.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 50.0, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), (0, 0, 40 * i), np.uint8))  # BGR: red channel rises
    writer.release()
    source = open_camera(str(path))
    assert isinstance(source, VideoFileSource) and source.fps == 50.0
    frames = [source.read() for _ in range(12)]
    source.close()
    reds = [int(f[0, 0, 0]) for f in frames]  # RGB order: red first
    assert reds[5] == reds[0] and reds[10] == reds[0] and reds[4] > reds[0] + 100
    # paced like a camera, not decoded as fast as possible: one frame time before each frame after the first
    assert sleeps == pytest.approx([1 / 50] * 11)


def test_bad_camera_specs() -> None:
    with pytest.raises(CameraError, match=r"video file nowhere\.mp4 does not exist; choose an existing"):
        open_camera("nowhere.mp4")
    camera = CameraSource(97)
    assert camera.read() is None
    assert camera.status.startswith("no camera at index 97 (unplugged or used by another app); retrying every 2 s")
    camera.close()


class TwoHalves(FakeProcessor):
    """A pipelined fake: track() and render() each take a while and log when they ran."""

    def __init__(self, half_s: float, overlap: bool) -> None:
        super().__init__()
        self.half_s = half_s
        self.overlap = overlap
        self.spans: dict[str, list[tuple[int, float, float]]] = {"track": [], "render": []}

    def _span(self, name: str, index: int) -> None:
        start = time.monotonic()
        time.sleep(self.half_s)
        self.spans[name].append((index, start, time.monotonic()))

    def track(self, frame_rgb: np.ndarray) -> int:
        index = int(np.argmax(frame_rgb[0, :, 0]))  # SyntheticCamera's bright column identifies the frame
        self._span("track", index)
        return index

    def render(self, tracked: int) -> FrameResult:
        self._span("render", tracked)
        return FrameResult(None, status=f"frame {tracked}")

    def process(self, frame_rgb: np.ndarray) -> FrameResult:
        self.frames += 1
        return self.render(self.track(frame_rgb))


def _run_halves(overlap: bool) -> tuple[TwoHalves, ListSink, list[tuple[int, int]]]:
    """Run a TwoHalves processor for 6 rendered frames; the (rendered, tracked) frame pairs whose spans overlapped."""
    processor = TwoHalves(0.03, overlap)
    sink = ListSink()
    loop = LiveLoop(processor, SyntheticCamera(0.002), [sink])
    loop.start()
    try:
        wait_for(lambda: len(processor.spans["render"]) >= 6)
    finally:
        loop.stop()
    renders = {i: (start, end) for i, start, end in processor.spans["render"]}
    overlaps = [
        (i, j) for j, start, end in processor.spans["track"] for i, (r0, r1) in renders.items()
        if j > i and start < r1 and end > r0
    ]
    return processor, sink, overlaps


def test_pipelined_processor_overlaps_tracking_of_the_next_frame_with_rendering() -> None:
    processor, sink, overlaps = _run_halves(overlap=True)
    assert processor.frames == 0  # process() was never called: the two halves ran on their own threads
    assert overlaps, "tracking of a later frame never ran while an earlier frame was rendered"
    assert all(f.result.status.startswith("frame ") for f in sink.frames)
    # tracking never runs more than one frame ahead of the render
    assert len(processor.spans["track"]) <= len(processor.spans["render"]) + 2


def test_pipelined_processor_on_the_cpu_runs_its_halves_one_after_the_other() -> None:
    processor, sink, overlaps = _run_halves(overlap=False)
    assert overlaps == [] and processor.frames == len(processor.spans["render"])
    assert all(f.result.status.startswith("frame ") for f in sink.frames)


def test_a_burst_of_option_changes_applies_only_the_last() -> None:
    class Counting(FakeProcessor):
        """Holds its frame until released, so the whole burst arrives while one frame is in flight."""

        def __init__(self) -> None:
            super().__init__()
            self.applied: list[ProcessOptions] = []
            self.busy, self.release = threading.Event(), threading.Event()

        def set_options(self, options: ProcessOptions, smoothing: float, lock_scale: bool) -> None:
            super().set_options(options, smoothing, lock_scale)
            self.applied.append(options)

        def process(self, frame_rgb: np.ndarray) -> FrameResult:
            self.busy.set()
            self.release.wait(10)
            return super().process(frame_rgb)

    processor = Counting()
    loop = LiveLoop(processor, SyntheticCamera(0.002), [])
    loop.start()
    try:
        assert processor.busy.wait(10)
        burst = [ProcessOptions(scale=1.0 + i / 100) for i in range(50)]  # a dragged slider
        for options in burst:
            loop.set_options(options, 0.0, False)
        processor.release.set()
        wait_for(lambda: processor.options is burst[-1])
    finally:
        processor.release.set()
        loop.stop()
    assert processor.applied == [burst[-1]]


class Closing(TwoHalves):
    """Notes when it was closed."""

    def close(self) -> None:
        self.closed_at = time.monotonic()
        super().close()


def test_a_replaced_processor_is_closed_only_after_its_last_frame_is_rendered() -> None:
    old, new = Closing(0.05, overlap=True), TwoHalves(0.001, overlap=True)
    loop = LiveLoop(old, SyntheticCamera(0.002), [])
    loop.start()
    try:
        wait_for(lambda: len(old.spans["render"]) >= 2)
        loop.set_processor(new).result(5)
        wait_for(lambda: len(new.spans["render"]) >= 2)
    finally:
        loop.stop()
    assert old.closed
    assert all(end <= old.closed_at for _, _, end in old.spans["render"])


def test_a_processor_replaced_as_the_loop_stops_is_closed_only_after_its_frame() -> None:
    """A long frame (a GPU engine build) outlasts any deadline: the old processor is closed after it, by stop()."""
    old, new = Closing(0.4, overlap=True), TwoHalves(0.001, overlap=True)
    loop = LiveLoop(old, SyntheticCamera(0.002), [])
    loop.start()
    wait_for(lambda: loop.rendering is old)
    loop.set_processor(new)
    wait_for(lambda: loop.processor is new)  # the process thread now waits for the render thread to let go
    assert loop.stop(2.0)
    assert old.closed and old.spans["render"] and all(end <= old.closed_at for _, _, end in old.spans["render"])
    assert new.closed and loop.retired == []


class HalfLitCamera(SyntheticCamera):
    """Frames dark on the left half, bright on the right: a flip is visible in every pixel column."""

    def read(self) -> np.ndarray:
        frame = super().read()
        frame[:, :32], frame[:, 32:] = 10, 200
        return frame


class SeeingProcessor(FakeProcessor):
    """Remembers the left column of the last frame it was given."""

    left = -1

    def process(self, frame_rgb: np.ndarray) -> FrameResult:
        self.left = int(frame_rgb[0, 0, 0])
        return super().process(frame_rgb)


def test_mirror_flips_what_the_processor_and_the_preview_see_and_recalibrates_once() -> None:
    processor = SeeingProcessor()
    sink = ListSink()
    loop = LiveLoop(processor, HalfLitCamera(0.002), [sink])
    loop.start()
    try:
        wait_for(lambda: processor.left == 10 and sink.frames)
        assert sink.frames[-1].camera[0, 0, 0] == 10
        loop.set_mirror(True)
        loop.set_mirror(True)  # already mirrored: no second neutral
        wait_for(lambda: processor.left == 200)
        seen = processor.frames
        wait_for(lambda: processor.frames > seen + 3)
        assert processor.left == 200 and processor.recalibrations == 1
        assert all(f.camera[0, 0, 0] == 200 and f.camera[0, -1, 0] == 10 for f in sink.frames[-2:])
        loop.set_mirror(False)
        wait_for(lambda: processor.left == 10)
        assert processor.recalibrations == 2
    finally:
        assert loop.stop(2.0)
