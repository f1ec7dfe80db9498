"""The weights download: resumable, verified, and a fast clear failure offline."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from export import download as dl
from engines.layout import WEIGHT_FILES


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves every release path with the same payload, honouring Range and announcing the sha256 like the hub."""

    payload = b""
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _headers(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Linked-Size", str(len(self.payload)))
        self.send_header("X-Linked-Etag", '"' + hashlib.sha256(self.payload).hexdigest() + '"')
        self.end_headers()

    def do_HEAD(self) -> None:
        self._headers(200, self.payload)

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.requests.append(rng or "")
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            body = self.payload[start:]
            self._headers(206, body)
        else:
            body = self.payload
            self._headers(200, body)
        self.wfile.write(body)


@pytest.fixture()
def server():
    _RangeHandler.payload = bytes(range(256)) * 1000
    _RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_fetches_every_file_and_resumes_a_partial_one(server: str, tmp_path: Path) -> None:
    first = tmp_path / WEIGHT_FILES[0]
    first.parent.mkdir(parents=True)
    first.with_name(first.name + ".part").write_bytes(_RangeHandler.payload[:1000])

    files = dl.download(tmp_path, base_url=server, log=lambda s: None)

    assert [p.relative_to(tmp_path).as_posix() for p in files] == WEIGHT_FILES
    assert all(p.read_bytes() == _RangeHandler.payload for p in files)
    assert "bytes=1000-" in _RangeHandler.requests  # the partial file was continued, not restarted


def test_download_keeps_verified_files_and_sets_aside_a_different_one(server: str, tmp_path: Path) -> None:
    dl.download(tmp_path, base_url=server, log=lambda s: None)
    odd = tmp_path / WEIGHT_FILES[1]
    odd.write_bytes(b"user's own file")
    _RangeHandler.requests.clear()
    messages: list[str] = []

    dl.download(tmp_path, base_url=server, log=messages.append)

    assert len(_RangeHandler.requests) == 1  # only the replaced file was fetched again
    assert odd.with_name(odd.name + ".old").read_bytes() == b"user's own file"
    assert sum("already present and verified" in m for m in messages) == len(WEIGHT_FILES) - 1

    odd.write_bytes(b"another file of the user's")
    dl.download(tmp_path, base_url=server, log=messages.append)
    assert odd.with_name(odd.name + ".old").read_bytes() == b"user's own file"  # the first one is kept too
    assert odd.with_name(odd.name + ".old1").read_bytes() == b"another file of the user's"


def test_offline_download_fails_fast_with_manual_instructions(tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError) as err:
        dl.download(tmp_path, base_url="http://127.0.0.1:9", timeout=2)
    text = str(err.value)
    assert text.startswith("cannot reach http://127.0.0.1:9")
    for rel in WEIGHT_FILES:
        assert str(tmp_path / rel) in text


def test_cli_download_offline_prints_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from export.__main__ import main

    monkeypatch.setattr(dl, "HUB_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(dl.download, "__defaults__", ("http://127.0.0.1:9", 2.0, print))
    assert main(["download", "--to", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach http://127.0.0.1:9")
    assert "Traceback" not in err


def test_cli_without_the_export_tools_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
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


def test_a_complete_part_file_is_renamed_without_a_range_request(server: str, tmp_path: Path) -> None:
    first = tmp_path / WEIGHT_FILES[0]
    first.parent.mkdir(parents=True)
    first.with_name(first.name + ".part").write_bytes(_RangeHandler.payload)  # killed just before the rename

    files = dl.download(tmp_path, base_url=server, log=lambda s: None)

    assert files[0].read_bytes() == _RangeHandler.payload and not first.with_name(first.name + ".part").exists()
    assert _RangeHandler.requests == [""] * (len(WEIGHT_FILES) - 1)  # the others in full, that one not at all


def test_offline_rerun_keeps_the_files_present_with_a_warning(server: str, tmp_path: Path) -> None:
    dl.download(tmp_path, base_url=server, log=lambda s: None)
    messages: list[str] = []

    files = dl.download(tmp_path, base_url="http://127.0.0.1:9", timeout=2, log=messages.append)

    assert files == [tmp_path / rel for rel in WEIGHT_FILES]
    assert len(messages) == 1 and messages[0].startswith("warning: could not verify against the hub (")
    assert messages[0].endswith(f"); keeping the {len(WEIGHT_FILES)} files in {tmp_path}")
    (tmp_path / WEIGHT_FILES[-1]).unlink()  # one missing: nothing to keep, the manual instructions again
    with pytest.raises(dl.DownloadError, match=r"^cannot reach http://127.0.0.1:9"):
        dl.download(tmp_path, base_url="http://127.0.0.1:9", timeout=2, log=messages.append)


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """The hub's way with LFS files: /resolve answers HEAD with a 302 to /cdn carrying X-Linked-Size/-Etag (unless
    `linked` is off); /cdn answers with the file's Content-Length and an ETag that is not a sha256."""

    linked = True
    heads: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.heads.append(self.path)
        if self.path.startswith("/resolve/"):
            self.send_response(302)
            self.send_header("Location", "/cdn/" + self.path.removeprefix("/resolve/"))
            self.send_header("Content-Length", "0")
            if self.linked:
                self.send_header("X-Linked-Size", "1234")
                self.send_header("X-Linked-Etag", '"' + "ab" * 32 + '"')
        else:
            self.send_response(200)
            self.send_header("Content-Length", "999")
            self.send_header("ETag", '"cdn-etag-0042"')
        self.end_headers()


@pytest.fixture()
def hub():
    _HubHandler.heads = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_remote_info_reads_the_redirect_itself_and_follows_it_only_for_a_size(hub: str, monkeypatch) -> None:
    assert dl._remote_info(f"{hub}/resolve/model.pth", 2) == (1234, "ab" * 32)
    assert _HubHandler.heads == ["/resolve/model.pth"]  # the CDN's headers were not needed
    monkeypatch.setattr(_HubHandler, "linked", False)
    assert dl._remote_info(f"{hub}/resolve/model.pth", 2) == (999, None)  # size from the CDN; its ETag is no sha
    assert _HubHandler.heads[1:] == ["/resolve/model.pth", "/cdn/model.pth"]  # followed with HEAD (no do_GET here)
