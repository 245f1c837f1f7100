"""The inbox: files dropped into ``<wh>/inbox/`` for the scheduled *ingest-and-score* deployment.

Life of a file (every move is an ``os.rename`` inside one filesystem, so it is atomic)::

    inbox/reviews.csv                       dropped by a user (write elsewhere, then move it in)
      -> inbox/processing/reviews.csv       claimed by exactly one run (rename fails for the loser)
      -> inbox/processed/reviews.csv        ingested and scored
      -> inbox/failed/reviews.csv           something went wrong; ``reviews.csv.error.txt`` says what

Nothing is lost: a file is only ever renamed, never rewritten or deleted. Nothing is done twice:
a ledger keyed by the file's SHA-256 (``inbox/.ledger/<sha256>.json``, one small JSON file per
content, written atomically) records every file that was processed; a file whose content is already
in the ledger is moved to ``processed/`` without being ingested again. Files a crashed run left in
``processing/`` are put back into the inbox by :func:`recover_stale`.

No Prefect here: ``flows/inbox.py`` wraps these functions.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import Warehouse
from pipeline.core.storage import read_json, sha256_file, write_bytes_atomic, write_json_atomic

SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")
PROCESSING, PROCESSED, FAILED, LEDGER = "processing", "processed", "failed", ".ledger"


@dataclass(frozen=True)
class Claim:
    """A file this process owns: it sits in ``inbox/processing/`` until :func:`complete`/:func:`fail`."""

    name: str          # the name it was dropped with
    path: Path         # where it is now (inside processing/)
    sha256: str
    size: int


def dirs(wh: Warehouse) -> dict[str, Path]:
    """Create (if needed) and return the inbox folders."""
    out = {"inbox": wh.inbox}
    for sub in (PROCESSING, PROCESSED, FAILED, LEDGER):
        out[sub] = wh.inbox / sub
    for p in out.values():
        p.mkdir(parents=True, exist_ok=True)
    return out


def pending(wh: Warehouse, min_age_s: float = 1.0, limit: int | None = None) -> list[Path]:
    """Files waiting in the inbox, oldest first.

    Only regular files with a known suffix count; names starting with ``.`` (temp files being written)
    are ignored, and so are files modified less than ``min_age_s`` ago (still being copied in).
    """
    dirs(wh)
    now = time.time()
    found = []
    for p in wh.inbox.iterdir():
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in SUFFIXES:
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
    return Claim(name=src.name, path=dst, sha256=sha256_file(dst), size=dst.stat().st_size)


def ledger_entry(wh: Warehouse, sha256: str) -> dict | None:
    """What happened to this content before, or None if it was never processed."""
    p = dirs(wh)[LEDGER] / f"{sha256}.json"
    return read_json(p) if p.exists() else None


def ledger(wh: Warehouse) -> list[dict]:
    """Every processed file, oldest first."""
    entries = [read_json(p) for p in dirs(wh)[LEDGER].glob("*.json")]
    return sorted(entries, key=lambda e: e.get("processed_at", ""))


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>.<n><suffix>`` if that is taken (never overwrite)."""
    target = folder / name
    if not target.exists() and not (folder / f"{name}.error.txt").exists():
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
    write_bytes_atomic(target.with_name(target.name + ".error.txt"), text.encode())
    os.rename(c.path, target)
    return target


def recover_stale(wh: Warehouse, older_than_s: float = 3600.0) -> list[Path]:
    """Put files that a crashed run left in ``processing/`` for longer than ``older_than_s`` back in the inbox."""
    d = dirs(wh)
    now, moved = time.time(), []
    for p in sorted(d[PROCESSING].iterdir()):
        if p.is_file() and now - p.stat().st_mtime >= older_than_s:
            target = _free_name(d["inbox"], p.name)
            os.rename(p, target)
            moved.append(target)
    return moved


def status(wh: Warehouse) -> dict:
    """Counts per folder (for logs and the CLI)."""
    d = dirs(wh)
    count = lambda p, pat="*": sum(1 for f in p.glob(pat) if f.is_file() and not f.name.endswith(".error.txt"))  # noqa: E731
    return {"waiting": len(pending(wh, min_age_s=0)), "processing": count(d[PROCESSING]),
            "processed": count(d[PROCESSED]), "failed": count(d[FAILED]), "ledger": count(d[LEDGER], "*.json")}


__all__ = ["Claim", "SUFFIXES", "dirs", "pending", "claim", "ledger_entry", "ledger", "complete", "fail",
           "recover_stale", "status"]
