"""Editing, source video and official templates end to end: the Animator, render/process, and main.py's flags."""
from __future__ import annotations

import pickle
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from core.edit import EDIT_RANGES, Edit
from core.motion import Motion, compose_driving_kp, relative_motion
from core.options import ProcessOptions
from core.templates import load_template
from main import main
from render.offline import array_clip, driving_frames, process
from render.outputs import ffmpeg_exe, has_audio
from tests.motion_inputs import official_pickle


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, "".join(line for line in err.splitlines(keepends=True) if not line.startswith("backend: "))


@pytest.fixture(scope="module")
def prepared(animator, portrait: np.ndarray, first_frames: list[np.ndarray]):
    """A prepared portrait and two driving motions (reference, frame) from the shared driving video."""
    src = animator.prepare_source(portrait, ProcessOptions())
    ref, drv = (animator.driving_motion(f) for f in driving_frames(animator, array_clip(first_frames[:4:3])))
    return src, ref, drv


def test_default_edit_is_bit_identical_to_the_unedited_path(animator, prepared) -> None:
    """The Animator's x_d' and full frame with every control at its default equal the path without any edit (the
    motion composed by relative_motion and Algorithm 1 called directly), bit for bit."""
    src, ref, drv = prepared
    spelled = ProcessOptions(edit=Edit(**{n: (1.0 if n == "move_z" else None if n.startswith("target") else 0.0)
                                          for n in EDIT_RANGES}))
    x_d = animator.keypoints(src, drv, ref, spelled)
    mlp = animator.nets.mlp
    direct = compose_driving_kp(
        src.x_s, relative_motion(src.info, drv, ref), ProcessOptions(), stitching_mlp=mlp("stitching"),
        eye_mlp=mlp("eye"), lip_mlp=mlp("lip"), c_s_eyes=src.c_s_eyes, c_s_lip=src.c_s_lip, c_d_eyes=drv.eye_ratio,
        c_d_lip=float(drv.lip_ratio[0]), lip_delta0=src.lip_close,
    )
    assert np.array_equal(x_d, direct)  # so the rendered frames are the same too (warp and decode are pure)


def test_an_edit_changes_the_animated_frame_and_the_target_ratio_asks_the_mlp(animator, prepared) -> None:
    src, ref, drv = prepared
    plain = animator.keypoints(src, drv, ref, ProcessOptions(stitching=False, lip_zero=False))
    smiling = animator.keypoints(src, drv, ref, ProcessOptions(stitching=False, lip_zero=False, edit=Edit(smile=1.0)))
    moved = np.flatnonzero(np.abs(smiling - plain).max(axis=1) > 1e-7)
    assert moved.tolist() == [3, 7, 13, 14, 16, 17, 20]  # the smile's keypoints, nothing else
    eyes = animator.keypoints(src, drv, ref, ProcessOptions(stitching=False, lip_zero=False,
                                                            edit=Edit(target_eye_ratio=0.6)))
    from core.motion import eye_input, kp_delta

    want = kp_delta(animator.nets.mlp("eye")(eye_input(src.x_s, src.c_s_eyes, 0.6)))
    np.testing.assert_allclose(eyes - plain, want, atol=1e-6)


def test_edit_command_writes_the_edited_portrait(
    session_animator: None, reduced_models: Path, media_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    fingerprint_warp: None,
) -> None:
    """The crops are fingerprints of the warp's inputs: an edit that reaches the keypoints changes the picture."""
    source = media_dir / "portraits" / "s0.jpg"
    base = ["edit", "--models", str(reduced_models), "--backend", "cpu", "--source", str(source)]
    code, stdout, _ = _run([*base, "--out", str(tmp_path / "smile.png"), "--smile", "1", "--head-yaw", "-10"], capsys)
    assert code == 0 and stdout == f"wrote {tmp_path / 'smile.png'}: head_yaw -10, smile 1\n"
    code, stdout, _ = _run([*base, "--out", str(tmp_path / "plain.png")], capsys)
    assert code == 0 and stdout.endswith(": no control changed\n")
    smile, plain = cv2.imread(str(tmp_path / "smile.png")), cv2.imread(str(tmp_path / "plain.png"))
    assert smile.shape == plain.shape == cv2.imread(str(source)).shape
    assert np.abs(smile.astype(int) - plain).max() > 10  # the face changed
    code, _, err = _run([*base, "--out", str(tmp_path / "x.png"), "--smile", "3"], capsys)
    assert code == 1 and err == "error: smile must be between -0.3 and 1.3, got 3.0\n"
    assert not (tmp_path / "x.png").exists()
    code, _, err = _run([*base, "--out", str(tmp_path / "x.mp4")], capsys)
    assert code == 1 and err == f"error: {tmp_path / 'x.mp4'}: an edit is one picture; name it .png or .jpg\n"


def test_edit_flags_reach_render_live_and_the_window(capsys: pytest.CaptureFixture[str], stubbed_commands) -> None:
    seen, processor, source = stubbed_commands.seen, stubbed_commands.processor, stubbed_commands.source
    flags = ["--smile", "0.5", "--head-yaw", "10", "--gaze-y", "-20", "--move-z", "1.1", "--target-lip-ratio", "0.3"]
    edit = Edit(smile=0.5, head_yaw=10.0, gaze_y=-20.0, move_z=1.1, target_lip_ratio=0.3)
    assert main(["render", "--source", str(source), "--driving", "d.mp4", "--out", "o.mp4", *flags,
                 "--driving-option", "expression-friendly", "--source-smoothing", "1e-6", "--source-eye-retargeting"]) == 0
    assert main(["live", "--source", str(source), "--no-window", "--virtual-cam", *flags]) == 0
    assert main(["live", "--source", str(source), *flags]) == 0
    capsys.readouterr()
    args, kwargs = seen["render"]  # type: ignore[misc]
    options, driving_option, video = args[4], kwargs["driving_option"], kwargs["source_video"]
    assert options.edit == edit and driving_option == "expression-friendly"
    assert (video.smooth_variance, video.eye_retargeting) == (1e-6, True)
    assert seen["window"].edit == edit and processor.options.edit == edit  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def source_clip(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-frame person video (the start of a shared driving video) to animate as a SOURCE."""
    path = tmp_path_factory.mktemp("v2v") / "person.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(media_dir / "driving" / "d10.mp4"), "-frames:v", "3",
                    "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def talking_clip(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 frames of another part of the shared video, with its sound, as the driver."""
    path = tmp_path_factory.mktemp("v2v-driving") / "talking.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-ss", "1", "-i", str(media_dir / "driving" / "d10.mp4"),
                    "-t", "0.2", "-frames:v", "2", "-c:v", "libx264", "-c:a", "aac", str(path)], check=True)
    return path


def test_render_a_source_video_with_a_driving_video(
    session_animator: None, reduced_models: Path, source_clip: Path, talking_clip: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], fingerprint_warp: None,
) -> None:
    """Video-to-video on shared media: stops at the shorter (2 driving frames for 3 source frames), the source's
    size, the driving video's sound, a progress bar on stderr; the crops are fingerprints of the warp's inputs."""
    out = tmp_path / "v2v.mp4"
    code, stdout, err = _run(["render", "--models", str(reduced_models), "--backend", "cpu", "--source",
                              str(source_clip), "--driving", str(talking_clip), "--out", str(out),
                              "--source-eye-retargeting"], capsys)
    assert code == 0, err
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: 2 frames in .* fps\), with the sound of talking\.mp4\n", stdout)
    assert "render: 100%" in err and "2/2" in err
    capture = cv2.VideoCapture(str(out))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    assert len(frames) == 2 and frames[0].shape[:2] == (512, 512) and has_audio(out)
    assert np.abs(frames[0].astype(int) - frames[1]).max() > 0  # each frame is its own source frame, animated


def test_process_takes_the_sources_as_a_video(animator, first_frames: list[np.ndarray], monkeypatch) -> None:
    """source_is_video: source frame i with driving frame i, stopping at the shorter (4 sources, 2 drivers: 2
    outputs, each pasted into its own source frame); a one-frame driver animates every source frame. The warp and
    decode are stubbed: this is about which frames meet."""
    monkeypatch.setattr(animator, "render", lambda src, x_d: (np.zeros((512, 512, 3), np.uint8), src.image))
    sources, driving = [f.copy() for f in first_frames[:4]], list(first_frames[4:6])
    for i, frame in enumerate(sources):
        frame[0, 0] = i  # a mark telling the source frames apart
    crops, fulls = process(sources, driving, ProcessOptions(), animator, source_is_video=True)
    assert crops.shape == (2, 512, 512, 3) and [int(f[0, 0, 0]) for f in fulls] == [0, 1]
    crops, fulls = process(sources[:3], driving[:1], ProcessOptions(), animator, source_is_video=True)
    assert [int(f[0, 0, 0]) for f in fulls] == [0, 1, 2]
    crops, _ = process(sources[:2], driving, ProcessOptions(), animator)  # the default: every source x every frame
    assert crops.shape[0] == 4


def test_template_from_an_official_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob, data = official_pickle(n=4, old_keys=True, protocol=4)
    pkl, out = tmp_path / "official.pkl", tmp_path / "t.npz"
    pkl.write_bytes(blob)
    code, stdout, _ = _run(["template", "--from-pkl", str(pkl), "--out", str(out)], capsys)
    assert code == 0 and stdout == f"wrote {out}: 4 frames from the official template {pkl}\n"
    template = load_template(out)
    assert len(template) == 4 and np.array_equal(template.exp[2], data["motion"][2]["exp"][0])
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"motion": [SimpleNamespace(a=1)]}))
    code, _, err = _run(["template", "--from-pkl", str(evil), "--out", str(tmp_path / "e.npz")], capsys)
    assert code == 1 and err == (f"error: {evil}: refused, the pickle asks for types.SimpleNamespace (only numpy "
                                 "arrays, dtypes and plain containers are accepted; nothing in it was run); re-export "
                                 "it with the official LivePortrait\n")
    assert not (tmp_path / "e.npz").exists()


def test_expression_friendly_measures_the_first_frame(animator, prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    """The official rule: the multiplier compares the portrait's keypoints with the first frame's composed ones
    (for relative motion these are the portrait's own, so the multiplier is ~1); the frames then follow it."""
    from render import offline

    src, ref, drv = prepared
    seen: list[object] = []
    real = animator.keypoints
    monkeypatch.setattr(animator, "render", lambda src, x_d: (None, None))  # only the keypoints matter here
    monkeypatch.setattr(animator, "keypoints", lambda *a: (seen.append(a[4]), real(*a))[1])
    list(offline.animate_frames(animator, src, [ref, drv], ProcessOptions(), "expression-friendly"))
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0].multiplier == pytest.approx(1.0, abs=1e-4)
    seen.clear()
    list(offline.animate_frames(animator, src, [ref, drv], ProcessOptions()))
    assert seen == [None, None]
    with pytest.raises(ValueError, match="^driving_option must be one of pose-friendly, expression-friendly, got 'x'$"):
        list(offline.animate_frames(animator, src, [ref], ProcessOptions(), "x"))
    assert isinstance(drv, Motion)


def test_an_edit_survives_retargeting_with_relative_motion(animator, prepared) -> None:
    """Eye/lip retargeting with relative motion starts from x_s (the official Algorithm 1 drops the driving
    motion); the edit is kept as a keypoint offset: exactly the smile's keypoints move, by the composed change."""
    src, ref, drv = prepared
    base = ProcessOptions(eye_retargeting=True, stitching=False, lip_zero=False)
    plain = animator.keypoints(src, drv, ref, base)
    smiling = animator.keypoints(src, drv, ref, ProcessOptions(eye_retargeting=True, stitching=False, lip_zero=False,
                                                               edit=Edit(smile=1.0)))
    want = relative_motion(src.info, drv, ref, edit=Edit(smile=1.0)) - relative_motion(src.info, drv, ref)
    np.testing.assert_allclose(smiling - plain, want, atol=1e-6)
    assert np.flatnonzero(np.abs(smiling - plain).max(axis=1) > 1e-7).tolist() == [3, 7, 13, 14, 16, 17, 20]


def test_render_reads_an_official_pickle_as_the_driving_input(tmp_path: Path) -> None:
    from render.offline import open_driving

    blob, data = official_pickle(n=2)
    (tmp_path / "official.pkl").write_bytes(blob)
    template = open_driving(tmp_path / "official.pkl")
    assert len(template) == 2 and np.array_equal(template.R[1], data["motion"][1]["R"][0])
