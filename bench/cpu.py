"""CPU speed per network and per frame, against the project's own PyTorch fp32 modules.

`python -m bench.cpu --models DIR [--weights W] [--rounds N]` times, on the same inputs, every CPU configuration:
ONNX Runtime on the native graphs without denormal flushing (this project before), the `cpu` backend (ONNX
Runtime, denormals flushed, the CPU graphs with Winograd and Fourier-domain convolutions), OpenVINO f32 (`openvino`) and bf16
(`openvino-bf16`, where the CPU has it) on the CPU graphs, and PyTorch fp32 eager, the
stand-in for the official code (same architecture; the same weights with --weights, else fake ones: speed does
not depend on weight values). Runs are interleaved (each round runs every network once in every configuration,
so a change of load on a shared machine hits all alike); medians per network; a frame is motion + warp + decode.

It ends with one line: the speed-up per frame of the default CPU configuration (what `auto` picks without a GPU)
and of the best accurate one (the fastest whose frame error against fp32 is at most that of the official default
precision, fp16 autocast, emulated as bench.precision does), each with its mean frame error.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.precision import (
    FRAME_NETWORKS,
    Feeds,
    NetworkCall,
    cpu_backends,
    emulated_errors,
    folder_cfg,
    frame_inputs,
    measure,
    open_frame_runners,
    ort_reference,
    run_frame,
    runner_call,
    torch_call,
    torch_modules,
)
from engines.select import choose_backend

BEFORE = "onnxruntime-cpu, no denormal flush (before)"
TORCH = "PyTorch fp32 (official stand-in)"


def timed(configs: dict[str, NetworkCall], feeds: dict[str, Feeds], rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds per configuration and network, from `rounds` interleaved rounds."""
    times: dict[str, dict[str, list[float]]] = {label: {name: [] for name in FRAME_NETWORKS} for label in configs}
    for _ in range(rounds):
        for name in FRAME_NETWORKS:
            for label, call in configs.items():
                start = time.perf_counter()
                call(name, feeds[name])
                times[label][name].append(time.perf_counter() - start)
    return {label: {name: statistics.median(t) for name, t in per.items()} for label, per in times.items()}


def format_table(medians: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per network and the frame, one column per configuration, seconds (x PyTorch's speed)."""
    labels = list(medians)
    lines = ["| network | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name in (*FRAME_NETWORKS, "frame"):
        cells = []
        for label in labels:
            cell = medians[label][name]
            cells.append(f"{cell:.3f} s ({medians[TORCH][name] / cell:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(medians: dict[str, dict[str, float]], frame_errors: dict[str, float], default: str, bar: float) -> str:
    """The closing line: speed-up per frame of the default and of the best accurate configuration."""
    accurate = [label for label, err in frame_errors.items() if err <= bar]
    best = min(accurate, key=lambda label: medians[label]["frame"])
    speed = {label: medians[TORCH]["frame"] / medians[label]["frame"] for label in (default, best)}
    return (
        f"speed-up vs PyTorch fp32 per frame: default {speed[default]:.2f}x (mean error {frame_errors[default]:.1e}), "
        f"best accurate {speed[best]:.2f}x (mean error {frame_errors[best]:.1e})"
    )


def run(models_dir: Path, weights_dir: Path | None, rounds: int, log: Callable[[str], None] = print) -> str:
    """The table and the closing line."""
    cfg = folder_cfg(models_dir)
    inputs = frame_inputs(cfg)
    before = ort_reference(models_dir)
    reference = run_frame(before, inputs)
    configs: dict[str, NetworkCall] = {BEFORE: before}
    labels: dict[str, str] = {}  # backend name -> its runner's label
    for backend in cpu_backends(models_dir, log):
        runners = open_frame_runners(models_dir, backend)
        labels[backend] = runners["warping_module"].backend
        configs[labels[backend]] = runner_call(runners)
    modules, source = torch_modules(weights_dir, cfg)
    configs[TORCH] = torch_call(modules)
    log(f"PyTorch: {source}; {torch.get_num_threads()} threads")
    frame_errors = {label: measure(call, reference, inputs)["frame"] for label, call in configs.items() if label != TORCH}
    bar = emulated_errors(modules, inputs)["PyTorch fp16 autocast (official default, emulated)"]["frame"]
    log("frame error vs fp32: " + ", ".join(f"{label} {err:.1e}" for label, err in frame_errors.items())
        + f"; official default (fp16 autocast, emulated) {bar:.1e}")
    configs[TORCH](FRAME_NETWORKS[0], inputs[FRAME_NETWORKS[0]])  # PyTorch's warm-up; the others warmed up above
    feeds = {**inputs, "spade_generator": {"feature": reference["warping_module"]["out"]}}
    log(f"timing {rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    medians = timed(configs, feeds, rounds)
    for per in medians.values():
        per["frame"] = sum(per[name] for name in FRAME_NETWORKS)
    log(f"load average after: {os.getloadavg()[0]:.1f}")
    auto = choose_backend("auto", models_dir).name  # on a GPU machine: the CPU backend auto would fall back to
    default = labels[auto if auto in labels else "openvino" if "openvino" in labels else "cpu"]
    return format_table(medians) + "\n" + summary(medians, frame_errors, default, bar)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="exported models folder")
    parser.add_argument("--weights", type=Path, help="the weights the folder was exported from (for PyTorch)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        print(f"error: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 1
    try:
        print(run(args.models, args.weights, args.rounds))
    except (RuntimeError, OSError, ValueError) as exc:  # our errors carry a one-line message for the user
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
