"""The command line as a new user meets it: help on every option, refusals in one line, frame ranges for render,
readable rates, the window's missing-display message."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest

import main
from engines.layout import ModelsMissingError
from engines.settings import config_dir, resolve_models_dir
from core.templates import load_template
from realtime.loop import LiveStats, rate_text
from render.offline import DrivingClip, DrivingInputError, RenderReport, frame_range, open_driving, open_images


def _all_actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {flag}", a) for flag, a in _all_actions(sub)]
        elif not isinstance(action, argparse._HelpAction):
            found.append((action.option_strings[0] if action.option_strings else action.dest, action))
    return found


def test_every_option_of_every_command_has_help_text() -> None:
    from export.__main__ import _parser as export_parser

    actions = _all_actions(main._parser()) + _all_actions(export_parser())
    assert len(actions) > 50
    bare = [name for name, action in actions if not action.help or action.help == argparse.SUPPRESS]
    assert bare == []


def test_record_help_says_it_records_in_real_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.main(["live", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "in real time" in text and "a minute of camera makes a minute of video" in text


def test_headless_live_without_an_output_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["live", "--source", "portrait.jpg", "--no-window", "--frames", "3"]) == 1
    assert capsys.readouterr().err == (
        "error: --no-window needs somewhere to send the animation: add --virtual-cam and/or --record FILE.mp4\n"
    )


def test_the_window_without_a_display_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ui.app

    # as in a fresh process: no Qt application yet (an earlier test may have made one in this process)
    monkeypatch.setattr(ui.app.QApplication, "instance", staticmethod(lambda: None))
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the window needs a display and none is set ($DISPLAY / $WAYLAND_DISPLAY); ")
    assert "--no-window" in err and "render" in err and err.count("\n") == 1


@pytest.mark.parametrize("fps, text", [
    (0.0, "-- fps"), (0.05, "20 s/frame"), (0.12, "8.3 s/frame"), (0.5, "2 s/frame"), (1.0, "1 fps"),
    (8.34, "8.3 fps"), (29.7, "30 fps"),
])
def test_rates_read_meaningfully_at_any_speed(fps: float, text: str) -> None:
    assert rate_text(fps) == text
    assert LiveStats(fps=fps).line().startswith(f"{text} | latency")


def test_one_frame_is_singular() -> None:
    assert RenderReport(1, 2.0, {}).summary() == "1 frame in 2.0 s (0.50 fps)"
    assert RenderReport(3, 2.0, {}).summary().startswith("3 frames in")


def test_frame_range_of_an_image_folder(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.full((40, 40, 3), 50 * i, np.uint8))
    kept = frame_range(open_images(paths), start=1, frames=2)
    assert isinstance(kept, DrivingClip) and kept.count == 2
    assert [int(f[0, 0, 0]) for f in kept.frames()] == [50, 100]
    assert frame_range(open_images(paths), start=3).count == 2  # to the end
    with pytest.raises(DrivingInputError, match=r"^--start 5 is past the last driving frame; use a smaller --start$"):
        frame_range(open_images(paths), start=5)
    with pytest.raises(DrivingInputError, match=r"^--start must be 0 or more and --frames 1 or more \(got 0 and 0\)$"):
        frame_range(open_images(paths), frames=0)


def test_frame_range_of_a_video_and_a_template(media_dir: Path) -> None:
    video = media_dir / "driving" / "d10.mp4"
    every = list(open_driving(video).frames())
    kept = list(frame_range(open_driving(video), start=3, frames=2).frames())
    assert len(kept) == 2 and all(np.array_equal(a, b) for a, b in zip(kept, every[3:5]))
    with pytest.raises(DrivingInputError, match="past the last driving frame"):
        frame_range(open_driving(video), start=len(every))

    template = load_template(media_dir / "templates" / "d1.npz")
    cut = frame_range(template, start=2, frames=3)
    assert len(cut) == 3 and cut.fps == template.fps
    np.testing.assert_array_equal(cut.motion(0).exp, template.motion(2).exp)
    np.testing.assert_array_equal(cut.motion(2).R, template.motion(4).R)


@pytest.mark.slow  # about 20 s on 2 CPU cores; frame_range itself is covered above
def test_render_frames_and_start_from_a_template(
    reduced_models: Path, media_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cut.mp4"
    code = main.main([
        "render", "--models", str(reduced_models), "--backend", "cpu", "--source", str(media_dir / "portraits" / "s0.jpg"),
        "--driving", str(media_dir / "templates" / "d1.npz"), "--out", str(out), "--start", "4", "--frames", "2",
    ])
    assert code == 0
    assert f"wrote {out}: 2 frames in " in capsys.readouterr().out
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 2
    capture.release()


def test_a_wrong_typed_models_dir_setting_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    for value in ("5", '{"a": 1}', '["models"]'):
        (tmp_path / "settings.json").write_text(f'{{"models_dir": {value}}}')
        with pytest.raises(ModelsMissingError) as err:
            resolve_models_dir(None)
        assert str(err.value) == (
            f'{tmp_path / "settings.json"}: "models_dir" must be a folder path in quotes, not {eval(value)!r}; '
            "fix or delete that entry, or pass --models DIR"
        )
    assert main.main(["template", "--driving", "d.mp4", "--out", str(tmp_path / "t.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'settings.json'}: ") and err.count("\n") == 1


def test_an_unwritable_config_dir_never_fails_the_command_it_remembers_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from engines.layout import MODEL_FILES

    models = tmp_path / "models"
    models.mkdir()
    for name in MODEL_FILES.values():
        (models / name).write_bytes(b"")
    blocker = tmp_path / "config"
    blocker.write_text("a plain file where the config folder should be")
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(blocker))

    assert resolve_models_dir(models) == models
    assert "could not remember the models folder in " in caplog.text
    assert blocker.read_text() == "a plain file where the config folder should be"


def test_config_dir_follows_the_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVEPORTRAIT_CONFIG_DIR", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "liveportrait-rt"
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "mine"))
    assert config_dir() == tmp_path / "mine"


def test_a_slow_live_loop_reads_seconds_per_frame_not_zero_fps(monkeypatch: pytest.MonkeyPatch) -> None:
    import realtime.loop as loop_module
    from realtime.live_api import FakeProcessor
    from tests.loops import SyntheticCamera

    loop = loop_module.LiveLoop(FakeProcessor(), SyntheticCamera(0.0), [])  # never started: the clock is ours
    now = [100.0]
    monkeypatch.setattr(loop_module.time, "monotonic", lambda: now[0])
    loop.out_times.append(80.0)
    loop.stats_.timings["process"] = 11700.0
    assert loop.stats().line().startswith("12 s/frame | ")  # the first frame: what it took
    loop.out_times.append(91.7)  # one frame per 11.7 s, as the official-size models on a CPU
    now[0] = 92.0
    assert loop.stats().line().startswith("12 s/frame | ")
    now[0] = 120.0  # nothing for 28 s since: the readout slows down with it rather than keep an old figure
    assert loop.stats().line().startswith("28 s/frame | ")
    loop.out_times.extend([120.0 + i / 25 for i in range(1, 40)])  # then 25 fps
    now[0] = 121.6
    assert loop.stats().line().startswith("25 fps | ")


def test_the_no_models_message_says_to_install_the_export_tools_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.settings import EXPORT_TOOLS_HINT

    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelsMissingError) as err:
        resolve_models_dir(None)
    assert str(err.value).endswith(
        "; the export tools come first: pip install -r requirements-export.txt "
        "--extra-index-url https://download.pytorch.org/whl/cpu (a CPU-only torch is enough)"
    )
    assert EXPORT_TOOLS_HINT in str(err.value)
