"""Motion templates: per-frame driving motion stored as plain .npz arrays (no pickle), so a recorded or
shared motion can drive a portrait without the driving video and without executing code from the file. The
official pipeline's .pkl templates are read by a restricted unpickler (load_official_template) that builds only
numpy arrays, dtypes and plain containers, and are converted to this format.

Format (N frames): scale (N, 1), R (N, 3, 3), exp (N, 21, 3), t (N, 3) with t_z = 0, fps (scalar), and
optionally eye_ratio (N, 2) and lip_ratio (N, 1), the driving ratios that retargeting needs.
"""
from __future__ import annotations

import io
import math
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from core.motion import K, Motion
from engines.files import atomic_output

#: per-frame arrays: name -> shape after the frame axis N
FRAME_ARRAYS = {"scale": (1,), "R": (3, 3), "exp": (K, 3), "t": (3,)}
OPTIONAL_ARRAYS = {"eye_ratio": (2,), "lip_ratio": (1,)}
#: the most frames a template holds (an hour at 30 fps, 34 MB as float32); checked in the arrays' .npy headers
#: before any array is read, since numpy allocates whatever a small compressed file declares
MAX_FRAMES = 108_000
#: values each array may declare: MAX_FRAMES frames of its per-frame shape; fps is one number
MAX_VALUES = {name: MAX_FRAMES * math.prod(tail) for name, tail in {**FRAME_ARRAYS, **OPTIONAL_ARRAYS}.items()} | {"fps": 1}


class TemplateError(ValueError):
    """A template file is unreadable or malformed; the message names the file, the array and the fix."""


@dataclass(frozen=True)
class Template:
    """A loaded, validated motion template (all arrays float32)."""

    scale: np.ndarray
    R: np.ndarray
    exp: np.ndarray
    t: np.ndarray
    fps: float
    eye_ratio: np.ndarray | None = None
    lip_ratio: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scale)

    def motion(self, i: int) -> Motion:
        """Frame i as the Motion a live driving frame would give."""
        if not 0 <= i < len(self):
            raise IndexError(f"template frame {i} is out of range: the template has frames 0..{len(self) - 1}")
        return Motion(
            R=self.R[i],
            exp=self.exp[i],
            scale=float(self.scale[i, 0]),
            t=self.t[i],
            eye_ratio=None if self.eye_ratio is None else self.eye_ratio[i],
            lip_ratio=None if self.lip_ratio is None else self.lip_ratio[i],
        )


def _refuse_unknown(where: str, names: Iterable[str]) -> None:
    unknown = sorted(set(names) - set(MAX_VALUES))
    if unknown:
        raise TemplateError(
            f"{where}: unknown array(s) {', '.join(unknown)}; a template holds only {', '.join(sorted(MAX_VALUES))}"
        )


def _check_sizes(where: str, loaded: np.lib.npyio.NpzFile) -> None:
    """Every array's name and declared size from its .npy header, before anything is read: a 1 MB compressed
    file of zeros can declare gigabytes, and numpy would allocate them before any shape check."""
    _refuse_unknown(where, loaded.files)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    for name in loaded.files:
        try:
            with loaded.zip.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                if version not in readers:
                    raise ValueError(f"array {name!r} is in .npy format {version}; save templates with save_template")
                shape, _, _ = readers[version](member)
        except (ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise TemplateError(f"{where} is not an .npz motion template: the file is damaged ({err})") from None
        if math.prod(shape) > MAX_VALUES[name]:
            raise TemplateError(
                f"{where}: array {name!r} has shape {shape}, too large for a template (at most {MAX_FRAMES} frames, "
                "an hour at 30 fps); shorten the driving video"
            )


def _validate(where: str, arrays: dict[str, np.ndarray]) -> Template:
    """Every array's presence, dtype, shape, frame count and finiteness; one message per problem."""
    _refuse_unknown(where, arrays)
    missing = [name for name in (*FRAME_ARRAYS, "fps") if name not in arrays]
    if missing:
        raise TemplateError(f"{where}: array(s) {', '.join(missing)} missing; a template needs scale, R, exp, t, fps")
    n = arrays["scale"].shape[0] if arrays["scale"].ndim else 0
    if n < 1:
        raise TemplateError(
            f"{where}: array 'scale' has shape {arrays['scale'].shape}; expected (N, 1) with N >= 1 frames"
        )
    out: dict[str, np.ndarray] = {}
    for name, tail in {**FRAME_ARRAYS, **OPTIONAL_ARRAYS}.items():
        if name not in arrays:
            continue
        a = arrays[name]
        if not np.issubdtype(a.dtype, np.floating):
            raise TemplateError(f"{where}: array {name!r} has dtype {a.dtype}; expected a float dtype (float32)")
        if a.shape != (n, *tail):
            raise TemplateError(
                f"{where}: array {name!r} has shape {a.shape}; expected {(n, *tail)} "
                f"(N = {n} frames, from 'scale')"
            )
        if not np.isfinite(a).all():
            raise TemplateError(f"{where}: array {name!r} holds NaN or infinite values; re-record the template")
        out[name] = a.astype(np.float32)
        out[name].setflags(write=False)  # Template.motion hands out views; nobody may edit the template
    fps = arrays["fps"]
    if fps.shape != () or not np.issubdtype(fps.dtype, np.number) or not np.isfinite(fps) or fps <= 0:
        raise TemplateError(
            f"{where}: array 'fps' is {fps.tolist()!r} with shape {fps.shape}; "
            "expected a positive finite scalar, shape (), such as 25.0"
        )
    return Template(fps=float(fps), **out)


def load_template(path: str | Path) -> Template:
    """Read and validate an .npz template; pickled data is refused, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"{path}: no such template file; pass the path of an .npz motion template")
    not_npz = f"{path} is not an .npz motion template"
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's answer to anything that is neither .npy nor .npz, pickles included
        raise TemplateError(
            f"{not_npz} (pickle and other files are refused: convert them with save_template)"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise TemplateError(f"{not_npz}: the file is damaged ({err})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise TemplateError(f"{not_npz}: it holds a single .npy array; save a template with save_template")
    with loaded:
        _check_sizes(str(path), loaded)
        arrays: dict[str, np.ndarray] = {}
        for name in loaded.files:
            try:
                arrays[name] = loaded[name]
            except ValueError:
                raise TemplateError(
                    f"{path}: array {name!r} holds pickled Python objects; templates must be plain float arrays"
                ) from None
    return _validate(str(path), arrays)


def save_template(path: str | Path, motions: list[Motion], fps: float, overwrite: bool = False) -> None:
    """Write motions in the format load_template reads (t_z zeroed; ratios kept only if every frame has them)."""
    path = Path(path)
    if not motions:
        raise TemplateError(f"{path}: no motions to save; record at least one frame")
    arrays = {
        "fps": np.asarray(fps, dtype=np.float32),
        "scale": np.array([[m.scale] for m in motions], dtype=np.float32),
        "R": np.stack([m.R for m in motions]).astype(np.float32),
        "exp": np.stack([m.exp for m in motions]).astype(np.float32),
        "t": np.stack([m.t for m in motions]).astype(np.float32),
    }
    arrays["t"][:, 2] = 0.0
    for name in OPTIONAL_ARRAYS:
        present = [getattr(m, name) is not None for m in motions]
        if any(present) and not all(present):
            raise TemplateError(
                f"{path}: {name} is set on {sum(present)} of {len(motions)} frames; set it on every frame or none"
            )
        if all(present):
            arrays[name] = np.stack([np.asarray(getattr(m, name)).reshape(-1) for m in motions]).astype(np.float32)
    _validate(str(path), arrays)
    try:
        with atomic_output(path.resolve(), overwrite) as partial, open(partial, "wb") as f:
            np.savez(f, **arrays)  # a file object: np.savez would add .npz to a name without it
    except FileExistsError:
        raise TemplateError(f"{path} already exists; choose another name or pass overwrite=True") from None


#: the only globals an official template pickle may name: numpy's array and dtype rebuilders (numpy 1 and 2
#: module names) and _codecs.encode, which protocol 2 pickles use for raw bytes. Nothing else is ever imported.
PICKLE_GLOBALS = {
    (module, name)
    for package in ("numpy.core", "numpy._core")
    for module, name in ((f"{package}.multiarray", "_reconstruct"), (f"{package}.multiarray", "scalar"),
                         (f"{package}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


#: an official template stores about 2 KiB a frame (kp, x_s, exp, R, t, scale); room for MAX_FRAMES and some
MAX_PICKLE_BYTES = 512 * 2**20


class _Refused(pickle.UnpicklingError):
    """A pickle named a global outside PICKLE_GLOBALS (the message is its module.name)."""


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, numbers, strings and containers; any other global is refused before it is
    imported, so a hostile pickle cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in PICKLE_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _first(record: dict, *keys: str) -> object:
    """The value of the first of `keys` present (the official code renamed its keys once)."""
    for key in keys:
        if key in record:
            return record[key]
    raise KeyError(" or ".join(repr(k) for k in keys))


def load_official_template(path: str | Path) -> Template:
    """An official LivePortrait template (.pkl: n_frames, output_fps, motion[i] = {scale, R, exp, t, ...},
    c_eyes_lst, c_lip_lst; older files say R_d, c_d_eyes_lst, c_d_lip_lst) as a validated Template.
    Unpickled by _ArraysOnly: a file that names anything but numpy arrays and dtypes is refused, unexecuted."""
    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"{path}: no such template file; pass the path of an official .pkl motion template")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise TemplateError(
            f"{path} is {path.stat().st_size / 2**20:.0f} MiB, too large for a motion template (at most "
            f"{MAX_PICKLE_BYTES // 2**20} MiB, {MAX_FRAMES} frames); cut the driving video and make the template again"
        )
    try:
        data = _ArraysOnly(io.BytesIO(path.read_bytes())).load()
    except _Refused as err:
        raise TemplateError(
            f"{path}: refused, the pickle asks for {err} (only numpy arrays, dtypes and plain containers are "
            "accepted; nothing in it was run); re-export it with the official LivePortrait"
        ) from None
    except Exception as err:  # a truncated or garbled pickle raises any of a dozen types; none of it ran code
        raise TemplateError(f"{path} is not an official .pkl motion template: the file is damaged ({err})") from None
    try:
        frames = list(data["motion"])
        if len(frames) > MAX_FRAMES:
            raise TemplateError(f"{path}: {len(frames)} frames, more than a template may hold ({MAX_FRAMES}); cut the "
                                "driving video and make the template again")
        eyes, lips = data.get("c_eyes_lst", data.get("c_d_eyes_lst")), data.get("c_lip_lst", data.get("c_d_lip_lst"))
        arrays = {
            "scale": np.stack([np.asarray(f["scale"], np.float64).reshape(1) for f in frames]),
            "R": np.stack([np.asarray(_first(f, "R", "R_d"), np.float64).reshape(3, 3) for f in frames]),
            "exp": np.stack([np.asarray(f["exp"], np.float64).reshape(K, 3) for f in frames]),
            "t": np.stack([np.asarray(f["t"], np.float64).reshape(3) for f in frames]),
            "fps": np.asarray(float(data.get("output_fps", 25))),
        }
        if eyes is not None and lips is not None and len(eyes) == len(lips) == len(frames):
            arrays["eye_ratio"] = np.stack([np.asarray(e, np.float64).reshape(2) for e in eyes])
            arrays["lip_ratio"] = np.stack([np.asarray(c, np.float64).reshape(1) for c in lips])
    except TemplateError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise TemplateError(
            f"{path} is not an official .pkl motion template ({type(err).__name__}: {err}); it needs 'motion' with "
            "scale, R (or R_d), exp and t per frame"
        ) from None
    if not frames:
        raise TemplateError(f"{path}: the template has no frames")
    arrays["t"][:, 2] = 0.0  # t_z is never used (and our format stores it as 0)
    return _validate(str(path), arrays)


def save_template_arrays(path: str | Path, template: Template, overwrite: bool = False) -> None:
    """Write a loaded Template (e.g. a converted official one) in the .npz format."""
    save_template(path, [template.motion(i) for i in range(len(template))], template.fps, overwrite)
