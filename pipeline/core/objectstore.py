"""A warehouse whose durable copy lives on an object store (``s3://bucket/prefix``), worked on through a local mirror.

Every stage of the pipeline reads and writes plain local paths (atomic renames, file locks, DuckDB). Rather than
teach each one an object store, a command works on a local *mirror* of the warehouse: :func:`pull` brings in
what the command reads before it runs, :func:`push` publishes what it wrote after it succeeded. Only
:data:`SYNCED` folders travel; hidden names (temp files, locks, ``.tmp/``), ``reviews.duckdb`` (it stays with
the committer), ``scratch/`` and ``inbox/`` never do.

Publish rules on the store (S3 has atomic single-object PUTs and nothing else):

* data files (lake parts, shard files, model weights: write-once or content-addressed) go first, then the files
  that make them visible (:func:`publish_rank`): prep/pretrained ``manifest.json``, a model version's
  ``manifest.json`` then ``config.json``, the per-dataset champions and aliases, ``models/champion``, and last
  the append-only logs (``models/*.jsonl``) that record those moves (a line never tells of a move not made);
* nothing is ever deleted on the store: a file the mirror lacks may have been published by another machine;
* pointers (champions, aliases) are moved by conditional PUTs (:mod:`pipeline.core.conditional`):
  ``If-Match: <the ETag this mirror pulled>``, or ``If-None-Match: *`` for a new one, so of two machines that
  move a pointer from the same state exactly one wins, whatever the timing. The loser's push publishes none of
  its pointer moves (ones it already made in that push are put back; one it created stays, as nothing is deleted
  on the store, and the error says so) and none of its log lines, the mirror takes the store's pointers and logs
  again, and :class:`PublishConflict` (retry: exit 75) says who holds the pointer now;
* a log is appended by a conditional replace of the whole object (re-read, re-merge, retry on a refusal), so the
  lines of two machines appending at once both survive.

A pull takes a prep, pretrained or model folder only once its visibility file is on the store, and builds a
folder it lacks under a temp name before renaming it into place (readers on this machine see all or nothing).
It never rewrites a local file whose bytes equal the store's: ``.objectstore.json`` in the mirror records each
file's ETag, size and mtime when it was last synced, so an unchanged file costs one listing entry; without a
record, the ETag (the MD5 of a single-PUT object) or, failing that, a downloaded copy is compared first. A
pointer is pulled with its ETag from one GET (the condition of this mirror's next write of it), and the caller's
``verify_pointer_target`` (the registry's check of the version it names: this layer cannot import the registry)
runs before it replaces the mirror's copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pipeline.core.conditional import put_if, read_object
from pipeline.core.errors import InputError, IntegrityError, ReviewflowError, TemporaryFailure
from pipeline.core.storage import (atomic_dir, held_temp_prefix, read_json, sha256_file, write_bytes_atomic,
                                   write_json_atomic)

SYNCED = ("lake", "shards", "pretrained", "models")
STATE_FILE = ".objectstore.json"
_UNIT_MARKERS = {"shards": "manifest.json", "pretrained": "manifest.json", "models": "config.json"}
_POINTER_DIRS = ("models/champions/", "models/aliases/")   # small JSON pointers, not model versions
_NOT_UNITS = {"champions", "aliases"}
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
LOG_ATTEMPTS = 8        # conditional appends to one log before giving up (each refusal: another machine appended)

VerifyPointer = Callable[[str], None]   # called with the version a pulled pointer names; raises to refuse it


class PublishConflict(TemporaryFailure):
    """A pointer on the store was moved by another machine since this mirror pulled it: this push's pointer moves
    and log lines are not published. Retryable: the command run again pulls the new state and decides again."""


@dataclass
class SyncReport:
    """What one :func:`pull` or :func:`push` did, by relative path."""

    transferred: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)      # pull: units whose visibility file is not there yet
    pending: list[str] = field(default_factory=list)      # pull: changed here, not pushed yet (kept)
    conflicts: list[str] = field(default_factory=list)    # push: pointers moved on the store by another machine
    left: list[str] = field(default_factory=list)         # push: refused push's moves that could not be put back


def is_remote(location: str | os.PathLike | None) -> bool:
    """Is ``location`` an fsspec URL of a remote store (``s3://…``) rather than a local folder?"""
    text = str(location or "")
    return "://" in text and not text.startswith("file://")


def mirror_dir(uri: str, cache_root: str | os.PathLike) -> Path:
    """The local mirror of ``uri`` under ``cache_root``: readable name plus a digest, one folder per URI."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", uri.split("://", 1)[-1]).strip("-")[:60] or "warehouse"
    return Path(cache_root).expanduser().resolve() / f"{readable}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def publish_rank(rel: str) -> int:
    """Upload order: 0 data, then the files that make data visible, the serving champion pointer, then the logs
    that record the pointer moves."""
    parts = rel.split("/")
    if is_log(rel):
        return 6
    if rel == "models/champion":
        return 5
    if is_pointer(rel):
        return 4
    if len(parts) == 3 and parts[0] in _UNIT_MARKERS and parts[1] not in _NOT_UNITS:
        if parts[2] == "manifest.json":
            return 1 if parts[0] != "models" else 2
        if parts[0] == "models" and parts[2] == "config.json":
            return 3
    return 0


def is_pointer(rel: str) -> bool:
    """Champion and alias pointers: with the logs, the only files on the store ever replaced by other bytes (and
    so the only ones written under a condition)."""
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
    with held_temp_prefix(local.name, local.parent) as prefix:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=local.parent)
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


def pull(uri: str, local: str | os.PathLike, prefixes: Iterable[str] = SYNCED, *,
         verify_pointer_target: VerifyPointer | None = None) -> SyncReport:
    """Bring the store's files under ``prefixes`` into the mirror ``local`` (see the module doc). A prefix is a
    top folder of :data:`SYNCED` or one below it (a Dask worker needs only ``models/<version>``).

    Never deletes a local file; a local file the store has with other bytes is replaced (the store is the
    durable copy). A unit (prep, pretrained, model version) whose visibility file is not on the store yet is
    skipped; one the mirror lacks is built under a temp name and renamed into place.

    ``verify_pointer_target(version)`` is called for each champion/alias pointer taken from the store (after
    the model versions are in the mirror), before it replaces the mirror's copy; what it raises stops the pull
    and leaves the mirror's pointer as it was (the registry passes its version check here)."""
    local, prefixes = Path(local), tuple(prefixes)
    rep, state = SyncReport(), _State(local, uri)
    with _store_errors(uri, local, "pulling"):
        fs, root = _store(uri)
        listing = _remote_listing(fs, root, prefixes)
        try:
            _pull_listing(fs, listing, local, state, rep, verify_pointer_target)
        finally:
            state.save()
    return rep


def _pull_listing(fs, listing: dict, local: Path, state: _State, rep: SyncReport,
                  verify: VerifyPointer | None = None) -> None:
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
        if is_pointer(rel):
            _pull_pointer(fs, *listing[rel], rel, local / rel, state, rep, verify)
        else:
            _pull_file(fs, *listing[rel], rel, local / rel, state, rep)


def _pull_pointer(fs, path: str, info: dict, rel: str, local: Path, state: _State, rep: SyncReport,
                  verify: VerifyPointer | None) -> None:
    """A champion or alias pointer: its bytes and ETag from one GET (a listing's ETag and a later download may
    be of two different writes, and the recorded ETag is the condition of this mirror's next write)."""
    tag, rec = _tag(info), state.files.get(rel)
    if rec is not None and rec["tag"] == tag and local.is_file() and not state.unchanged(rel, local):
        rep.pending.append(rel)         # moved here since the last sync, not on the store: kept for the push
        return
    if state.unchanged(rel, local, tag):
        rep.unchanged += 1
        return
    got = read_object(fs, path)
    if got is None:
        return                          # gone since the listing: nothing to take
    if _take_pointer(rel, local, got, state, verify, f"s3://{path}"):
        rep.transferred.append(rel)
    else:
        rep.unchanged += 1


def _named_version(data: bytes, where: str) -> str | None:
    """The version a pointer's bytes name (None: an alias tombstone)."""
    try:
        version = json.loads(data)["version"]
        if version is None or isinstance(version, str):
            return version
    except (ValueError, TypeError, KeyError):
        pass
    raise IntegrityError(f"pointer {where} is damaged (no version in it): not taken into the local mirror; "
                         f"set it again with `reviewflow models promote VERSION` or `reviewflow models alias`")


def _take_pointer(rel: str, dest: Path, got: tuple[bytes, str], state: _State, verify: VerifyPointer | None,
                  where: str) -> bool:
    """Make ``dest`` hold the store's pointer ``got`` (bytes, ETag), after ``verify`` accepted the version it
    names, and record the ETag. -> whether the local bytes changed."""
    data, etag = got
    if verify is not None and (version := _named_version(data, where)) is not None:
        verify(version)
    same = dest.is_file() and dest.read_bytes() == data
    if not same:
        write_bytes_atomic(dest, data)
    state.record(rel, dest, etag)
    return not same


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


@dataclass
class _Push:
    """One push: the store, the mirror, its sync records and the report being filled."""

    fs: object
    root: str
    uri: str
    local: Path
    state: _State
    rep: SyncReport

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def where(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}"


def _push_data(p: _Push, rel: str) -> None:
    """A data or visibility file: written once (or content-addressed), so a plain PUT."""
    src, path = p.local / rel, p.path(rel)
    p.fs.put_file(str(src), path)
    p.state.record(rel, src, _tag(p.fs.info(path)))
    p.rep.transferred.append(rel)


def _push_pointers(p: _Push, rels: list[str]) -> str | None:
    """Move the pointers ``rels`` on the store, each only from the state this mirror pulled (a conditional PUT).
    All or none: at the first one refused, the ones already moved are put back. -> the refused one, or None."""
    done: list[tuple[str, tuple[bytes, str] | None, str]] = []
    for rel in rels:
        src, path = p.local / rel, p.path(rel)
        ours, rec = src.read_bytes(), p.state.files.get(rel)
        seen = rec["tag"] if rec else None
        now = read_object(p.fs, path)
        if now is not None and now[0] == ours:      # already there (a lost record, an earlier push of this mirror)
            p.state.record(rel, src, now[1])
            continue
        new = put_if(p.fs, path, ours, seen) if (now[1] if now else None) == seen else None
        if new is None:
            p.rep.conflicts.append(rel)
            p.rep.left.extend(_put_back(p, done))
            return rel
        done.append((rel, now, new))
        p.state.record(rel, src, new)
        p.rep.transferred.append(rel)
    return None


def _put_back(p: _Push, done: list[tuple[str, tuple[bytes, str] | None, str]]) -> list[str]:
    """Undo this push's pointer moves, newest first, each only if nobody moved it since. -> those left moved
    (one this push created stays: nothing is deleted on the store)."""
    left = []
    for rel, before, new in reversed(done):
        if before is None or put_if(p.fs, p.path(rel), before[0], new) is None:
            left.append(rel)
        else:
            p.rep.transferred.remove(rel)
    return left


def _restore(p: _Push, rels: list[str], verify: VerifyPointer | None) -> tuple[dict[str, bytes | None], list[str]]:
    """After a refused push: the mirror's pointers and logs ``rels`` take the store's bytes again, so the mirror
    never claims a move (or a log line) the store refused. -> ({rel: store bytes}, pointers whose store version
    ``verify`` refused: removed from the mirror, the next pull tries again)."""
    now_at, unverified = {}, []
    for rel in rels:
        dest, got = p.local / rel, read_object(p.fs, p.path(rel))
        now_at[rel] = got[0] if got else None
        try:
            if got is None:
                raise FileNotFoundError(rel)
            if is_pointer(rel):
                _take_pointer(rel, dest, got, p.state, verify, p.where(rel))
            else:
                write_bytes_atomic(dest, got[0])
                p.state.record(rel, dest, got[1])
        except (ReviewflowError, FileNotFoundError) as exc:
            dest.unlink(missing_ok=True)
            p.state.files.pop(rel, None)
            if not isinstance(exc, FileNotFoundError):
                unverified.append(rel)
    return now_at, unverified


def _merge(theirs: bytes, ours: bytes) -> bytes:
    """An append-only log: the store's lines, then this mirror's lines the store lacks (order-free: appends from
    two machines commute)."""
    if theirs and not theirs.endswith(b"\n"):
        theirs += b"\n"
    known = set(theirs.split(b"\n"))
    return theirs + b"".join(line + b"\n" for line in ours.split(b"\n") if line and line not in known)


def _push_log(p: _Push, rel: str) -> None:
    """Append this mirror's new lines by a conditional replace of the whole log; when another machine appended
    first, re-read and re-merge (at most :data:`LOG_ATTEMPTS` times)."""
    src, path = p.local / rel, p.path(rel)
    ours = src.read_bytes()
    for attempt in range(LOG_ATTEMPTS):
        got = read_object(p.fs, path)
        theirs, seen = got if got is not None else (b"", None)
        merged = _merge(theirs, ours)
        new = seen if merged == theirs else put_if(p.fs, path, merged, seen)
        if new is not None or (merged == theirs and not merged):
            if merged != ours:
                write_bytes_atomic(src, merged)
            if new is not None:
                p.state.record(rel, src, new)
            p.rep.transferred.extend([rel] if merged != theirs else [])
            return
        time.sleep(random.uniform(0, 0.02 * 2 ** attempt))
    raise TemporaryFailure(f"appending to {p.where(rel)} was refused {LOG_ATTEMPTS} times in a row (other machines "
                           f"kept appending); nothing of it was lost: run the command again")


def push(local: str | os.PathLike, uri: str, prefixes: Iterable[str] = SYNCED, *,
         verify_pointer_target: VerifyPointer | None = None) -> SyncReport:
    """Publish the mirror's new or changed files under ``prefixes`` to the store: data first, visibility files
    after, then the pointers (conditionally, ``models/champion`` last), then the logs (see the module doc).
    Deletes nothing on the store. A pointer another machine moved since this mirror pulled it refuses this
    push's pointer moves and log lines: the mirror takes the store's again (``verify_pointer_target`` as in
    :func:`pull`) and :class:`PublishConflict` is raised, after the data files are up."""
    local, prefixes = Path(local), tuple(prefixes)
    rep, state = SyncReport(), _State(local, uri)
    with _store_errors(uri, local, "pushing"):
        fs, root = _store(uri)
        files = _local_files(local, prefixes)
        changed = sorted((r for r in files if not state.unchanged(r, local / r)),
                         key=lambda r: (publish_rank(r), r))
        rep.unchanged = len(files) - len(changed)
        p = _Push(fs, root, uri, local, state, rep)
        try:
            for rel in (r for r in changed if not is_pointer(r) and not is_log(r)):
                _push_data(p, rel)
            moves, logs = [r for r in changed if is_pointer(r)], [r for r in changed if is_log(r)]
            refused = _push_pointers(p, moves)
            if refused is not None:
                now_at, unverified = _restore(p, moves + logs, verify_pointer_target)
                raise PublishConflict(_refusal(p, refused, now_at.get(refused), unverified))
            for rel in logs:
                _push_log(p, rel)
        finally:
            state.save()
    return rep


def _refusal(p: _Push, rel: str, now: bytes | None, unverified: list[str]) -> str:
    """The one line a refused push says: which pointer, who holds it now, what to do."""
    what = ("serving champion pointer" if rel == "models/champion" else
            "dataset champion pointer" if rel.startswith("models/champions/") else "alias pointer")
    try:
        names = "nothing" if now is None else (_named_version(now, p.where(rel)) or "no version (removed)")
    except IntegrityError:
        names = "damaged bytes"
    text = (f"{what} {p.where(rel)} was moved by another machine since this command read it (now names {names}); "
            f"pull and retry (run the command again): none of this command's pointer moves or log lines were "
            f"published, and the local mirror holds the store's pointers again")
    if p.rep.left:
        text += (f"; {', '.join(p.rep.left)} could not be put back (new on the store, or moved again since) and "
                 f"name(s) what this command set")
    if unverified:
        text += f"; the store's {', '.join(unverified)} failed verification and were left out of the local mirror"
    return text
