"""`python -m export {download,fake-weights,onnx,trt}`: get weights, make fake ones, export ONNX, build engines.

Every expected failure (missing weights, unwritable folder, offline hub, corrupt file) ends in one line on stderr
and exit status 1, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch the official LivePortrait weights through huggingface_hub (sha256-verified)")
    p.add_argument("--to", type=Path, required=True, help="weights folder (release layout)")

    p = sub.add_parser("fake-weights", help="write random weights in the official layout (tests, CI, demos)")
    p.add_argument("--to", type=Path, required=True, help="weights folder to write (release layout)")
    p.add_argument("--seed", type=int, default=0, help="random seed, so the same seed gives the same weights")
    p.add_argument("--reduced", action="store_true", help="reduced-width architecture (fast on CPU)")
    p.add_argument("--force", action="store_true", help="replace files that already exist")

    p = sub.add_parser("onnx", help="export every network to ONNX and verify it against PyTorch")
    p.add_argument("--weights", type=Path, required=True, help="weights folder (from download or fake-weights)")
    p.add_argument("--out", type=Path, required=True, help="models folder the app runs from")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--force", action="store_true", help="replace ONNX files that already exist")
    p.add_argument("--cpu-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="also write warping_module_cpu.onnx and spade_generator_cpu.onnx, the two heavy networks "
                   "with Winograd convolutions (and W with gathers for its 5-D grid samples), which the CPU "
                   "backends read: OpenVINO needs them, ONNX Runtime runs faster with them (default: on)")

    p = sub.add_parser("trt", help="build TensorRT engines from the ONNX models (needs an NVIDIA GPU)")
    p.add_argument("--onnx", type=Path, required=True, help="models folder written by the onnx command")
    p.add_argument("--out", type=Path, required=True, help="engine cache folder")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="half precision where it is safe (the default)")
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="full precision")
    p.set_defaults(precision="fp16")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "download":
        from export.download import download

        download(args.to)
        print(f"weights ready in {args.to}; next: python -m export onnx --weights {args.to} --out models")
    elif args.command == "fake-weights":
        from export.fake_weights import write_fake_weights

        files = write_fake_weights(args.to, seed=args.seed, reduced=args.reduced, overwrite=args.force)
        print(f"wrote {len(files)} fake weight files to {args.to}")
    elif args.command == "onnx":
        from export.onnx_export import export_models

        export_models(args.weights, args.out, verify=not args.no_verify, overwrite=args.force,
                      cpu_graphs=args.cpu_graphs)
        print(f"models ready in {args.out}")
    elif args.command == "trt":
        from engines.trt_build import build_engines

        build_engines(args.onnx, args.out, precision=args.precision)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # the runtime requirements lack the export tools
        print(f"error: `python -m export {args.command}` needs the {exc.name} package; install the export tools "
              "with: pip install -r requirements-export.txt", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, ValueError) as exc:  # our errors carry a one-line message for the user
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
