"""Export every LivePortrait network to ONNX (opset 20, static batch-1 shapes) and verify it against PyTorch.

Opset 20 is the first with 5-D GridSample, which W needs (tests/test_gridsample.py shows older opsets fail).
Verification runs each file in ONNX Runtime CPU on fresh random inputs (not the tracing inputs), so a graph that
only replays the traced values would be caught.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from export.checkpoints import GET_WEIGHTS, CheckpointError, folder_arch, load_all
from export.layout import FACE_MODELS, FACE_ONNX, MODEL_FILES, NETWORK_ONNX
from export.networks import NETWORK_IO, example_inputs, fold_spectral_norm

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
    onnx.checker.check_model(str(path), full_check=True)


def verify_network(module: nn.Module, name: str, path: Path, inputs: tuple[torch.Tensor, ...]) -> list[VerifyRow]:
    """Run PyTorch and ONNX Runtime CPU on the same inputs; one row per output."""
    import onnxruntime as ort

    input_names, output_names = NETWORK_IO[name]
    with torch.no_grad():
        reference = module(*inputs)
    if isinstance(reference, torch.Tensor):
        reference = (reference,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(output_names), {n: t.numpy() for n, t in zip(input_names, inputs)})
    rows = []
    for output, want, have in zip(output_names, reference, got):
        want = want.numpy()
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


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create the folder, prove it is writable, and refuse to clobber earlier files unless asked."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise ExportError(
            f"cannot write to the models folder {out_dir} ({exc.strerror or exc}); choose a writable folder with --out"
        ) from exc
    existing = [name for name in MODEL_FILES.values() if (out_dir / name).exists()]
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


def export_models(
    weights_dir: Path,
    out_dir: Path,
    verify: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> list[VerifyRow]:
    """Write the models folder: one ONNX per network plus the face models; return the verification rows."""
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    cfg = folder_arch(weights_dir)
    faces = _face_model_sources(weights_dir)
    _prepare_out_dir(out_dir, overwrite)
    # load everything before writing: a missing or mismatched checkpoint must not leave a half-written folder
    modules = {name: prepare_for_export(module, name) for name, module in load_all(weights_dir).items()}

    rows: list[VerifyRow] = []
    for name, module in modules.items():
        path = out_dir / NETWORK_ONNX[name]
        export_network(module, name, example_inputs(name, cfg, seed=TRACE_SEED), path)
        log(f"exported {name} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
        if verify:
            rows += verify_network(module, name, path, example_inputs(name, cfg, seed=VERIFY_SEED))
    for name, source in faces.items():
        shutil.copyfile(source, out_dir / FACE_ONNX[name])
    log(f"copied face models: {', '.join(FACE_ONNX.values())}")

    if verify:
        log(format_table(rows))
        check_rows(rows)
    return rows
