"""A quick "can we reach this URL?" probe, so a job that needs the network fails in seconds, not minutes."""

from __future__ import annotations

import socket
import urllib.parse

from pipeline.core.errors import ReviewflowError

LOCAL_HINT = (
    "Point it at local data instead, e.g.\n"
    "  reviewflow run --source ../shared/data/imdb/train.parquet\n"
    "  reviewflow run --source /path/to/aclImdb            (an extracted aclImdb folder)\n"
    "  reviewflow run --source /path/to/aclImdb_v1.tar.gz  (the downloaded tarball)\n"
    "or any CSV / JSONL / Parquet file with a text column."
)


class OfflineError(ReviewflowError):
    """The source is a URL and its host cannot be reached."""


def probe_url(url: str, timeout: float = 3.0) -> None:
    """Resolve the URL's host and open a TCP connection to it within ``timeout`` seconds.

    Raises :class:`OfflineError` with a message saying how to use local data instead.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host:
        raise OfflineError(f"not a URL with a host: {url!r}\n{LOCAL_HINT}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise OfflineError(
            f"cannot reach {host}:{port} to download {url} ({type(exc).__name__}: {exc}); "
            f"no network?\n{LOCAL_HINT}"
        ) from None
