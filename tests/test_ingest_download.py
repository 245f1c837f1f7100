"""pipeline.ingest.download against a loopback server: which failures are worth a retry, time-outs, redirects."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import Iterator

import pytest

from pipeline.ingest.download import DownloadError, download, open_local, open_url

BODY = bytes(range(256)) * 64


class _Scripted(http.server.BaseHTTPRequestHandler):
    """``/status/<code>`` answers that code; ``/stall`` sends headers then nothing; ``/moved`` redirects to
    ``/body``, which sends ``BODY``."""

    def do_GET(self):
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.rsplit("/", 1)[1]))
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/body")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:100])
            self.wfile.flush()
            time.sleep(3)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One loopback server for the module (``_Scripted``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _read_all(url: str, **kw) -> bytes:
    with open_url(url, progress=False, **kw) as fh:
        return fh.read()


@pytest.mark.parametrize("code, transient", [(404, False), (403, False), (429, True), (500, True), (503, True)])
def test_http_errors_say_whether_a_retry_may_help(url, code, transient):
    with pytest.raises(DownloadError, match=rf"HTTP {code} .*status/{code}") as err:
        _read_all(f"{url}/status/{code}")
    assert err.value.transient is transient


def test_redirects_are_followed_and_the_body_is_read_whole(url):
    assert _read_all(f"{url}/moved") == BODY
    with open_url(f"{url}/body", progress=False) as fh:
        assert fh.read(6) == BODY[:6] and fh.read() == BODY[6:]   # read(n) gives n bytes, as tarfile expects


def test_a_stalled_body_times_out_as_a_transient_error(url):
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"network error after \d+ bytes") as err:
        _read_all(f"{url}/stall", timeout=0.5)
    assert err.value.transient and time.monotonic() - t0 < 2.5


def test_refused_connection_is_transient_an_unknown_host_is_not(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # nothing listens here once the socket is closed
    with pytest.raises(DownloadError, match="cannot connect") as refused:
        _read_all(f"http://127.0.0.1:{port}/x.tar.gz", timeout=2)
    assert refused.value.transient
    with pytest.raises(DownloadError, match="cannot resolve host") as unknown:
        download("https://no-such-host.invalid/x.tar.gz", tmp_path / "x.tar.gz", timeout=2, progress=False)
    assert unknown.value.transient is False and not (tmp_path / "x.tar.gz").exists()
    with pytest.raises(DownloadError, match="not an http"):
        _read_all("ftp://example.org/x.tar.gz")


def test_open_local_reads_the_file_with_a_byte_bar(tmp_path, capsys):
    path = tmp_path / "blob.bin"
    path.write_bytes(BODY)
    with open_local(path, progress=True) as fh:
        assert fh.read() == BODY
    assert "blob.bin" in capsys.readouterr().err
