"""Which version a name means: the serving champion (``models/champion``), the champion of each dataset
(``models/champions/<dataset>.json``), aliases (``models/aliases/<name>.json``, :mod:`pipeline.registry.aliases`),
and the one way any of them moves.

Each pointer is a small JSON file written atomically by :func:`move_pointer` and nothing else: it takes the
pointer lock (the one promotion decides under, so a decision and its move are one step), checks the version the
pointer will name with :func:`pipeline.registry.verify.verify_version` inside that lock (a version verified
cannot be swapped before the move by a cooperating writer) and only then writes. A pointer never names a
version that does not verify."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import IntegrityError, NotFoundError, TemporaryFailure
from pipeline.core.storage import read_json, write_json_atomic
from pipeline.registry.store import ModelVersion, open_version
from pipeline.registry.verify import verify_version

CHAMPION = "champion"          # the serving champion: what `champion` means for score / predict / sql
CHAMPIONS = "champions"        # champions/<dataset>.json: the champion of each dataset
ALIASES = "aliases"            # aliases/<name>.json
LOCK_FILE = ".promotion.lock"
LOCK_TIMEOUT = 300.0           # seconds to wait for another promotion decision or pointer move


@contextlib.contextmanager
def pointer_lock(wh: Warehouse, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Held around every pointer move and promotion decision. Re-entrant in one thread (a promotion holds it and
    moves the pointer under it); other threads and processes wait, at most ``timeout`` s (then exit 75)."""
    wh.models.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(wh.models / LOCK_FILE), is_singleton=True)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise TemporaryFailure(f"another promotion or pointer move held {wh.models / LOCK_FILE} for {timeout:.0f} "
                               "s; retry") from None
    try:
        yield
    finally:
        lock.release()


def _place(wh: Warehouse, path: Path) -> Path:
    """``path`` if it is a pointer's place (champion, champions/<x>.json, aliases/<x>.json) in a real folder."""
    where = path.parent
    ok = (path == wh.models / CHAMPION or (where in (wh.models / CHAMPIONS, wh.models / ALIASES)
                                            and path.suffix == ".json"))
    if not ok or where.is_symlink() or (where.exists() and not where.is_dir()):
        raise IntegrityError(f"{path} is not a pointer place of {wh.models} (or its folder is a link); "
                             "no pointer was moved")
    return path


def move_pointer(wh: Warehouse, version: str | None,
                 records: Callable[[ModelVersion | None], dict[Path, dict]]) -> ModelVersion | None:
    """The one writer of pointers. Under :func:`pointer_lock`: verify ``version`` (None: an alias tombstone, which
    names nothing), then write each ``{path: record}`` that ``records(verified version)`` returns, atomically.
    Every record must name exactly the verified version. -> the verified version."""
    with pointer_lock(wh):
        mv = verify_version(wh, version) if version is not None else None
        writes = records(mv)
        for path, record in writes.items():
            if record.get("version") != version:
                raise IntegrityError(f"pointer {path} would name {record.get('version')!r}, not the verified "
                                     f"{version!r}; no pointer was moved")
            _place(wh, path)
        for path, record in writes.items():
            write_json_atomic(path, record)
        return mv


def set_champion(wh: Warehouse, version: str, *, serving: bool = True, reason: str = "") -> ModelVersion:
    """Point ``version``'s dataset champion (and, if ``serving``, the serving champion) at ``version`` (a version
    name: resolve aliases first with :func:`pipeline.registry.get`), after verifying it."""
    def records(mv: ModelVersion | None) -> dict[Path, dict]:
        pointer = {"version": mv.version, "dataset": mv.config.get("dataset"), "val_accuracy": mv.val_accuracy,
                   "reason": reason, "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        out = {wh.models / CHAMPIONS / f"{mv.config['dataset']}.json": pointer} if mv.config.get("dataset") else {}
        return out | ({wh.models / CHAMPION: pointer} if serving else {})

    return move_pointer(wh, version, records)


def _read_pointer(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        ptr = read_json(path)
        validate_name(ptr["version"], "model version")
        return ptr
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"champion pointer {path} is damaged ({type(exc).__name__}); set it again with "
                             f"`reviewflow models promote VERSION`") from None


def champion(wh: Warehouse, dataset: str | None = None) -> str | None:
    """The serving champion (what ``champion`` means for score/predict/sql), or the champion of ``dataset``."""
    if dataset is None:
        ptr = _read_pointer(wh.models / CHAMPION)
    else:
        ptr = _read_pointer(wh.models / CHAMPIONS / f"{validate_name(dataset, 'dataset name')}.json")
        if ptr is None:   # warehouses from before per-dataset champions: the serving one, if it is of this dataset
            serving = _read_pointer(wh.models / CHAMPION)
            if serving is not None and dataset_of(wh, serving["version"]) == dataset:
                ptr = serving
    return ptr["version"] if ptr else None


def champions(wh: Warehouse) -> dict[str, str]:
    """``{dataset: version}`` of every per-dataset champion."""
    out = {}
    if (wh.models / CHAMPIONS).is_dir():
        for p in sorted((wh.models / CHAMPIONS).glob("*.json")):
            out[p.stem] = _read_pointer(p)["version"]
    serving = champion(wh)
    if serving is not None:
        out.setdefault(dataset_of(wh, serving) or "?", serving)
    return out


def dataset_of(wh: Warehouse, version: str) -> str | None:
    """The dataset version ``version`` (a version name) was trained on; None if unknown or not registered."""
    try:
        return open_version(wh, version).config.get("dataset")
    except NotFoundError:
        return None
