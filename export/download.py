"""Fetch the official LivePortrait release (KwaiVGI/LivePortrait on the Hugging Face hub) into the release layout.

Resumable (a `.part` file grows until complete, continued with an HTTP Range request) and verified (the hub's
sha256 of each LFS file, or at least its size). Offline, it fails fast and says what to fetch and where to put it,
unless every file is already there: then they are kept, with a warning that they could not be verified.
"""
from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Callable

from engines.layout import WEIGHT_FILES
from engines.trt_cache import file_sha256

HUB_URL = "https://huggingface.co/KwaiVGI/LivePortrait/resolve/main"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed; the message says what to do instead."""


def manual_instructions(to: Path, base_url: str = HUB_URL) -> str:
    """The files to fetch by hand and where each goes, for machines without access to the hub."""
    lines = [f"  {base_url}/{rel}  ->  {Path(to) / rel}" for rel in WEIGHT_FILES]
    return "download these files by hand and put them at the paths shown:\n" + "\n".join(lines)


#: redirects followed by hand when the hub's redirect lacks X-Linked-Size (the CDN may redirect again)
MAX_REDIRECTS = 5


class _KeepRedirect(urllib.request.HTTPRedirectHandler):
    """Do not follow redirects: the hub's 302 to its CDN carries the LFS headers, the CDN's answer does not (and
    urllib would follow a HEAD with a GET, downloading the whole file)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_KeepRedirect)


def _head(url: str, timeout: float) -> tuple[str | None, Message]:
    """(where it redirects to or None, its headers) of one HEAD request, not following redirects."""
    try:
        with _OPENER.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            return None, response.headers
    except urllib.error.HTTPError as exc:  # an unfollowed redirect arrives as an HTTPError
        with exc:
            location = exc.headers.get("Location")
            if 300 <= exc.code < 400 and location:
                return urllib.parse.urljoin(url, location), exc.headers
            raise


def _remote_info(url: str, timeout: float) -> tuple[int | None, str | None]:
    """Size and sha256 that the hub announces for one file (either may be unknown).

    The hub answers an LFS file with a redirect whose X-Linked-Size / X-Linked-Etag are the file's size and
    sha256; without them the redirects are followed (with HEAD) for the file's own Content-Length and ETag.
    """
    target, headers = _head(url, timeout)
    size, etag = headers.get("X-Linked-Size"), headers.get("X-Linked-Etag")
    for _ in range(MAX_REDIRECTS):
        if target is None or size is not None:
            break
        target, headers = _head(target, timeout)
    if target is None:  # the final answer: its own headers describe the file
        size, etag = size or headers.get("Content-Length"), etag or headers.get("ETag")
    etag = (etag or "").strip('W/"')
    sha = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
    return (int(size) if size else None), sha


def _fetch(url: str, dest: Path, size: int | None, timeout: float, progress: Callable[[int], None]) -> None:
    """Download url into dest, continuing dest.part where an earlier run stopped."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:  # complete, killed before the rename: a Range request would get 416
        progress(have)
        part.replace(dest)
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        progress(have)
        with open(part, "ab" if have else "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                progress(len(block))
    part.replace(dest)


def download(to: Path, base_url: str = HUB_URL, timeout: float = 15.0, log: Callable[[str], None] = print) -> list[Path]:
    """Fetch every release file missing from `to`; files already complete and verified are kept as they are."""
    from tqdm import tqdm

    to = Path(to)
    done: list[Path] = []
    for rel in WEIGHT_FILES:
        dest = to / rel
        url = f"{base_url}/{rel}"
        try:
            size, sha = _remote_info(url, timeout)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            present = [to / name for name in WEIGHT_FILES]
            if all(path.is_file() for path in present):  # offline re-run: nothing to fetch, only to verify
                log(f"warning: could not verify against the hub ({reason}); keeping the {len(present)} files in {to}")
                return present
            raise DownloadError(f"cannot reach {base_url} ({reason}); " + manual_instructions(to, base_url)) from exc
        if dest.exists() and (size is None or dest.stat().st_size == size) and (sha is None or file_sha256(dest) == sha):
            log(f"{rel}: already present and verified")
            done.append(dest)
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create {dest.parent} ({exc.strerror}); choose a writable --to folder") from exc
        if dest.exists():
            # a file of the user's that does not match the release: keep it aside rather than overwrite it
            backup = next(p for n in range(1000) if not (p := dest.with_name(f"{dest.name}.old{n or ''}")).exists())
            shutil.move(dest, backup)
            log(f"{rel}: existing file differs from the release, kept as {backup.name}")
        with tqdm(total=size, unit="B", unit_scale=True, desc=Path(rel).name) as bar:
            try:
                _fetch(url, dest, size, timeout, bar.update)
            except (urllib.error.URLError, OSError) as exc:
                raise DownloadError(f"{rel}: download interrupted ({exc}); run the same command again to resume") from exc
        if size is not None and dest.stat().st_size != size:
            raise DownloadError(f"{rel}: got {dest.stat().st_size} bytes, expected {size}; run the command again")
        if sha is not None and file_sha256(dest) != sha:
            dest.unlink()
            raise DownloadError(f"{rel}: sha256 does not match the release; the file was removed, run the command again")
        done.append(dest)
    return done
