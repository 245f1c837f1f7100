"""A warehouse whose durable copy lives on an object store (``s3://bucket/prefix``), worked on through a local mirror.

Every stage of the pipeline reads and writes plain local paths (atomic renames, file locks, DuckDB). Rather than
teach each one an object store, a command works on a local *mirror* of the warehouse: :func:`pull` brings in
what the command reads before it runs, :func:`push` publishes what it wrote after it succeeded. Only
:data:`SYNCED` folders travel; hidden names (temp files, locks, ``.tmp/``), ``reviews.duckdb`` (it stays with
the committer), ``scratch/`` and ``inbox/`` never do.

Publish rules on the store (S3 has atomic single-object PUTs and nothing else):

* data files (lake parts, shard files, model weights: write-once or content-addressed) go first, then the files
  that make them visible (:func:`publish_rank`): prep/pretrained ``manifest.json``, a model version's
  ``manifest.json`` then ``config.json``, the per-dataset champions and aliases, ``models/champion`` last;
* nothing is ever deleted on the store: a file the mirror lacks may have been published by another machine;
* a champion or alias pointer that another machine moved since this mirror last saw it is not overwritten
  (:class:`PublishConflict`); the append-only logs (``models/*.jsonl``) are merged line by line.

A pull takes a prep, pretrained or model folder only once its visibility file is on the store, and builds a
folder it lacks under a temp name before renaming it into place (readers on this machine see all or nothing).
It never rewrites a local file whose bytes equal the store's: ``.objectstore.json`` in the mirror records each
file's ETag, size and mtime when it was last synced, so an unchanged file costs one listing entry; without a
record, the ETag (the MD5 of a single-PUT object) or, failing that, a downloaded copy is compared first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.core.errors import InputError, ReviewflowError, TemporaryFailure
from pipeline.core.storage import (atomic_dir, read_json, sha256_file, temp_prefix, write_bytes_atomic,
                                   write_json_atomic)

SYNCED = ("lake", "shards", "pretrained", "models")
STATE_FILE = ".objectstore.json"
_UNIT_MARKERS = {"shards": "manifest.json", "pretrained": "manifest.json", "models": "config.json"}
_POINTER_DIRS = ("models/champions/", "models/aliases/")   # small JSON pointers, not model versions
_NOT_UNITS = {"champions", "aliases"}
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


class PublishConflict(ReviewflowError):
    """A pointer on the store was moved by another machine since this mirror synced it: not overwritten."""


@dataclass
class SyncReport:
    """What one :func:`pull` or :func:`push` did, by relative path."""

    transferred: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)      # pull: units whose visibility file is not there yet
    pending: list[str] = field(default_factory=list)      # pull: changed here, not pushed yet (kept)
    conflicts: list[str] = field(default_factory=list)    # push: pointers moved on the store by another machine


def is_remote(location: str | os.PathLike | None) -> bool:
    """Is ``location`` an fsspec URL of a remote store (``s3://…``) rather than a local folder?"""
    text = str(location or "")
    return "://" in text and not text.startswith("file://")


def mirror_dir(uri: str, cache_root: str | os.PathLike) -> Path:
    """The local mirror of ``uri`` under ``cache_root``: readable name plus a digest, one folder per URI."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", uri.split("://", 1)[-1]).strip("-")[:60] or "warehouse"
    return Path(cache_root).expanduser().resolve() / f"{readable}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def publish_rank(rel: str) -> int:
    """Upload order: 0 data, then the files that make data visible, the serving champion pointer last."""
    parts = rel.split("/")
    if rel == "models/champion":
        return 5
    if is_log(rel) or is_pointer(rel):
        return 4
    if len(parts) == 3 and parts[0] in _UNIT_MARKERS and parts[1] not in _NOT_UNITS:
        if parts[2] == "manifest.json":
            return 1 if parts[0] != "models" else 2
        if parts[0] == "models" and parts[2] == "config.json":
            return 3
    return 0


def is_pointer(rel: str) -> bool:
    """Champion and alias pointers: with the logs, the only files on the store ever replaced by other bytes."""
    return rel == "models/champion" or rel.startswith(_POINTER_DIRS)


def is_log(rel: str) -> bool:
    """``models/promotions.jsonl``, ``models/aliases.jsonl``: append-only logs, merged line by line on push."""
    return rel.startswith("models/") and rel.count("/") == 1 and rel.endswith(".jsonl")


def _synced(rel: str, prefixes: Iterable[str]) -> bool:
    """Is ``rel`` under one of ``prefixes`` (``models``, or narrower: ``models/<version>``) and not hidden?"""
    return (any(rel.startswith(p.rstrip("/") + "/") for p in prefixes)
            and not any(part.startswith(".") for part in rel.split("/")))


def _store(uri: str):
    import fsspec       # deferred: s3fs/botocore load only for a warehouse on an object store

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise InputError(f"warehouse {uri!r} cannot be used: {exc}") from None
    if not root.strip("/"):
        raise InputError(f"warehouse {uri!r} names no bucket: give s3://bucket/prefix")
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def _tag(info: dict) -> str:
    """The store's fingerprint of an object's bytes (S3: its ETag)."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    return f"{info.get('size')}-{info.get('mtime') or info.get('LastModified') or info.get('created')}"


class _State:
    """``.objectstore.json``: per file, the store's tag and the local size/mtime when it was last synced."""

    def __init__(self, local: Path, uri: str):
        self.path, self.uri = local / STATE_FILE, uri
        try:
            data = read_json(self.path)
            self.files = data["files"] if data.get("uri") == uri else {}
        except (OSError, ValueError, KeyError, AttributeError):
            self.files = {}

    def unchanged(self, rel: str, local: Path, tag: str | None = None) -> bool:
        rec = self.files.get(rel)
        if rec is None or not local.is_file() or (tag is not None and rec["tag"] != tag):
            return False
        st = local.stat()
        return rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns

    def record(self, rel: str, local: Path, tag: str) -> None:
        st = local.stat()
        self.files[rel] = {"tag": tag, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def save(self) -> None:
        write_json_atomic(self.path, {"uri": self.uri, "files": self.files})


@contextlib.contextmanager
def _store_errors(uri: str, local: Path, what: str) -> Iterator[None]:
    """The store's I/O errors as reviewflow errors naming the store: a missing bucket or refused credentials is
    the user's to fix (exit 2), anything else (network) may pass (exit 75)."""
    try:
        yield
    except ReviewflowError:
        raise
    except (FileNotFoundError, PermissionError) as exc:
        raise InputError(f"{what} warehouse {uri} failed: {type(exc).__name__}: {exc} (the bucket must exist; "
                         f"credentials and endpoint come from the AWS_* variables)") from exc
    except (OSError, RuntimeError) as exc:
        raise TemporaryFailure(f"{what} warehouse {uri} (local mirror {local}) failed: "
                               f"{type(exc).__name__}: {exc}") from exc


def _same_bytes(fs, path: str, info: dict, local: Path) -> bool | None:
    """Do ``local``'s bytes equal the object's? None when only a download can tell (multipart ETag)."""
    if not local.is_file() or local.stat().st_size != info.get("size"):
        return False
    etag = _tag(info)
    if not _MD5_RE.match(etag):
        return None
    h = hashlib.md5(usedforsecurity=False)
    with open(local, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest() == etag


def _download(fs, path: str, local: Path) -> bool:
    """Fetch the object beside ``local`` and rename it into place, unless its bytes equal ``local``'s
    (then the local file is left untouched). -> whether ``local`` was replaced."""
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(local.name), suffix=".tmp", dir=local.parent)
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        if local.is_file() and sha256_file(tmp) == sha256_file(local):
            return False
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, local)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _pull_file(fs, path: str, info: dict, rel: str, local: Path, state: _State, rep: SyncReport) -> None:
    tag = _tag(info)
    rec = state.files.get(rel)
    if rec is not None and rec["tag"] == tag and local.is_file() and not state.unchanged(rel, local):
        rep.pending.append(rel)         # changed here since the last sync, not on the store: kept for the push
        return
    if state.unchanged(rel, local, tag) or _same_bytes(fs, path, info, local) is True:
        rep.unchanged += 1
    elif _download(fs, path, local):
        rep.transferred.append(rel)
    else:
        rep.unchanged += 1
    state.record(rel, local, tag)


def _unit_of(rel: str) -> str | None:
    """``shards/<id>``, ``pretrained/<id>`` or ``models/<version>``: folders published as a whole."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0] in _UNIT_MARKERS and parts[1] not in _NOT_UNITS:
        return "/".join(parts[:2])
    return None


def _remote_listing(fs, root: str, prefixes: Iterable[str]) -> dict[str, tuple[str, dict]]:
    """``{relative path: (store path, info)}`` of the synced files under ``prefixes``."""
    found = {}
    for prefix in prefixes:
        for path, info in fs.find(posixpath.join(root, prefix), detail=True).items():
            rel = path[len(root) + 1:] if root else path
            if info.get("type", "file") == "file" and _synced(rel, prefixes):
                found[rel] = (path, info)
    return found


def pull(uri: str, local: str | os.PathLike, prefixes: Iterable[str] = SYNCED) -> SyncReport:
    """Bring the store's files under ``prefixes`` into the mirror ``local`` (see the module doc). A prefix is a
    top folder of :data:`SYNCED` or one below it (a Dask worker needs only ``models/<version>``).

    Never deletes a local file; a local file the store has with other bytes is replaced (the store is the
    durable copy). A unit (prep, pretrained, model version) whose visibility file is not on the store yet is
    skipped; one the mirror lacks is built under a temp name and renamed into place."""
    local, prefixes = Path(local), tuple(prefixes)
    rep, state = SyncReport(), _State(local, uri)
    with _store_errors(uri, local, "pulling"):
        fs, root = _store(uri)
        listing = _remote_listing(fs, root, prefixes)
        try:
            _pull_listing(fs, listing, local, state, rep)
        finally:
            state.save()
    return rep


def _pull_listing(fs, listing: dict, local: Path, state: _State, rep: SyncReport) -> None:
    """Loose data files (lake parts), then whole units, then the pointers and logs that refer to them."""
    units: dict[str, list[str]] = {}
    for rel in listing:
        units.setdefault(_unit_of(rel) or "", []).append(rel)
    loose = sorted(units.pop("", []), key=lambda r: (publish_rank(r), r))
    for rel in (r for r in loose if publish_rank(r) == 0):
        _pull_file(fs, *listing[rel], rel, local / rel, state, rep)
    for unit, rels in sorted(units.items()):
        if f"{unit}/{_UNIT_MARKERS[unit.split('/')[0]]}" not in listing:
            rep.skipped.append(unit)
        else:
            _pull_unit(fs, listing, unit, sorted(rels, key=lambda r: (publish_rank(r), r)), local, state, rep)
    for rel in (r for r in loose if publish_rank(r) > 0):
        _pull_file(fs, *listing[rel], rel, local / rel, state, rep)


def _pull_unit(fs, listing: dict, unit: str, rels: list[str], local: Path, state: _State, rep: SyncReport) -> None:
    """One prep/pretrained/model folder: file by file into an existing one, else whole under a temp name."""
    target = local / unit
    if target.is_dir():
        for rel in rels:
            _pull_file(fs, *listing[rel], rel, local / rel, state, rep)
        return
    with atomic_dir(target) as tmp:
        for rel in rels:
            dest = tmp / rel[len(unit) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(listing[rel][0], str(dest))
    for rel in rels:
        state.record(rel, local / rel, _tag(listing[rel][1]))
        rep.transferred.append(rel)


def _local_files(local: Path, prefixes: tuple[str, ...]) -> list[str]:
    found = []
    for prefix in prefixes:
        base = local / prefix
        if base.is_dir():
            for path in base.rglob("*"):
                rel = path.relative_to(local).as_posix()
                if path.is_file() and not path.is_symlink() and _synced(rel, prefixes):
                    found.append(rel)
    return found


def _info(fs, path: str) -> dict | None:
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _push_pointer(fs, path: str, rel: str, src: Path, state: _State, rep: SyncReport) -> bool:
    """PUT a champion pointer unless another machine moved it since this mirror synced it. -> uploaded?"""
    info = _info(fs, path)
    if info is not None:
        if fs.cat_file(path) == src.read_bytes():
            state.record(rel, src, _tag(info))
            return False
        rec = state.files.get(rel)
        if rec is None or rec["tag"] != _tag(info):
            rep.conflicts.append(rel)
            return False
    fs.pipe_file(path, src.read_bytes())            # small: one PUT, atomic
    return True


def _push_log(fs, path: str, src: Path) -> bool:
    """An append-only log: the store's lines, then this mirror's lines the store lacks."""
    theirs = fs.cat_file(path).decode() if _info(fs, path) is not None else ""
    ours = src.read_text()
    known = set(theirs.splitlines())
    merged = theirs + "".join(line + "\n" for line in ours.splitlines() if line not in known)
    if merged != ours:
        write_bytes_atomic(src, merged.encode())
    if merged == theirs:
        return False
    fs.pipe_file(path, merged.encode())
    return True


def push(local: str | os.PathLike, uri: str, prefixes: Iterable[str] = SYNCED) -> SyncReport:
    """Publish the mirror's new or changed files under ``prefixes`` to the store, data first, visibility
    files after, ``models/champion`` last (see the module doc). Deletes nothing on the store. A pointer another
    machine moved is left as it is and reported: :class:`PublishConflict` after everything else is up."""
    local, prefixes = Path(local), tuple(prefixes)
    rep, state = SyncReport(), _State(local, uri)
    with _store_errors(uri, local, "pushing"):
        fs, root = _store(uri)
        files = _local_files(local, prefixes)
        changed = [r for r in files if not state.unchanged(r, local / r)]
        rep.unchanged = len(files) - len(changed)
        try:
            for rel in sorted(changed, key=lambda r: (publish_rank(r), r)):
                src, path = local / rel, posixpath.join(root, rel)
                if is_pointer(rel):
                    sent = _push_pointer(fs, path, rel, src, state, rep)
                elif is_log(rel):
                    sent = _push_log(fs, path, src)
                else:
                    fs.put_file(str(src), path)
                    sent = True
                if rel in rep.conflicts:
                    continue                        # not recorded: the next pull takes the store's
                info = fs.info(path) if sent else _info(fs, path) if is_log(rel) else None
                if info is not None:
                    state.record(rel, src, _tag(info))
                rep.transferred.extend([rel] if sent else [])
        finally:
            state.save()
    if rep.conflicts:
        raise PublishConflict(
            f"{', '.join(rep.conflicts)} on {uri} changed on another machine since this one last synced; kept "
            f"the store's (everything else is published). Run the command again to work on the new state, "
            f"or `reviewflow models promote VERSION` to choose the champion")
    return rep
