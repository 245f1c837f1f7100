"""The inbox: files dropped into ``<wh>/inbox/`` for the scheduled *ingest-and-score* deployment.

Life of a file (every move is an ``os.rename`` inside one filesystem, so it is atomic)::

    inbox/reviews.csv                       dropped by a user (write elsewhere, then move it in)
      -> inbox/processing/reviews.csv       claimed by exactly one run (rename fails for the loser)
      -> inbox/processed/reviews.csv        ingested and scored
      -> inbox/failed/reviews.csv           something went wrong; ``reviews.csv.error.txt`` says what
      -> inbox/reviews.csv                  ``reviewflow inbox retry reviews.csv`` (:func:`retry`)

An optional sidecar ``reviews.csv.reviewflow.json`` (``{"text": "review", "id": "id", "label": "stars_ok"}``)
says which columns hold what; it travels with its file through every folder (:func:`read_sidecar`).

Nothing is lost: a file is only ever renamed, never rewritten or deleted. Nothing is done twice:
a ledger keyed by the file's SHA-256 (``inbox/.ledger/<sha256>.json``, one small JSON file per
content, written atomically) records every file that was processed; a file whose content is already
in the ledger is moved to ``processed/`` without being ingested again. Files a crashed run left in
``processing/`` are put back into the inbox by :func:`recover_stale`.

Nothing in the inbox is followed or trusted to be a file (``pipeline.core.userfiles``): every entry is
``lstat``-ed, never ``stat``-ed; an entry with a review file's name that is not a regular file (a symbolic
link wherever it points, a FIFO, socket, device or a folder named ``x.csv``) is claimed like any file and
then moved to ``failed/`` as it is (the link itself, never its target) with ``<name>.error.txt`` saying what
it is; its target is never opened. Files and sidecars are opened with ``open_user_file(within=inbox)``: no
link followed on the way, not even a linked ``processing/``; the inbox's own folders must be real folders.

:func:`new_complete_files` is what ``reviewflow serve``'s watcher asks every few seconds: is there a file a
pass would take that it has not seen yet? Only then does it start a run (no run for an empty inbox).

No Prefect here: ``flows/inbox.py`` wraps these functions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError, NotFoundError
from pipeline.core.storage import read_json, write_bytes_atomic, write_json_atomic
from pipeline.core.userfiles import describe, folder_entries, open_user_file, read_user_file
from pipeline.ingest.columns import guess_text_column
from pipeline.ingest.detect import detect, sample_strings

SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")
PROCESSING, PROCESSED, FAILED, LEDGER = "processing", "processed", "failed", ".ledger"
SIDECAR, ERROR = ".reviewflow.json", ".error.txt"   # what may sit beside a file: its column map, why it failed
SIDECAR_KEYS = ("text", "id", "label")
RETRIED = ".retried"                                 # failed/.retried/: error texts of files sent back
SIDECAR_MAX_BYTES = 64 << 10                         # a column map is a few names: more is not a sidecar


@dataclass(frozen=True)
class Claim:
    """A file this process owns: it sits in ``inbox/processing/`` until :func:`complete`/:func:`fail`."""

    name: str          # the name it was dropped with
    path: Path         # where it is now (inside processing/)
    sha256: str
    size: int
    sidecar: Path | None = None   # its column-map sidecar, moved along (inside processing/)
    refused: str | None = None    # why it cannot be read (a link, a FIFO...): the pass moves it to failed/


def dirs(wh: Warehouse) -> dict[str, Path]:
    """Create (if needed) and return the inbox folders. A sub-folder that is a link (or not a folder) is
    refused: files are renamed into these folders and read from them, never through a link."""
    out = {"inbox": wh.inbox}
    for sub in (PROCESSING, PROCESSED, FAILED, LEDGER):
        out[sub] = wh.inbox / sub
    for name, p in out.items():
        p.mkdir(parents=True, exist_ok=True)
        if name != "inbox" and not stat.S_ISDIR((st := os.lstat(p)).st_mode):
            raise InputError(f"the inbox folder {name}/ is a {describe(p, st)}, not a folder; the inbox never "
                             f"moves or reads files through a link: replace it with a real folder", path=str(p))
    return out


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def is_review_file(p: Path) -> bool:
    """A file a pass takes: known suffix, not hidden (being written), not a sidecar or an error text."""
    name = p.name
    return (not name.startswith(".") and p.suffix.lower() in SUFFIXES and not name.endswith(SIDECAR)
            and not name.endswith(ERROR))


def _entries(folder: Path) -> list:
    """The review-file entries of ``folder`` (``lstat``-ed: a link is an entry, never its target)."""
    return [e for e in folder_entries(folder) if is_review_file(e.path)]


def pending(wh: Warehouse, min_age_s: float = 1.0, limit: int | None = None) -> list[Path]:
    """Entries waiting in the inbox, oldest first.

    Entries with a known suffix count; names starting with ``.`` (temp files being written) are ignored, and
    so are entries modified less than ``min_age_s`` ago (still being copied in). One that is not a regular
    file (a link, a FIFO, a folder named ``x.csv``) counts too, by its own ``lstat``: the pass moves it to
    ``failed/`` saying what it is (module doc).
    """
    dirs(wh)
    now = time.time()
    found = [(e.lstat.st_mtime, e.name, e.path) for e in _entries(wh.inbox)
             if now - e.lstat.st_mtime >= min_age_s]
    found.sort()
    paths = [p for _, _, p in found]
    return paths[:limit] if limit else paths


def claim(wh: Warehouse, path: str | os.PathLike) -> Claim | None:
    """Atomically move ``path`` into ``processing/``. Returns None if another run claimed it first."""
    d = dirs(wh)
    src = Path(path)
    dst = d[PROCESSING] / src.name
    if os.path.lexists(dst):  # a same-named entry is already being processed: wait for the next run
        return None
    try:
        os.rename(src, dst)       # a link is moved as itself
    except FileNotFoundError:
        return None
    os.utime(dst, follow_symlinks=False)  # the claim time, for recover_stale (a link's own time, not its target's)
    side = _move_sidecar(src, dst)
    try:
        with open_user_file(dst, within=wh.inbox) as fh:
            sha256, size = _hash(fh)
    except InputError as exc:     # a link, FIFO, folder...: never read; the pass moves it to failed/
        return Claim(name=src.name, path=dst, sha256="", size=0, sidecar=side, refused=str(exc))
    return Claim(name=src.name, path=dst, sha256=sha256, size=size, sidecar=side)


def _hash(fh, chunk: int = 1 << 20) -> tuple[str, int]:
    """(SHA-256, size) of an open file's bytes."""
    h, size = hashlib.sha256(), 0
    while block := fh.read(chunk):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def _move_sidecar(src: Path, dst: Path) -> Path | None:
    """Move ``src``'s sidecar (if any) next to ``dst``, renamed after it; its new path, or None."""
    try:
        os.rename(sidecar_of(src), sidecar_of(dst))
    except FileNotFoundError:
        return None
    return sidecar_of(dst)


def read_sidecar(path: Path, within: Path | None = None) -> dict[str, str]:
    """The column map in a sidecar: ``{"text": ..., "id": ..., "label": ...}`` (each optional), checked so a
    typo is an error naming the sidecar, not a silently ignored key. Read with ``open_user_file`` from
    ``within`` (default: the sidecar's own folder): a linked or special sidecar is refused, never followed."""
    try:
        data = json.loads(read_user_file(path, within=within or path.parent, limit=SIDECAR_MAX_BYTES)
                          .decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"column map sidecar is not valid JSON ({exc}); expected e.g. "
                         f'{{"text": "review", "id": "id"}}', path=str(path)) from None
    if not isinstance(data, dict):
        raise InputError(f"column map sidecar must hold a JSON object such as {{\"text\": \"review\"}}, "
                         f"not {type(data).__name__}", path=str(path))
    unknown = [k for k in data if k not in SIDECAR_KEYS]
    if unknown:
        raise InputError(f"column map sidecar has unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(map(repr, SIDECAR_KEYS))}", path=str(path))
    bad = next((k for k, v in data.items() if not isinstance(v, str) or not v.strip()), None)
    if bad is not None:
        raise InputError(f"column map sidecar: {bad!r} must be a column name (a non-empty string), "
                         f"not {data[bad]!r}", path=str(path))
    return dict(data)


def ledger_entry(wh: Warehouse, sha256: str) -> dict | None:
    """What happened to this content before, or None if it was never processed."""
    p = dirs(wh)[LEDGER] / f"{sha256}.json"
    return read_json(p) if p.exists() else None


def ledger(wh: Warehouse) -> list[dict]:
    """Every processed file, oldest first."""
    entries = [read_json(p) for p in dirs(wh)[LEDGER].glob("*.json")]
    return sorted(entries, key=lambda e: e.get("processed_at", ""))


ROLE_KEYS = {"text": "text_col", "id": "id_col", "label": "label_col"}   # sidecar key -> ingest keyword
_OTHER_ROLES = {"review_id", "id", "label", "rating", "split", "group_id"}   # never guessed as the text


@dataclass(frozen=True)
class ColumnChoice:
    """Which columns of one file hold the text / id / label (``mapping``: ingest keywords) and why (``how``)."""

    mapping: dict[str, str]
    how: dict[str, str]

    def describe(self) -> str:
        """``text='review' (auto: common name 'review'); id='id' (sidecar a.csv.reviewflow.json)``."""
        return "; ".join(f"{role}={self.mapping[ROLE_KEYS[role]]!r} ({how})" for role, how in self.how.items())


def choose_columns(path: Path, given: dict[str, str | None], sidecar: Path | None = None, *,
                   within: Path | None = None) -> ColumnChoice:
    """The column map of one inbox file: the sidecar's entries win over ``given`` (the serve settings, role ->
    column); a text column nobody named is guessed (``guess_text_column``). Raises :class:`InputError` for a
    bad sidecar, a file or sidecar that is not a regular file reached from ``within`` (default: its own folder)
    without a link, or when no column can be told to hold the text."""
    within = within or path.parent
    chosen = {role: col for role, col in given.items() if col}
    how = {role: "serve setting" for role in chosen}
    if sidecar is not None:
        for role, col in read_sidecar(sidecar, within).items():
            chosen[role], how[role] = col, f"sidecar {sidecar.name}"
    if "text" not in chosen:
        sample = sample_strings(detect(path, within=within))
        if sample is None:     # unreadable: ingest will say where, with the default text column
            return ColumnChoice({ROLE_KEYS[r]: c for r, c in chosen.items()}, how)
        names, strings = sample
        guess = guess_text_column(names, strings, exclude=_OTHER_ROLES | set(chosen.values()))
        if guess.column is None:
            raise InputError(f"which column holds the review text? {guess.why}; the file has columns "
                             f"{', '.join(map(repr, names)) or '(none)'}. Name it in a sidecar "
                             f'{path.name}{SIDECAR} beside the file ({{"text": "<column>"}}) or for every file '
                             f"with `reviewflow serve --inbox-text-col <column>`", path=path.name)
        chosen["text"], how["text"] = guess.column, guess.why
    return ColumnChoice({ROLE_KEYS[r]: c for r, c in chosen.items()}, how)


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>.<n><suffix>`` if that is taken (never overwrite)."""
    target = folder / name
    if not any(os.path.lexists(folder / f"{name}{extra}") for extra in ("", ERROR, SIDECAR)):
        return target
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while os.path.lexists(folder / f"{stem}.{n}{suffix}"):
        n += 1
    return folder / f"{stem}.{n}{suffix}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def complete(wh: Warehouse, c: Claim, result: dict | None = None, duplicate_of: dict | None = None) -> Path:
    """Record the content in the ledger, then move the file to ``processed/``. Returns its new path."""
    d = dirs(wh)
    target = _free_name(d[PROCESSED], c.name)
    entry = {"name": c.name, "sha256": c.sha256, "size": c.size, "processed_at": _now(),
             "processed_path": str(target), "result": result or {}}
    if duplicate_of is not None:
        entry = {**entry, "duplicate_of": duplicate_of.get("processed_path")}
    else:
        write_json_atomic(d[LEDGER] / f"{c.sha256}.json", entry)
    os.rename(c.path, target)
    _move_sidecar(c.path, target)
    return target


def fail(wh: Warehouse, c: Claim, error: BaseException | str) -> Path:
    """Move the file to ``failed/`` and write ``<name>.error.txt`` beside it. Returns the file's new path."""
    d = dirs(wh)
    target = _free_name(d[FAILED], c.name)
    if isinstance(error, BaseException):
        detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        headline = f"{type(error).__name__}: {error}"
    else:
        detail, headline = "", str(error)
    sha256 = c.sha256 or "(not read)"
    text = (f"file:      {c.name}\nsha256:    {sha256}\nfailed_at: {_now()}\nerror:     {headline}\n\n"
            f"Fix the file and drop it into the inbox again (rows already ingested are skipped).\n\n{detail}")
    write_bytes_atomic(target.with_name(target.name + ERROR), text.encode())
    os.rename(c.path, target)
    _move_sidecar(c.path, target)
    return target


def recover_stale(wh: Warehouse, older_than_s: float = 3600.0) -> list[Path]:
    """Put files that a crashed run left in ``processing/`` for longer than ``older_than_s`` back in the inbox."""
    d = dirs(wh)
    now, moved = time.time(), []
    for e in _entries(d[PROCESSING]):          # lstat: a refused link or FIFO goes back as itself, to fail again
        if now - e.lstat.st_mtime >= older_than_s:
            target = _free_name(d["inbox"], e.name)
            os.rename(e.path, target)
            _move_sidecar(e.path, target)
            moved.append(target)
    return moved


def status(wh: Warehouse) -> dict:
    """Counts per folder (for logs and the CLI)."""
    d = dirs(wh)
    count = lambda p: len(_entries(p))  # noqa: E731
    return {"waiting": len(pending(wh, min_age_s=0)), "processing": count(d[PROCESSING]),
            "processed": count(d[PROCESSED]), "failed": count(d[FAILED]),
            "ledger": sum(1 for _ in d[LEDGER].glob("*.json"))}


@dataclass(frozen=True)
class FileInfo:
    """One file as ``reviewflow inbox status`` shows it."""

    folder: str        # waiting / processing / processed / failed
    name: str
    size: int
    age_s: float       # since it was last modified (dropped, claimed, or moved on)
    reason: str = ""   # failed: the error line of <name>.error.txt
    sidecar: bool = False


def _reason(path: Path) -> str:
    """The ``error:`` line of a failed file's ``.error.txt`` (what ``fail`` wrote)."""
    err = path.with_name(path.name + ERROR)
    if not os.path.lexists(err):
        return "(no .error.txt beside it)"
    try:
        text = read_user_file(err, limit=1 << 20).decode("utf-8", errors="replace")
    except InputError:
        return "(the .error.txt beside it is not a regular file)"
    for line in text.splitlines():
        if line.startswith("error:"):
            return line.split(":", 1)[1].strip()
    return "(no error line in .error.txt)"


def listing(wh: Warehouse) -> list[FileInfo]:
    """Every file in the inbox and its folders (not the ledger), oldest first within each folder."""
    d, now, out = dirs(wh), time.time(), []
    for label, folder in (("waiting", d["inbox"]), (PROCESSING, d[PROCESSING]), (PROCESSED, d[PROCESSED]),
                          (FAILED, d[FAILED])):
        rows = []
        for e in _entries(folder):      # lstat: a refused link shows as itself, with its size
            st, p = e.lstat, e.path
            rows.append((st.st_mtime, FileInfo(label, p.name, st.st_size, max(0.0, now - st.st_mtime),
                                               _reason(p) if label == FAILED else "",
                                               os.path.lexists(sidecar_of(p)))))
        out.extend(info for _, info in sorted(rows, key=lambda r: (r[0], r[1].name)))
    return out


def _failed_file(wh: Warehouse, name: str) -> Path:
    """``name`` (or a path) as a file in ``failed/``; anything else is refused."""
    failed = dirs(wh)[FAILED]
    given = Path(name)
    p = (given if given.is_absolute() or given.parent != Path(".") else failed / given).absolute()
    if p.parent.resolve() != failed.resolve() or not is_review_file(p):
        raise InputError(f"{name!r} is not a file in {failed}: retry takes the name of a failed review file "
                         f"(see `reviewflow inbox status`)")
    if os.path.lexists(p) and not stat.S_ISREG(os.lstat(p).st_mode):
        raise InputError(f"{p.name} is a {describe(p, os.lstat(p))}, not a file: the inbox refused it and would "
                         f"refuse it again; drop a copy of the data into the inbox instead", path=str(p))
    if not p.is_file():
        raise NotFoundError(f"no failed file {p.name!r} in {failed}; failed files: "
                            f"{', '.join(f.name for f in listing(wh) if f.folder == FAILED) or 'none'}")
    return p


def retry(wh: Warehouse, name: str) -> Path:
    """Move a failed file (and its sidecar) back into the inbox for the next pass; its ``.error.txt`` goes to
    ``failed/.retried/``. The move never overwrites: a file of the same name waiting or being processed is
    refused. Returns the file's path in the inbox."""
    src = _failed_file(wh, name)
    d = dirs(wh)
    dst = d["inbox"] / src.name
    if (d[PROCESSING] / src.name).exists():
        raise InputError(f"a file named {src.name!r} is being processed now; retry when that pass is done")
    try:
        os.link(src, dst)                 # atomic, and fails if dst exists: never overwrites a waiting file
    except FileExistsError:
        raise InputError(f"{dst} already exists (a newer file of the same name is waiting); retry refused so "
                         f"it is not overwritten") from None
    os.unlink(src)
    _move_sidecar(src, dst)
    err = src.with_name(src.name + ERROR)
    if err.exists():
        kept = d[FAILED] / RETRIED / f"{src.name}.{time.strftime('%Y%m%dT%H%M%S')}{ERROR}"
        kept.parent.mkdir(exist_ok=True)
        os.rename(err, kept)
    return dst


def new_complete_files(wh: Warehouse, seen: dict[str, tuple[int, int]],
                       min_age_s: float = 2.0) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """(names a pass would take now that are not in ``seen``, what to pass as ``seen`` next time).

    A file counts once it is complete: a review file, not hidden, unchanged for ``min_age_s`` (the
    :func:`pending` rule). ``seen`` maps names to (size, mtime in ns); a file that changes or comes
    back (``retry``) is new again. One listing and one ``stat`` per file: cheap every few seconds."""
    now: dict[str, tuple[int, int]] = {}
    for p in pending(wh, min_age_s=min_age_s):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        now[p.name] = (st.st_size, st.st_mtime_ns)
    return sorted(n for n, sig in now.items() if seen.get(n) != sig), now


__all__ = ["Claim", "ColumnChoice", "FileInfo", "SUFFIXES", "SIDECAR", "dirs", "pending", "claim", "ledger_entry",
           "ledger", "complete", "fail", "recover_stale", "status", "choose_columns", "read_sidecar", "sidecar_of",
           "listing", "retry", "new_complete_files"]
