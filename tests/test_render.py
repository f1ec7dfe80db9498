"""`python main.py render` and `template`: outputs, the final report line, and one-line errors for bad inputs."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from main import main
from core.images import load_image
from render.outputs import ffmpeg_exe, has_audio
from core.options import NODE_OPTIONS, ProcessOptions
from core.templates import load_template, save_template

#: every animation flag away from its default, and the options they must arrive as
FLAGS = [
    "--dsize", "256", "--scale", "2", "--vx-ratio", "0.1", "--vy-ratio", "-0.2", "--no-lip-zero", "--eye-retargeting",
    "--eyes-retargeting-multiplier", "1.5", "--lip-retargeting", "--lip-retargeting-multiplier", "0.5",
    "--no-stitching", "--no-relative", "--animation-region", "exp", "--driving-multiplier", "1.5",
]
FLAGGED = ProcessOptions(
    dsize=256, scale=2.0, vx_ratio=0.1, vy_ratio=-0.2, lip_zero=False, eye_retargeting=True,
    eyes_retargeting_multiplier=1.5, lip_retargeting=True, lip_retargeting_multiplier=0.5, stitching=False,
    relative=False, animation_region="exp", driving_multiplier=1.5,
)


@pytest.fixture(scope="module")
def short_template(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two frames of a shared template, in the same format."""
    template = load_template(media_dir / "templates" / "d1.npz")
    path = tmp_path_factory.mktemp("tpl") / "two.npz"
    save_template(path, [template.motion(i) for i in range(2)], template.fps)
    return path


@pytest.fixture(scope="module")
def short_video(first_frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three frames of a shared driving video, as a video file."""
    path = tmp_path_factory.mktemp("video") / "three.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, first_frames[0].shape[1::-1])
    for frame in first_frames[:3]:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def talking_video(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 0.1 s (three frames) of a shared driving video, with its sound."""
    path = tmp_path_factory.mktemp("talking") / "talking.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(media_dir / "driving" / "d10.mp4"), "-t", "0.1",
                    "-c:v", "libx264", "-c:a", "aac", str(path)], check=True)
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr without the informational "backend: ..." line."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, "".join(line for line in err.splitlines(keepends=True) if not line.startswith("backend: "))


def test_render_from_a_template_writes_full_frames_and_crops(
    session_animator: None, reduced_models: Path, media_dir: Path, short_template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    read_video, fingerprint_warp: None,
) -> None:
    source = media_dir / "portraits" / "s5.jpg"
    out, crops = tmp_path / "out.mp4", tmp_path / "crops.mp4"
    args = ["render", "--models", str(reduced_models), "--backend", "cpu", "--source", str(source),
            "--driving", str(short_template), "--out", str(out), "--crop-out", str(crops)]
    code, stdout, _ = _run(args, capsys)
    assert code == 0
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: 2 frames in \d+\.\d s \(\d+\.\d\d fps\)\n", stdout)
    h, w = load_image(source).shape[:2]
    assert [f.shape for f in read_video(out)] == [(h, w, 3)] * 2
    assert [f.shape for f in read_video(crops)] == [(512, 512, 3)] * 2

    before = out.stat().st_mtime_ns
    code, _, err = _run(args, capsys)
    assert code == 1 and err == f"error: {out} already exists; choose another name, or allow replacing it (--force on the command line)\n"
    assert out.stat().st_mtime_ns == before


def test_render_from_a_video_keeps_its_sound(
    session_animator: None, reduced_models: Path, media_dir: Path, talking_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    read_video, fingerprint_warp: None,
) -> None:
    out, crops = tmp_path / "out.mp4", tmp_path / "crops.mp4"
    code, stdout, _ = _run(["render", "--models", str(reduced_models), "--backend", "cpu", "--source",
                            str(media_dir / "portraits" / "s5.jpg"), "--driving", str(talking_video), "--out", str(out),
                            "--crop-out", str(crops)], capsys)
    assert code == 0
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: 3 frames in .* fps\), with the sound of talking\.mp4\n", stdout)
    assert has_audio(talking_video) and has_audio(out) and has_audio(crops)
    assert [f.shape for f in read_video(out)] == [(720, 720, 3)] * 3
    assert [f.shape for f in read_video(crops)] == [(512, 512, 3)] * 3


def test_template_command_saves_the_shared_format(
    session_animator: None, reduced_models: Path, short_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "motion.npz"
    code, stdout, _ = _run(["template", "--models", str(reduced_models), "--backend", "cpu",
                            "--driving", str(short_video), "--out", str(out)], capsys)
    assert code == 0 and stdout == f"wrote {out}: 3 frames\n"
    template = load_template(out)
    assert len(template) == 3 and template.fps == pytest.approx(25.0)
    with np.load(out, allow_pickle=False) as data:
        assert {k: data[k].shape for k in data.files} == {
            "scale": (3, 1), "R": (3, 3, 3), "exp": (3, 21, 3), "t": (3, 3), "fps": (),
            "eye_ratio": (3, 2), "lip_ratio": (3, 1),
        }
        np.testing.assert_array_equal(data["t"][:, 2], 0)


def _bad_input(folder: Path, kind: str) -> Path:
    path = folder / {"empty": "empty.mp4", "noise": "noise.mp4", "no images": "frames", "missing": "missing.mp4"}[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "noise":
        path.write_bytes(bytes(range(256)) * 40)
    elif kind == "no images":
        path.mkdir()
    return path


NO_FRAMES = "error: {path} has no readable video frames; use an .mp4/.avi/.mov video, an image or a folder\n"


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", NO_FRAMES),
        ("noise", NO_FRAMES),
        ("no images", "error: folder {path} holds no images (.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)\n"),
        ("missing", "error: driving input {path} does not exist\n"),
    ],
)
def test_bad_driving_inputs_get_one_line_errors(
    session_animator: None, reduced_models: Path, media_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    path = _bad_input(tmp_path, kind)
    code, _, err = _run(["render", "--models", str(reduced_models), "--backend", "cpu", "--source",
                         str(media_dir / "portraits" / "s5.jpg"), "--driving", str(path),
                         "--out", str(tmp_path / "o.mp4")], capsys)
    assert code == 1 and err == message.format(path=path)
    assert not (tmp_path / "o.mp4").exists()


def test_template_with_wrong_shapes_is_named(
    session_animator: None, reduced_models: Path, media_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, scale=np.ones((4, 1)), R=np.tile(np.eye(3), (4, 1, 1)), exp=np.zeros((4, 20, 3)),
             t=np.zeros((4, 3)), fps=np.float64(25))
    code, _, err = _run(["render", "--models", str(reduced_models), "--backend", "cpu", "--source",
                         str(media_dir / "portraits" / "s5.jpg"), "--driving", str(bad),
                         "--out", str(tmp_path / "o.mp4")], capsys)
    assert code == 1 and err.startswith("error: ") and "'exp'" in err and "(4, 20, 3)" in err
    assert "Traceback" not in err


def test_portrait_without_face_and_missing_models_are_explained(
    reduced_models: Path, media_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 90, np.uint8))
    driving = media_dir / "driving" / "d12.jpg"
    code, _, err = _run(["render", "--models", str(reduced_models), "--backend", "cpu", "--source", str(blank),
                         "--driving", str(driving), "--out", str(tmp_path / "o.mp4")], capsys)
    assert code == 1 and err == (
        "error: no face found in the portrait: choose a photo with one clearly visible, frontal face\n"
    )

    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["render", "--source", str(blank), "--driving", str(driving), "--out", "o.mp4"], capsys)
    assert code == 1 and err.startswith("error: no models folder is configured; create one with: python -m export")


def test_live_headless_runs_and_says_when_there_is_no_virtual_camera(
    reduced_models: Path, media_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    fingerprint_warp: None,
) -> None:
    from realtime import vcam

    def no_device(width: int, height: int, fps: float):
        raise RuntimeError("no v4l2loopback device found")

    monkeypatch.setattr(vcam, "_pyvirtualcam", no_device)
    code, stdout, err = _run(["live", "--models", str(reduced_models), "--backend", "cpu", "--no-window",
                              "--source", str(media_dir / "portraits" / "s5.jpg"),
                              "--camera", str(media_dir / "driving" / "d10.mp4"), "--virtual-cam", "--frames", "2",
                              "--mirror"],
                             capsys)
    assert code == 0
    assert "virtual camera unavailable" in err.lower() and "modprobe v4l2loopback" in err
    # the loop's readout; its rate reads "N fps", or "N s/frame" below 1 fps (how fast depends on the machine)
    assert re.fullmatch(r"[\d.]+ (fps|s/frame) \| latency p50 \d+ ms p95 \d+ ms \| dropped \d+\+\d+ \| .* ms\n", stdout)


def test_the_cpu_runtime_needs_neither_torch_nor_onnx(reduced_models: Path, media_dir: Path, tmp_path: Path) -> None:
    """requirements.txt (the app's install) has no PyTorch and no onnx: render and the live loop must not need them."""
    import subprocess
    import sys

    out = tmp_path / "o.mp4"
    args = ["render", "--models", str(reduced_models), "--source", str(media_dir / "portraits" / "s5.jpg"),
            "--driving", str(media_dir / "driving" / "d12.jpg"), "--out", str(out)]
    code = (
        "import sys; sys.modules.update(torch=None, onnx=None); import main; "
        f"code = main.main({args!r}); import realtime.live, ui.app; sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"wrote {out}: 1 frame in ")


def test_template_refuses_an_existing_file_before_any_work(
    session_animator: None, reduced_models: Path, short_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.npz"
    out.write_bytes(b"the user's file")
    code, _, err = _run(["--models", str(reduced_models), "--backend", "cpu", "template",
                         "--driving", str(short_video), "--out", str(out)], capsys)  # options before the command
    assert code == 1 and err == f"error: {out} already exists; choose another name, or allow replacing it (--force on the command line)\n"
    assert out.read_bytes() == b"the user's file"


def test_frames_without_a_face_hold_the_nearest_ratios() -> None:
    from core.motion import Motion
    from render.offline import held_ratios

    def motion(eye: float | None) -> Motion:
        ratios = {} if eye is None else {"eye_ratio": np.array([eye, eye]), "lip_ratio": np.array([eye / 2])}
        return Motion(R=np.eye(3), exp=np.zeros((21, 3)), scale=1.0, t=np.zeros(3), **ratios)

    held = held_ratios([motion(None), motion(0.3), motion(None), motion(0.2), motion(None)])
    assert [m.eye_ratio[0] for m in held] == [0.3, 0.3, 0.3, 0.2, 0.2]
    assert [m.lip_ratio[0] for m in held] == [0.15, 0.15, 0.15, 0.1, 0.1]
    assert held_ratios([motion(None)])[0].eye_ratio is None


def test_a_models_folder_given_once_is_remembered(
    reduced_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.layout import ModelsMissingError
    from engines.settings import resolve_models_dir

    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelsMissingError):
        resolve_models_dir(None)
    assert resolve_models_dir(reduced_models) == reduced_models
    assert resolve_models_dir(None) == reduced_models.resolve()  # the next start without --models


def test_one_driving_image_renders_to_a_picture(
    session_animator: None, reduced_models: Path, media_dir: Path, short_template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    fingerprint_warp: None,
) -> None:
    source = media_dir / "portraits" / "s5.jpg"
    out, crop = tmp_path / "out.png", tmp_path / "crop.jpg"
    base = ["render", "--models", str(reduced_models), "--backend", "cpu", "--source", str(source)]
    code, stdout, _ = _run([*base, "--driving", str(media_dir / "driving" / "d12.jpg"), "--out", str(out),
                            "--crop-out", str(crop)], capsys)
    assert code == 0 and stdout.startswith(f"wrote {out}: 1 frame in ")
    assert load_image(out).shape == load_image(source).shape and load_image(crop).shape == (512, 512, 3)
    for driving, what in ((media_dir / "driving" / "d10.mp4", "a video"), (short_template, "2 frames")):
        code, _, err = _run([*base, "--driving", str(driving), "--out", str(tmp_path / "many.png")], capsys)
        assert code == 1 and err == f"error: {tmp_path / 'many.png'} is a picture but the driving input is {what}; name the output .mp4\n"


def test_every_animation_flag_reaches_render_live_and_the_window(
    capsys: pytest.CaptureFixture[str], stubbed_commands
) -> None:
    """The commands parse each option flag into the ProcessOptions they hand on (the work itself is stubbed)."""
    defaults = ProcessOptions()
    flagged = [name for name in (*NODE_OPTIONS, "animation_region", "driving_multiplier") if name != "onnx_device"]
    assert [name for name in flagged if getattr(FLAGGED, name) == getattr(defaults, name)] == []
    seen, processor, source = stubbed_commands.seen, stubbed_commands.processor, stubbed_commands.source

    assert main(["render", "--source", str(source), "--driving", "d.mp4", "--out", "o.mp4", *FLAGS]) == 0
    assert main(["live", "--source", str(source), "--no-window", "--virtual-cam", *FLAGS]) == 0
    assert main(["live", "--source", str(source), *FLAGS]) == 0
    capsys.readouterr()
    assert set(seen) == {"render", "window"}
    assert seen["render"][0][4] == FLAGGED and seen["window"] == FLAGGED and processor.options == FLAGGED
