"""ONNX Runtime backend (CPU and CUDA execution providers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engines.base import ModelLoadError, Runner, TensorSpec
from engines.layout import cpu_model_file
from engines.ort_cuda import cuda_problem, preload_cuda_libraries

_ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint8)": np.dtype(np.uint8),
}


def cuda_available() -> bool:
    """True when the installed onnxruntime build offers the CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _spec(arg: Any, path: Path) -> TensorSpec:
    """A session input/output as a TensorSpec; a type we cannot feed is refused now, not mis-fed later."""
    if arg.type not in _ORT_DTYPES:
        raise ModelLoadError(
            f"{path.name}: tensor {arg.name!r} has type {arg.type}, which this app cannot feed; "
            "re-export the models folder with `python -m export onnx`"
        )
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_DTYPES[arg.type])


def session_options(flush_denormals: bool = True) -> Any:
    """The app's ONNX Runtime session options. Denormal floats are flushed to zero: the warping module's keypoint
    heatmaps underflow into denormals, which made its CPU convolutions 1.8x slower (same output); only the CPU
    benchmark turns flushing off, to show that."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # busy-waiting worker threads starve the app's other threads (capture, UI, a second session) on few cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if flush_denormals:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


class OrtRunner(Runner):
    """One onnxruntime InferenceSession.

    `device` is "cpu" or "cuda" ("auto" is resolved by engines.open_runner). ONNX Runtime silently falls back to
    CPU when CUDA cannot start, so the providers the session actually got are checked: a CUDA session that fell
    back is refused with the reason (engines.ort_cuda), never run on the CPU. On the CPU it reads the network's
    CPU graph (engines.layout.CPU_ONNX: Winograd and Fourier-domain convolutions) when the models folder has one.
    """

    def __init__(self, path: Path, device: str = "cpu") -> None:
        super().__init__(path)
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} is missing; run `python -m export onnx` to create it")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"OrtRunner device must be 'cpu' or 'cuda', got {device!r}")
        want_cuda = device == "cuda"
        if want_cuda and not cuda_available():
            raise ModelLoadError(
                "ONNX Runtime CUDA was asked for, but this onnxruntime has no CUDA provider; "
                "install requirements-gpu.txt or choose the CPU device"
            )
        if want_cuda:  # CUDA and cuDNN from NVIDIA's pip packages, before the provider looks for them
            preload_cuda_libraries()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
        self.source = source = self.path if want_cuda else cpu_model_file(self.path)
        try:
            self.session = ort.InferenceSession(str(source), sess_options=session_options(), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt files
            raise ModelLoadError(
                f"{source} could not be loaded ({str(exc).splitlines()[0][:200]}); "
                "the file is corrupt or from another version: delete it and run `python -m export onnx` again"
            ) from exc
        got = self.session.get_providers()
        self.backend = "onnxruntime-cuda" if "CUDAExecutionProvider" in got else "onnxruntime-cpu"
        if want_cuda and self.backend != "onnxruntime-cuda":
            del self.session
            raise ModelLoadError(
                f"{self.path.name}: ONNX Runtime's CUDA provider did not start ({cuda_problem()}); "
                "pip install -r requirements-gpu.txt, or choose the cpu backend"
            )
        self._run = ort.RunOptions()  # the options of the run in flight; terminate=True aborts it
        self._interrupted = False
        self.inputs = [_spec(a, self.path) for a in self.session.get_inputs()]
        self.outputs = [_spec(a, self.path) for a in self.session.get_outputs()]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        self.check_feeds(feeds)
        typed = {s.name: np.ascontiguousarray(feeds[s.name], dtype=s.dtype) for s in self.inputs}
        self._run = ort.RunOptions()
        if self._interrupted:
            raise InterruptedError(f"{self.path.name}: inference interrupted")
        try:
            values = self.session.run(None, typed, self._run)
        except Exception as exc:  # onnxruntime's own error type when the terminate flag stops a run
            if self._interrupted:
                raise InterruptedError(f"{self.path.name}: inference interrupted") from exc
            raise
        return {s.name: v for s, v in zip(self.outputs, values)}

    def interrupt(self) -> None:
        self._interrupted = True
        self._run.terminate = True
