"""The one guard for paths a user names as outputs (``reviewflow export --to FILE``, ``score --scratch DIR``).

Everything under the warehouse's managed areas is reviewflow's own and changes only through its writers (one
rename per lake part, immutable model versions, DuckDB transactions). A user-named output path must never land
there: an export "to" a lake part file would replace it (or a new file in a dataset folder would join the lake),
one "to" ``models/<version>/eval_set.parquet`` would change a registered model. So before anything is written:

* the real path is worked out with every symlink followed (the target's folders, and a symlink target itself,
  dangling or not), and a target inside a managed area (:func:`managed_areas`) is refused;
* a target that is itself a symlink or not a regular file (a FIFO, a device), an existing folder, or one whose
  folder does not exist is refused too, each with one line saying what to do.

Refusals are :class:`~pipeline.core.errors.InputError` (exit 2). The guard returns the real path; callers write
there (not through the name they were given), so the checked path and the written path are the same.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from pipeline.core.config import Warehouse
from pipeline.core.errors import InputError

# top-level folders of a warehouse root that reviewflow manages (core/config.py, warehouse/README.md);
# ``scratch`` is the default scratch space of partitioned scoring, ``inbox`` is read by the scheduled ingest
MANAGED_DIRS = ("lake", "shards", "pretrained", "models", "inbox", "scratch", ".tmp")
MANAGED_ROOT_FILES = (".objectstore.json",)      # the object-store mirror's state (core/objectstore.py)


def managed_areas(warehouse: Warehouse | None, databases: Iterable[str | os.PathLike] = ()) -> list[tuple[Path, str]]:
    """(path, what it is) of every area a user-named output may not touch: the warehouse's managed folders and
    files, and each DuckDB file in ``databases`` (the warehouse's, and a ``--db`` elsewhere). A database stands
    for its whole family of files (``.wal``, the scorers' ``.score-*.lock``): see :func:`_inside`."""
    areas: list[tuple[Path, str]] = []
    if warehouse is not None:
        areas += [(warehouse.root / d, f"the warehouse's {d.lstrip('.')} folder") for d in MANAGED_DIRS]
        areas += [(warehouse.root / f, "the warehouse's object-store state") for f in MANAGED_ROOT_FILES]
        databases = [warehouse.duckdb_path, *databases]
    areas += [(Path(db), "the DuckDB database's files") for db in databases]
    return areas


def _spellings(path: Path) -> set[Path]:
    """``path`` as written (absolute, no ``..``) and with its symlinks resolved: a managed folder may itself be a
    symlink to another disk, and the target is compared against both."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def _db_family(name: str, db: str) -> bool:
    """Is ``name`` database file ``db`` or one of its siblings: ``<db>.wal`` (DuckDB's log), ``<db>.tmp``
    (DuckDB's spill folder), ``<db>.score-<hash>.lock`` (a scorer's claim, pipeline/score/claim.py)?"""
    rest = name[len(db) + 1:] if name.startswith(db + ".") else None
    return name == db or rest in ("wal", "tmp") or (rest is not None and rest.startswith("score-")
                                                     and rest.endswith(".lock"))


def _inside(real: Path, area: Path, what: str) -> bool:
    if what == "the DuckDB database's files":
        return real.parent == area.parent and _db_family(real.name, area.name) or area.with_name(
            area.name + ".tmp") in real.parents
    return real == area or area in real.parents


def refuse_if_managed(real: Path, given: str | os.PathLike, warehouse: Warehouse | None,
                      databases: Iterable[str | os.PathLike] = ()) -> None:
    """Raise InputError if ``real`` (a resolved path) lies in one of :func:`managed_areas`."""
    for area, what in managed_areas(warehouse, databases):
        for spelling in _spellings(area):
            if _inside(real, spelling, what):
                raise InputError(f"refusing to write {given}: it is in {what} ({spelling}), which only "
                                 f"reviewflow writes; name a path outside the warehouse's managed folders")


def guard_output_path(target: str | os.PathLike, warehouse: Warehouse | None, *,
                      databases: Iterable[str | os.PathLike] = ()) -> Path:
    """Check a user-named output FILE before anything is written; -> its real path (write there).

    Refused (InputError, exit 2): a path inside the warehouse's managed areas or a database in ``databases``
    (followed through every symlink), a target that is itself a symlink or a special file, an existing folder,
    a folder that does not exist."""
    given = Path(target).expanduser()
    real = Path(os.path.realpath(given))
    refuse_if_managed(real, target, warehouse, databases)
    try:
        st = os.lstat(given)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot use {target} as an output file: {exc.strerror}") from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise InputError(f"refusing to write {target}: it is a symbolic link (to {real}); name the real file")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InputError(f"{target} is a folder: name a file inside it, e.g. {Path(target) / 'out.parquet'}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InputError(f"refusing to write {target}: it is not a regular file (a pipe, socket or device)")
    if not real.parent.is_dir():
        raise InputError(f"cannot write {target}: the folder {real.parent} does not exist; create it first")
    return real


def guard_output_dir(target: str | os.PathLike, warehouse: Warehouse | None, *, allow: str | None = None) -> Path:
    """Check a user-named output FOLDER (``--scratch``) the same way; -> its real path. ``allow`` names the one
    managed folder it may be in (``"scratch"``: the default scratch space is the warehouse's own)."""
    real = Path(os.path.realpath(Path(target).expanduser()))
    if warehouse is not None and allow is not None:
        own = [Path(os.path.realpath(warehouse.root / allow)), Path(os.path.abspath(warehouse.root / allow))]
        if any(real == a or a in real.parents for a in own):
            return real
    refuse_if_managed(real, target, warehouse)
    if real.exists() and not real.is_dir():
        raise InputError(f"{target} is a file, not a folder: name a folder for the scratch files")
    return real
