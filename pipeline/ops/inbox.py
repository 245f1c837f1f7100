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

:func:`new_complete_files` is what ``reviewflow serve``'s watcher asks every few seconds: is there a file a
pass would take that it has not seen yet? Only then does it start a run (no run for an empty inbox).

No Prefect here: ``flows/inbox.py`` wraps these functions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError, NotFoundError
from pipeline.core.storage import read_json, sha256_file, write_bytes_atomic, write_json_atomic
from pipeline.ingest.columns import guess_text_column
from pipeline.ingest.detect import detect, sample_strings

SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")
PROCESSING, PROCESSED, FAILED, LEDGER = "processing", "processed", "failed", ".ledger"
SIDECAR, ERROR = ".reviewflow.json", ".error.txt"   # what may sit beside a file: its column map, why it failed
SIDECAR_KEYS = ("text", "id", "label")
RETRIED = ".retried"                                 # failed/.retried/: error texts of files sent back


@dataclass(frozen=True)
class Claim:
    """A file this process owns: it sits in ``inbox/processing/`` until :func:`complete`/:func:`fail`."""

    name: str          # the name it was dropped with
    path: Path         # where it is now (inside processing/)
    sha256: str
    size: int
    sidecar: Path | None = None   # its column-map sidecar, moved along (inside processing/)


def dirs(wh: Warehouse) -> dict[str, Path]:
    """Create (if needed) and return the inbox folders."""
    out = {"inbox": wh.inbox}
    for sub in (PROCESSING, PROCESSED, FAILED, LEDGER):
        out[sub] = wh.inbox / sub
    for p in out.values():
        p.mkdir(parents=True, exist_ok=True)
    return out


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def is_review_file(p: Path) -> bool:
    """A file a pass takes: known suffix, not hidden (being written), not a sidecar or an error text."""
    name = p.name
    return (not name.startswith(".") and p.suffix.lower() in SUFFIXES and not name.endswith(SIDECAR)
            and not name.endswith(ERROR))


def pending(wh: Warehouse, min_age_s: float = 1.0, limit: int | None = None) -> list[Path]:
    """Files waiting in the inbox, oldest first.

    Only regular files with a known suffix count; names starting with ``.`` (temp files being written)
    are ignored, and so are files modified less than ``min_age_s`` ago (still being copied in).
    """
    dirs(wh)
    now = time.time()
    found = []
    for p in wh.inbox.iterdir():
        if not is_review_file(p) or not p.is_file():
            continue
        try:
            st = p.stat()
        except FileNotFoundError:  # claimed by someone else meanwhile
            continue
        if now - st.st_mtime >= min_age_s:
            found.append((st.st_mtime, p.name, p))
    found.sort()
    paths = [p for _, _, p in found]
    return paths[:limit] if limit else paths


def claim(wh: Warehouse, path: str | os.PathLike) -> Claim | None:
    """Atomically move ``path`` into ``processing/``. Returns None if another run claimed it first."""
    d = dirs(wh)
    src = Path(path)
    dst = d[PROCESSING] / src.name
    if dst.exists():  # a same-named file is already being processed: wait for the next run
        return None
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return None
    os.utime(dst)  # the claim time, for recover_stale
    side = _move_sidecar(src, dst)
    return Claim(name=src.name, path=dst, sha256=sha256_file(dst), size=dst.stat().st_size, sidecar=side)


def _move_sidecar(src: Path, dst: Path) -> Path | None:
    """Move ``src``'s sidecar (if any) next to ``dst``, renamed after it; its new path, or None."""
    try:
        os.rename(sidecar_of(src), sidecar_of(dst))
    except FileNotFoundError:
        return None
    return sidecar_of(dst)


def read_sidecar(path: Path) -> dict[str, str]:
    """The column map in a sidecar: ``{"text": ..., "id": ..., "label": ...}`` (each optional), checked so a
    typo is an error naming the sidecar, not a silently ignored key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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


def choose_columns(path: Path, given: dict[str, str | None], sidecar: Path | None = None) -> ColumnChoice:
    """The column map of one inbox file: the sidecar's entries win over ``given`` (the serve settings, role ->
    column); a text column nobody named is guessed (``guess_text_column``). Raises :class:`InputError` for a
    bad sidecar or when no column can be told to hold the text."""
    chosen = {role: col for role, col in given.items() if col}
    how = {role: "serve setting" for role in chosen}
    if sidecar is not None:
        for role, col in read_sidecar(sidecar).items():
            chosen[role], how[role] = col, f"sidecar {sidecar.name}"
    if "text" not in chosen:
        sample = sample_strings(detect(path))
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
    if not any((folder / f"{name}{extra}").exists() for extra in ("", ERROR, SIDECAR)):
        return target
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while (folder / f"{stem}.{n}{suffix}").exists():
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
    text = (f"file:      {c.name}\nsha256:    {c.sha256}\nfailed_at: {_now()}\nerror:     {headline}\n\n"
            f"Fix the file and drop it into the inbox again (rows already ingested are skipped).\n\n{detail}")
    write_bytes_atomic(target.with_name(target.name + ERROR), text.encode())
    os.rename(c.path, target)
    _move_sidecar(c.path, target)
    return target


def recover_stale(wh: Warehouse, older_than_s: float = 3600.0) -> list[Path]:
    """Put files that a crashed run left in ``processing/`` for longer than ``older_than_s`` back in the inbox."""
    d = dirs(wh)
    now, moved = time.time(), []
    for p in sorted(d[PROCESSING].iterdir()):
        if p.is_file() and not p.name.endswith(SIDECAR) and now - p.stat().st_mtime >= older_than_s:
            target = _free_name(d["inbox"], p.name)
            os.rename(p, target)
            _move_sidecar(p, target)
            moved.append(target)
    return moved


def status(wh: Warehouse) -> dict:
    """Counts per folder (for logs and the CLI)."""
    d = dirs(wh)
    count = lambda p: sum(1 for f in p.iterdir() if is_review_file(f) and f.is_file())  # noqa: E731
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
    if not err.exists():
        return "(no .error.txt beside it)"
    for line in err.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("error:"):
            return line.split(":", 1)[1].strip()
    return "(no error line in .error.txt)"


def listing(wh: Warehouse) -> list[FileInfo]:
    """Every file in the inbox and its folders (not the ledger), oldest first within each folder."""
    d, now, out = dirs(wh), time.time(), []
    for label, folder in (("waiting", d["inbox"]), (PROCESSING, d[PROCESSING]), (PROCESSED, d[PROCESSED]),
                          (FAILED, d[FAILED])):
        rows = []
        for p in folder.iterdir():
            try:
                st = p.stat()
            except FileNotFoundError:   # moved on meanwhile
                continue
            if is_review_file(p) and p.is_file():
                rows.append((st.st_mtime, FileInfo(label, p.name, st.st_size, max(0.0, now - st.st_mtime),
                                                   _reason(p) if label == FAILED else "", sidecar_of(p).exists())))
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
    if not p.is_file() or p.is_symlink():
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
            st = p.stat()
        except FileNotFoundError:
            continue
        now[p.name] = (st.st_size, st.st_mtime_ns)
    return sorted(n for n, sig in now.items() if seen.get(n) != sig), now


__all__ = ["Claim", "ColumnChoice", "FileInfo", "SUFFIXES", "SIDECAR", "dirs", "pending", "claim", "ledger_entry",
           "ledger", "complete", "fail", "recover_stale", "status", "choose_columns", "read_sidecar", "sidecar_of",
           "listing", "retry", "new_complete_files"]
