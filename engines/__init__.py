"""Model runners: one interface (`Runner`), several backends behind it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from engines.base import ModelLoadError, Runner, TensorSpec
from engines.select import BACKENDS, OPENVINO_PRECISIONS, BackendChoice, BackendUnavailable, choose_backend

log = logging.getLogger(__name__)


def open_runner(
    path: Path, backend: str = "cpu", *, precision: str = "fp16", engine_dir: Path | None = None, cuda_graph: bool = False
) -> Runner:
    """Open one model (an .onnx file of the models folder) with the named backend.

    "cpu" and "cuda" run the ONNX file with ONNX Runtime; "tensorrt" runs its cached engine (built first when
    missing or stale, in `engine_dir`, by default <models>/engines); "auto" takes the first of those that works.
    `cuda_graph` (TensorRT only) replays each engine launch from a captured CUDA graph. "openvino" and
    "openvino-bf16" run it with OpenVINO on the CPU, caching compiled models in `engine_dir`/openvino.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        choice = choose_backend("auto", path.parent, precision)
        log.info("%s: %s", path.name, choice.reason)
        backend = choice.name
    if backend == "tensorrt":
        from engines.trt_build import open_trt_runner
        from engines.trt_cache import default_engine_dir

        cache = engine_dir or default_engine_dir(path.parent)
        runner: Runner = open_trt_runner(path, cache, precision, log.info, cuda_graph=cuda_graph)
    elif backend in OPENVINO_PRECISIONS:
        from engines.openvino import OpenVinoRunner

        runner = OpenVinoRunner(path, OPENVINO_PRECISIONS[backend], engine_dir and Path(engine_dir) / "openvino")
    else:
        from engines.ort import OrtRunner

        runner = OrtRunner(path, device=backend)
    log.info("%s runs on %s", path.name, runner.backend)
    return runner


def open_runners(
    paths: Mapping[str, Path], backend: str = "cpu", precision: str = "fp16", cuda_graph: bool = False
) -> dict[str, Runner]:
    """Open several models at once; when one fails, the ones already open are closed (GPU memory is not leaked
    by a failed switch of backend) before the error goes on."""
    runners: dict[str, Runner] = {}
    try:
        for name, path in paths.items():
            runners[name] = open_runner(path, backend, precision=precision, cuda_graph=cuda_graph)
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    return runners


__all__ = [
    "BACKENDS",
    "BackendChoice",
    "BackendUnavailable",
    "ModelLoadError",
    "Runner",
    "TensorSpec",
    "choose_backend",
    "open_runner",
    "open_runners",
]
