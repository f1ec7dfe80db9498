"""`python -m export trt`: one TensorRT engine per exported ONNX model, cached per GPU / TensorRT / ONNX file.

TensorRT 11 only builds strongly typed networks: the BuilderFlag.FP16 / precision-constraint APIs are gone and
every layer runs in the type its ONNX tensors have. So FP16 is decided here, in the graph: `mixed_fp16` rewrites
a float32 ONNX model to float16 with Casts, keeping the precision-sensitive parts in float32 (every GridSample
and the cheap ops that compute its sampling grid), and keeping the model's inputs and outputs float32. Models
whose outputs are coordinates (motion extractor, landmarks) or that are tiny MLPs are always built in FP32.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.base import ModelLoadError
from engines.trt import GpuInfo, NoGpuError, StaleEngineError, TrtRunner, find_gpu, import_tensorrt, trt_logger
from engines.image_ops import is_image_op
from engines.layout import MODEL_FILES
from engines.files import atomic_write
from engines.trt_cache import (
    EngineKey,
    engine_path,
    file_sha256,
    forget_engine,
    stale_reason,
    store_engine,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")

#: built in FP32 whatever was asked: coordinate outputs (keypoints, landmarks) and the tiny retargeting MLPs
FP32_MODELS = frozenset({"motion_extractor", "stitching", "lip", "eye", "landmark", "2d106det"})

#: version of how an engine is made from its ONNX file (mixed_fp16, fp32_nodes, FP32_MODELS, the builder
#: config): part of every engine's cache key, so BUMP IT whenever one of those changes and engines get rebuilt
RECIPE = 3

#: TensorRT builder optimisation level of the image-op engines (crop, paste-back; TensorRT's default is 3): these
#: tiny graphs are built whenever a new portrait or camera size shows up, while the picture waits, so a build of
#: seconds matters more than the last microsecond of a sampling op
IMAGE_OP_LEVEL = 0

#: ops that stop the walk back from a grid: they are the expensive layers FP16 is for
_HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
#: inputs ONNX requires to be float32 whatever the data type is (Resize's roi and scales)
_FP32_ONLY_INPUTS = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})

Log = Callable[[str], None]

#: one engine build at a time in a process: builds share the timing cache file, and the window's model loading can
#: overlap a render thread building an image-op engine
_BUILD_LOCK = threading.Lock()


class TrtBuildError(ModelLoadError):
    """An engine cannot be built; the message names the model and the fix."""


class TrtParseError(TrtBuildError):
    """TensorRT's ONNX parser rejected a model."""


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def engine_precision(model: str, requested: str) -> str:
    """The precision a model's engine is built in, given the one asked for."""
    check_precision(requested)
    return "fp32" if model in FP32_MODELS else requested


def engine_key(onnx_path: Path, gpu: GpuInfo, trt_version: str, precision: str) -> EngineKey:
    """Everything the engine of this ONNX file depends on, for the precision asked for (the model's own
    precision is derived); the file's sha256 is cached, so asking again is cheap."""
    onnx_path = Path(onnx_path)
    cc = f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    chosen = engine_precision(onnx_path.stem, precision)
    return EngineKey(gpu.name, cc, trt_version, chosen, RECIPE, file_sha256(onnx_path))


def fp32_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of the nodes kept in float32: every GridSample, plus the cheap ops its grid is computed by.

    A grid in float16 has about 1e-3 resolution in [-1, 1], visible as jitter after sampling; the grid is made
    of elementwise ops on keypoints and a softmax mask, so keeping that path in float32 costs almost nothing.
    """
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    pinned: set[int] = set()
    todo: list[str] = []
    for index, node in enumerate(graph.node):
        if node.op_type == "GridSample":
            pinned.add(index)
            todo.append(node.input[1])
    while todo:
        index = producer.get(todo.pop(), -1)
        if index < 0 or index in pinned or graph.node[index].op_type in _HEAVY_OPS:
            continue
        pinned.add(index)
        todo.extend(graph.node[index].input)
    return pinned


def mixed_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float16 weights and activations, except `fp32_nodes`; inputs and outputs stay float32."""
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise TrtBuildError(f"{model.graph.name}: ONNX type inference failed ({exc}); build with --fp32") from exc
    graph = model.graph
    if any(node.op_type in _CONTROL_FLOW for node in graph.node):
        raise TrtBuildError(f"{graph.name}: control flow ops are not supported by the FP16 rewrite; build with --fp32")
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    elem.update({t.name: t.data_type for t in graph.initializer})
    pinned = fp32_nodes(graph)

    def wants(index: int, slot: int) -> int:
        node = graph.node[index]
        fp32 = index in pinned or slot in _FP32_ONLY_INPUTS.get(node.op_type, ())
        return TensorProto.FLOAT if fp32 else TensorProto.FLOAT16

    # initializers read only as float16 are stored as float16; the others stay float32 and get a Cast
    slots: dict[str, set[int]] = {}
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            slots.setdefault(name, set()).add(wants(index, slot))
    outputs = {v.name for v in graph.output}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and slots.get(init.name) == {TensorProto.FLOAT16} and init.name not in outputs:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
            elem[init.name] = TensorProto.FLOAT16
    for value in graph.input:  # old exports also list their initializers as graph inputs
        if elem.get(value.name) == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16

    nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    for index, node in enumerate(graph.node):
        half = index not in pinned
        for slot, name in enumerate(node.input):
            have = elem.get(name)
            if have not in (TensorProto.FLOAT, TensorProto.FLOAT16):
                continue
            want = wants(index, slot)
            if have != want:
                if (name, want) not in casts:
                    casts[(name, want)] = f"{name}__as_{'fp16' if want == TensorProto.FLOAT16 else 'fp32'}"
                    nodes.append(helper.make_node("Cast", [name], [casts[(name, want)]], to=want))
                node.input[slot] = casts[(name, want)]
        if half:
            _retype_half(node)
        for name in node.output:
            if elem.get(name) == TensorProto.FLOAT:
                elem[name] = TensorProto.FLOAT16 if half else TensorProto.FLOAT
        nodes.append(node)

    for out in graph.output:  # the contract's I/O is float32: rename the half tensor and cast it back
        if out.type.tensor_type.elem_type == TensorProto.FLOAT and elem.get(out.name) == TensorProto.FLOAT16:
            inner = f"{out.name}__fp16"
            for node in nodes:
                node.input[:] = [inner if n == out.name else n for n in node.input]
                node.output[:] = [inner if n == out.name else n for n in node.output]
            nodes.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        message = str(exc).splitlines()[0]
        raise TrtBuildError(f"{graph.name}: the FP16 rewrite gave an invalid graph ({message}); build with --fp32") from exc
    return model


def _retype_half(node: onnx.NodeProto) -> None:
    """Ops whose float output type comes from an attribute rather than an input."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))


def parse_onnx(trt: Any, model_bytes: bytes, name: str) -> tuple[Any, Any, Any]:
    """(builder, network, parser) for a serialized ONNX model; any parser error raises TrtParseError.

    The process's one TensorRT logger is emptied first, so its errors are this build's. Networks are strongly
    typed without a flag on TensorRT 11 (MIN_TENSORRT), which is what the FP16 rewrite relies on.
    """
    logger = trt_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model_bytes)
    if not ok or parser.num_errors:
        problems = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            where = f"node {error.node()} {error.node_name()!r} ({error.node_operator()})" if error.node() >= 0 else "graph"
            problems.append(f"{where}: {error.desc()}")
        detail = "; ".join(problems) or "no detail given"
        raise TrtParseError(
            f"{name}: TensorRT's ONNX parser rejected it: {detail}; re-export it with `python -m export onnx` "
            "(opset 20) or install a TensorRT that supports these ops"
        )
    return builder, network, parser


def check_parses(onnx_path: Path, trt: Any, precision: str = "fp32") -> int:
    """Parse (as it would be built) with TensorRT's ONNX parser; the number of layers, or TrtParseError."""
    onnx_path = Path(onnx_path)
    _, network, _ = parse_onnx(trt, _model_bytes(onnx_path, engine_precision(onnx_path.stem, precision)), onnx_path.name)
    return network.num_layers


def _model_bytes(onnx_path: Path, precision: str) -> bytes:
    model = onnx.load(str(onnx_path))
    return (mixed_fp16(model) if precision == "fp16" else model).SerializeToString()


def check_static(network: Any, model: str) -> None:
    """Engines are static (the export fixes every input shape, face models included): say so for an old folder."""
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d < 0 for d in tensor.shape):
            raise TrtBuildError(
                f"{model}: input {tensor.name!r} has dynamic dims {tuple(tensor.shape)}; engines are static: "
                "re-export the models folder with `python -m export onnx --force`"
            )


def _timing_cache(config: Any, path: Path | None) -> Any:
    """The timing cache from `path` (if any) set on the config; a corrupt, truncated or foreign file is logged
    and ignored (the build starts from an empty cache and rewrites the file), never a failed build."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return cache
        except (RuntimeError, TypeError, ValueError) as exc:  # what the bindings raise for a bad buffer
            log.debug("timing cache %s rejected: %s", path, exc)
        log.warning("timing cache %s is unreadable or from another TensorRT/GPU; starting an empty one", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _progress_monitor(trt: Any, label: str) -> Any:
    """A tqdm bar per top-level build phase (TensorRT's IProgressMonitor)."""
    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.bars[phase_name] = tqdm(total=num_steps, desc=f"{label}: {phase_name}", leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.bars:
                self.bars[phase_name].update(step + 1 - self.bars[phase_name].n)
            return True

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def optimization_level(model: str) -> int | None:
    """The builder optimisation level of a model's engine: IMAGE_OP_LEVEL for the image ops, None (TensorRT's
    default) for the networks, whose build is once per GPU and whose speed is the frame rate."""
    return IMAGE_OP_LEVEL if is_image_op(model) else None


def builder_config(trt: Any, builder: Any, precision: str, level: int | None = None) -> Any:
    """The build settings. TensorRT lets FLOAT convolutions and matmuls round their inputs to TF32 (a 10-bit
    mantissa, as coarse as FP16's) unless told not to: an FP32 engine, chosen for precision, must not. `level` is
    the builder optimisation level (None: TensorRT's default)."""
    config = builder.create_builder_config()
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if level is not None:
        config.builder_optimization_level = level
    return config


def build_plan(trt: Any, onnx_path: Path, precision: str, timing_cache: Path | None = None, progress: bool = True) -> bytes:
    """Serialized engine for one ONNX model; the timing cache file is read and updated when given."""
    onnx_path = Path(onnx_path)
    model = onnx_path.stem
    # the network points into memory the parser owns (its weights): the parser must outlive the build
    builder, network, parser = parse_onnx(trt, _model_bytes(onnx_path, precision), onnx_path.name)
    check_static(network, model)
    config = builder_config(trt, builder, precision, optimization_level(model))
    _timing_cache(config, timing_cache)
    monitor = _progress_monitor(trt, model) if progress else None  # kept alive for the whole build
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    del parser  # the build is done: from here on the network's weights may go
    if plan is None:
        errors = trt_logger(trt).errors
        detail = errors[-1] if errors else "no error logged"
        raise TrtBuildError(f"{model}: TensorRT failed to build the engine ({detail}); try --fp32 or a newer TensorRT")
    if timing_cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _environment(trt: Any | None, gpu: GpuInfo | None) -> tuple[Any, GpuInfo]:
    trt = trt if trt is not None else import_tensorrt()
    if gpu is None:
        try:
            gpu = find_gpu()
        except NoGpuError as exc:
            raise TrtBuildError(
                f"{exc}: TensorRT engines are built on the GPU that runs them; "
                "build on that machine, or use the ONNX Runtime backends"
            ) from exc
    return trt, gpu


def ensure_engine(
    onnx_path: Path,
    cache_dir: Path,
    precision: str = "fp16",
    log: Log = print,
    *,
    trt: Any = None,
    gpu: GpuInfo | None = None,
    announce: Log | None = None,
) -> Path:
    """The cached engine for this ONNX file on this GPU and TensorRT, built first if missing or stale. The line
    saying a build starts goes to `announce` when given (a build the user must be told of), else to `log`."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise TrtBuildError(f"{onnx_path} is missing; run `python -m export onnx` first")
    trt, gpu = _environment(trt, gpu)
    model = onnx_path.stem
    key = engine_key(onnx_path, gpu, trt.__version__, precision)
    chosen = key.precision
    engine = engine_path(cache_dir, model, key)
    with _BUILD_LOCK:  # asked again inside: another thread may have just built this very engine
        reason = stale_reason(engine, key)
        if reason is None:
            log(f"{model}: {chosen} engine up to date ({engine})")
            return engine
        when = "a few seconds, once per image size" if is_image_op(model) else "this takes a while, once per GPU"
        (announce or log)(f"{model}: building the {chosen} engine ({reason}); {when}")
        start = time.perf_counter()
        plan = build_plan(trt, onnx_path, chosen, engine.parent / "timing.cache")
        store_engine(engine, key, plan)
    log(f"{model}: built in {time.perf_counter() - start:.1f} s, {len(plan) / 1e6:.1f} MB -> {engine}")
    return engine


def build_engines(
    onnx_dir: Path, out_dir: Path, precision: str = "fp16", log: Log = print, *, trt: Any = None, gpu: GpuInfo | None = None
) -> list[Path]:
    """Build (or find up to date) the engine of every model in the exported models folder."""
    onnx_dir = Path(onnx_dir)
    check_precision(precision)
    found = [onnx_dir / name for name in MODEL_FILES.values() if (onnx_dir / name).is_file()]
    if not found:
        raise TrtBuildError(f"{onnx_dir} holds none of the model files; run `python -m export onnx --out {onnx_dir}` first")
    trt, gpu = _environment(trt, gpu)
    log(f"TensorRT {trt.__version__} on {gpu.name} ({gpu.sm}), {precision}: {len(found)} models -> {out_dir}")
    return [ensure_engine(path, out_dir, precision, log, trt=trt, gpu=gpu) for path in found]


def open_trt_runner(
    onnx_path: Path,
    cache_dir: Path,
    precision: str = "fp16",
    log: Log = print,
    *,
    trt: Any = None,
    gpu: GpuInfo | None = None,
    announce: Log | None = None,
    **runner_options: Any,
) -> TrtRunner:
    """A TrtRunner on the cached engine; an engine TensorRT cannot deserialise is reported, dropped and rebuilt.
    `announce` is ensure_engine's; `runner_options` go to TrtRunner (cuda=, stream=, cuda_graph=)."""
    trt, gpu = _environment(trt, gpu)
    engine = ensure_engine(onnx_path, cache_dir, precision, log, trt=trt, gpu=gpu, announce=announce)
    try:
        return TrtRunner(engine, trt=trt, **runner_options)
    except StaleEngineError as exc:
        log(f"{exc}; rebuilding it")
        forget_engine(engine)
        engine = ensure_engine(onnx_path, cache_dir, precision, log, trt=trt, gpu=gpu, announce=announce)
        return TrtRunner(engine, trt=trt, **runner_options)

