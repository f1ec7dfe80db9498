"""The one runner interface every backend implements (after Polygraphy's runners).

A runner loads one model file and maps named input arrays to named output arrays. The realtime core only
ever talks to this interface, so ONNX Runtime CPU/CUDA and TensorRT are interchangeable behind it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np


class ModelLoadError(RuntimeError):
    """A model file is missing, corrupt or unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic axis) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class Runner(ABC):
    """Runs one model: named numpy inputs in, named numpy outputs out."""

    #: short backend name shown to users, e.g. "onnxruntime-cpu"
    backend: str = ""
    #: the model's inputs and outputs in graph order; each backend fills them when it opens the model
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        #: the file actually read: a CPU backend reads the network's CPU graph (engines.layout) in place of `path`
        self.source = self.path

    @abstractmethod
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; every input named, every output returned by name."""

    def close(self) -> None:
        """Release backend resources (sessions, device buffers)."""

    def interrupt(self) -> None:
        """Abort the inference in flight, and refuse later ones, as soon as the backend allows: closing the app
        must not wait for a multi-second CPU frame. The default (a backend that cannot abort) does nothing."""

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise a clear ValueError for a missing, unexpected or mis-shaped input."""
        expected = {spec.name: spec for spec in self.inputs}
        missing = sorted(set(expected) - set(feeds))
        unexpected = sorted(set(feeds) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{self.path.name}: inputs missing {missing} / unexpected {unexpected}; "
                f"the model takes {sorted(expected)}"
            )
        for name, array in feeds.items():
            want = expected[name].shape
            got = tuple(np.shape(array))
            if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
                raise ValueError(f"{self.path.name}: input {name!r} has shape {got}, the model takes {want}")

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
