"""Streamed http(s) reads with a progress bar.

The aclImdb tarball is read straight off the socket into ``tarfile`` stream mode
(``pipeline.ingest.sources``), so nothing is unpacked to disk. ``download()`` saves a URL to a file
atomically for when a local copy is wanted.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterator

from tqdm.auto import tqdm

from pipeline.core.errors import InputError
from pipeline.core.storage import atomic_path

ACLIMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
USER_AGENT = "reviewflow/0.1 (+https://github.com/reviewflow)"


class DownloadError(InputError):
    """A URL could not be read. ``transient`` is True for errors worth retrying (network, 5xx)."""

    def __init__(self, message: str, *, url: str, transient: bool):
        super().__init__(message, path=url)
        self.url, self.transient = url, transient
        self.args = (f"{message} (url {url})",)


def is_url(source: str) -> bool:
    return str(source).lower().startswith(("http://", "https://"))


class ProgressReader(io.RawIOBase):
    """A read-only file object that counts bytes into a tqdm bar and checks the expected size.

    For a URL (``url`` set), network errors and a body shorter than ``total`` (Content-Length)
    raise a transient ``DownloadError``: a truncated download must not look like a complete one.
    """

    def __init__(self, raw: BinaryIO, bar: tqdm | None, total: int | None = None, url: str | None = None):
        self._raw, self._bar, self.total, self.url = raw, bar, total, url
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._raw.read(size)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            if self.url is None:
                raise
            raise DownloadError(f"network error after {self.bytes_read} bytes: {exc!r}", url=self.url,
                                transient=True) from None
        if data:
            self.bytes_read += len(data)
            if self._bar is not None:
                self._bar.update(len(data))
        elif self.url is not None and self.total is not None and self.bytes_read < self.total:
            raise DownloadError(f"connection closed after {self.bytes_read} of {self.total} bytes",
                                url=self.url, transient=True)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_url(url: str, *, timeout: float = 60.0, progress: bool = True,
             desc: str | None = None) -> Iterator[ProgressReader]:
    """Open ``url`` for streamed reading; yields a file object (with a tqdm bar over the bytes).

    Raises ``DownloadError`` for HTTP errors (404 -> not transient, 5xx -> transient), connection
    failures and short bodies (fewer bytes than Content-Length).
    """
    if not is_url(url):
        raise DownloadError("not an http(s) URL", url=url, transient=False)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code} {exc.reason}", url=url, transient=exc.code >= 500 or exc.code == 429) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.gaierror):  # no DNS (offline, or a typo in the host): retrying won't help
            raise DownloadError(f"cannot resolve host: {reason}", url=url, transient=False) from None
        raise DownloadError(f"cannot connect: {reason}", url=url, transient=True) from None
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or Path(url).name,
               disable=not progress, leave=False)
    try:
        with resp:
            yield ProgressReader(resp, bar, total, url=url)
    finally:
        bar.close()


@contextlib.contextmanager
def open_local(path: str | os.PathLike, *, progress: bool = True, desc: str | None = None) -> Iterator[ProgressReader]:
    """Open a local file with the same progress-bar wrapper as ``open_url``."""
    path = Path(path)
    total = path.stat().st_size
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or path.name,
               disable=not progress, leave=False)
    try:
        with open(path, "rb") as fh:
            yield ProgressReader(fh, bar, total)
    finally:
        bar.close()


def download(url: str, dest: str | os.PathLike, *, timeout: float = 60.0, progress: bool = True,
             chunk: int = 1 << 20) -> Path:
    """Save ``url`` to ``dest`` (streamed in ``chunk``-byte pieces; atomic: all or nothing)."""
    dest = Path(dest)
    with open_url(url, timeout=timeout, progress=progress) as src, atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            while block := src.read(chunk):
                out.write(block)
    return dest
