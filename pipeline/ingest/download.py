"""Streamed http(s) reads (httpx) with a progress bar (tqdm).

The aclImdb tarball is read straight off the socket into ``tarfile`` stream mode
(``pipeline.ingest.readers.aclimdb``), so nothing is unpacked to disk. ``download()`` saves a URL to a file
atomically for when a local copy is wanted.

Every failure is a ``DownloadError`` whose ``transient`` says whether a retry may cure it: connection
failures, time-outs, 5xx / 429 answers and a body cut short (fewer bytes than Content-Length) are
transient; other 4xx answers and a host name that does not resolve are not. ``timeout`` bounds the
connection and each read, not the whole transfer.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from pathlib import Path
from typing import BinaryIO, Iterator

import httpx
from tqdm.auto import tqdm

from pipeline.core.errors import InputError
from pipeline.core.storage import atomic_path
from pipeline.core.userfiles import open_user_file

ACLIMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
USER_AGENT = "reviewflow/0.1 (+https://github.com/reviewflow)"
# the bytes exactly as sent: Content-Length counts them, and the tar reader decompresses by itself
HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}


class DownloadError(InputError):
    """A URL could not be read. ``transient`` is True for errors worth retrying (network, 5xx)."""

    def __init__(self, message: str, *, url: str, transient: bool):
        super().__init__(message, path=url)
        self.url, self.transient = url, transient
        self.args = (f"{message} (url {url})",)


def is_url(source: str) -> bool:
    return str(source).lower().startswith(("http://", "https://"))


class _Body(io.RawIOBase):
    """An httpx response body as a read-only file, since ``tarfile`` reads files and httpx yields chunks.

    Network errors while reading, and a body that ends before its Content-Length, raise a transient
    ``DownloadError``: a truncated download must not look like a complete one."""

    def __init__(self, response: httpx.Response, url: str):
        self._chunks, self._left, self.url = response.iter_raw(), b"", url
        length = response.headers.get("Content-Length")
        self.total = int(length) if length and length.isdigit() else None
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def _short(self) -> DownloadError:
        return DownloadError(f"connection closed after {self.bytes_read} of {self.total} bytes", url=self.url,
                             transient=True)

    def _next_chunk(self) -> bytes:
        try:
            return next(self._chunks, b"")
        except httpx.RemoteProtocolError as exc:
            if self.total is not None and self.bytes_read < self.total:
                raise self._short() from None
            raise DownloadError(f"network error after {self.bytes_read} bytes: {exc!r}", url=self.url,
                                transient=True) from None
        except httpx.HTTPError as exc:
            raise DownloadError(f"network error after {self.bytes_read} bytes: {exc!r}", url=self.url,
                                transient=True) from None

    def readinto(self, b) -> int:
        while not self._left:
            self._left = self._next_chunk()
            if not self._left:
                if self.total is not None and self.bytes_read < self.total:
                    raise self._short()
                return 0
        n = min(len(b), len(self._left))
        b[:n], self._left = self._left[:n], self._left[n:]
        self.bytes_read += n
        return n


def _connect_error(exc: httpx.HTTPError, url: str) -> DownloadError:
    """Why a request got no answer, and whether trying again may help (an unknown host: no)."""
    cause = exc
    while cause is not None and not isinstance(cause, socket.gaierror):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:  # no DNS (offline, or a typo in the host): retrying won't help
        return DownloadError(f"cannot resolve host: {cause}", url=url, transient=False)
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return DownloadError(f"not a valid URL: {exc}", url=url, transient=False)
    return DownloadError(f"cannot connect: {exc}", url=url, transient=True)


@contextlib.contextmanager
def _response(url: str, timeout: float) -> Iterator[httpx.Response]:
    """A streaming GET of ``url`` with a 2xx answer (redirects followed); errors as ``DownloadError``."""
    if not is_url(url):
        raise DownloadError("not an http(s) URL", url=url, transient=False)
    with httpx.Client(headers=HEADERS, timeout=timeout, follow_redirects=True) as client:
        try:
            response = client.send(client.build_request("GET", url), stream=True)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _connect_error(exc, url) from None
        with contextlib.closing(response):
            if response.is_error:
                code = response.status_code
                raise DownloadError(f"HTTP {code} {response.reason_phrase}", url=url,
                                    transient=code >= 500 or code == 429)
            yield response


def _byte_bar(stream: BinaryIO, total: int | None, desc: str, progress: bool):
    """``stream`` with its ``read`` counted into a tqdm bar of bytes (a context manager)."""
    return tqdm.wrapattr(stream, "read", total=total, desc=desc, disable=not progress, leave=False)


@contextlib.contextmanager
def open_url(url: str, *, timeout: float = 60.0, progress: bool = True,
             desc: str | None = None) -> Iterator[BinaryIO]:
    """Open ``url`` for streamed reading; yields a file object (with a tqdm bar over the bytes).

    Raises ``DownloadError`` for HTTP errors (404 -> not transient, 5xx -> transient), connection
    failures and short bodies (fewer bytes than Content-Length).
    """
    with _response(url, timeout) as response:
        body = _Body(response, url)
        buffered = io.BufferedReader(body, buffer_size=1 << 20)  # read(n) gives n bytes unless at the end
        with _byte_bar(buffered, body.total, desc or Path(url).name, progress) as fh:
            yield fh


@contextlib.contextmanager
def open_local(path: str | os.PathLike, *, progress: bool = True, desc: str | None = None,
               within: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """Open a user's local file (a tarball) with the same progress bar as ``open_url``: through
    ``open_user_file`` (no link followed, regular files only; ``within``: the folder it was found in)."""
    path = Path(path)
    with io.BufferedReader(open_user_file(path, within=within), buffer_size=1 << 20) as raw, \
            _byte_bar(raw, os.fstat(raw.fileno()).st_size, desc or path.name, progress) as fh:
        yield fh


def download(url: str, dest: str | os.PathLike, *, timeout: float = 60.0, progress: bool = True,
             chunk: int = 1 << 20) -> Path:
    """Save ``url`` to ``dest`` (streamed in ``chunk``-byte pieces; atomic: all or nothing)."""
    dest = Path(dest)
    with open_url(url, timeout=timeout, progress=progress) as src, atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            while block := src.read(chunk):
                out.write(block)
    return dest
