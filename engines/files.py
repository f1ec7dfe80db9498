"""Outputs that appear whole or not at all: written under a temporary name beside the target, renamed when complete.

Every layer writes files (engines, templates, videos, downloads), so the helper lives in the lowest one. A run that
is interrupted (Ctrl+C, SIGKILL, a full disk) leaves the final name untouched: absent, or the old file.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: what a temporary output's name ends with before its own suffix: `out.mp4` is written as `out.mp4.<random>.partial.mp4`
PARTIAL = ".partial"


def partial_file(target: Path) -> Path:
    """A new empty file beside `target`, named after it and ending in its suffix (ffmpeg picks the container by the
    ending). Beside, so the final rename never crosses a disk; a random part, so two writers never share one;
    created with the permissions the umask gives any new file (mkstemp's would leave outputs readable by the
    owner only)."""
    target = Path(target)
    while True:
        partial = target.with_name(f"{target.name}.{secrets.token_hex(4)}{PARTIAL}{target.suffix}")
        try:
            os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return partial
        except FileExistsError:
            continue


def publish(partial: Path, target: Path, overwrite: bool) -> None:
    """Rename a finished partial file to `target`. Without `overwrite` an existing target (one that appeared while
    this one was written) is never replaced: FileExistsError. A hard link is the atomic no-replace rename; disks
    without hard links (FAT) fall back to a check before the rename."""
    if overwrite:
        os.replace(partial, target)
        return
    try:
        os.link(partial, target)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(f"{target} already exists") from None
        os.rename(partial, target)
    else:
        os.unlink(partial)


@contextmanager
def atomic_output(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """`with atomic_output(out) as path:` write `path` completely; it becomes `out` when the block ends normally,
    and is removed when it raises (the target keeps what it held)."""
    partial = partial_file(target)
    try:
        yield partial
        publish(partial, target, overwrite)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` whole (engine plans, caches): a reader sees the old file or the new one, never
    half, and two writers never share a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True) as partial:
        partial.write_bytes(data)
