"""ONNX Runtime's CUDA provider: its CUDA and cuDNN libraries loaded from NVIDIA's pip packages, and why it did not
start, in one line.

`onnxruntime-gpu[cuda,cudnn]` (requirements-gpu.txt) installs CUDA and cuDNN as pip packages, which the dynamic
loader does not search: `onnxruntime.preload_dlls()` (onnxruntime 1.21 and newer) loads them into the process
first. When the provider still cannot start, ONNX Runtime quietly runs the model on the CPU; the app refuses that
and says which library is missing instead.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: ONNX Runtime's CUDA provider library and the shared provider library it needs loaded first (in onnxruntime/capi)
PROVIDER_LIBS = (
    ("onnxruntime_providers_shared.dll", "onnxruntime_providers_cuda.dll")
    if sys.platform == "win32"
    else ("libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so")
)


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries() -> tuple[str, ...]:
    """Load CUDA and cuDNN from NVIDIA's pip packages where this onnxruntime can (once per process). onnxruntime
    prints, rather than raises, the libraries it could not load: those lines are returned (and logged)."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # older than 1.21: the libraries must be on the loader's path
        return ()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # best effort: whether the provider then starts is checked on the session itself
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    lines = tuple(line.strip() for line in printed.getvalue().splitlines() if line.strip())
    for line in lines:
        log.debug("onnxruntime.preload_dlls: %s", line)
    return lines


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def load_error(capi: Path) -> str | None:
    """The dynamic loader's error for ONNX Runtime's CUDA provider library (it names the first library it cannot
    find, e.g. 'libcudnn.so.9: cannot open shared object file'), or None when it loads."""
    shared, cuda = (capi / name for name in PROVIDER_LIBS)
    try:
        ctypes.CDLL(str(shared), mode=getattr(os, "RTLD_GLOBAL", 0))  # as ONNX Runtime loads it
        ctypes.CDLL(str(cuda))
    except OSError as exc:
        return _first_line(str(exc))
    return None


def cuda_problem() -> str:
    """Why ONNX Runtime's CUDA provider does not start here, in a few words naming what is missing (no
    parentheses, no semicolon: callers put it inside their own sentence)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime-gpu is not installed"
    failed = [line for line in preload_cuda_libraries() if line.startswith("Failed to load")]
    if failed:
        return _first_line(failed[0])  # "Failed to load <path>: <the loader's error, naming the library>"
    problem = load_error(Path(ort.__file__).parent / "capi")
    if problem is not None:
        return f"could not load its CUDA libraries: {problem}"
    from engines.base import ModelLoadError
    from engines.trt import NoGpuError, find_gpu

    try:
        find_gpu()
    except NoGpuError as exc:  # no or an old driver, no GPU; a missing cuda-python says nothing about ONNX Runtime
        if not isinstance(exc.__cause__, ModelLoadError):
            return str(exc)
    return "it failed to start on this GPU, see its error above"
