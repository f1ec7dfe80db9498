"""The live loop: capture thread -> processing thread(s) -> output thread -> sinks.

Queues between the threads hold one frame and drop the OLDEST one when full, so a slow stage skips frames
instead of letting latency grow. Every frame carries its capture timestamp; the output thread measures the
glass-to-glass latency (capture -> handed to the sinks). A PipelinedProcessor's two halves run on two threads
(track -> render), so consecutive frames overlap. Changes of options, portrait, processor and camera are
queued and applied by the thread that owns them before its next frame, so nothing restarts.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Protocol, TypeVar

import numpy as np

from realtime.camera import FrameSource
from realtime.frames import LiveFrame
from realtime.live_api import FrameProcessor, FrameResult, PipelinedProcessor
from core.options import ProcessOptions

log = logging.getLogger(__name__)

T = TypeVar("T")
#: how long a thread waits for work before checking for commands and stop requests
POLL_S = 0.05
#: frames kept for the latency percentiles, and the window of the FPS estimate
HISTORY = 240
FPS_WINDOW_S = 2.0
#: how long stop() waits for a send still in progress (a recorder writing the held copies of a long frame) before
#: leaving the sinks to the output thread: the recording is finished, not cut off when the app exits
SINK_GRACE_S = 30.0


class DropOldestQueue(Generic[T]):
    """A bounded hand-off between two threads: put() never blocks and evicts the oldest item when full."""

    def __init__(self, size: int = 1) -> None:
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.items: deque[T] = deque(maxlen=size)
        self.cond = threading.Condition()
        self.dropped = 0

    def put(self, item: T) -> None:
        with self.cond:
            if len(self.items) == self.items.maxlen:
                self.dropped += 1
            self.items.append(item)
            self.cond.notify_all()

    def get(self, timeout: float) -> T | None:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            item = self.items.popleft() if self.items else None
            self.cond.notify_all()  # wakes a producer waiting in wait_empty()
            return item

    def wait_nonempty(self, timeout: float) -> None:
        """Block until an item arrives (or `timeout` s passed), without taking it."""
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)

    def wait_empty(self, timeout: float) -> None:
        """Block until a consumer took the items (or `timeout` s passed)."""
        with self.cond:
            if self.items:
                self.cond.wait(timeout)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Captured:
    image: np.ndarray
    capture_ts: float  # time.monotonic() when read() returned
    index: int


@dataclass
class Tracked:
    """A frame between the two halves of a PipelinedProcessor, with the processor that tracked it."""

    captured: Captured
    processor: PipelinedProcessor
    tracked: object
    track_ms: float


class Sink(Protocol):
    """Receives every finished frame on the output thread; must not block for long."""

    def send(self, frame: LiveFrame) -> None: ...

    def close(self) -> None: ...


class CallbackSink:
    """A preview sink: calls `callback(frame)` (a UI hands the frame to its own thread from there)."""

    def __init__(self, callback: Callable[[LiveFrame], None]) -> None:
        self.callback = callback

    def send(self, frame: LiveFrame) -> None:
        self.callback(frame)

    def close(self) -> None:
        pass


#: what "dropped A+B" in the readout means (the window's tooltip, `live --help`)
DROPPED_HELP = (
    "dropped A+B: A camera frames skipped because the animation was busy with an older one (they are never "
    "queued, so the delay stays one frame), B animated frames the outputs had no time to show"
)


def rate_text(fps: float) -> str:
    """A frame rate readable at any speed: '25 fps', '8.3 fps', '0.12 fps' reads better as '8.3 s/frame'."""
    if fps <= 0:
        return "-- fps"
    if fps < 1:
        return f"{1 / fps:.2g} s/frame" if 1 / fps < 10 else f"{1 / fps:.0f} s/frame"
    return f"{fps:.2g} fps" if fps < 10 else f"{fps:.0f} fps"


@dataclass
class LiveStats:
    """A snapshot of the loop's health."""

    captured: int = 0
    processed: int = 0
    delivered: int = 0
    dropped_capture: int = 0  # frames the processor never saw because a newer one arrived
    dropped_output: int = 0  # processed frames the sinks never saw
    errors: int = 0
    fps: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # the last frame's stages plus "process" (ms)
    status: str = ""
    camera_status: str = ""
    sink_error: str = ""  # why a sink was dropped (e.g. the recording disk is full)

    def line(self) -> str:
        """A one-line readout for a status bar or a terminal."""
        stages = " ".join(f"{k} {v:.1f}" for k, v in self.timings.items())
        text = (
            f"{rate_text(self.fps)} | latency p50 {self.latency_p50_ms:.0f} ms p95 {self.latency_p95_ms:.0f} ms | "
            f"dropped {self.dropped_capture}+{self.dropped_output}"
        )
        return f"{text} | {stages} ms" if stages else text


class LiveLoop:
    """Runs a FrameProcessor on a FrameSource and feeds the sinks; thread-safe controls for the UI."""

    def __init__(
        self,
        processor: FrameProcessor | None,
        source: FrameSource,
        sinks: list[Sink] | tuple[Sink, ...] = (),
        queue_size: int = 1,
    ) -> None:
        self.processor = processor
        self.source = source
        self.sinks: list[Sink] = list(sinks)
        self.captured_q: DropOldestQueue[Captured] = DropOldestQueue(queue_size)
        self.tracked_q: DropOldestQueue[Tracked] = DropOldestQueue(queue_size)
        self.rendering: PipelinedProcessor | None = None  # whose frame the render thread is rendering
        self.retired: list[FrameProcessor] = []  # replaced while the render thread still held them at stop()
        self.output_q: DropOldestQueue[LiveFrame] = DropOldestQueue(queue_size)
        self.lock = threading.Lock()
        self.send_lock = threading.RLock()  # held while sinks run, so a sink is never closed mid-send
        self.commands: deque[Callable[[], None]] = deque()
        self.pending_source: FrameSource | None = None
        self.pending_settings: tuple[ProcessOptions, float, bool] | None = None
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        # who closes what when stop() cannot wait (under self.lock): the capture thread closes the camera it reads,
        # and the output thread the sinks when stop() gave up waiting for its send
        self.capturing = False
        self.output_running = False
        self.close_sinks_on_exit = False
        self.sink_grace_s = SINK_GRACE_S
        self.stats_ = LiveStats()
        self.latencies: deque[float] = deque(maxlen=HISTORY)
        self.out_times: deque[float] = deque(maxlen=HISTORY)
        # the last applied state, re-applied when the processor is replaced
        self.source_image: np.ndarray | None = None
        self.settings: tuple[ProcessOptions, float, bool] | None = None
        self.mirror = False  # owned by the process thread (changed by a command), like the processor

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.threads = [t for t in self.threads if t.is_alive()]
        if self.threads:
            raise RuntimeError(
                "the live loop is still running (or still finishing a frame after stop()); stop() it before starting again"
            )
        self.stop_event.clear()
        with self.lock:
            self.capturing = self.output_running = True
            self.close_sinks_on_exit = False
        stages = (("capture", self._capture), ("process", self._process), ("render", self._render), ("output", self._output))
        for name, target in stages:
            thread = threading.Thread(target=target, name=f"live-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 2.0) -> bool:
        """Join every thread within `timeout` s in total, then close sinks, camera and processor, each only when no
        thread can still be using it; a send in progress gets up to `sink_grace_s` to finish first. True if every
        thread joined. A thread that did not join is kept (start() refuses to run a second set beside it); the
        capture thread closes the camera and the output thread the sinks when they finish, and the processor stays
        open (its frame may still be running)."""
        self.stop_event.set()
        rendering = self.rendering
        for processor in {id(p): p for p in (self.processor, rendering) if p is not None}.values():
            processor.interrupt()  # a CPU frame can take seconds: abort it rather than wait
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._close_sinks(max(deadline - time.monotonic(), self.sink_grace_s)):
            for thread in self.threads:  # threads are leaving their loops now; a last poll interval for each
                thread.join(POLL_S)
        self.threads = [t for t in self.threads if t.is_alive()]
        joined = not self.threads
        with self.lock:
            capturing = self.capturing
        if not capturing:  # else the capture thread, still inside read(), closes the camera when it returns
            self._close_sources()
        if joined:  # a thread still inside a processor would use freed sessions/buffers
            for processor in [*self.retired, self.processor]:
                if processor is not None:
                    processor.close()
            self.retired = []
        return joined

    # -- controls (any thread) ----------------------------------------------------------------------------------
    def set_options(self, options: ProcessOptions, smoothing: float, lock_scale: bool) -> None:
        """Apply before the next frame; of several changes made meanwhile (a dragged slider) only the last one runs,
        since a crop option re-prepares the portrait."""
        options.validate()
        with self.lock:
            self.pending_settings = (options, smoothing, lock_scale)

    def set_source(self, image_rgb: np.ndarray) -> Future[None]:
        """Queue a new portrait; the future fails with the processor's SourceError (e.g. no face)."""
        future: Future[None] = Future()

        def apply() -> None:
            try:
                if self.processor is not None:
                    self.processor.set_source(image_rgb)
                self.source_image = image_rgb
                future.set_result(None)
            except Exception as exc:  # any processor failure is reported to the caller, the loop goes on
                future.set_exception(exc)

        self._command(apply)
        return future

    def recalibrate(self) -> None:
        self._command(lambda: self.processor.recalibrate() if self.processor is not None else None)

    def set_mirror(self, on: bool) -> None:
        """Flip camera frames left-right before tracking, so the portrait moves like the user's reflection (and
        the preview shows the mirror image). The flipped view is a new neutral, so it recalibrates."""

        def apply() -> None:
            if on != self.mirror:
                self.mirror = on
                if self.processor is not None:
                    self.processor.recalibrate()

        self._command(apply)

    def set_processor(self, processor: FrameProcessor | None) -> Future[None]:
        """Swap the processor (the old one is closed); the current portrait and options are re-applied to it."""
        future: Future[None] = Future()

        def apply() -> None:
            old, self.processor = self.processor, processor
            if old is not None and old is not processor:
                self._retire(old)
            try:
                if processor is not None and self.settings is not None:
                    processor.set_options(*self.settings)
                if processor is not None and self.source_image is not None:
                    processor.set_source(self.source_image)
                future.set_result(None)
            except Exception as exc:  # e.g. the new processor finds no face in the current portrait
                future.set_exception(exc)

        self._command(apply)
        return future

    def _retire(self, old: FrameProcessor) -> None:
        """Close a replaced processor once the render thread no longer holds a frame of it (on the process thread,
        which tracks no new frame meanwhile). There is no deadline: a GPU frame can take long (building an engine
        for a new portrait size), and closing under it would free buffers its kernels still use. If the loop stops
        first, stop() closes it after joining the threads."""
        while not self.stop_event.is_set():
            with self.lock:
                busy = self.rendering is old or any(item.processor is old for item in self.tracked_q.items)
            if not busy:
                old.close()
                return
            time.sleep(POLL_S / 5)
        self.retired.append(old)

    def set_camera(self, source: FrameSource) -> None:
        """Switch to another camera/video; the capture thread closes the old one (or, when none runs, this call)."""
        with self.lock:
            if self.capturing:
                old, self.pending_source = self.pending_source, source
            else:
                old, self.source = self.source, source
        if old is not None:
            old.close()  # a queued camera no thread has read from yet, or the stopped loop's
        self.recalibrate()  # another camera sees the face from elsewhere: its first frame is the new neutral

    def add_sink(self, sink: Sink) -> None:
        with self.lock:
            self.sinks = [*self.sinks, sink]
            self.stats_.sink_error = ""  # a new output starts with a clean slate

    def remove_sink(self, sink: Sink) -> None:
        """Detach and close a sink (after the output thread finishes its current send); raises what close() raises."""
        with self.lock:
            self.sinks = [s for s in self.sinks if s is not sink]
        with self.send_lock:
            sink.close()

    def _close_sinks(self, wait_s: float) -> bool:
        """Close every sink under the send lock, so none is closed in the middle of a send (a recorder writing its
        held copies into a closed video would start a new file over the finished one). If the output thread is
        still inside a send after `wait_s`, it closes them itself when that send returns: False."""
        if not self.send_lock.acquire(timeout=wait_s):
            with self.lock:
                handed_off = self.close_sinks_on_exit = self.output_running
            if handed_off:
                return False
            self.send_lock.acquire()  # the output thread is gone; a remove_sink() is finishing its close
        try:
            with self.lock:
                sinks, self.sinks = self.sinks, []
            for sink in sinks:
                self._retire_sink(sink)
        finally:
            self.send_lock.release()
        return True

    def _retire_sink(self, sink: Sink, error: Exception | None = None) -> None:
        """Close a sink; when it failed (`error`) or its close() fails, the reason becomes one line in the stats
        (the window shows it, a headless run reports it and exits non-zero), never an exception on a loop thread."""
        try:
            sink.close()
        except Exception as exc:  # e.g. the recording's disk is full when ffmpeg finishes the file
            error = error or exc
        if error is not None:
            log.debug("sink %s failed", type(sink).__name__, exc_info=error)
            with self.lock:
                self.stats_.sink_error = f"{type(sink).__name__} stopped: {error}"

    def _close_sources(self) -> None:
        with self.lock:
            sources, self.pending_source = (self.source, self.pending_source), None
        for source in sources:
            if source is not None:
                source.close()

    @property
    def delivered(self) -> int:
        return self.stats_.delivered

    def stats(self) -> LiveStats:
        with self.lock:
            s = LiveStats(**{**self.stats_.__dict__, "timings": dict(self.stats_.timings)})
            latencies = np.array(self.latencies) if self.latencies else None
            now = time.monotonic()
            times = [t for t in self.out_times if t >= now - FPS_WINDOW_S]
            last_two = list(self.out_times)[-2:]
        s.dropped_capture, s.dropped_output = self.captured_q.dropped, self.output_q.dropped
        if latencies is not None:
            s.latency_p50_ms, s.latency_p95_ms = (float(v) for v in np.percentile(latencies, [50, 95]))
        if len(times) > 1 and times[-1] > times[0]:
            s.fps = (len(times) - 1) / (times[-1] - times[0])
        elif len(last_two) == 2:  # under 1 frame per window (a CPU): the last interval, or the wait since if longer
            s.fps = 1.0 / max(last_two[1] - last_two[0], now - last_two[1], 1e-6)
        elif s.timings.get("process"):  # one frame so far: what it took
            s.fps = 1000.0 / s.timings["process"]
        s.camera_status = self.source.status
        return s

    # -- threads ------------------------------------------------------------------------------------------------
    def _command(self, fn: Callable[[], None]) -> None:
        with self.lock:
            self.commands.append(fn)

    def _apply_settings(self, settings: tuple[ProcessOptions, float, bool]) -> None:
        self.settings = settings
        if self.processor is not None:
            self.processor.set_options(*settings)

    def _capture(self) -> None:
        try:
            self._capture_frames()
        finally:  # only this thread may close the camera it reads (stop() does not wait for a read to return)
            with self.lock:
                self.capturing = False
            self._close_sources()

    def _capture_frames(self) -> None:
        index = 0
        while not self.stop_event.is_set():
            with self.lock:
                new, self.pending_source = self.pending_source, None
            if new is not None:
                self.source.close()
                self.source = new
            try:
                image = self.source.read()
            except Exception as exc:  # a driver error must not kill the thread; the status shows it
                log.exception("camera read failed")
                self.source.status = f"camera error: {exc}"
                time.sleep(POLL_S)
                continue
            if image is None:
                continue
            self.captured_q.put(Captured(image, time.monotonic(), index))
            index += 1
            with self.lock:
                self.stats_.captured += 1

    def _process(self) -> None:
        while not self.stop_event.is_set():
            with self.lock:
                commands, self.commands = list(self.commands), deque()
                settings, self.pending_settings = self.pending_settings, None
            if settings is not None:
                commands.insert(0, lambda: self._apply_settings(settings))
            for fn in commands:
                try:
                    fn()
                except Exception as exc:  # a rejected option must not stop the stream
                    if self.stop_event.is_set():
                        return  # aborted by stop(): nothing to report
                    log.exception("live command failed")
                    with self.lock:
                        self.stats_.status = str(exc)
            processor = self.processor
            pipelined = isinstance(processor, PipelinedProcessor) and processor.overlap
            if pipelined and len(self.tracked_q):
                # track at most one frame ahead of the render: a newer camera frame will be fresher by then
                self.tracked_q.wait_empty(POLL_S)
                continue
            item = self.captured_q.get(POLL_S)
            if item is None:
                continue
            if self.mirror:  # flipped here, where the recalibration it needs is applied, never a frame apart
                item.image = np.ascontiguousarray(item.image[:, ::-1])
            if pipelined:
                tracked, ms = self._timed(lambda: processor.track(item.image))
                if not isinstance(tracked, FrameResult):
                    self.tracked_q.put(Tracked(item, processor, tracked, ms))
                    continue
                result = tracked
            elif processor is None:
                result, ms = FrameResult(None, status="no models loaded"), 0.0
            else:
                result, ms = self._timed(lambda: processor.process(item.image))
            self._finish(item, result, ms)

    def _render(self) -> None:
        while not self.stop_event.is_set():
            with self.lock:  # set before the queue is emptied, so _retire never sees the frame in neither place
                item = self.tracked_q.get(0)
                self.rendering = None if item is None else item.processor
            if item is None:
                self.tracked_q.wait_nonempty(POLL_S)
                continue
            result, ms = self._timed(lambda: item.processor.render(item.tracked))
            with self.lock:
                self.rendering = None
            self._finish(item.captured, result, item.track_ms + ms)

    def _timed(self, work: Callable[[], T]) -> tuple[T | FrameResult, float]:
        """Run one half (or all) of a frame; a failure becomes an error frame so the camera keeps running."""
        start = time.perf_counter()
        try:
            result: T | FrameResult = work()
        except Exception as exc:  # show the error, skip the frame, keep the stream alive
            if not self.stop_event.is_set():
                log.exception("processing failed")
            result = FrameResult(None, status=f"processing failed: {exc}")
            with self.lock:
                self.stats_.errors += 1
        return result, (time.perf_counter() - start) * 1e3

    def _finish(self, item: Captured, result: FrameResult, process_ms: float) -> None:
        with self.lock:
            self.stats_.processed += 1
            if self.stop_event.is_set():
                return  # the frame in flight when stopping was aborted: it is no result to show
            self.stats_.timings = {**result.timings, "process": process_ms}
            self.stats_.status = result.status
        self.output_q.put(LiveFrame(item.image, result, item.capture_ts, item.index, process_ms))

    def _output(self) -> None:
        try:
            self._output_frames()
        finally:
            with self.lock:
                self.output_running = False
                orphaned = self.close_sinks_on_exit
            if orphaned:  # stop() gave up waiting for a send of this thread: closing is left to it
                self._close_sinks(0.0)

    def _output_frames(self) -> None:
        while not self.stop_event.is_set():
            frame = self.output_q.get(POLL_S)
            if frame is None:
                continue
            frame.out_ts = time.monotonic()
            with self.lock:
                if frame.result.output is not None:  # the animation's latency: camera-only frames would hide it
                    self.latencies.append(frame.latency_ms)
                self.out_times.append(frame.out_ts)
                self.stats_.delivered += 1
            with self.send_lock:
                with self.lock:  # read under the send lock: a sink remove_sink() closed is never sent to
                    sinks = self.sinks
                for sink in sinks:
                    try:
                        sink.send(frame)
                    except Exception as exc:  # one broken sink (e.g. disk full) must not starve the others
                        with self.lock:
                            self.sinks = [s for s in self.sinks if s is not sink]
                        self._retire_sink(sink, exc)


def run_headless(
    processor: FrameProcessor,
    camera: FrameSource,
    virtual_cam: bool = False,
    frames: int | None = None,
    *,
    record: Path | None = None,
    overwrite: bool = False,
    vcam_backend: Callable[..., object] | None = None,
    report: Callable[[str], None] | None = None,
    report_every_s: float = 2.0,
    stop_event: threading.Event | None = None,
    mirror: bool = False,
) -> LiveStats:
    """Run without a window until `frames` frames were delivered (None: until Ctrl+C or stop_event).

    The processor must already have its portrait. A missing virtual camera is reported and the loop keeps
    running; status lines go to `report` (stderr by default). A webcam that cannot be opened is a CameraError at
    once (nobody is there to plug it in). An output that fails (a full disk) is reported in one line and dropped;
    the others go on, the run ends when none is left, and the returned stats carry `sink_error`.
    """
    from realtime.camera import CameraSource
    from realtime.record import Recorder
    from realtime.vcam import VirtualCamSink, VirtualCameraUnavailable
    from render.outputs import plural, refuse_overlap

    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be 1 or more, got {frames}")
    refuse_overlap({"camera video": getattr(camera, "path", None)}, {"recording": record})
    if isinstance(camera, CameraSource):
        camera.probe()
    say = report or (lambda line: print(line, file=sys.stderr, flush=True))
    sinks: list[Sink] = []
    recorder = None if record is None else Recorder(record, fps=camera.fps, overwrite=overwrite)
    if recorder is not None:
        sinks.append(recorder)
    if virtual_cam:
        try:
            sinks.append(VirtualCamSink(fps=camera.fps, backend=vcam_backend))
            say(sinks[-1].status)  # type: ignore[attr-defined]
        except VirtualCameraUnavailable as exc:
            say(str(exc))
    say(f"processor: {processor.backend}")
    loop = LiveLoop(processor, camera, sinks)
    loop.set_mirror(mirror)
    stop = stop_event or threading.Event()
    loop.start()
    next_report = time.monotonic() + report_every_s
    said = ""

    def say_sink_error() -> None:
        nonlocal said
        if loop.stats_.sink_error != said:
            said = loop.stats_.sink_error
            say(f"error: {said}")

    try:
        while not stop.is_set() and (frames is None or loop.delivered < frames):
            stop.wait(0.01)
            say_sink_error()
            if said and not loop.sinks:
                break  # the last output failed: nothing left to run for
            if time.monotonic() >= next_report:
                stats = loop.stats()
                say(stats.line() + "".join(f" | {s}" for s in (stats.status, stats.camera_status) if s))
                next_report += report_every_s
    except KeyboardInterrupt:
        say("stopping")
    finally:
        loop.stop()
    say_sink_error()  # e.g. the recording could not be finished
    if recorder is not None and recorder.saved:
        say(f"saved {plural(recorder.frames, 'frame')} to {recorder.path}")
    return loop.stats()
