"""OpenVINO backend (CPU): the fastest CPU runner here, f32 or (on CPUs with native bf16) bf16.

It reads the CPU graphs of the models folder (engines.layout.CPU_ONNX: Winograd and Fourier-domain convolutions,
and for the warping module gathers in place of the 5-D GridSample that OpenVINO cannot read, "only supported for
4D input tensors"), so W's CPU graph is required. Compiled models are cached under the models folder's engine cache, so a second
start skips compilation. Denormals are flushed: the warping module's keypoint heatmaps underflow into denormal
floats, which slow every convolution that reads them on some CPUs.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engines.base import ModelLoadError, Runner, TensorSpec
from engines.layout import CPU_ONNX, NETWORK_ONNX, cpu_model_file

#: the one CPU graph OpenVINO cannot do without: W's native graph has 5-D grid samples
REQUIRED_CPU_GRAPH = CPU_ONNX[NETWORK_ONNX["warping_module"]]
#: OpenVINO inference precisions this runner offers; bf16 only where the CPU computes it natively
PRECISIONS = ("f32", "bf16")


def import_openvino() -> Any:
    """The openvino module, or ModelLoadError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ModelLoadError("OpenVINO is not installed; `pip install openvino` or choose the cpu backend") from exc
    return openvino


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> frozenset[str]:
    """What OpenVINO says this CPU computes natively (FP32, BF16, INT8, ...); asked once per process."""
    return frozenset(import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def model_file(path: Path) -> Path:
    """The file OpenVINO reads for a models-folder file: its CPU graph (always W's, even when missing), else itself."""
    path = Path(path)
    return path.with_name(REQUIRED_CPU_GRAPH) if path.name == NETWORK_ONNX["warping_module"] else cpu_model_file(path)


def default_cache_dir(models_dir: Path) -> Path:
    """OpenVINO's compiled-model cache, beside the TensorRT engines of the models folder."""
    from engines.trt_cache import default_engine_dir

    return default_engine_dir(models_dir) / "openvino"


class OpenVinoRunner(Runner):
    """One OpenVINO compiled model on the CPU with one infer request."""

    def __init__(self, path: Path, precision: str = "f32", cache_dir: Path | None = None) -> None:
        super().__init__(path)
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.source = source = model_file(self.path)
        if not source.is_file():
            raise ModelLoadError(
                f"model file {source} is missing; run `python -m export onnx` (with --force) to create it"
            )
        if precision == "bf16" and "BF16" not in cpu_capabilities():
            raise ModelLoadError("this CPU has no native bf16 (AVX512-BF16 or AMX); choose the openvino backend (f32)")
        ov = import_openvino()
        core = ov.Core()
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(self.path.parent)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except OSError:
            pass  # a read-only models folder compiles on every start instead
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "CPU_DENORMALS_OPTIMIZATION": True}
        try:
            model = core.read_model(str(source))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors for unreadable graphs
            raise ModelLoadError(
                f"{source} could not be loaded by OpenVINO ({str(exc).strip().splitlines()[0][:200]}); "
                "delete it and run `python -m export onnx` again, or choose the cpu backend"
            ) from exc
        self.request = self.compiled.create_infer_request()
        self.backend = f"openvino-cpu {precision}"
        self._interrupted = False
        # names from the model as read: a compiled output port may carry an inner tensor's name too
        self.inputs = [self._spec(port) for port in model.inputs]
        self.outputs = [self._spec(port) for port in model.outputs]

    @staticmethod
    def _spec(port: Any) -> TensorSpec:
        shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()))

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
        typed = {s.name: np.ascontiguousarray(feeds[s.name], dtype=s.dtype) for s in self.inputs}
        if self._interrupted:
            raise InterruptedError(f"{self.path.name}: inference interrupted")
        try:
            self.request.start_async(typed)  # async, so interrupt() can cancel it from another thread
            self.request.wait()
        except RuntimeError as exc:  # OpenVINO's error when cancel() stops the request
            if self._interrupted:
                raise InterruptedError(f"{self.path.name}: inference interrupted") from exc
            raise
        return {s.name: self.request.get_output_tensor(i).data.copy() for i, s in enumerate(self.outputs)}

    def interrupt(self) -> None:
        self._interrupted = True
        self.request.cancel()
