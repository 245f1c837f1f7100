"""Atomic file writes: write to a temp file beside the target, fsync, then rename over it.

Every temp file or folder made here carries its owner in its name (``.<target>.rf-<host>-<pid>-n<nonce>.…``,
the owner tag of :mod:`pipeline.core.liveness`), and the owner holds its owner lock in the temp's directory
(``<dir>/.rf-owners/<tag>.lock``) while the temp exists. A process killed with ``kill -9`` leaves its temp
behind and its lock free; :func:`sweep_dead` removes the temps whose owner's lock is free, and the stages
call it when they start (prepare: shards + scratch, register: models), so leftovers never pile up. No PID
is trusted and nothing is read from ``/proc``: a reused PID comes with another nonce, so another lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.core import liveness
from pipeline.core.errors import naming_path

_OWNER_RE = re.compile(r"\.(" + liveness.TAG_PATTERN + r")\.")


def owner_tag() -> str:
    """``rf-<host>-<pid>-n<nonce>``: names this process in temp names (see :mod:`pipeline.core.liveness`)."""
    return liveness.owner_tag()


def owner_is_alive(name: str, directory: str | os.PathLike) -> bool:
    """Is the process named in temp name ``name`` (in ``directory``) still running? Names without an owner
    tag, and owners on another host, count as alive (never removed by :func:`sweep_dead`)."""
    m = _OWNER_RE.search(name)
    return m is None or liveness.owner_alive(m.group(1), directory)


def sweep_dead(*directories: str | os.PathLike) -> list[str]:
    """Remove the temp files/folders in ``directories`` whose owner process is gone, then those owners'
    lock files; returns the temps' names. (A dead owner writes nothing more, so no age threshold is needed.)"""
    swept = []
    for d in map(Path, directories):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if not p.name.startswith(".") or owner_is_alive(p.name, d):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                swept.append(p.name)
        liveness.sweep_locks(d)
    return swept


def temp_prefix(name: str, directory: str | os.PathLike) -> str:
    """Prefix for a temp file/folder made for ``name`` in ``directory`` by this process, which holds its
    owner lock there until it exits (for temps made without :func:`atomic_path` / :func:`atomic_dir`)."""
    return f".{name}.{liveness.register(directory)}."


def remove_temp(path: str | os.PathLike) -> None:
    """Remove a temp file/folder named with :func:`temp_prefix` and end this process's hold on its directory
    (safe to call twice: the hold ends only with the temp's removal)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    liveness.release(path.parent)

@contextlib.contextmanager
def held_temp_prefix(name: str, directory: str | os.PathLike) -> Iterator[str]:
    """:func:`temp_prefix` for a temp whose life is this block: the owner lock is held only while it runs."""
    with liveness.holding(directory) as tag:
        yield f".{name}.{tag}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's directory; on success rename it onto ``target``.

    On any exception the temp file is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with liveness.holding(target.parent) as tag:     # our owner lock beside the temp while it exists
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{tag}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            with naming_path(target):       # an ENOSPC from Arrow/NumPy/DuckDB writes carries no file name
                yield tmp_path
                with open(tmp_path, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp_path, target)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    return write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Build a whole directory under a temp name, then rename it into place.

    Fails if ``target`` already exists when the rename happens (directories are immutable
    once published: prep ids and model versions are never rewritten).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with liveness.holding(target.parent) as tag:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}.", suffix=".tmp", dir=target.parent))
        try:
            with naming_path(target):
                yield tmp
                os.rename(tmp, target)  # atomic; raises if target is a non-empty dir
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
