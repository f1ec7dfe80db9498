"""The frame type the live loop hands its sinks (preview, virtual camera, recorder), kept apart from the loop so
the sinks need not import it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from realtime.live_api import FrameResult


@dataclass
class LiveFrame:
    """One finished frame as the sinks get it."""

    camera: np.ndarray
    result: FrameResult
    capture_ts: float
    index: int
    process_ms: float = 0.0  # the processor's whole call, as the loop measured it
    out_ts: float = 0.0

    @property
    def latency_ms(self) -> float:
        return (self.out_ts - self.capture_ts) * 1e3
