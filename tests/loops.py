"""Helpers of the live-loop tests (test_loop, test_faults, test_cli): a fast synthetic camera, a sink that keeps the
last frames, a noise portrait and a wait on a condition of the loop's threads."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from realtime.frames import LiveFrame


class SyntheticCamera:
    """Fast camera: a new 48x64 frame every `interval` s."""

    def __init__(self, interval: float) -> None:
        self.fps, self.status, self.interval = 1000.0, "", interval
        self.n = 0
        self.closed = False

    def read(self) -> np.ndarray:
        if self.interval:
            time.sleep(self.interval)
        self.n += 1
        frame = np.full((48, 64, 3), 40, np.uint8)
        frame[:, self.n % 64] = 255
        return frame

    def close(self) -> None:
        self.closed = True


class ListSink:
    """An output that keeps the last five frames it was sent (memory stays flat over long runs)."""

    def __init__(self) -> None:
        self.frames: list[LiveFrame] = []
        self.closed = False

    def send(self, frame: LiveFrame) -> None:
        self.frames.append(frame)
        del self.frames[:-5]

    def close(self) -> None:
        self.closed = True


def noise_portrait(h: int = 40, w: int = 30) -> np.ndarray:
    """A seeded noise image: a portrait for the fake processor, which needs no face."""
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds; the timeout only bounds a hung test, it is no speed threshold."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
