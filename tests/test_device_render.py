"""DeviceRenderer's chaining on the CPU: ONNX Runtime runners behind TrtRunner's enqueue/fetch, host arrays standing
in for device memory. The frames must equal the CPU path's, and the traffic must be what the GPU path promises."""
from __future__ import annotations

import ctypes
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

import cv2
import numpy as np
import pytest

from engines.ort import OrtRunner
from engines.trt import DeviceArray, host_view
from core.crop import crop_image, similarity_o2c
from core.device_render import CudaUploads, DeviceRenderer
from core.motion import Motion
from core.options import ProcessOptions
from core.paste import output_to_original, prepare_paste_mask
from core.animator import Animator


class HostQueued:
    """A runner with TrtRunner's enqueue/fetch where 'device' arrays are host arrays; it records the traffic."""

    def __init__(self, infer: Any) -> None:
        self.infer = infer
        self.fed: list[dict[str, Any]] = []
        self.returned: list[dict[str, np.ndarray]] = []
        self.fetched: list[list[str] | None] = []
        self.closed = False

    def enqueue(self, feeds: Mapping[str, Any], stream: Any = None) -> dict[str, np.ndarray]:
        self.fed.append(dict(feeds))
        self.returned.append(self.infer(feeds))
        return dict(self.returned[-1])

    def fetch(self, names: Iterable[str] | None = None, stream: Any = None) -> dict[str, np.ndarray]:
        self.fetched.append(None if names is None else list(names))
        last = self.returned[-1]
        return {name: last[name].copy() for name in (last if names is None else names)}

    def close(self) -> None:
        self.closed = True


class HostUploads:
    """Uploads that copy on the host and count."""

    def __init__(self) -> None:
        self.uploaded: list[np.ndarray] = []
        self.clears = 0

    def upload(self, array: np.ndarray, stream: Any) -> np.ndarray:
        self.uploaded.append(array.copy())
        return self.uploaded[-1]

    def clear(self) -> None:
        self.clears += 1


def ort_ops(opened: list[HostQueued]) -> Any:
    def open_op(path: Path) -> HostQueued:
        opened.append(HostQueued(OrtRunner(path, "cpu").infer))
        opened[-1].name = path.name
        return opened[-1]

    return open_op


def cv2_rounding_bound(crop: np.ndarray, M: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-pixel bound on |exact bilinear paste - cv2's|: cv2 rounds sample positions to 1/32 pixel (<= 1/64 per
    axis, so <= local contrast / 32 in value) and its result to a level (0.5); the truncation may then flip 1."""
    kernel = np.ones((3, 3), np.uint8)
    contrast = cv2.dilate(crop, kernel).astype(np.float32) - cv2.erode(crop, kernel)
    return 1.5 + cv2.warpAffine(contrast, M[:2], (shape[1], shape[0]), flags=cv2.INTER_NEAREST) / 32


def test_animator_render_on_the_device_path_equals_the_cpu_path(animator: Animator, portrait: np.ndarray, tmp_path: Path) -> None:
    src = animator.prepare_source(portrait, ProcessOptions())
    drv = Motion.from_kp_info(src.info)
    drv.exp = drv.exp + np.float32(0.02)  # a change of expression, so the crop is not the source crop
    options = ProcessOptions()
    assert animator.renderer is None  # the CPU backend takes the host path
    x_d = animator.keypoints(src, drv, Motion.from_kp_info(src.info), options)
    cpu_crop, cpu_frame = animator.render(src, x_d)

    runners = {name: HostQueued(runner.infer) for name, runner in animator.nets.runners.items()}
    opened: list[HostQueued] = []
    animator.renderer = DeviceRenderer(runners, ort_ops(opened), tmp_path, HostUploads())
    try:
        crop, frame = animator.render(src, x_d)
    finally:
        animator.renderer.close()
        animator.renderer = None
    np.testing.assert_array_equal(crop, cpu_crop)  # the same networks and the same truncating cast
    error = np.abs(frame.astype(int) - cpu_frame.astype(int))
    # fake weights decode to pixel noise (neighbours ~70 levels apart), where cv2's 1/32-pixel sample positions
    # show; the paste graph's >99.9%-within-2-levels on a real image is in test_image_ops
    assert frame.shape == portrait.shape and (error <= 2).mean() > 0.98
    assert np.all(error <= cv2_rounding_bound(cpu_crop, output_to_original(src.M_c2o, src.dsize), portrait.shape))
    assert np.abs(frame.astype(int) - portrait).max() > 50  # something was pasted
    warp, decode = runners["warping_module"], runners["spade_generator"]
    assert decode.fed[0]["feature"] is warp.returned[0]["out"]  # warp -> decode hands over the device output
    assert [op.name for op in opened] == [f"paste_{portrait.shape[0]}x{portrait.shape[1]}.onnx"]
    assert opened[0].fed[0]["crop"] is decode.returned[0]["image"]
    assert warp.fetched == decode.fetched == [] and opened[0].fetched == [["frame", "crop_u8"]]
    assert opened[0].closed


def fake_source(h: int, w: int, seed: int) -> SimpleNamespace:
    """What the renderer reads of a SourcePortrait, for a small photo."""
    rng = np.random.default_rng(seed)
    M_c2o = np.linalg.inv(similarity_o2c(np.array([w / 2, h / 2]), min(h, w) * 0.8, 0.1, 512)).astype(np.float32)
    return SimpleNamespace(
        image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        mask=prepare_paste_mask(M_c2o, (h, w, 3), 512),
        M_c2o=M_c2o,
        dsize=512,
        f_s=rng.random((1, 2, 4, 8, 8), dtype=np.float32),
        x_s=rng.random((21, 3), dtype=np.float32),
    )


def test_portrait_constants_go_up_once_and_a_new_size_replaces_the_paste_graph(tmp_path: Path) -> None:
    generated = np.full((1, 3, 512, 512), 0.5, np.float32)
    runners = {
        "warping_module": HostQueued(lambda feeds: {"out": feeds["feature_3d"] * 2}),
        "spade_generator": HostQueued(lambda feeds: {"image": generated}),
        "motion_extractor": HostQueued(lambda feeds: {}),
    }
    opened: list[HostQueued] = []
    uploads = HostUploads()
    renderer = DeviceRenderer(runners, ort_ops(opened), tmp_path, uploads)
    first, second = fake_source(40, 60, 0), fake_source(30, 50, 1)
    for x_d in (np.zeros((21, 3)), np.ones((21, 3))):
        crop, frame = renderer.render(first, x_d)
    assert crop.shape == (512, 512, 3) and np.all(crop == 127) and frame.shape == (40, 60, 3)
    warp = runners["warping_module"]
    assert len(uploads.uploaded) == 4 and all(feeds["feature_3d"] is uploads.uploaded[0] for feeds in warp.fed)
    np.testing.assert_array_equal(warp.fed[1]["kp_driving"], np.ones((1, 21, 3)))
    np.testing.assert_array_equal(uploads.uploaded[1], first.image[None])
    renderer.render(second, np.zeros((21, 3)))
    assert len(uploads.uploaded) == 8 and uploads.clears == 2  # cleared before each portrait's uploads
    assert [op.name for op in opened] == ["paste_40x60.onnx", "paste_30x50.onnx"] and opened[0].closed
    renderer.close()
    assert opened[1].closed and uploads.clears == 3


def test_driving_crop_on_device_feeds_the_motion_extractor(animator: Animator, portrait: np.ndarray, tmp_path: Path) -> None:
    runners = {name: HostQueued(runner.infer) for name, runner in animator.nets.runners.items()}
    opened: list[HostQueued] = []
    renderer = DeviceRenderer(runners, ort_ops(opened), tmp_path, HostUploads())
    h, w = portrait.shape[:2]
    M = similarity_o2c(np.array([w * 0.5, h * 0.4]), min(h, w) * 0.7, 0.0, 256)
    crop = renderer.crop_on_device(portrait, M)
    expected = crop_image(portrait, M, 256).transpose(2, 0, 1)[None] / np.float32(255)
    assert crop.shape == (1, 3, 256, 256) and np.abs(crop - expected).max() <= 2.001 / 255
    outputs = renderer.motion(portrait, M)
    motion_net = runners["motion_extractor"]
    np.testing.assert_array_equal(motion_net.fed[0]["image"], crop)
    assert motion_net.fed[0]["image"] is opened[0].returned[-1]["crop"]
    assert set(outputs) == {"pitch", "yaw", "roll", "t", "exp", "scale", "kp"} and opened[0].fetched == []
    np.testing.assert_array_equal(outputs["kp"], animator.nets.runners["motion_extractor"].infer({"image": crop})["kp"])
    renderer.close()


class FakeCuda:
    """Host memory as device memory: enough of CudaRuntime for CudaUploads."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.synced = 0

    def malloc(self, nbytes: int) -> int:
        block = np.zeros(nbytes, np.uint8)
        self.blocks[block.ctypes.data] = block
        return block.ctypes.data

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]

    def copy_htod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        ctypes.memmove(dst, src, nbytes)

    def stream_sync(self, stream: Any) -> None:
        self.synced += 1


def test_cuda_uploads_copy_to_device_memory_and_free_it_on_clear() -> None:
    cuda = FakeCuda()
    uploads = CudaUploads(cuda)
    image = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)[:, :, ::2]  # not contiguous: must be packed first
    mask = np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 2, 4, 1)
    on_image, on_mask = uploads.upload(image, 7), uploads.upload(mask, 7)
    assert isinstance(on_image, DeviceArray) and on_image.shape == (1, 2, 2, 3) and on_image.dtype == np.uint8
    np.testing.assert_array_equal(host_view(on_image.ptr, on_image.shape, on_image.dtype), image)
    np.testing.assert_array_equal(host_view(on_mask.ptr, on_mask.shape, on_mask.dtype), mask)
    assert cuda.synced == 2 and len(cuda.blocks) == 2
    uploads.clear()
    assert cuda.blocks == {}


def test_live_driving_crop_goes_through_the_device_crop_into_the_motion_extractor(
    animator: Animator, first_frames: list[np.ndarray], tmp_path: Path
) -> None:
    frame = first_frames[0]
    face = animator.faces.analyze(frame)
    assert face is not None
    from core.crop import driving_box

    box = driving_box(face.lmk203)
    cpu = animator.box_motion(frame, box, face.lmk203)

    runners = {name: HostQueued(runner.infer) for name, runner in animator.nets.runners.items()}
    opened: list[HostQueued] = []
    animator.renderer = DeviceRenderer(runners, ort_ops(opened), tmp_path, HostUploads(), "render", "motion")
    try:
        gpu = animator.box_motion(frame, box, face.lmk203)
    finally:
        animator.renderer.close()
        animator.renderer = None
    motion_net = runners["motion_extractor"]
    assert [op.name for op in opened] == [f"crop_{frame.shape[0]}x{frame.shape[1]}.onnx"]
    assert motion_net.fed[0]["image"] is opened[0].returned[0]["crop"]  # the crop never came to the host
    assert motion_net.fetched == [None]
    # one 256 sampling on the device vs the host's 512 crop + resize: the same face, nearly the same motion
    np.testing.assert_allclose(gpu.exp, cpu.exp, atol=0.02)
    np.testing.assert_allclose(gpu.R, cpu.R, atol=0.02)
    np.testing.assert_array_equal(gpu.eye_ratio, cpu.eye_ratio)


@pytest.mark.gpu
def test_tensorrt_animator_matches_the_cpu_animator(
    real_gpu, reduced_models: Path, animator: Animator, portrait: np.ndarray
) -> None:
    """On a real GPU: FP32 engines (TF32 off) prepare the same portrait, and warp -> decode -> paste-back on the
    device gives the CPU path's frame within a few levels (the image ops round on another unit)."""
    gpu_animator = Animator(reduced_models, "tensorrt", "fp32")
    try:
        cpu_src, gpu_src = (a.prepare_source(portrait, ProcessOptions()) for a in (animator, gpu_animator))
        np.testing.assert_allclose(gpu_src.x_s, cpu_src.x_s, atol=1e-3)
        np.testing.assert_allclose(gpu_src.f_s, cpu_src.f_s, atol=1e-3, rtol=1e-3)
        x_d = cpu_src.x_s + np.random.default_rng(0).normal(0, 0.01, cpu_src.x_s.shape).astype(np.float32)
        for cpu_image, gpu_image in zip(animator.render(cpu_src, x_d), gpu_animator.render(cpu_src, x_d)):
            diff = np.abs(gpu_image.astype(int) - cpu_image)
            assert gpu_image.shape == cpu_image.shape and diff.max() <= 3 and diff.mean() < 0.5
    finally:
        gpu_animator.close()


def test_prepare_builds_the_paste_engine_before_the_first_frame_and_opens_nothing(tmp_path: Path) -> None:
    runners = {
        "warping_module": HostQueued(lambda feeds: {"out": feeds["feature_3d"]}),
        "spade_generator": HostQueued(lambda feeds: {"image": np.zeros((1, 3, 512, 512), np.float32)}),
        "motion_extractor": HostQueued(lambda feeds: {}),
    }
    opened: list[HostQueued] = []
    built: list[Path] = []
    renderer = DeviceRenderer(runners, ort_ops(opened), tmp_path, HostUploads(), build_op=built.append)
    renderer.prepare((40, 60))
    assert built == [tmp_path / "paste_40x60.onnx"] and built[0].is_file() and opened == []
    renderer.render(fake_source(40, 60, 0), np.zeros((21, 3)))
    assert [op.name for op in opened] == ["paste_40x60.onnx"] and len(built) == 1  # the frame only opens it
    renderer.close()


def test_prepare_source_has_the_renderer_prepare_the_portrait_size(animator: Animator, portrait: np.ndarray) -> None:
    sizes: list[tuple[int, int]] = []
    animator.renderer = SimpleNamespace(prepare=sizes.append)
    try:
        animator.prepare_source(portrait, ProcessOptions())
    finally:
        animator.renderer = None
    assert sizes == [portrait.shape[:2]]


def test_the_cuda_graph_option_reaches_the_tensorrt_runners_and_is_off_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Animator(cuda_graph=...) down to every network engine and image op; image ops are FP32 and their builds are
    announced as warnings (the picture waits for them)."""
    from core import animator as animator_module, device_render
    from engines import trt_build
    from engines.layout import NETWORK_ONNX

    opened: list[tuple[str, str, Any]] = []
    built: list[tuple[str, str, Any]] = []

    def fake_open(path: Path, cache: Path, precision: str, log: Any, **options: Any) -> SimpleNamespace:
        opened.append((Path(path).stem, precision, options.get("cuda_graph")))
        assert options.get("announce", device_render.log.warning) == device_render.log.warning
        return SimpleNamespace(backend="tensorrt", stream=len(opened), close=lambda: None,
                               enqueue=lambda feeds, stream=None: {"crop": "on the device"})

    def fake_build(path: Path, cache: Path, precision: str, log: Any, *, announce: Any) -> Path:
        built.append((path.name, precision, announce))
        return path

    monkeypatch.setattr(trt_build, "open_trt_runner", fake_open)
    monkeypatch.setattr(device_render, "open_trt_runner", fake_open)
    monkeypatch.setattr(device_render, "ensure_engine", fake_build)
    monkeypatch.setattr(animator_module, "FaceModels", lambda *args: SimpleNamespace(close=lambda: None, runners=[]))
    for option in (None, True):
        opened.clear()
        made = Animator(tmp_path, "tensorrt") if option is None else Animator(tmp_path, "tensorrt", cuda_graph=option)
        try:
            assert made.renderer.crop_on_device(np.zeros((20, 30, 3), np.uint8), np.eye(3)[:2]) == "on the device"
            made.renderer.prepare((40, 60))
        finally:
            made.close()
        graphed = {stem: (precision, graph) for stem, precision, graph in opened}
        expected = bool(option)
        assert {graphed[Path(file).stem][1] for file in NETWORK_ONNX.values()} == {expected}
        assert graphed["crop_20x30"] == ("fp32", expected)
    assert built == [("paste_40x60.onnx", "fp32", device_render.log.warning)] * 2


@pytest.fixture(scope="session")
def ort_cuda() -> None:
    """Skips, with the reason in the user's terms, unless ONNX Runtime's CUDA provider really starts here."""
    from engines import select

    if "CUDAExecutionProvider" not in select.probe_ort_providers():
        pytest.skip(f"needs ONNX Runtime's CUDA provider, which did not start: {select.probe_ort_cuda_problem()}")


#: what ONNX Runtime CUDA may differ from its CPU run by (cuDNN's algorithms and TF32 convolutions, which round
#: their inputs to a 10-bit mantissa): keypoints and features in absolute terms, pictures in uint8 levels. The FP16
#: rewrite of these networks on the CPU, which rounds more, stays inside: kp 1.0e-3, f_s 1.7e-4, crop max 5 / mean
#: 0.29 / 99.9 % within 2 levels.
CUDA_TOLERANCE = {"kp": 5e-3, "f_s": 2e-3, "max_levels": 8, "mean_levels": 1.0, "within_2": 0.99}


def compare_renders(cpu: Animator, other: Animator, image: np.ndarray) -> None:
    """`other` gives `cpu`'s numbers within CUDA_TOLERANCE: the networks on the same crop, and the animated crop and
    pasted frame of the same source and driving keypoints."""
    src = cpu.prepare_source(image, ProcessOptions())
    np.testing.assert_allclose(other.nets.motion(src.crop.img_256).kp, src.info.kp, atol=CUDA_TOLERANCE["kp"])
    np.testing.assert_allclose(other.nets.features(src.crop.img_256), src.f_s, atol=CUDA_TOLERANCE["f_s"])
    x_d = src.x_s + np.random.default_rng(0).normal(0, 0.01, src.x_s.shape).astype(np.float32)
    for want, got in zip(cpu.render(src, x_d), other.render(src, x_d)):
        levels = np.abs(got.astype(int) - want)
        assert got.shape == want.shape and levels.max() <= CUDA_TOLERANCE["max_levels"]
        assert levels.mean() < CUDA_TOLERANCE["mean_levels"] and (levels <= 2).mean() >= CUDA_TOLERANCE["within_2"]


@pytest.mark.gpu
def test_onnxruntime_cuda_animator_matches_the_cpu_animator(ort_cuda, reduced_models: Path, animator: Animator) -> None:
    """`--backend cuda`: every session really runs on CUDAExecutionProvider (no silent CPU fallback), and the frames
    are the CPU's within CUDA_TOLERANCE. The portrait is seeded noise, in which the reduced test face models find
    a face: no shared media needed on a GPU machine."""
    image = np.random.default_rng(7).integers(0, 256, (480, 400, 3), dtype=np.uint8)
    gpu_animator = Animator(reduced_models, "cuda")
    try:
        assert gpu_animator.backend == "onnxruntime-cuda" and len(gpu_animator.runners) == 10
        for runner in gpu_animator.runners:
            assert runner.session.get_providers()[0] == "CUDAExecutionProvider", runner.path.name
        compare_renders(animator, gpu_animator, image)
    finally:
        gpu_animator.close()
