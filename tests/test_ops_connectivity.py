"""The main job's fail-fast network probe (pipeline/ingest/connectivity.py), against real loopback sockets."""

from __future__ import annotations

import socket
import time

import pytest

from pipeline.ingest.connectivity import OfflineError, probe_url
from pipeline.ingest.download import is_url
from pipeline.core.errors import ReviewflowError


def test_is_url():
    assert is_url("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz")
    assert is_url("http://127.0.0.1:8000/x.csv")
    assert not is_url("../shared/data/imdb/train.parquet") and not is_url("/data/aclImdb")


def test_probe_reaches_a_listening_loopback_port():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        probe_url(f"http://127.0.0.1:{srv.getsockname()[1]}/aclImdb_v1.tar.gz", timeout=2)


def test_probe_fails_fast_with_a_local_data_hint():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(OfflineError) as err:
        probe_url(f"http://127.0.0.1:{port}/aclImdb_v1.tar.gz", timeout=2)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "--source ../shared/data/imdb/train.parquet" in msg and "aclImdb" in msg
    assert isinstance(err.value, ReviewflowError)           # the CLI prints it without a traceback


def test_probe_unresolvable_host():
    with pytest.raises(OfflineError, match="cannot reach"):
        probe_url("https://no-such-host.invalid/aclImdb_v1.tar.gz", timeout=2)
