"""LivePortrait RT: `python main.py` opens the app; `render`, `template`, `edit`, `live` and `bench` are the other commands.

Expected failures (no models, no face, unreadable input, a file that would be overwritten) end in one line on
stderr and exit status 1; set LIVEPORTRAIT_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from dataclasses import fields

from engines.select import BACKENDS
from core.edit import EDIT_HELP, EDIT_RANGES, Edit
from core.options import ANIMATION_REGIONS, DRIVING_OPTIONS, OPTION_RANGES, ProcessOptions


def _common(suppress: bool) -> argparse.ArgumentParser:
    """--models and --backend, accepted before or after the command; after it, they only override."""
    parser = argparse.ArgumentParser(add_help=False)
    keep = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--models", type=Path, help="models folder (from `python -m export onnx`)", **keep)
    parser.add_argument("--backend", choices=BACKENDS, help="where the networks run (default auto: TensorRT, ONNX Runtime CUDA, OpenVINO f32, ONNX Runtime CPU, the "
                        "first that works); openvino-bf16 (CPUs with AVX512-BF16 or AMX only) is faster but less "
                        "exact: mean frame error 1.5e-2 against fp32 as `python -m bench.precision` emulates it (fp16 autocast, the "
                        "official default: 1.9e-3)",
                        **(keep or {"default": "auto"}))
    return parser


#: what each yes/no animation option does (numeric ones show their range)
SWITCH_HELP = {
    "lip_zero": "close the portrait's lips before animating (the node's lip_zero)",
    "eye_retargeting": "drive the eye opening by the driver's eye ratio",
    "lip_retargeting": "drive the mouth opening by the driver's lip ratio",
    "stitching": "keep the shoulders and head joined (stitching network); --no-stitching moves the crop freely",
    "relative": "apply the driver's motion relative to its first frame; --no-relative copies it as is",
}
#: what `--record` does, said wherever it is offered
RECORD_HELP = ("with --no-window: also record the output to this .mp4, in real time (a slow machine repeats each "
               "animated frame until the next, so a minute of camera makes a minute of video)")


def _add_options(parser: argparse.ArgumentParser) -> None:
    """One flag per ProcessOptions field, with the node's defaults and ranges."""
    group = parser.add_argument_group("animation options (the LivePortraitProcess node's, then the official pipeline's)")
    for field in fields(ProcessOptions):
        if field.name == "onnx_device":
            continue  # --backend chooses where the networks run
        flag, default = "--" + field.name.replace("_", "-"), getattr(ProcessOptions(), field.name)
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                               help=SWITCH_HELP[field.name])
        elif field.name == "animation_region":
            group.add_argument(flag, choices=ANIMATION_REGIONS, default=default,
                               help="what the driver moves: all, exp (expression only), pose, lip or eyes")
        elif field.name in OPTION_RANGES:  # numbers; a structured option (the edit) has flags of its own
            low, high = OPTION_RANGES[field.name]
            group.add_argument(flag, type=type(default), default=default, help=f"{low:g} to {high:g}, default {default:g}")


def _add_edit(parser: argparse.ArgumentParser) -> None:
    """One flag per editing control (core.edit): --smile 0.5 --head-yaw 10 ...; unset flags change nothing."""
    group = parser.add_argument_group("expression and pose editing (the official demo's sliders; on top of the motion)")
    for name, (low, high) in EDIT_RANGES.items():
        default = getattr(Edit(), name)
        unset = f"default {default:g}" if default is not None else "default unset"
        group.add_argument("--" + name.replace("_", "-"), type=float, metavar="V",
                           help=f"{EDIT_HELP[name]}: {low:g} to {high:g}, {unset}")


def edit_from_args(args: argparse.Namespace) -> Edit:
    return Edit(**{name: getattr(args, name) for name in EDIT_RANGES if getattr(args, name, None) is not None})


def options_from_args(args: argparse.Namespace) -> ProcessOptions:
    values = {name: getattr(args, name) for name in ProcessOptions.names() if hasattr(args, name)}
    return ProcessOptions(**values, edit=edit_from_args(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python main.py", description=__doc__.splitlines()[0],
                                     parents=[_common(suppress=False)])
    parser.add_argument("--camera", help="camera index or a video file standing in for the camera")
    parser.add_argument("--source", type=Path, help="portrait to open with")
    sub = parser.add_subparsers(dest="command")
    common = _common(suppress=True)

    p = sub.add_parser("render", parents=[common], help="animate a portrait with a video, image folder, image or template")
    p.add_argument("--source", type=Path, required=True,
                   help="portrait image, or a video of a person (video-to-video: frame i animated by driving frame i)")
    p.add_argument("--driving", type=Path, required=True, help="video, image folder, image or template .npz")
    p.add_argument("--out", type=Path, required=True,
                   help="full-frame output video (.mp4), or a picture (.png/.jpg) for one driving image")
    p.add_argument("--crop-out", type=Path, help="also write the animated 512x512 crops to this video")
    p.add_argument("--force", action="store_true", help="replace output files that already exist")
    p.add_argument("--start", type=int, default=0, metavar="S",
                   help="begin at driving frame S (0 = the first; a video, image folder or template). "
                        "With S > 0 the video's sound is left out")
    p.add_argument("--frames", type=int, metavar="N", help="animate at most N driving frames (default: all)")
    p.add_argument("--driving-option", choices=DRIVING_OPTIONS, default="pose-friendly",
                   help="official driving option for a still portrait and a driving video: expression-friendly scales "
                        "the motion by the ratio of the two faces' keypoint hull sizes (default pose-friendly: unscaled)")
    p.add_argument("--source-smoothing", type=float, default=3e-7, metavar="VAR",
                   help="source video: observation variance of the Kalman smoother of its motion (official 3e-7; "
                        "larger is smoother)")
    p.add_argument("--source-eye-retargeting", action="store_true",
                   help="source video: hold its eyes at the first frame's opening (official)")
    _add_options(p)
    _add_edit(p)

    p = sub.add_parser("edit", parents=[common], help="edit a portrait's expression and pose (no driving input)")
    p.add_argument("--source", type=Path, required=True, help="portrait image")
    p.add_argument("--out", type=Path, required=True, help="edited picture (.png/.jpg)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    _add_options(p)
    _add_edit(p)

    p = sub.add_parser("template", parents=[common], help="save a driving video's motion as a template .npz")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--driving", type=Path, help="driving video, image folder or image")
    given.add_argument("--from-pkl", type=Path, metavar="PKL",
                       help="convert an official LivePortrait .pkl template (read without running any code in it)")
    p.add_argument("--out", type=Path, required=True, help="template file to write (.npz)")
    p.add_argument("--force", action="store_true", help="replace the template file if it exists")

    p = sub.add_parser("live", parents=[common], help="animate from a camera at once, in the window or headless")
    p.add_argument("--source", type=Path, required=True, help="portrait image")
    p.add_argument("--camera", default=argparse.SUPPRESS, help="camera index (default 0), or a video file")
    p.add_argument("--virtual-cam", action="store_true", help="send the output to the virtual camera")
    p.add_argument("--mirror", action="store_true", help="flip the camera: the portrait moves like your reflection")
    p.add_argument("--no-window", action="store_true", help="run headless (no window), e.g. only into the virtual camera")
    p.add_argument("--frames", type=_at_least_one, help="with --no-window: stop after this many frames")
    p.add_argument("--record", type=Path, help=RECORD_HELP)
    p.add_argument("--force", action="store_true", help="with --no-window: replace an existing --record file")
    _add_options(p)
    _add_edit(p)

    p = sub.add_parser("bench", parents=[common], help="per-stage timings and fps of process() on this machine")
    p.add_argument("--frames", type=int, default=5, help="driving frames to time (default 5)")
    p.add_argument("--source", type=Path, help="portrait (default: a shared media portrait)")
    p.add_argument("--driving", type=Path, help="driving video (default: a shared media video)")
    return parser


def _animator(args: argparse.Namespace):
    from core.animator import open_animator

    animator, reason = open_animator(args.models, args.backend)
    print(f"backend: {animator.backend} — {reason}", file=sys.stderr)
    return animator


def cmd_render(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from render.offline import SourceVideo, render

    options = options_from_args(args)
    animator = _animator(args)
    report = render(
        animator, args.source, args.driving, args.out, options, crop_out=args.crop_out, overwrite=args.force,
        start_frame=args.start, max_frames=args.frames, driving_option=args.driving_option,
        source_video=SourceVideo(args.source_smoothing, args.source_eye_retargeting),
        progress=lambda frames, total: tqdm(frames, total=total, desc="render", unit="frame"),
    )
    print(f"wrote {args.out}: {report.summary()}")


def cmd_template(args: argparse.Namespace) -> None:
    from render.outputs import plural

    if args.from_pkl:
        from render.offline import convert_official_template

        frames = convert_official_template(args.from_pkl, args.out, overwrite=args.force)
        print(f"wrote {args.out}: {plural(frames, 'frame')} from the official template {args.from_pkl}")
        return
    from render.offline import make_template

    frames = make_template(_animator(args), args.driving, args.out, overwrite=args.force)
    print(f"wrote {args.out}: {plural(frames, 'frame')}")


def cmd_edit(args: argparse.Namespace) -> None:
    from render.offline import edit_image

    options = options_from_args(args)
    edit_image(_animator(args), args.source, args.out, options, overwrite=args.force)
    changed = ", ".join(f"{k} {v:g}" for k, v in options.edit.changed().items()) or "no control changed"
    print(f"wrote {args.out}: {changed}")


def cmd_live(args: argparse.Namespace) -> int:
    """The window with this portrait, camera and options, or (--no-window) the same loop headless."""
    from realtime.camera import open_camera
    from core.images import load_image
    from realtime.live import make_processor
    from realtime.loop import run_headless

    options = options_from_args(args)
    camera = args.camera or "0"
    if not args.no_window:
        from ui.app import run_app

        if args.frames or args.record or args.force:
            raise ValueError("--frames, --record and --force apply with --no-window; in the window, use its record button")
        return run_app(args.models, args.backend, make_processor, camera=camera, portrait=args.source,
                       options=options, virtual_cam=args.virtual_cam, mirror=args.mirror or None)
    if not (args.virtual_cam or args.record):
        raise ValueError("--no-window needs somewhere to send the animation: add --virtual-cam and/or --record FILE.mp4")
    if args.record:
        print("recording in real time: each animated frame is held until the next one", file=sys.stderr)
    processor = make_processor(args.models, args.backend)
    processor.set_options(options, 0.3, False)
    processor.set_source(load_image(args.source))
    stats = run_headless(processor, open_camera(camera), args.virtual_cam, args.frames, record=args.record,
                         overwrite=args.force, mirror=args.mirror)
    print(stats.line())
    return 1 if stats.sink_error else 0  # an output failed: said in one line when it happened


def cmd_bench(args: argparse.Namespace) -> None:
    from bench.pipeline import run_bench

    run_bench(_animator(args), args.source, args.driving, args.frames)


def cmd_app(args: argparse.Namespace) -> int:
    from realtime.live import make_processor
    from ui.app import run_app

    return run_app(args.models, args.backend, make_processor, camera=args.camera, portrait=args.source)


COMMANDS = {"render": cmd_render, "template": cmd_template, "edit": cmd_edit, "live": cmd_live, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    window = args.command is None or (args.command == "live" and not args.no_window)
    # a terminal command ends on SIGTERM as on Ctrl+C; the window keeps the default (Qt slots would swallow it)
    default_sigterm = signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM) if window else _terminated)
    try:
        code = COMMANDS[args.command](args) if args.command else cmd_app(args)
    except KeyboardInterrupt as exc:  # a render's says how far it got and that no output was replaced
        print(str(exc) or "interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, ValueError, ImportError) as exc:  # each expected failure has a one-line message
        if os.environ.get("LIVEPORTRAIT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, default_sigterm)
    return code or 0


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (a service manager, `kill`) ends a command like Ctrl+C: outputs are finished or abandoned, never
    left half-written under their final names."""
    raise KeyboardInterrupt("terminated")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
