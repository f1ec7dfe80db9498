"""The weights download through huggingface_hub, against a fake hub on 127.0.0.1 (no network): resumable,
verified only by the sha256 the hub itself announces, https only, a mirror from HF_ENDPOINT, a fast clear failure
offline."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path
from typing import Iterator

import pytest
from huggingface_hub import constants

from engines.layout import WEIGHT_FILES
from export import download as dl

PAYLOAD = bytes(range(256)) * 1000
COMMIT = "c" * 40
PREFIX = f"/{dl.REPO_ID}/resolve/main/"


class FakeHub:
    """Two servers like the hub and its CDN: the hub answers /resolve with a 302 to the CDN (another origin) that
    carries X-Repo-Commit and, like the real hub for LFS files, X-Linked-Size / X-Linked-Etag (the sha256); the CDN
    serves the bytes (with Range) under its own ETag, which is no sha256."""

    def __init__(self) -> None:
        self.payload = PAYLOAD
        self.cdn_payload: bytes | None = None  # a CDN that serves other bytes than the hub announced
        self.linked = True  # False: the hub's answer lacks X-Linked-*, like a plain git file
        self.cdn_location: str | None = None  # override of the redirect target (e.g. a plain-http host)
        self.cut_first_get = False  # the first transfer stops half-way (a dropped connection)
        self.gets: list[str] = []  # Range header of each GET to the CDN ("" for a whole file)
        self.hub_requests: list[str] = []
        self.servers = [self._serve(self._hub_handler()), self._serve(self._cdn_handler())]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers)

    @staticmethod
    def _serve(handler: type) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()

    def _hub_handler(self) -> type:
        hub = self

        class Hub(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.hub_requests.append(self.path)
                if not self.path.startswith(PREFIX) or self.path.removeprefix(PREFIX) not in WEIGHT_FILES:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self.send_response(302)
                self.send_header("Location", hub.cdn_location or hub.cdn_url + "/cdn/" + self.path.removeprefix(PREFIX))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.send_header("ETag", '"' + "1" * 40 + '"')  # the git blob id, as the hub sends it
                if hub.linked:
                    self.send_header("X-Linked-Size", str(len(hub.payload)))
                    self.send_header("X-Linked-Etag", '"' + hashlib.sha256(hub.payload).hexdigest() + '"')
                self.end_headers()

            do_GET = do_HEAD

        return Hub

    def _cdn_handler(self) -> type:
        hub = self

        class Cdn(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, with_body: bool) -> None:
                data = hub.payload if hub.cdn_payload is None else hub.cdn_payload
                rng = self.headers.get("Range", "")
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"cdn-etag-0042"')
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not with_body:
                    return
                hub.gets.append(rng)
                if hub.cut_first_get and len(hub.gets) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._answer(False)

            def do_GET(self) -> None:
                self._answer(True)

        return Cdn


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    fake = FakeHub()
    yield fake
    fake.close()


def test_download_fetches_every_file_verified_and_keeps_them_on_a_rerun(hub: FakeHub, tmp_path: Path) -> None:
    messages: list[str] = []
    files = dl.download(tmp_path, endpoint=hub.url, log=messages.append)

    assert [p.relative_to(tmp_path).as_posix() for p in files] == WEIGHT_FILES
    assert all(p.read_bytes() == PAYLOAD for p in files)
    assert messages == [f"{rel}: downloaded and verified (sha256)" for rel in WEIGHT_FILES]
    assert hub.gets == [""] * len(WEIGHT_FILES)

    messages.clear()
    dl.download(tmp_path, endpoint=hub.url, log=messages.append)
    assert messages == [f"{rel}: already present and verified (sha256)" for rel in WEIGHT_FILES]
    assert len(hub.gets) == len(WEIGHT_FILES)  # nothing fetched again


def test_a_dropped_transfer_is_retried_and_nothing_partial_is_left(hub: FakeHub, tmp_path: Path) -> None:
    hub.cut_first_get = True

    files = dl.download(tmp_path, endpoint=hub.url, log=lambda s: None)

    assert files[0].read_bytes() == PAYLOAD
    assert len(hub.gets) == len(WEIGHT_FILES) + 1  # the cut one was fetched again by the library
    assert not [p for p in tmp_path.rglob("*.incomplete")]


def test_hf_endpoint_mirror_is_used(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")

    dl.download(tmp_path, log=lambda s: None)

    assert hub.hub_requests[0] == PREFIX + WEIGHT_FILES[0]
    assert (tmp_path / WEIGHT_FILES[-1]).read_bytes() == PAYLOAD


def test_a_users_different_file_is_set_aside_never_overwritten(hub: FakeHub, tmp_path: Path) -> None:
    dl.download(tmp_path, endpoint=hub.url, log=lambda s: None)
    odd = tmp_path / WEIGHT_FILES[1]
    odd.write_bytes(b"user's own file")
    hub.gets.clear()
    messages: list[str] = []

    dl.download(tmp_path, endpoint=hub.url, log=messages.append)

    assert hub.gets == [""]  # only that file was fetched again
    assert odd.read_bytes() == PAYLOAD
    assert odd.with_name(odd.name + ".old").read_bytes() == b"user's own file"
    assert f"{WEIGHT_FILES[1]}: existing file differs from the release, kept as {odd.name}.old" in messages
    odd.write_bytes(b"another file of the user's")
    dl.download(tmp_path, endpoint=hub.url, log=messages.append)
    assert odd.with_name(odd.name + ".old").read_bytes() == b"user's own file"  # the first one is kept too
    assert odd.with_name(odd.name + ".old1").read_bytes() == b"another file of the user's"


def test_bytes_that_do_not_match_the_hubs_sha256_are_removed(hub: FakeHub, tmp_path: Path) -> None:
    hub.cdn_payload = bytes(reversed(PAYLOAD))  # same size, other bytes: only the sha256 can tell

    with pytest.raises(dl.DownloadError) as err:
        dl.download(tmp_path, endpoint=hub.url, log=lambda s: None)

    assert str(err.value) == (
        f"{WEIGHT_FILES[0]}: sha256 does not match the release; the file was removed, run the command again"
    )
    assert not (tmp_path / WEIGHT_FILES[0]).exists()


def test_without_the_hubs_sha256_nothing_is_downloaded_or_called_verified(hub: FakeHub, tmp_path: Path) -> None:
    dl.download(tmp_path, endpoint=hub.url, log=lambda s: None)
    (tmp_path / WEIGHT_FILES[0]).write_bytes(PAYLOAD[:1000])  # truncated, as after a crash of an old version
    hub.linked, hub.gets = False, []  # the CDN still announces a size and an ETag: they must not count

    with pytest.raises(dl.DownloadError) as err:
        dl.download(tmp_path, endpoint=hub.url, log=lambda s: None)

    assert str(err.value) == (
        f"{WEIGHT_FILES[0]}: the hub announced no sha256 for it, so it cannot be verified; refusing it"
    )
    assert hub.gets == []


def test_plain_http_is_refused_for_the_hub_and_for_a_redirect(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError, match=r"^refusing http://hf-mirror\.example: downloads go over https only"):
        dl.download(tmp_path, endpoint="http://hf-mirror.example", log=lambda s: None)

    hub.cdn_location = "http://cdn.example/file"  # refused before any connection is tried (no network needed)
    with pytest.raises(dl.DownloadError, match=r"^refusing http://cdn\.example/file: downloads go over https only"):
        dl.download(tmp_path, endpoint=hub.url, log=lambda s: None)
    assert not (tmp_path / WEIGHT_FILES[0]).exists()


def test_offline_download_fails_fast_with_manual_instructions(tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError) as err:
        dl.download(tmp_path, endpoint="http://127.0.0.1:9")
    text = str(err.value)
    assert text.startswith("cannot reach http://127.0.0.1:9 (")
    for rel in WEIGHT_FILES:
        assert f"http://127.0.0.1:9/{dl.REPO_ID}/resolve/main/{rel}  ->  {tmp_path / rel}" in text


def test_hf_hub_offline_gives_the_same_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(dl.DownloadError, match=r"^cannot reach https://huggingface\.co \(.*offline mode is enabled"):
        dl.download(tmp_path, endpoint="https://huggingface.co")


def test_offline_rerun_keeps_the_files_present_with_a_warning(hub: FakeHub, tmp_path: Path) -> None:
    dl.download(tmp_path, endpoint=hub.url, log=lambda s: None)
    messages: list[str] = []

    files = dl.download(tmp_path, endpoint="http://127.0.0.1:9", log=messages.append)

    assert files == [tmp_path / rel for rel in WEIGHT_FILES]
    assert len(messages) == 1 and messages[0].startswith("warning: could not verify against the hub (")
    assert messages[0].endswith(f"); keeping the {len(WEIGHT_FILES)} unverified files in {tmp_path}")
    (tmp_path / WEIGHT_FILES[-1]).unlink()  # one missing: nothing to keep, the manual instructions again
    with pytest.raises(dl.DownloadError, match=r"^cannot reach http://127.0.0.1:9"):
        dl.download(tmp_path, endpoint="http://127.0.0.1:9", log=messages.append)


def test_cli_download_offline_prints_the_error_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from export.__main__ import main

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert main(["download", "--to", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach http://127.0.0.1:9 (")
    assert "Traceback" not in err


def test_cli_without_the_export_tools_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from export.__main__ import main

    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine with only requirements.txt
    monkeypatch.delitem(sys.modules, "export.fake_weights", raising=False)
    assert main(["fake-weights", "--to", str(tmp_path / "w")]) == 1
    assert capsys.readouterr().err == (
        "error: `python -m export fake-weights` needs the torch package; install the export tools with: "
        "pip install -r requirements-export.txt\n"
    )
