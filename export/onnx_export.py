"""Export every LivePortrait network to ONNX (opset 20, static batch-1 shapes) and verify it against PyTorch.

Opset 20 is the first with 5-D GridSample, which W needs (tests/test_gridsample.py shows older opsets fail).
Verification runs each file in ONNX Runtime CPU on random inputs drawn with another seed than the tracing
inputs, so a graph that baked the tracing inputs in as constants fails it; it compares on those inputs only.
The face models get static input shapes (TensorRT builds static engines) and are checked against the originals.
W and G are also written as CPU graphs (engines.layout.CPU_ONNX) for the CPU backends: Winograd convolutions
(export.winograd) and, for W, the 7x7x7 convolution in the Fourier domain (export.fft_conv) and gathers in place of
the 5-D GridSample OpenVINO cannot read; each is checked
against the native PyTorch module like every file. The native graphs stay for the GPU backends.
Everything is written into a staging folder inside the models folder and moved in only once all of it is
verified, so a failed or interrupted export never leaves wrong files where the app loads them.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import onnx
import torch
from torch import nn

from export.checkpoints import GET_WEIGHTS, CheckpointError, folder_arch, load_all
from export.config import ArchConfig
from engines.layout import CPU_ONNX, FACE_INPUT_SHAPES, FACE_MODELS, FACE_ONNX, MODEL_FILES, NETWORK_ONNX
from export.networks import NETWORK_IO, example_inputs, fold_spectral_norm
from export.fft_conv import fft_convs
from export.winograd import winograd_convs

OPSET = 20
#: max abs error / max abs reference above which an exported file is rejected
REL_TOLERANCE = 1e-4
#: seeds of the tracing inputs and of the (different) verification inputs
TRACE_SEED, VERIFY_SEED = 0, 1


class ExportError(RuntimeError):
    """The export cannot proceed or produced a wrong file; the message names the problem and the fix."""


class VerificationError(ExportError):
    """An exported file disagrees with its PyTorch module beyond REL_TOLERANCE."""


@dataclass(frozen=True)
class VerifyRow:
    """One output of one network: how far ONNX Runtime is from PyTorch."""

    network: str
    output: str
    max_abs_err: float
    rel_err: float

    @property
    def ok(self) -> bool:
        return self.rel_err <= REL_TOLERANCE


def prepare_for_export(module: nn.Module, name: str) -> nn.Module:
    """Fold G's spectral norm (no sigma math in the graph) and make W return `out` only, as the contract says."""
    if name == "spade_generator":
        fold_spectral_norm(module)
    if name == "warping_module":
        module.out_only = True
    return module.eval()


def export_network(module: nn.Module, name: str, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Trace `module` on `inputs` into `path` with the contract's input/output names, then run onnx.checker."""
    input_names, output_names = NETWORK_IO[name]
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of dynamo, which cannot yet export 5-D grid_sample
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # InstanceNorm always normalises by the input's own statistics, so "exported with train=True" is right
        warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
        torch.onnx.export(
            module, inputs, str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=list(input_names), output_names=list(output_names),
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"{name}: the exported ONNX graph is invalid ({str(exc).strip().splitlines()[0]}); "
            "install the torch and onnx versions of requirements-export.txt and export again"
        ) from exc


def reference_outputs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, ...]:
    """What the exported files are checked against: the module in float64. PyTorch's own float32 kernels differ
    from it by as much as ONNX Runtime's do (1.2e-4 of the official-size SPADE generator's output on an AVX2 EPYC,
    against 3e-5 for ONNX Runtime), which would fail a correct export on some CPUs. Modules with 3-D convolutions
    stay float32: PyTorch's float64 Conv3d unfolds its whole input (25.5 GB for W's 7x7x7 mask convolution)."""
    dtype = torch.float32 if any(isinstance(m, nn.Conv3d) for m in module.modules()) else torch.float64
    with torch.no_grad():
        out = copy.deepcopy(module).to(dtype)(*(t.to(dtype) if t.is_floating_point() else t for t in inputs))
    return tuple(t.numpy() for t in ((out,) if isinstance(out, torch.Tensor) else out))


def verify_network(
    module: nn.Module, name: str, path: Path, inputs: tuple[torch.Tensor, ...],
    reference: tuple[np.ndarray, ...] | None = None,
) -> list[VerifyRow]:
    """Run ONNX Runtime CPU on `inputs` and compare with the module's `reference` outputs on them (computed when
    not given); one row per output."""
    import onnxruntime as ort

    input_names, output_names = NETWORK_IO[name]
    if reference is None:
        reference = reference_outputs(module, inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(output_names), {n: t.numpy() for n, t in zip(input_names, inputs)})
    rows = []
    for output, want, have in zip(output_names, reference, got):
        if want.shape != have.shape:
            raise VerificationError(f"{name}/{output}: ONNX shape {have.shape} differs from PyTorch {want.shape}")
        max_abs_err = float(np.abs(have - want).max())
        rows.append(VerifyRow(name, output, max_abs_err, max_abs_err / max(float(np.abs(want).max()), 1e-12)))
    return rows


def format_table(rows: list[VerifyRow]) -> str:
    """The verification table as markdown, one row per network output."""
    lines = ["| network | output | max abs err | rel err |", "|---|---|---|---|"]
    lines += [f"| {r.network} | {r.output} | {r.max_abs_err:.3e} | {r.rel_err:.3e} |" for r in rows]
    return "\n".join(lines)


def _prepare_out_dir(out_dir: Path, overwrite: bool, file_names: list[str]) -> None:
    """Create the folder, prove it is writable, and refuse to clobber earlier files unless asked."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise ExportError(
            f"cannot write to the models folder {out_dir} ({exc.strerror or exc}); choose a writable folder with --out"
        ) from exc
    existing = [name for name in file_names if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{out_dir} already holds {len(existing)} model file(s) ({', '.join(existing)}); pass --force to replace them"
        )


def _face_model_sources(weights_dir: Path) -> dict[str, Path]:
    """Source path of each face model; a missing one is reported before any export work starts."""
    sources = {name: weights_dir / rel for name, rel in FACE_MODELS.items()}
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise CheckpointError(
            f"face model {missing[0]} is missing; get the weights with `{GET_WEIGHTS.format(dir=weights_dir)}"
        )
    return sources


def check_rows(rows: list[VerifyRow]) -> None:
    """Raise naming every network output whose relative error is above REL_TOLERANCE."""
    bad = [row for row in rows if not row.ok]
    if bad:
        raise VerificationError(
            "ONNX Runtime disagrees with PyTorch for "
            + ", ".join(f"{r.network}/{r.output} (rel err {r.rel_err:.1e})" for r in bad)
            + f" above {REL_TOLERANCE:g}; the export is wrong, do not use these files"
        )


def static_face_model(source: Path, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The face model with its one image input fixed to `shape` and shapes re-inferred (TensorRT builds static
    engines); the nodes and weights are the release file's."""
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises protobuf's DecodeError and others for a damaged file
        raise ExportError(f"face model {source} cannot be read ({type(exc).__name__}); delete it and get it again") from exc
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]  # old files also list weights as inputs
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(fixed) != len(shape) or any(f is not None and f != want for f, want in zip(fixed, shape)):
        found = ", ".join(f"{v.name} {[d.dim_value or d.dim_param or '?' for d in v.type.tensor_type.shape.dim]}" for v in inputs)
        raise ExportError(
            f"face model {source} takes {found}, not one image input of shape {list(shape)}; "
            "it is not the release file: delete it and get the weights again"
        )
    for dim, size in zip(dims, shape):
        dim.Clear()
        dim.dim_value = size
    del model.graph.value_info[:]  # inferred afresh from the static input
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"face model {source} is invalid with the static input {list(shape)} ({str(exc).strip().splitlines()[0]}); "
            "delete it and get the weights again"
        ) from exc
    return model


def verify_face_model(original: Path, static: Path, name: str) -> None:
    """The static file computes what the release file computes, on one random image of the static shape."""
    import onnxruntime as ort

    shape = FACE_INPUT_SHAPES[name]
    image = np.random.default_rng(VERIFY_SEED).random(shape, dtype=np.float32)
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (original, static)]
    want_all, have_all = (s.run(None, {s.get_inputs()[0].name: image}) for s in sessions)
    for want, have, output in zip(want_all, have_all, sessions[1].get_outputs()):
        scale = max(float(np.abs(want).max()), 1e-12)
        if want.shape != have.shape or float(np.abs(have - want).max()) / scale > REL_TOLERANCE:
            raise VerificationError(
                f"face model {name}/{output.name} with a static input differs from {original}; "
                "the export is wrong, do not use these files"
            )


#: a Winograd tile per Conv node name (None: the convolution stays direct)
TileChoice = Callable[[str], int | None]


class CpuGraphPlan(NamedTuple):
    """How a CPU graph computes its convolutions: 3x3 ones as Winograd by `tile_for`, large 3-D ones in the
    Fourier domain when `fourier`."""

    label: str
    tile_for: TileChoice
    fourier: bool = False


#: the plans of each CPU graph, fastest first; the export keeps the first that passes verification.
#: F(4, 3) rounds about ten times more than a direct convolution, and in G the main path's convolutions feed six
#: residual blocks where that adds up: F(4, 3) everywhere is 1.3e-4 of the image (fake official weights, against
#: float64 PyTorch; 1e-4 allowed). So G's first plan uses F(4, 3) in the SPADE modulations, the two upsampling
#: blocks and the second convolution of each residual block (8.4e-5; 5.5 s in OpenVINO), the next one in the
#: modulations only (3.6e-5; 5.9 s), then F(2, 3) everywhere, then none. W passes with F(4, 3) everywhere and its
#: mask convolution in the Fourier domain (1.8e-6).
CPU_GRAPH_PLANS: dict[str, list[CpuGraphPlan]] = {
    "warping_module": [
        CpuGraphPlan("F(4,3)", lambda node: 4, fourier=True),
        CpuGraphPlan("F(2,3)", lambda node: 2, fourier=True),
        CpuGraphPlan("direct", lambda node: None),
    ],
    "spade_generator": [
        CpuGraphPlan("F(4,3) in the SPADE modulations, the upsampling blocks and each block's conv_1, F(2,3) elsewhere",
                     lambda node: 4 if any(part in node for part in ("/mlp_", "/up_", "/conv_1/")) else 2),
        CpuGraphPlan("F(4,3) in the SPADE modulations, F(2,3) elsewhere", lambda node: 4 if "/mlp_" in node else 2),
        CpuGraphPlan("F(2,3)", lambda node: 2),
        CpuGraphPlan("direct", lambda node: None),
    ],
}


def export_cpu_graph(
    module: nn.Module, name: str, cfg: ArchConfig, native: Path, path: Path,
    reference: tuple[np.ndarray, ...] | None, log: Callable[[str], None],
) -> list[VerifyRow]:
    """Write the CPU graph of `name` (engines.layout.CPU_ONNX) to `path`: the native file `native` (for W traced
    again from a copy of `module` with gathers for its grid samples) with its large convolutions rewritten
    (export.winograd, export.fft_conv), by the first of CPU_GRAPH_PLANS that passes verification against the
    module's `reference` outputs on the verification inputs (the first plan unverified when `reference` is None)."""
    if name == "warping_module":
        export_network(copy.deepcopy(module).use_gather_sampling(), name, example_inputs(name, cfg, seed=TRACE_SEED), path)
        native = path
    graph = onnx.load(str(native))
    for plan in CPU_GRAPH_PLANS[name]:
        model, fourier = fft_convs(graph) if plan.fourier else (graph, {})
        model, counts = winograd_convs(model, plan.tile_for)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        if reference is None:
            return []
        rows = verify_network(module, name, path, example_inputs(name, cfg, seed=VERIFY_SEED), reference)
        rows = [dataclasses.replace(row, network=f"{name} (CPU graph)") for row in rows]
        worst = max(row.rel_err for row in rows)
        if worst <= REL_TOLERANCE:
            in_fourier = f" and {sum(fourier.values())} in the Fourier domain" if plan.fourier else ""
            log(f"{name} for the CPU: {sum(counts.values())} convolutions as Winograd{in_fourier}, {plan.label} "
                f"(rel err {worst:.1e})")
            return rows
        log(f"{name} for the CPU: the plan {plan.label} is {worst:.1e} from PyTorch, above {REL_TOLERANCE:g}; trying the next")
    return rows  # the direct plan's rows: check_rows reports them


def _write_models(
    modules: dict[str, nn.Module], faces: dict[str, Path], staging: Path, out_dir: Path, cfg: ArchConfig,
    verify: bool, cpu_graphs: bool, log: Callable[[str], None],
) -> list[VerifyRow]:
    """Export, rewrite and (if asked) verify every file into `staging`; the verification rows."""
    rows: list[VerifyRow] = []
    for name, module in modules.items():
        path = staging / NETWORK_ONNX[name]
        export_network(module, name, example_inputs(name, cfg, seed=TRACE_SEED), path)
        log(f"exported {name} -> {out_dir / NETWORK_ONNX[name]} ({path.stat().st_size / 1e6:.1f} MB)")
        inputs = example_inputs(name, cfg, seed=VERIFY_SEED)
        reference = reference_outputs(module, inputs) if verify else None
        if verify:
            rows += verify_network(module, name, path, inputs, reference)
        cpu_name = CPU_ONNX.get(NETWORK_ONNX[name])
        if cpu_graphs and cpu_name:
            rows += export_cpu_graph(module, name, cfg, path, staging / cpu_name, reference, log)
            size = (staging / cpu_name).stat().st_size / 1e6
            log(f"exported {name} for the CPU backends -> {out_dir / cpu_name} ({size:.1f} MB)")
    for name, source in faces.items():
        path = staging / FACE_ONNX[name]
        onnx.save(static_face_model(source, FACE_INPUT_SHAPES[name]), str(path))
        if verify:
            verify_face_model(source, path, name)
    log(f"face models with static inputs: {', '.join(FACE_ONNX.values())}")
    if verify:
        log(format_table(rows))
        check_rows(rows)
    return rows


def export_models(
    weights_dir: Path,
    out_dir: Path,
    verify: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    cpu_graphs: bool = True,
) -> list[VerifyRow]:
    """Write the models folder: one ONNX per network plus the face models, and with `cpu_graphs` the CPU graphs of
    W and G (engines.layout.CPU_ONNX); return the verification rows."""
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    cfg = folder_arch(weights_dir)
    faces = _face_model_sources(weights_dir)
    file_names = [*MODEL_FILES.values(), *(CPU_ONNX.values() if cpu_graphs else [])]
    _prepare_out_dir(out_dir, overwrite, file_names)
    # load everything before writing: a missing or mismatched checkpoint must not leave a half-written folder
    modules = {name: prepare_for_export(module, name) for name, module in load_all(weights_dir).items()}
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))  # same file system: os.replace is atomic
    try:
        rows = _write_models(modules, faces, staging, out_dir, cfg, verify, cpu_graphs, log)
        for file_name in file_names:
            os.replace(staging / file_name, out_dir / file_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows
