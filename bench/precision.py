"""Error of each CPU configuration against fp32, next to that of the official default precision.

`python -m bench.precision --models DIR [--weights W]` prints, for the motion extractor, the warping module, the
SPADE generator and whole frames (motion + warp -> decode), the mean error against fp32 of ONNX Runtime, OpenVINO
f32 (and bf16 where the CPU has it) and of the official default: fp16 autocast on the GPU, emulated here with
PyTorch (every convolution and linear layer gets fp16-rounded weights and inputs and an fp16-rounded output, as
cuDNN's fp16 kernels return; the rest stays fp32, so the emulation slightly flatters fp16). bf16 is emulated the
same way to show what an AVX512-BF16/AMX CPU would cost in accuracy.

Error = mean |got - fp32| / max |fp32| per output (for the frame: the decoded image in [0, 1], so 1/255 = 0.0039).
The fp32 reference of the ONNX configurations is ONNX Runtime without denormal flushing (today's CPU path, within
3e-5 of PyTorch); that of the emulated ones is PyTorch fp32 on the same weights as the emulation.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from engines.base import Runner
from engines.layout import NETWORK_ONNX
from export.config import OFFICIAL, REDUCED, ArchConfig
from export.networks import NETWORK_IO, example_inputs

#: the networks that run once per frame (the appearance features are made once per portrait)
FRAME_NETWORKS = ("motion_extractor", "warping_module", "spade_generator")
Feeds = dict[str, np.ndarray]
#: runs one network on named inputs: (network name, feeds) -> outputs by name
NetworkCall = Callable[[str, Feeds], Feeds]


def folder_cfg(models_dir: Path) -> ArchConfig:
    """The architecture of a models folder, read from the warping module's feature volume width."""
    import onnx

    model = onnx.load(str(Path(models_dir) / NETWORK_ONNX["warping_module"]), load_external_data=False)
    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    return next(cfg for cfg in (OFFICIAL, REDUCED) if cfg.reshape_channel == channels)


def torch_modules(weights_dir: Path | None, cfg: ArchConfig) -> tuple[dict[str, nn.Module], str]:
    """The frame networks as PyTorch fp32 modules (as exported: G's spectral norm folded, W returning `out` only)
    and where their weights came from; without a weights folder, fake weights of the same architecture."""
    from export.checkpoints import load_network
    from export.fake_weights import write_fake_weights
    from export.onnx_export import prepare_for_export

    with tempfile.TemporaryDirectory(prefix="bench-weights-") as fake:
        source = f"weights {weights_dir}"
        if weights_dir is None:
            weights_dir, source = Path(fake), "fake weights of the same architecture (pass --weights for real ones)"
            write_fake_weights(weights_dir, seed=0, reduced=cfg == REDUCED)
        modules = {name: prepare_for_export(load_network(weights_dir, name, cfg), name) for name in FRAME_NETWORKS}
    return modules, source


def frame_inputs(cfg: ArchConfig, seed: int = 1) -> dict[str, Feeds]:
    """The inputs of one frame's networks: a driving crop for the motion extractor, a feature volume and two
    keypoint sets for the warping module (the generator reads the warping module's output)."""
    inputs = {}
    for name in ("motion_extractor", "warping_module"):
        tensors = example_inputs(name, cfg, seed=seed)
        inputs[name] = {n: t.numpy() for n, t in zip(NETWORK_IO[name][0], tensors)}
    return inputs


def run_frame(call: NetworkCall, inputs: Mapping[str, Feeds]) -> dict[str, Feeds]:
    """Outputs of one frame: motion, then warp -> decode chained (the generator gets this call's own warp)."""
    outputs = {name: call(name, feeds) for name, feeds in inputs.items()}
    outputs["spade_generator"] = call("spade_generator", {"feature": outputs["warping_module"]["out"]})
    return outputs


def runner_call(runners: Mapping[str, Runner]) -> NetworkCall:
    """A NetworkCall over opened runners (the app's backends flush denormals)."""
    return denormals(lambda name, feeds: runners[name].infer(feeds), flush=True)


def denormals(call: NetworkCall, flush: bool) -> NetworkCall:
    """`call` with the calling thread's denormal flushing (x86 FTZ/DAZ) set as its configuration has it in a
    process of its own: creating a flushing ONNX Runtime session also sets it on the creating thread, which also
    computes, and would otherwise flush the unflushed configurations' share of the work too."""

    def wrapped(name: str, feeds: Feeds) -> Feeds:
        torch.set_flush_denormal(flush)
        return call(name, feeds)

    return wrapped


def torch_call(modules: Mapping[str, nn.Module]) -> NetworkCall:
    """A NetworkCall over PyTorch modules (fp32, or inside `rounded_layers`)."""

    def call(name: str, feeds: Feeds) -> Feeds:
        input_names, output_names = NETWORK_IO[name]
        with torch.no_grad():
            out = modules[name](*(torch.from_numpy(feeds[n]) for n in input_names))
        out = (out,) if isinstance(out, torch.Tensor) else out
        return {n: t.float().numpy() for n, t in zip(output_names, out)}

    return denormals(call, flush=False)  # the official code does not flush


@contextmanager
def rounded_layers(modules: Mapping[str, nn.Module], dtype: torch.dtype) -> Iterator[None]:
    """Emulate autocast to `dtype` on the CPU: every conv and linear layer computes on `dtype`-rounded weights and
    inputs (accumulating in fp32) and returns a `dtype`-rounded output. The weights are restored on exit."""
    layers = [m for module in modules.values() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))]
    saved = [(layer, layer.weight.data, None if layer.bias is None else layer.bias.data) for layer in layers]

    def round_input(_: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(a.to(dtype).float() for a in args)

    def round_output(_: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        return out.to(dtype).float()

    hooks = []
    try:
        for layer, weight, bias in saved:
            layer.weight.data = weight.to(dtype).float()
            if bias is not None:
                layer.bias.data = bias.to(dtype).float()
            hooks += [layer.register_forward_pre_hook(round_input), layer.register_forward_hook(round_output)]
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for layer, weight, bias in saved:
            layer.weight.data = weight
            if bias is not None:
                layer.bias.data = bias


def error(reference: np.ndarray, got: np.ndarray) -> float:
    """mean |got - reference| / max |reference|."""
    return float(np.abs(got - reference).mean() / max(float(np.abs(reference).max()), 1e-12))


def measure(call: NetworkCall, reference: Mapping[str, Feeds], inputs: Mapping[str, Feeds]) -> dict[str, float]:
    """Errors of one configuration: per network (the largest of its outputs) on the reference's own inputs, so
    they do not compound, and for the frame, which chains the call's own warp into its own generator."""
    frame = run_frame(call, inputs)
    outputs = {**frame, "spade_generator": call("spade_generator", {"feature": reference["warping_module"]["out"]})}
    per = {name: max(error(reference[name][o], outputs[name][o]) for o in reference[name]) for name in FRAME_NETWORKS}
    per["frame"] = error(reference["spade_generator"]["image"], frame["spade_generator"]["image"])
    return per


def ort_reference(models_dir: Path) -> NetworkCall:
    """ONNX Runtime fp32 without denormal flushing: today's CPU path, the fp32 reference of the ONNX configs."""
    import onnxruntime as ort

    from engines.ort import session_options

    sessions = {
        name: ort.InferenceSession(str(Path(models_dir) / NETWORK_ONNX[name]), session_options(flush_denormals=False),
                                   providers=["CPUExecutionProvider"])
        for name in FRAME_NETWORKS
    }

    def call(name: str, feeds: Feeds) -> Feeds:
        values = sessions[name].run(None, feeds)
        return {o.name: v for o, v in zip(sessions[name].get_outputs(), values)}

    return denormals(call, flush=False)


def open_frame_runners(models_dir: Path, backend: str) -> dict[str, Runner]:
    """The app's runners of the frame networks on one backend."""
    from engines import open_runners

    return open_runners({name: Path(models_dir) / NETWORK_ONNX[name] for name in FRAME_NETWORKS}, backend)


def cpu_backends(models_dir: Path, log: Callable[[str], None] = print) -> list[str]:
    """The app's CPU backends that can run the folder here: ONNX Runtime, then OpenVINO f32 and bf16 (each
    skipped with the reason when it cannot)."""
    from engines.select import OPENVINO_PRECISIONS, openvino_problem

    found = ["cpu"]
    for backend, precision in OPENVINO_PRECISIONS.items():
        problem = openvino_problem(models_dir, precision)
        if problem:
            log(f"  {backend} skipped: {problem}")
        else:
            found.append(backend)
    return found


def emulated_errors(modules: Mapping[str, nn.Module], inputs: Mapping[str, Feeds]) -> dict[str, dict[str, float]]:
    """Errors of fp16 autocast (the official default) and of bf16, emulated with PyTorch, against PyTorch fp32."""
    reference = run_frame(torch_call(modules), inputs)
    found = {}
    for label, dtype in (("PyTorch fp16 autocast (official default, emulated)", torch.float16),
                         ("PyTorch bf16 (emulated)", torch.bfloat16)):
        with rounded_layers(modules, dtype):
            found[label] = measure(torch_call(modules), reference, inputs)
    return found


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown: one row per configuration, one column per network and the frame."""
    columns = [*FRAME_NETWORKS, "frame"]
    lines = ["| configuration | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(f"{row[c]:.2e}" for c in columns) + " |" for label, row in rows.items()]
    return "\n".join(lines)


def run(models_dir: Path, weights_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Every configuration's errors, by label."""
    cfg = folder_cfg(models_dir)
    inputs = frame_inputs(cfg)
    reference = run_frame(ort_reference(models_dir), inputs)
    rows: dict[str, dict[str, float]] = {}
    for backend in cpu_backends(models_dir, log):
        runners = open_frame_runners(models_dir, backend)
        try:
            label = runners["warping_module"].backend
            rows[label] = measure(runner_call(runners), reference, inputs)
        finally:
            for runner in runners.values():
                runner.close()
        log(f"  {label}: frame error {rows[label]['frame']:.2e}")
    modules, source = torch_modules(weights_dir, cfg)
    log(f"  PyTorch: {source}")
    rows.update(emulated_errors(modules, inputs))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="exported models folder")
    parser.add_argument("--weights", type=Path, help="the weights the folder was exported from (for PyTorch)")
    args = parser.parse_args(argv)
    try:
        rows = run(args.models, args.weights)
    except (RuntimeError, OSError, ValueError) as exc:  # our errors carry a one-line message for the user
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print("error: mean |x - fp32| / max |fp32| (frame: the decoded image in [0, 1]; 1/255 = 3.9e-03)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
