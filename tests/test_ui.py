"""The live window with a fake processor and a shared driving video as the camera (pytest-qt, offscreen)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from PySide6.QtCore import QMimeData, QPoint, QPointF, QRect, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QAbstractButton, QAbstractSpinBox, QApplication, QComboBox, QLabel, QListWidget, QScrollArea, QSlider, QTabBar,
    QWidget,
)

from engines.layout import DOWNLOAD_COMMAND  # noqa: E402
from realtime.live_api import FakeProcessor  # noqa: E402
from core.options import ProcessOptions  # noqa: E402
from ui.main_window import RECORD_IDLE, RECORD_ON, MainWindow  # noqa: E402
from render.outputs import RecordError  # noqa: E402
from ui.settings import Settings  # noqa: E402
from tests.windows import WAIT_MS, Factory, flowing, loaded  # noqa: E402

def test_every_control_reaches_the_processor(qtbot, make_window, media_dir: Path) -> None:
    factory = Factory()
    window = make_window(factory)
    processor = factory.made[0]
    window.load_portrait(media_dir / "portraits" / "s0.jpg")
    flowing(qtbot, window)
    changes = {
        "dsize": 256, "scale": 2.0, "vx_ratio": 0.1, "vy_ratio": -0.3, "lip_zero": False,
        "eye_retargeting": True, "eyes_retargeting_multiplier": 1.5, "lip_retargeting": True,
        "lip_retargeting_multiplier": 0.5, "stitching": False, "relative": False, "animation_region": "exp",
        "driving_multiplier": 0.5,
    }
    assert set(changes) == set(window.option_widgets)
    assert set(ProcessOptions.names()) - set(changes) <= {"onnx_device", "edit"}  # the device tab, the edit's own
    for name, value in changes.items():
        widget = window.option_widgets[name]
        if isinstance(value, str):
            widget.setCurrentIndex(widget.findData(value))
        else:
            widget.setChecked(value) if isinstance(value, bool) else widget.setValue(value)
        qtbot.waitUntil(lambda: getattr(processor.options, name) == pytest.approx(value), timeout=WAIT_MS)
    window.smoothing_slider.setValue(70)
    qtbot.waitUntil(lambda: processor.smoothing == pytest.approx(0.7), timeout=WAIT_MS)
    window.lock_scale_check.setChecked(True)
    qtbot.waitUntil(lambda: processor.lock_scale is True, timeout=WAIT_MS)
    qtbot.mouseClick(window.recalibrate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: processor.recalibrations == 1, timeout=WAIT_MS)
    # another device builds a new processor that gets the same options and portrait
    window.device_combo.setCurrentText("cuda")
    assert not window.device_combo.isEnabled()  # loading: the window stays live meanwhile
    loaded(qtbot, window)
    cuda = factory.made[-1]
    qtbot.waitUntil(lambda: cuda.frames > 2, timeout=WAIT_MS)
    assert cuda.backend == "fake cuda" and window.backend_label.text() == "processor: fake cuda"
    assert cuda.options.onnx_device == "CUDA" and cuda.options.dsize == 256 and cuda.smoothing == pytest.approx(0.7)
    assert cuda.sources_set >= 1 and cuda.source is not None
    np.testing.assert_array_equal(cuda.source, processor.source)
    flowing(qtbot, window)
    assert "fps | latency p50" in window.readout.text()


def test_switch_portraits_mid_stream_and_persist(qtbot, make_window, media_dir: Path, tmp_path: Path) -> None:
    window = make_window()
    first, second = media_dir / "portraits" / "s0.jpg", media_dir / "portraits" / "s3.jpg"
    window.load_portrait(first)
    shape = cv2.imread(str(second)).shape
    qtbot.waitUntil(lambda: window.last_frame is not None and window.last_frame.result.output is not None,
                    timeout=WAIT_MS)
    assert window.last_frame.result.output.shape != shape
    window.load_portrait(second)
    qtbot.waitUntil(lambda: window.last_frame.result.output.shape == shape, timeout=WAIT_MS)
    flowing(qtbot, window)
    assert window.recent_list.count() == 2
    assert window.recent_list.item(0).data(Qt.ItemDataRole.UserRole) == str(second.resolve())
    window.option_widgets["scale"].setValue(3.0)
    window.mirror_check.setChecked(True)
    qtbot.waitUntil(lambda: window.loop.mirror, timeout=WAIT_MS)
    window.close()
    saved = json.loads((tmp_path / "config" / "settings.json").read_text())
    assert saved["recent_portraits"] == [str(second.resolve()), str(first.resolve())] and saved["mirror"] is True
    assert saved["options"]["scale"] == 3.0 and saved["camera"].endswith("d11.mp4")
    assert Settings.load(tmp_path / "config" / "settings.json").options["scale"] == 3.0


def test_drop_image_file_sets_portrait(qtbot, make_window, media_dir: Path) -> None:
    factory = Factory()
    window = make_window(factory)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(media_dir / "portraits" / "s5.jpg"))])
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    qtbot.waitUntil(lambda: factory.made[0].sources_set == 1, timeout=WAIT_MS)
    assert factory.made[0].source.shape == cv2.imread(str(media_dir / "portraits" / "s5.jpg")).shape


def test_portrait_without_face_shows_message(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window()
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((64, 64, 3), 128, np.uint8))
    window.load_portrait(flat)
    qtbot.waitUntil(lambda: "portrait" in window.messages, timeout=WAIT_MS)
    assert window.messages["portrait"] == (
        "Portrait not usable (flat.png): no face found in the portrait: choose a photo with one clearly visible face"
    )
    window.load_portrait(tmp_path / "missing.jpg")
    assert window.messages["portrait"] == f"Cannot use the portrait: image file {tmp_path / 'missing.jpg'} does not exist; check the path"
    flowing(qtbot, window)


def test_missing_models_message_and_camera_still_runs(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window(Factory(fail=True))
    assert "models" not in window.messages  # said once, in the first-run panel, not also in the banner
    assert window.models_panel.isVisibleTo(window)
    assert window.models_reason.text() == (
        f"Models not loaded: models folder {tmp_path / 'models'} is missing motion_extractor.onnx."
    )
    panel = " ".join(label.text() for label in window.models_panel.findChildren(QLabel))
    assert all(command in panel for command in DOWNLOAD_COMMAND.split(" && "))
    flowing(qtbot, window)
    assert window.status_line.text() == "no models loaded" and window.last_frame.result.output is None


def test_camera_problems_are_messages(qtbot, make_window, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    window = make_window(camera="97")  # the capture thread opens it, and the readout shows what happened
    qtbot.waitUntil(lambda: "camera_status" in window.messages, timeout=WAIT_MS)
    assert window.messages["camera_status"].startswith("no camera at index 97 (unplugged or used by another app)")
    window.open_camera(str(tmp_path / "gone.mp4"))
    assert window.messages["camera"].startswith(f"video file {tmp_path / 'gone.mp4'} does not exist")
    monkeypatch.setattr("ui.main_window.list_cameras", lambda: [])
    (tmp_path / "config").mkdir(exist_ok=True)
    window2 = MainWindow(Factory(), None, "cpu", tmp_path / "config" / "other.json")
    qtbot.addWidget(window2)
    loaded(qtbot, window2)
    assert window2.messages["camera"].startswith("No camera found: plug in a webcam and click Refresh")
    assert window2.messages["models"].startswith("No models configured: showing a demo.")


def test_virtual_camera_on_off_and_unavailable(qtbot, make_window, media_dir: Path) -> None:
    window = make_window()
    window.load_portrait(media_dir / "portraits" / "s0.jpg")
    window.vcam_check.setChecked(True)
    assert window.vcam is not None
    cam = window.vcam.cam
    qtbot.waitUntil(lambda: len(cam.sent) > 3, timeout=WAIT_MS)
    assert window.vcam_status.text() == "virtual camera on: fake0 1280x720 @ 25 fps" and cam.fps == 25
    window.vcam_check.setChecked(False)
    assert cam.closed and window.vcam is None

    def missing(w: int, h: int, fps: float) -> None:
        raise RuntimeError("no device")

    window.vcam_backend = missing
    window.vcam_check.setChecked(True)
    assert not window.vcam_check.isChecked() and window.vcam_status.text() == "unavailable"
    assert window.messages["vcam"].startswith("virtual camera unavailable (no device); to enable it, ")


def test_recording_never_overwrites_silently(qtbot, make_window, media_dir: Path, tmp_path: Path, read_video) -> None:
    window = make_window()
    window.load_portrait(media_dir / "portraits" / "s0.jpg")
    out = tmp_path / "take.mp4"
    window.start_recording(out)
    recorder = window.recorder
    assert window.record_button.text() == RECORD_ON and window.record_button.isChecked()
    qtbot.waitUntil(lambda: recorder.frames >= 5, timeout=WAIT_MS)
    window.stop_recording()
    assert window.record_status.text() == f"saved {recorder.frames} frames to {out}"
    recorded = read_video(out)  # the animated portrait (s0.jpg, 600x704), held in real time: at least every frame
    assert len(recorded) >= recorder.frames >= 5 and {f.shape for f in recorded} == {(704, 600, 3)}
    window.start_recording(out)
    assert window.recorder is None
    assert window.messages["record"] == f"{out} already exists; choose another name, or allow replacing it (--force on the command line)"


def test_close_stops_every_thread(qtbot, make_window) -> None:
    window = make_window()
    flowing(qtbot, window)
    threads = list(window.loop.threads)
    assert {t.name for t in threads} == {"live-capture", "live-process", "live-render", "live-output"}
    window.close()  # joins with a 2 s budget
    assert not any(t.is_alive() for t in threads)
    assert window.loop is None


def test_settings_file_survives_damage_and_prunes_missing(tmp_path: Path, media_dir: Path) -> None:
    path = tmp_path / "window.json"
    path.write_text("{not json")
    assert Settings.load(path) == Settings()
    kept = str(media_dir / "portraits" / "s0.jpg")
    path.write_text(json.dumps({"recent_portraits": [str(tmp_path / "gone.jpg"), kept], "fps": 15, "extra": 1}))
    loaded = Settings.load(path)
    assert loaded.recent_portraits == [kept] and loaded.fps == 15
    path.write_text(json.dumps({"fps": "30", "smoothing": 1, "lock_scale": "yes", "camera": "1"}))  # hand-edited
    loaded = Settings.load(path)
    assert (loaded.fps, loaded.smoothing, loaded.lock_scale, loaded.camera) == (Settings().fps, 1, False, "1")


def test_screenshot_grabs_the_running_window(qtbot, tmp_path: Path, media_dir: Path) -> None:
    from ui.screenshot import take_screenshot

    out = take_screenshot(tmp_path / "shot.png", media=media_dir, frames=5)
    image = cv2.imread(str(out))
    assert image.shape == (720, 1280, 3)
    assert image.std() > 20  # the previews are drawn, not a blank window


def test_command_line_options_and_virtual_camera_start_with_the_window(qtbot, make_window, media_dir: Path) -> None:
    """`python main.py live` without --no-window: the window opens with the command line's options and the
    virtual camera already on."""
    factory = Factory()
    options = ProcessOptions(scale=2.0, stitching=False, eyes_retargeting_multiplier=2.5)
    window = make_window(factory, portrait=media_dir / "portraits" / "s0.jpg", options=options, virtual_cam=True,
                         mirror=True)
    flowing(qtbot, window)
    assert window.current_options() == options
    assert window.mirror_check.isChecked() and window.loop.mirror
    assert window.vcam is not None and window.vcam_check.isChecked()
    qtbot.waitUntil(lambda: factory.made[0].options == options, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: len(window.vcam.cam.sent) >= 1, timeout=WAIT_MS)


def test_a_recording_that_fails_is_switched_off_in_the_window(qtbot, make_window, media_dir: Path, tmp_path: Path) -> None:
    window = make_window()
    window.load_portrait(media_dir / "portraits" / "s0.jpg")
    flowing(qtbot, window)
    window.start_recording(tmp_path / "out.mp4")
    recorder = window.recorder

    def disk_full(frame: object) -> None:
        raise OSError(28, "No space left on device")

    recorder.send = disk_full
    qtbot.waitUntil(lambda: window.recorder is None, timeout=WAIT_MS)
    assert window.record_button.text() == RECORD_IDLE and not window.record_button.isChecked()
    assert window.record_status.text().startswith("stopped after ") and "No space left on device" in window.record_status.text()
    assert "No space left on device" in window.messages["outputs"]
    flowing(qtbot, window)  # the preview goes on


def test_keyboard_shortcuts_recalibrate_and_mirror(qtbot, make_window, media_dir: Path) -> None:
    factory = Factory()
    window = make_window(factory)
    window.load_portrait(media_dir / "portraits" / "s0.jpg")
    flowing(qtbot, window)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=WAIT_MS)
    processor = factory.made[0]
    qtbot.keyClick(window.option_widgets["scale"], Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # focus in a box
    qtbot.waitUntil(lambda: processor.recalibrations == 1, timeout=WAIT_MS)
    qtbot.keyClick(window, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier)
    assert window.mirror_check.isChecked()
    qtbot.waitUntil(lambda: window.loop.mirror and processor.recalibrations == 2, timeout=WAIT_MS)
    assert window.recalibrate_button.toolTip().endswith("(Ctrl+R)") and window.mirror_check.toolTip().endswith("(Ctrl+M)")


CONTROLS = (QAbstractButton, QComboBox, QAbstractSpinBox, QSlider, QListWidget, QTabBar)


def outside_controls(window: MainWindow) -> list[str]:
    """Every visible control, on every tab, that does not lie wholly inside the window and inside the visible part
    of the scroll area it sits in (so nothing needs scrolling to be reached)."""
    bad = []
    for tab in range(window.sections.count()):
        window.sections.setCurrentIndex(tab)
        QApplication.processEvents()
        for widget in window.findChildren(QWidget):
            if not isinstance(widget, CONTROLS) or not widget.isVisible():
                continue
            rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
            inside = window.rect().contains(rect)
            scroll = widget.parent()
            while scroll is not None and not isinstance(scroll, QScrollArea):
                scroll = scroll.parent()
            if scroll is not None and scroll is not widget:
                viewport = scroll.viewport()
                inside &= QRect(viewport.mapTo(window, QPoint(0, 0)), viewport.size()).contains(rect)
            if not inside:
                bad.append(f"{window.sections.tabText(tab)}: {type(widget).__name__} {widget.text() if hasattr(widget, 'text') else ''} {rect}")
    return bad


def test_every_control_is_inside_the_window_at_1280x720(qtbot, make_window, media_dir: Path) -> None:
    window = make_window(portrait=media_dir / "portraits" / "s0.jpg")
    window.resize(1280, 720)
    window.set_message("portrait", "a long message " * 30)  # the banner must not push anything out either
    flowing(qtbot, window)
    long = "processor: a very long backend reason that once widened the window past the screen " * 5
    window.backend_label.setText(long)
    window.status_line.setText(long)
    assert (window.width(), window.height()) == (1280, 720)
    assert [window.sections.tabText(i) for i in range(window.sections.count())][:4] == [
        "Camera", "Portrait", "Animation", "Output"
    ]
    assert outside_controls(window) == []
    bar = window.sections.tabBar()  # every tab's name in full view: none scrolled away or cut at the panel's edge
    assert bar.tabRect(0).left() >= 0 and bar.tabRect(bar.count() - 1).right() < window.sections.width()
    assert window.backend_label.minimumSizeHint().width() == 0 and window.backend_label.toolTip() == long
    assert "dropped A+B" in window.readout.toolTip()


def test_the_window_remembers_its_geometry(qtbot, make_window, tmp_path: Path) -> None:
    window = make_window()
    assert (window.width(), window.height()) == (1280, 720)  # the first start
    window.resize(790, 610)  # within the offscreen test screen (800x800): Qt keeps a restored window on screen
    window.move(5, 7)
    window.close()
    again = make_window()
    assert (again.width(), again.height()) == (790, 610)


class Resolved:
    """A processor that is not the stand-in (it wraps one for the frames) made by the real models-folder resolution."""

    def __init__(self, models_dir: Path | None, backend: str) -> None:
        from engines.settings import resolve_models_dir

        self.folder = resolve_models_dir(models_dir)
        self.inner = FakeProcessor()
        self.backend = f"models from {self.folder}"

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("path", ["--models", "$LIVEPORTRAIT_MODELS", "saved setting", "./models"])
def test_no_demo_banner_whichever_way_the_models_were_found(
    qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    from engines.layout import MODEL_FILES

    models = tmp_path / "models"
    models.mkdir()
    for name in MODEL_FILES.values():
        (models / name).write_bytes(b"")
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    (tmp_path / "config").mkdir()
    monkeypatch.chdir(tmp_path if path == "./models" else tmp_path / "config")  # ./models only where it is meant
    if path == "$LIVEPORTRAIT_MODELS":
        monkeypatch.setenv("LIVEPORTRAIT_MODELS", str(models))
    elif path == "saved setting":
        (tmp_path / "config" / "settings.json").write_text(json.dumps({"models_dir": str(models)}))
    window = MainWindow(Resolved, models if path == "--models" else None, "cpu", tmp_path / "config" / "window.json",
                        camera=str(tmp_path / "none.mp4"))
    qtbot.addWidget(window)
    loaded(qtbot, window)
    assert window.processor is not None and Path(window.processor.folder).resolve() == models.resolve()
    assert "models" not in window.messages and not window.models_panel.isVisibleTo(window)


@pytest.fixture
def first_run_window(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MainWindow:
    """The window where no models folder is found anywhere (fresh config, no $LIVEPORTRAIT_MODELS, no ./models)."""
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    window = MainWindow(Resolved, None, "cpu", tmp_path / "window.json", camera=str(tmp_path / "none.mp4"))
    qtbot.addWidget(window)
    window.show()
    loaded(qtbot, window)
    return window


def test_first_run_panel_explains_and_rechecks_without_a_restart(qtbot, tmp_path: Path, first_run_window) -> None:
    from engines.layout import MODEL_FILES

    window = first_run_window
    assert window.processor is None and window.models_panel.isVisible()
    window.resize(1280, 720)
    assert outside_controls(window) == []  # the panel's buttons too
    panel_text = " ".join(label.text() for label in window.models_panel.findChildren(QLabel))
    assert "pip install -r requirements-export.txt" in panel_text and "python -m export onnx" in panel_text
    models = tmp_path / "made"
    models.mkdir()
    for name in MODEL_FILES.values():
        (models / name).write_bytes(b"")
    window.use_models_dir(models)  # what "Choose models folder..." does with the folder picked
    loaded(qtbot, window)
    assert window.processor is not None and not window.models_panel.isVisible() and "models" not in window.messages
    saved = json.loads((tmp_path / "config" / "settings.json").read_text())
    assert saved["models_dir"] == str(models.resolve())  # remembered for the next start


def fake_export(tmp_path: Path, fail: bool = False) -> list[str]:
    """A stand-in for `python -m export`: download makes the weights folder, onnx writes the models folder."""
    from engines.layout import MODEL_FILES

    script = tmp_path / "fake_export.py"
    script.write_text(
        "import pathlib, sys\n"
        "args = sys.argv[1:]\n"
        f"if {fail!r}:\n"
        "    print('error: cannot reach https://huggingface.co (offline)'); sys.exit(1)\n"
        "if args[0] == 'download':\n"
        "    print('appearance_feature_extractor.pth:  50%\\rappearance_feature_extractor.pth: 100%', flush=True)\n"
        "    pathlib.Path(args[2]).mkdir(parents=True)\n"
        "else:\n"
        "    out = pathlib.Path(args[4]); out.mkdir(parents=True)\n"
        f"    [(out / name).write_bytes(b'') for name in {sorted(MODEL_FILES.values())!r}]\n"
        "    print(f'models ready in {out}')\n"
    )
    return [sys.executable, str(script)]


def test_first_run_panel_makes_the_models_in_child_processes(qtbot, tmp_path: Path, first_run_window) -> None:
    window = first_run_window
    assert window.models_panel.isVisible()

    window.make_models(tmp_path / "data", command=fake_export(tmp_path, fail=True))
    qtbot.waitUntil(lambda: window.maker is None, timeout=WAIT_MS)
    assert window.make_status.text() == "could not make the models: error: cannot reach https://huggingface.co (offline)"
    assert window.models_panel.isVisible() and window.make_button.isEnabled()

    window.make_models(tmp_path / "data", command=fake_export(tmp_path))
    assert not window.make_button.isEnabled()
    qtbot.waitUntil(lambda: window.maker is None, timeout=WAIT_MS)
    loaded(qtbot, window)
    assert window.make_status.text() == f"models made in {tmp_path / 'data' / 'models'}"
    assert window.processor.folder == tmp_path / "data" / "models" and not window.models_panel.isVisible()


def test_without_the_export_tools_the_panel_shows_the_pip_command(
    qtbot, make_window, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = make_window()
    monkeypatch.setattr("ui.model_maker.importlib.util.find_spec", lambda name: None if name == "torch" else object())
    window.make_models()
    assert window.maker is None
    assert window.make_status.text() == (
        "To make the models here, the export tools come first: pip install -r requirements-export.txt "
        "--extra-index-url https://download.pytorch.org/whl/cpu (a CPU-only torch is enough) (missing: torch)"
    )


def test_the_window_never_records_onto_its_camera_video(qtbot, make_window, video: str) -> None:
    window = make_window()
    window.start_recording(Path(video), overwrite=True)
    assert window.recorder is None and not window.record_button.isChecked()
    assert window.messages["record"] == (
        f"the recording {video} is the camera video {video}; an input is never overwritten (not even with --force), "
        "choose another name"
    )


def test_a_recording_that_cannot_be_finished_says_so(qtbot, make_window, media_dir: Path, tmp_path: Path) -> None:
    window = make_window()
    window.load_portrait(media_dir / "portraits" / "s0.jpg")
    window.start_recording(tmp_path / "take.mp4")
    recorder = window.recorder

    def full_disk() -> None:
        raise RecordError("cannot finish take.mp4: no space left on device; take.mp4 was not created")

    recorder.close = full_disk
    window.stop_recording()
    assert window.recorder is None and not window.record_button.isChecked()
    assert window.record_status.text() == "cannot finish take.mp4: no space left on device; take.mp4 was not created"
