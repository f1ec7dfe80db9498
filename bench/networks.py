"""Per-network CPU benchmark: median latency in ONNX Runtime and in PyTorch eager, and GFLOPs per call.

`python -m bench.networks --weights DIR [--preset official|reduced] [--repeat N]` (or `python bench/networks.py`).
Without --weights it benchmarks fake weights of the chosen preset, written to a temporary folder; latency does not
depend on the weight values.

FLOPs are counted by torch's FlopCounterMode, which covers convolutions and matrix products only; the 5-D
grid_sample of W is added analytically (8 corners x multiply-add per output element and channel). Norms,
activations, softmax and the Gaussian heatmaps are not counted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from export.checkpoints import folder_arch, load_network
from export.config import PRESETS, ArchConfig
from export.networks import NETWORK_IO, NETWORK_NAMES, example_inputs
from export.onnx_export import export_network, prepare_for_export

WARMUP = 2


@dataclass(frozen=True)
class BenchRow:
    """One network's cost: GFLOPs per call and median milliseconds per backend."""

    network: str
    gflops: float
    ort_ms: float
    torch_ms: float


def grid_sample_flops(input_shape: torch.Size, grid_shape: torch.Size, *args: object, out_shape: torch.Size,
                      **kwargs: object) -> int:
    """Trilinear sampling: 8 corners, one multiply-add each, per output element and channel."""
    return 2 * 8 * int(np.prod(out_shape))


def count_gflops(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Convolution, matmul and grid_sample GFLOPs of one forward call."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.grid_sampler_3d: grid_sample_flops})
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / 1e9


def median_ms(call: Callable[[], object], repeat: int) -> float:
    """Median wall time of `call` after WARMUP untimed calls."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_network(weights_dir: Path, name: str, cfg: ArchConfig, onnx_dir: Path, repeat: int) -> BenchRow:
    """Export one network, then time it in ORT CPU and PyTorch eager on the same batch-1 inputs."""
    import onnxruntime as ort

    module = prepare_for_export(load_network(weights_dir, name, cfg), name)
    inputs = example_inputs(name, cfg, seed=1)
    path = onnx_dir / f"{name}.onnx"
    export_network(module, name, example_inputs(name, cfg, seed=0), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in zip(NETWORK_IO[name][0], inputs)}

    def eager() -> object:
        with torch.no_grad():
            return module(*inputs)

    return BenchRow(
        network=name,
        gflops=count_gflops(module, inputs),
        ort_ms=median_ms(lambda: session.run(None, feeds), repeat),
        torch_ms=median_ms(eager, repeat),
    )


def format_rows(rows: list[BenchRow]) -> str:
    """Markdown table, with a total row for one whole frame's worth of every network."""
    lines = ["| network | GFLOPs | ORT CPU ms | PyTorch CPU ms |", "|---|---:|---:|---:|"]
    lines += [f"| {r.network} | {r.gflops:.4g} | {r.ort_ms:.2f} | {r.torch_ms:.2f} |" for r in rows]
    lines.append(
        f"| **all** | {sum(r.gflops for r in rows):.4g} | {sum(r.ort_ms for r in rows):.2f} "
        f"| {sum(r.torch_ms for r in rows):.2f} |"
    )
    return "\n".join(lines)


def run(weights_dir: Path, cfg: ArchConfig, repeat: int, log: Callable[[str], None] = print) -> list[BenchRow]:
    """Benchmark every network of `weights_dir`; log one line per network as it finishes."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as onnx_dir:
        for name in NETWORK_NAMES:
            rows.append(bench_network(weights_dir, name, cfg, Path(onnx_dir), repeat))
            log(f"  {name}: ORT {rows[-1].ort_ms:.2f} ms, PyTorch {rows[-1].torch_ms:.2f} ms")
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.networks", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights folder (release layout); default: fake weights")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="architecture (default: the weights' own, "
                        "or official for fake weights)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per network and backend (default 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.repeat < 1:
        print(f"error: --repeat must be at least 1, got {args.repeat}", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="bench-weights-") as fake_dir:
            weights = args.weights
            if weights is None:
                from export.fake_weights import write_fake_weights

                weights = Path(fake_dir)
                write_fake_weights(weights, seed=0, reduced=(args.preset == "reduced"))
            cfg = folder_arch(weights)
            if args.preset and PRESETS[args.preset] != cfg:
                print(f"error: {weights} holds weights of another architecture than --preset {args.preset}; "
                      "drop --preset or pass matching weights", file=sys.stderr)
                return 1
            import onnxruntime as ort

            print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, "
                  f"batch 1, median of {args.repeat} after {WARMUP} warm-up calls")
            rows = run(weights, cfg, args.repeat)
    except (RuntimeError, OSError, ValueError) as exc:  # our errors carry a one-line message for the user
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_rows(rows))
    print("GFLOPs: convolutions, matrix products and W's grid_sample (analytic); elementwise ops not counted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
