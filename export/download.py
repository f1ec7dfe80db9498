"""Fetch the official LivePortrait release (KwaiVGI/LivePortrait on the Hugging Face hub) into the release layout.

huggingface_hub does the transfer, so users get what they expect of it: resume, `HF_ENDPOINT` mirrors,
`HF_HUB_OFFLINE`, tokens (`HF_TOKEN` or `hf auth login`) and xet downloads. On top of it we keep three promises:
- a file counts as verified only when its sha256 equals the one the hub itself announced (the `X-Linked-Etag` of
  the hub's own first answer, read with the library's `get_hf_file_metadata`, which stops at the redirect to the
  CDN); a file the hub gives no sha256 for is refused, never kept unverified;
- every request goes over https (plain http only to this machine, e.g. a local mirror or the tests' fake hub);
- a file of the user's that differs from the release is set aside as `.old`, never overwritten. Offline, it fails
  fast and says what to fetch and where to put it, unless every file is already there.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

from engines.layout import WEIGHT_FILES
from engines.trt_cache import file_sha256

REPO_ID = "KwaiVGI/LivePortrait"
#: hosts that may be reached over plain http: this machine only
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: what reaching the hub can fail with when the network (or HF_HUB_OFFLINE) stands in the way
UNREACHABLE = (httpx2.TransportError, OfflineModeIsEnabled)


class DownloadError(RuntimeError):
    """A download failed; the message says what to do instead."""


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub to download from: the argument, else $HF_ENDPOINT (read now, not at import), else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants._HF_DEFAULT_ENDPOINT).rstrip("/")


def manual_instructions(to: Path, endpoint: str | None = None) -> str:
    """The files to fetch by hand and where each goes, for machines without access to the hub."""
    lines = [f"  {hf_hub_url(REPO_ID, rel, endpoint=hub_endpoint(endpoint))}  ->  {Path(to) / rel}" for rel in WEIGHT_FILES]
    return "download these files by hand and put them at the paths shown:\n" + "\n".join(lines)


def require_https(url: str) -> None:
    """Refuse a plain-http (or other) url unless it stays on this machine."""
    parsed = httpx2.URL(url)
    if parsed.scheme != "https" and parsed.host not in LOOPBACK:
        raise DownloadError(f"refusing {url}: downloads go over https only (set HF_ENDPOINT to an https:// mirror)")


def _https_only_client() -> httpx2.Client:
    """The library's own client, with every request (redirects included) checked by require_https first."""
    client = default_client_factory()
    client.event_hooks["request"] = [lambda request: require_https(str(request.url)), hf_request_event_hook]
    return client


def _set_aside(dest: Path) -> Path:
    """Move a user's file that is not the release's out of the way (name.old, name.old1, ...) and return its new path."""
    backup = next(p for n in range(1000) if not (p := dest.with_name(f"{dest.name}.old{n or ''}")).exists())
    shutil.move(dest, backup)
    return backup


def _fetch_one(rel: str, to: Path, endpoint: str, token: str | bool | None, log: Callable[[str], None]) -> Path:
    """One release file into `to`, verified against the sha256 the hub announces."""
    dest = to / rel
    meta = get_hf_file_metadata(hf_hub_url(REPO_ID, rel, endpoint=endpoint), token=token, endpoint=endpoint)
    sha = meta.etag if meta.etag and len(meta.etag) == 64 and all(c in "0123456789abcdef" for c in meta.etag) else None
    if sha is None:
        raise DownloadError(f"{rel}: the hub announced no sha256 for it, so it cannot be verified; refusing it")
    if dest.is_file():
        if file_sha256(dest) == sha:
            log(f"{rel}: already present and verified (sha256)")
            return dest
        log(f"{rel}: existing file differs from the release, kept as {_set_aside(dest).name}")
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {to} ({exc.strerror}); choose a writable --to folder") from exc
    hf_hub_download(REPO_ID, rel, local_dir=to, endpoint=endpoint, token=token)  # resumes; checks the size
    if file_sha256(dest) != sha:
        dest.unlink()
        raise DownloadError(f"{rel}: sha256 does not match the release; the file was removed, run the command again")
    log(f"{rel}: downloaded and verified (sha256)")
    return dest


def download(
    to: Path, endpoint: str | None = None, token: str | bool | None = None, log: Callable[[str], None] = print
) -> list[Path]:
    """Fetch every release file missing from `to`; files already there and verified are kept as they are."""
    to, endpoint = Path(to), hub_endpoint(endpoint)
    require_https(endpoint)
    set_client_factory(_https_only_client)
    try:
        return [_fetch_one(rel, to, endpoint, token, log) for rel in WEIGHT_FILES]
    except UNREACHABLE as exc:
        present = [to / rel for rel in WEIGHT_FILES]
        if all(path.is_file() for path in present):  # offline re-run: nothing to fetch, only to verify
            log(f"warning: could not verify against the hub ({exc}); keeping the {len(present)} unverified files in {to}")
            return present
        raise DownloadError(f"cannot reach {endpoint} ({exc}); " + manual_instructions(to, endpoint)) from exc
    except HfHubHTTPError as exc:  # 401/403 (gated, bad token), 404 (wrong mirror), 5xx
        status = exc.response.status_code if exc.response is not None else "?"
        raise DownloadError(
            f"the hub at {endpoint} refused {exc.response.request.url if exc.response is not None else REPO_ID} "
            f"(HTTP {status}); check HF_ENDPOINT and your token (HF_TOKEN), or " + manual_instructions(to, endpoint)
        ) from exc
    except OSError as exc:  # disk full, unwritable folder, a transfer cut short (the library's size check)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DownloadError(f"download stopped ({reason}); run the same command again to resume") from exc
    finally:
        set_client_factory(default_client_factory)
