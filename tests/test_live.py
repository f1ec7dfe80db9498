"""The real LiveProcessor on the reduced models with real portraits and a real driving video.

Animated frames cost about 1.5 s each on CPU (the warping module), so most checks read the processor's motion
with no portrait set (process() then stops before warp + decode), tests that need frames but not their pixels
take the fingerprint_warp stand-in, and only a handful of frames are animated.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.live import main as live_bench
from bench.pipeline import STAGES, run_bench
from core.crop import crop_box, driving_box
from realtime.live import LiveProcessor, make_processor
from core.images import SourceError
from engines.layout import DOWNLOAD_COMMAND, ModelsMissingError
from realtime.filters import BoxSmoother
from realtime.live_api import FakeProcessor
from core.motion import Motion
from core.options import ProcessOptions
from core.animator import DrivingFrame

#: the shared driving video whose frames the reduced stand-in face detector finds a face in
DRIVING = "d10.mp4"
NO_FACE_STATUS = "no face in view: holding the last pose"


@pytest.fixture
def processor(animator) -> LiveProcessor:
    """A fresh live processor (no portrait, no reference, no filters) on the session's Animator: its sessions are
    opened once (make_processor itself is tested below)."""
    return LiveProcessor(animator)


def distances(motion: Motion, reference: Motion) -> np.ndarray:
    """Largest absolute difference of exp, R and t between two motions."""
    return np.array([np.abs(getattr(motion, k) - getattr(reference, k)).max() for k in ("exp", "R", "t")])


def assert_same_motion(a: Motion, b: Motion) -> None:
    for name in ("R", "exp", "t", "eye_ratio", "lip_ratio"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5, err_msg=name)
    assert a.scale == pytest.approx(b.scale, abs=1e-6)


def test_animates_portrait_switches_and_keeps_it_when_the_next_has_no_face(
    processor: LiveProcessor, first_frames: list[np.ndarray], load_portrait
) -> None:
    waiting = processor.process(first_frames[0])
    assert waiting.output is None and waiting.status == "choose a portrait to animate" and waiting.face_found
    first, second = load_portrait("s6.jpg"), load_portrait("s5.jpg")
    processor.set_source(first)
    result = processor.process(first_frames[1])
    assert result.output is not None and result.output.shape == first.shape and result.output.dtype == np.uint8
    assert result.face_found and result.status == ""
    x1, y1, x2, y2 = result.face_box
    assert 0 <= x1 < x2 <= first_frames[1].shape[1] and 0 <= y1 < y2 <= first_frames[1].shape[0]
    assert {"landmarks", "motion", "stitching/retargeting", "warp+decode", "paste-back"} <= set(result.timings)
    assert all(ms > 0 for ms in result.timings.values())
    # the animated crop is pasted into the portrait: the face region changes, the far corner does not
    changed = np.abs(result.output.astype(int) - first.astype(int)).max(axis=2) > 8
    assert changed.mean() > 0.01 and not changed[:40, :40].any()

    processor.set_source(second)
    switched = processor.process(first_frames[2])
    assert switched.output.shape == second.shape and switched.face_found

    with pytest.raises(SourceError, match=r"^no face found in the portrait: choose a photo with one clearly visible"):
        processor.set_source(np.full((300, 240, 3), 128, np.uint8))
    kept = processor.process(first_frames[3])
    assert kept.output.shape == second.shape and kept.face_found
    with pytest.raises(SourceError, match=r"^the portrait must be an RGB uint8 image of shape HxWx3, got float64"):
        processor.set_source(np.zeros((300, 240, 3)))


def test_face_loss_eases_to_neutral_and_tracking_resumes(
    processor: LiveProcessor, first_frames: list[np.ndarray], load_portrait, fingerprint_warp: None
) -> None:
    for frame in first_frames[:3]:
        assert processor.process(frame).face_found
    grey = np.full_like(first_frames[0], 128)
    lost = processor.process(grey)  # detection runs on every frame: the loss is noticed at once
    assert not lost.face_found and lost.face_box is None
    assert lost.status == "choose a portrait to animate; no face in view"
    gaps = [distances(processor.motion, processor.reference)]
    for _ in range(3):
        assert not processor.process(grey).face_found
        gaps.append(distances(processor.motion, processor.reference))
    gaps = np.array(gaps)
    assert (gaps[0] > 1e-4).all(), "the pose held after the loss should differ from the neutral reference"
    assert (np.diff(gaps, axis=0) < 0).all(), f"the held pose must move toward neutral every frame: {gaps}"

    # with a portrait the held pose is still animated, and the face is picked up again without any action
    image = load_portrait("s6.jpg")
    processor.set_source(image)
    held = processor.process(grey)
    assert held.output.shape == image.shape and not held.face_found and held.status == NO_FACE_STATUS
    back = processor.process(first_frames[4])
    assert back.face_found and back.face_box is not None and back.status == ""
    assert back.output.shape == image.shape and "detect" in back.timings


def test_recalibrate_makes_the_next_frame_the_reference(
    processor: LiveProcessor, first_frames: list[np.ndarray], load_portrait
) -> None:
    processor.process(first_frames[0])
    first_reference = processor.reference
    processor.process(first_frames[10])
    assert processor.reference is first_reference
    before = (processor.motion, processor.reference)
    processor.recalibrate()
    processor.process(first_frames[11])
    assert processor.reference is not first_reference
    assert_same_motion(processor.motion, processor.reference)  # smoothing is 0 by default

    processor.set_source(load_portrait("s6.jpg"))
    plain = ProcessOptions(stitching=False, lip_zero=False)  # x_d' == x_d: no stitching or lip-closing delta
    x_d = processor.animator.keypoints(processor.source, processor.motion, processor.reference, plain)
    np.testing.assert_allclose(x_d, processor.source.x_s, atol=1e-5)
    x_d_before = processor.animator.keypoints(processor.source, *before, plain)
    assert np.abs(x_d_before - processor.source.x_s).max() > 1e-3


def test_lock_scale_keeps_the_reference_scale(processor: LiveProcessor, first_frames: list[np.ndarray]) -> None:
    processor.process(first_frames[0])
    processor.process(first_frames[10])
    assert processor.motion.scale != pytest.approx(processor.reference.scale, abs=1e-6)
    processor.set_options(ProcessOptions(), 0.0, True)
    for frame in first_frames[8:11]:
        processor.process(frame)
        assert processor.motion.scale == processor.reference.scale


def test_smoothing_zero_passes_raw_motion_and_smoothing_filters_it(
    processor: LiveProcessor, first_frames: list[np.ndarray]
) -> None:
    """The raw motion is recomputed here from the processor's landmarks with a replayed crop-box smoother."""
    boxes = BoxSmoother(processor.box.alpha)

    def raw(frame: np.ndarray) -> Motion:
        lmk = processor.lmk203
        box = boxes.update(driving_box(lmk))
        return processor.animator.driving_motion(DrivingFrame(crop_box(frame, box, lmk).img_256, lmk))

    for frame in first_frames[:3]:
        processor.process(frame)
        assert_same_motion(processor.motion, raw(frame))
    processor.set_options(ProcessOptions(), 0.9, False)
    processor.process(first_frames[3])
    assert_same_motion(processor.motion, raw(first_frames[3]))  # a fresh filter starts at its first sample
    processor.process(first_frames[10])
    expected = raw(first_frames[10])
    smoothed = replace(processor.motion, eye_ratio=expected.eye_ratio, lip_ratio=expected.lip_ratio)
    assert distances(smoothed, expected).max() > 1e-4


def test_crop_options_prepare_the_portrait_again(
    processor: LiveProcessor, first_frames: list[np.ndarray], load_portrait, fingerprint_warp: None
) -> None:
    image = load_portrait("s6.jpg")
    processor.set_source(image)
    prepared = processor.source
    processor.set_options(ProcessOptions(stitching=False, eye_retargeting=True), 0.2, False)
    assert processor.source is prepared  # animation-only options reuse the prepared portrait
    processor.set_options(ProcessOptions(scale=2.0), 0.2, False)
    assert processor.source is not prepared
    assert not np.allclose(processor.source.M_c2o, prepared.M_c2o)
    processor.set_options(ProcessOptions(scale=2.0, dsize=256), 0.2, False)
    assert processor.source.dsize == 256 and processor.source.mask.shape[:2] == image.shape[:2]
    result = processor.process(first_frames[0])
    assert result.output.shape == image.shape and result.face_found
    bad = ProcessOptions()
    bad.scale = 5.0  # a dataclass can be changed after validation; set_options checks again
    with pytest.raises(ValueError, match=r"^scale must be between 1 and 4, got 5\.0$"):
        processor.set_options(bad, 0.2, False)
    assert processor.options.scale == 2.0


def test_make_processor_without_models_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reduced_models: Path
) -> None:
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./models here either
    with pytest.raises(ModelsMissingError, match="^no models folder is configured; create one with: ") as missing:
        make_processor(None, "cpu")
    assert DOWNLOAD_COMMAND in str(missing.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LIVEPORTRAIT_MODELS", str(empty))
    with pytest.raises(ModelsMissingError, match=rf"^models folder {empty} \(from \$LIVEPORTRAIT_MODELS\) lacks "):
        make_processor(None, "cpu")
    monkeypatch.setenv("LIVEPORTRAIT_MODELS", str(reduced_models))
    found = make_processor(None, "cpu")
    try:
        assert found.backend == "onnxruntime-cpu (ONNX Runtime on the CPU, as asked.)"
    finally:
        found.close()


def test_pipeline_bench_table(
    processor: LiveProcessor, media_dir: Path, capsys: pytest.CaptureFixture, fingerprint_warp: None
) -> None:
    """The table's rows and arithmetic (the warp and decode are stood in for: their speed is the benchmark's)."""
    result = run_bench(processor.animator, media_dir / "portraits" / "s6.jpg", media_dir / "driving" / DRIVING, 1)
    (frame,) = result.frames
    assert {"landmarks", "motion", "stitching/retargeting", "warp+decode", "paste-back"} == set(frame.stages)
    assert 0 < frame.network_ms < frame.total_ms and sum(frame.stages.values()) <= frame.total_ms
    assert result.overhead_pct == pytest.approx(100 * (1 - frame.network_ms / frame.total_ms))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("backend onnxruntime-cpu; portrait s6.jpg (725x725) prepared once in ")
    assert lines[2:4] == ["| measure | frames | median |", "|---|---:|---:|"]
    assert [line.split(" | ")[0] for line in lines[4:]] == [
        *(f"| {name} (ms)" for name in STAGES), "| end-to-end (ms per frame)", "| fps",
        "| non-network overhead (% of frame time)",
    ]
    assert lines[4] == "| detect (ms) | 0/1 | - |"  # detected in the warm-up frame, tracked after
    assert lines[-2] == f"| fps | 1/1 | {1e3 / frame.total_ms:.2f} |"


def test_live_bench_with_the_fake_processor(media_dir: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--fake", "--seconds", "0.5", "--source", str(media_dir / "portraits" / "s6.jpg")]
    assert live_bench([*args, "--driving", str(media_dir / "driving" / DRIVING)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"processor {FakeProcessor.backend}; ")
    frames, seconds = re.search(r"; (\d+) frames delivered in (\d+\.\d) s", lines[0]).groups()
    frames = int(frames)
    assert 1 <= frames <= 30 * (float(seconds) + 0.05) + 1  # no more than its 30 fps camera gave
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| measure", "|---|---:|", "| delivered fps (camera 30 fps)", "| latency p50 (ms)", "| latency p95 (ms)",
        "| dropped frames",
        *(f"| {name} (median ms, {frames}/{frames} frames)" for name in ("motion", "process", "render")),
    ]
    assert live_bench([*args[:-2], "--source", str(media_dir / "missing.jpg")]) == 1
    assert capsys.readouterr().err == f"error: image file {media_dir / 'missing.jpg'} does not exist; check the path\n"


def test_a_huge_portrait_is_brought_down_for_live_use(processor: LiveProcessor, load_portrait) -> None:
    image = load_portrait("s6.jpg")
    huge = cv2.resize(image, (4000, 4000 * image.shape[0] // image.shape[1]))
    processor.set_source(huge)
    assert max(processor.source.image.shape[:2]) == 1920
    assert processor.source.mask.shape[:2] == processor.source.image.shape[:2]
