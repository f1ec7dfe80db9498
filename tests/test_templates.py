"""Motion templates: every shared template loads, bad files give exact messages, save/load round-trips."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from core.motion import Motion
from core.templates import (
    TemplateError,
    load_official_template,
    load_template,
    save_template,
    save_template_arrays,
)
from tests.motion_inputs import official_pickle

WITH_RATIOS = {"d1", "d2", "d8"}


def shared_templates(media_dir: Path) -> list[Path]:
    paths = sorted((media_dir / "templates").glob("*.npz"))
    assert len(paths) == 10
    return paths


def good_arrays(n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"scale": np.full((n, 1), 1.5, np.float32), "R": np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
            "exp": rng.normal(0, 0.01, (n, 21, 3)).astype(np.float32),
            "t": np.zeros((n, 3), np.float32), "fps": np.float32(25)}


def error_of(path: Path) -> str:
    with pytest.raises(TemplateError) as err:
        load_template(path)
    return str(err.value)


def test_every_shared_template_loads(media_dir: Path) -> None:
    for path in shared_templates(media_dir):
        raw = np.load(path)
        tpl = load_template(path)
        n = raw["scale"].shape[0]
        assert len(tpl) == n and tpl.fps == float(raw["fps"]) > 0
        assert (tpl.eye_ratio is not None, tpl.lip_ratio is not None) == ((path.stem in WITH_RATIOS),) * 2
        np.testing.assert_array_equal(tpl.t[:, 2], 0)
        # real rotations: orthonormal with determinant 1
        np.testing.assert_allclose(tpl.R @ tpl.R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (n, 3, 3)),
                                   atol=1e-4)
        last = tpl.motion(n - 1)
        assert last.scale == float(raw["scale"][n - 1, 0])
        np.testing.assert_array_equal(last.R, raw["R"][n - 1])
        np.testing.assert_array_equal(last.exp, raw["exp"][n - 1])
        np.testing.assert_array_equal(last.t, raw["t"][n - 1])
        if path.stem in WITH_RATIOS:
            np.testing.assert_array_equal(last.eye_ratio, raw["eye_ratio"][n - 1])
            np.testing.assert_array_equal(last.lip_ratio, raw["lip_ratio"][n - 1])
        else:
            assert last.eye_ratio is None and last.lip_ratio is None


def test_round_trip_reproduces_the_shared_files(media_dir: Path, tmp_path: Path) -> None:
    for path in shared_templates(media_dir):
        tpl = load_template(path)
        out = tmp_path / path.name
        save_template(out, [tpl.motion(i) for i in range(len(tpl))], tpl.fps)
        original, saved = np.load(path), np.load(out)
        assert sorted(saved.files) == sorted(original.files)
        for name in original.files:
            assert saved[name].dtype == original[name].dtype == np.float32
            np.testing.assert_array_equal(saved[name], original[name])


def test_save_zeroes_t_z_and_refuses_to_overwrite(tmp_path: Path) -> None:
    eye = np.eye(3, dtype=np.float32)
    motions = [Motion(R=eye, exp=np.zeros((21, 3), np.float32), scale=1.25, t=np.array([0.1, 0.2, 7.0], np.float32),
                      eye_ratio=np.array([0.3, 0.35], np.float32), lip_ratio=np.array([0.02], np.float32))]
    path = tmp_path / "rec.npz"
    save_template(path, motions, 30)
    tpl = load_template(path)
    np.testing.assert_array_equal(tpl.t, np.array([[0.1, 0.2, 0.0]], np.float32))
    np.testing.assert_array_equal(tpl.eye_ratio, np.array([[0.3, 0.35]], np.float32))
    assert tpl.fps == 30.0 and tpl.scale[0, 0] == 1.25
    with pytest.raises(TemplateError) as err:
        save_template(path, motions * 2, 30)
    assert str(err.value) == f"{path} already exists; choose another name or pass overwrite=True"
    assert len(load_template(path)) == 1
    save_template(path, motions * 2, 30, overwrite=True)
    assert len(load_template(path)) == 2


def test_save_rejects_partial_ratios_and_empty(tmp_path: Path) -> None:
    eye = np.eye(3, dtype=np.float32)
    base = dict(R=eye, exp=np.zeros((21, 3), np.float32), scale=1.0, t=np.zeros(3, np.float32))
    mixed = [Motion(**base, lip_ratio=np.array([0.1], np.float32)), Motion(**base)]
    with pytest.raises(TemplateError) as err:
        save_template(tmp_path / "m.npz", mixed, 25)
    assert str(err.value) == f"{tmp_path / 'm.npz'}: lip_ratio is set on 1 of 2 frames; set it on every frame or none"
    with pytest.raises(TemplateError) as err:
        save_template(tmp_path / "e.npz", [], 25)
    assert str(err.value) == f"{tmp_path / 'e.npz'}: no motions to save; record at least one frame"
    assert not (tmp_path / "m.npz").exists() and not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"R": np.zeros((4, 3), np.float32)},
     "array 'R' has shape (4, 3); expected (4, 3, 3) (N = 4 frames, from 'scale')"),
    ({"exp": np.zeros((5, 21, 3), np.float32)},
     "array 'exp' has shape (5, 21, 3); expected (4, 21, 3) (N = 4 frames, from 'scale')"),
    ({"eye_ratio": np.zeros((4, 1), np.float32)},
     "array 'eye_ratio' has shape (4, 1); expected (4, 2) (N = 4 frames, from 'scale')"),
    ({"scale": np.float32(1.0)}, "array 'scale' has shape (); expected (N, 1) with N >= 1 frames"),
    ({"t": np.zeros((4, 3), np.int64)}, "array 't' has dtype int64; expected a float dtype (float32)"),
    ({"lip_ratio": np.full((4, 1), np.nan, np.float32)},
     "array 'lip_ratio' holds NaN or infinite values; re-record the template"),
    ({"fps": np.array([25.0], np.float32)},
     "array 'fps' is [25.0] with shape (1,); expected a positive finite scalar, shape (), such as 25.0"),
    ({"fps": np.float32(0)},
     "array 'fps' is 0.0 with shape (); expected a positive finite scalar, shape (), such as 25.0"),
    ({"pose": np.zeros(3)}, "unknown array(s) pose; a template holds only R, exp, eye_ratio, fps, lip_ratio, scale, t"),
    ({"t": None}, "array(s) t missing; a template needs scale, R, exp, t, fps"),
])
def test_malformed_template_messages(tmp_path: Path, change: dict, message: str) -> None:
    arrays = {k: v for k, v in {**good_arrays(), **change}.items() if v is not None}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert error_of(path) == f"{path}: {message}"


def test_pickle_and_non_npz_files_are_refused(tmp_path: Path) -> None:
    pkl = tmp_path / "d1.pkl"
    pkl.write_bytes(pickle.dumps({"n_frames": 1, "motion": []}))
    assert error_of(pkl) == (f"{pkl} is not an .npz motion template "
                             "(pickle and other files are refused: convert them with save_template)")
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{**good_arrays(), "R": np.array([{"R": 1}], dtype=object)})
    assert error_of(objects) == (f"{objects}: array 'R' holds pickled Python objects; "
                                 "templates must be plain float arrays")
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    assert error_of(npy) == (f"{npy} is not an .npz motion template: it holds a single .npy array; "
                             "save a template with save_template")
    cut = tmp_path / "cut.npz"
    np.savez(tmp_path / "full.npz", **good_arrays())
    cut.write_bytes((tmp_path / "full.npz").read_bytes()[:60])
    assert error_of(cut).startswith(f"{cut} is not an .npz motion template: the file is damaged (")
    missing = tmp_path / "nope.npz"
    assert error_of(missing) == f"{missing}: no such template file; pass the path of an .npz motion template"


def test_template_frames_are_read_only_and_bounded(tmp_path: Path) -> None:
    np.savez(tmp_path / "ok.npz", **good_arrays(3))
    tpl = load_template(tmp_path / "ok.npz")
    assert len(tpl) == 3 and tpl.fps == 25.0
    np.testing.assert_array_equal(tpl.motion(2).exp, good_arrays(3)["exp"][2])  # frame 2 is the third saved frame
    with pytest.raises(ValueError):
        tpl.motion(0).exp[0, 0] = 1.0
    with pytest.raises(IndexError) as err:
        tpl.motion(3)
    assert str(err.value) == "template frame 3 is out of range: the template has frames 0..2"


# --- official .pkl templates ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("old_keys", [False, True], ids=["new-keys", "old-keys"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_pickle_round_trips_through_npz(tmp_path: Path, old_keys: bool, protocol: int) -> None:
    blob, data = official_pickle(old_keys=old_keys, protocol=protocol)
    pkl = tmp_path / "official.pkl"
    pkl.write_bytes(blob)
    template = load_official_template(pkl)
    save_template_arrays(tmp_path / "t.npz", template)
    back = load_template(tmp_path / "t.npz")
    r_key, eyes_key, lip_key = ("R_d", "c_d_eyes_lst", "c_d_lip_lst") if old_keys else ("R", "c_eyes_lst", "c_lip_lst")
    assert len(back) == 3 and back.fps == 30.0
    for i, frame in enumerate(data["motion"]):
        motion = back.motion(i)
        assert np.array_equal(motion.R, frame[r_key][0]) and np.array_equal(motion.exp, frame["exp"][0])
        assert motion.scale == frame["scale"][0, 0]
        assert np.array_equal(motion.t, [*frame["t"][0, :2], 0.0])  # t_z dropped, as our format stores it
        assert np.array_equal(motion.eye_ratio, data[eyes_key][i][0]) and np.array_equal(motion.lip_ratio, data[lip_key][i][0])


class _Planted:
    """Unpickling this would run os.system: the restricted unpickler must refuse it before anything runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Flag:
    """A harmless class of this test module: refused all the same (not numpy), and its import would set a flag."""

    def __reduce__(self):
        return (_set_flag, ())


FLAG: list[str] = []


def _set_flag() -> None:
    FLAG.append("ran")


@pytest.mark.parametrize("planted", ["os.system", "test-function", "OrderedDict", "builtins.eval"])
def test_an_official_pickle_carrying_anything_else_is_refused_unexecuted(tmp_path: Path, planted: str) -> None:
    import collections

    marker = tmp_path / "code-ran"
    blob, data = official_pickle()
    payload = {
        "os.system": _Planted(marker),
        "test-function": _Flag(),
        "OrderedDict": collections.OrderedDict(a=1),
        "builtins.eval": None,
    }[planted]
    if planted == "builtins.eval":
        # a hand-made pickle: GLOBAL builtins.eval, REDUCE on ("open(...).write(...)",)
        code = f"open({str(marker)!r}, 'w').write('x')"
        blob = b"\x80\x02cbuiltins\neval\nq\x00X" + len(code).to_bytes(4, "little") + code.encode() + b"\x85R."
    else:
        data["motion"][1]["extra"] = payload
        blob = pickle.dumps(data)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(blob)
    with pytest.raises(TemplateError) as info:
        load_official_template(pkl)
    message = str(info.value)
    assert message.startswith(f"{pkl}: refused, the pickle asks for ") and "nothing in it was run" in message
    assert "\n" not in message
    assert not marker.exists() and FLAG == []  # no code ran


def test_a_damaged_or_foreign_pickle_is_one_line(tmp_path: Path) -> None:
    pkl = tmp_path / "cut.pkl"
    pkl.write_bytes(official_pickle()[0][:100])
    with pytest.raises(TemplateError, match=r"is not an official \.pkl motion template: the file is damaged"):
        load_official_template(pkl)
    pkl.write_bytes(pickle.dumps({"frames": [1, 2]}))
    with pytest.raises(TemplateError, match=r"is not an official \.pkl motion template \(KeyError: 'motion'\)"):
        load_official_template(pkl)


def test_an_oversized_official_pickle_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.templates as templates

    pkl = tmp_path / "big.pkl"
    pkl.write_bytes(official_pickle()[0])
    monkeypatch.setattr(templates, "MAX_PICKLE_BYTES", pkl.stat().st_size - 1)
    monkeypatch.setattr(templates._ArraysOnly, "load", lambda self: pytest.fail("an oversized pickle was unpickled"))
    with pytest.raises(TemplateError, match=r"big\.pkl is 0 MiB, too large for a motion template \(at most 0 MiB, "):
        load_official_template(pkl)


def test_an_official_pickle_with_too_many_frames_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.templates as templates

    pkl = tmp_path / "long.pkl"
    pkl.write_bytes(official_pickle()[0])  # 3 frames
    monkeypatch.setattr(templates, "MAX_FRAMES", 2)
    with pytest.raises(TemplateError) as info:
        load_official_template(pkl)
    assert str(info.value) == (
        f"{pkl}: 3 frames, more than a template may hold (2); cut the driving video and make the template again"
    )
