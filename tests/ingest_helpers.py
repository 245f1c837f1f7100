"""Helpers for the ingest tests: lake snapshots, tarball builders, a loopback HTTP server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path
from typing import Iterator

from pipeline.core.config import Warehouse


def snapshot(wh: Warehouse) -> dict[str, bytes]:
    """Every file under the warehouse root, relative path -> bytes (to prove nothing changed)."""
    return {str(p.relative_to(wh.root)): p.read_bytes() for p in sorted(wh.root.rglob("*")) if p.is_file()}


def lake_parts(wh: Warehouse, dataset: str, drop=("ingested_at",)) -> list[list[dict]]:
    """The dataset's rows part file by part file, in publish order, without the ingest timestamp (to compare two
    lakes built in different ways)."""
    import pyarrow.parquet as pq

    from pipeline.ingest.lake import part_files

    return [pq.read_table(p).drop_columns(list(drop)).to_pylist() for p in part_files(wh, dataset)]


def tmp_files(wh: Warehouse) -> list[Path]:
    return [p for p in wh.tmp.rglob("*") if p.is_file()] if wh.tmp.exists() else []


def make_tarball(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    """A tarball holding ``members`` (name -> bytes), names taken literally (even '../x' or '/x')."""
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def tar_folder(src: Path, path: Path, arcname: str = "aclImdb") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextlib.contextmanager
def serve_dir(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (random port) in a thread; yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def deadline(fn, *args, seconds: float = 20, **kw):
    """``fn(*args, **kw)`` in a thread; fails the test (instead of hanging it) if it blocks, e.g. on a FIFO."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds}s (blocked on a FIFO?)"
    if "error" in out:
        raise out["error"]
    return out.get("value")
