"""Named aliases for model versions: ``challenger``, ``candidate``, ``last-good``, any name you choose.

``champion`` is the alias every command uses by default; it keeps its own pointer and rules
(:mod:`pipeline.train.promotion`): setting it is a promotion. Every other alias is one small JSON file,
``models/aliases/<name>.json`` (``{"alias", "version", "set_at", "reason"}``), moved by
:func:`pipeline.registry.pointers.move_pointer` (verified target, atomic write, under the pointer lock), and each
change is appended to ``models/aliases.jsonl`` under the same lock. Wherever a version is asked for (``--model``,
``--shadow``, ``models compare``) an alias works: :func:`pipeline.registry.get` resolves it.

An alias name is a file name and a word people type: 1-64 ASCII letters, digits, ``_ - .`` starting with a letter or
digit (:func:`check_alias_name`): no whitespace or control characters anywhere (a trailing newline included), no
path separators, no non-ASCII letters (``ä`` as one code point or as ``a`` + a combining mark would be two files
that look alike), not a reserved name (``champion``, ``champions``, ``aliases``, in any case) and not a version-like
name (``v0001-...``), so a name always means one thing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError, NotFoundError
from pipeline.core.storage import read_json
from pipeline.registry.pointers import ALIASES, CHAMPION, CHAMPIONS, move_pointer, pointer_lock

_ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_VERSION_LIKE = re.compile(r"^v\d{4,}(-|\Z)", re.IGNORECASE)
RESERVED = frozenset({CHAMPION, CHAMPIONS, ALIASES})
LOG = "aliases.jsonl"


def alias_dir(wh: Warehouse) -> Path:
    return wh.models / ALIASES


def check_alias_name(name: str) -> str:
    """``name`` if it may name an alias (module doc), else ``InputError`` saying why."""
    if not isinstance(name, str) or not _ALIAS_RE.fullmatch(name) or ".." in name:
        raise InputError(f"invalid alias {name!r}: use 1-64 ASCII letters, digits, '_', '-', '.', starting with a "
                         f"letter or digit (no spaces, control characters, '/' or '..')")
    validate_name(name, "alias")
    if name.lower() in RESERVED:
        raise InputError(f"alias {name!r} is reserved: 'champion' is set by promotion "
                         f"(reviewflow models promote VERSION); pick another name")
    if _VERSION_LIKE.match(name):
        raise InputError(f"alias {name!r} looks like a model version (v0001-...): pick a name that does not")
    return name


def resolve(wh: Warehouse, name: str) -> str | None:
    """The version alias ``name`` points at, or None when ``name`` is not an alias (``champion`` excluded)."""
    try:
        check_alias_name(name)
    except InputError:
        return None
    path = alias_dir(wh) / f"{name}.json"
    if not path.is_file():
        return None
    record = read_json(path)
    if isinstance(record, dict) and record.get("removed"):
        return None
    version = record.get("version") if isinstance(record, dict) else None
    if not isinstance(version, str):
        raise NotFoundError(f"alias file {path} is damaged (no version in it); set the alias again")
    return version


def set_alias(wh: Warehouse, name: str, version: str, reason: str = "") -> dict:
    """Point alias ``name`` at ``version`` (a registered version: resolve names first with
    :func:`pipeline.registry.get`), once the version verifies. ``champion`` is refused here: promote instead."""
    if name == CHAMPION:
        raise InputError("'champion' is set by promotion: reviewflow models promote VERSION")
    check_alias_name(name)
    validate_name(version, "model version")
    record = {"alias": name, "version": version, "reason": reason, "set_at": _now()}
    with pointer_lock(wh):
        move_pointer(wh, version, lambda mv: {alias_dir(wh) / f"{name}.json": record})
        _log(wh, record | {"action": "set"})
    return record


def remove_alias(wh: Warehouse, name: str) -> None:
    """Replace alias ``name`` by a tombstone: a warehouse on an object store is pushed, never deleted from, so a
    deleted file would come back with the next pull (:mod:`pipeline.core.objectstore`)."""
    check_alias_name(name)
    record = {"alias": name, "version": None, "removed": True, "set_at": _now()}
    with pointer_lock(wh):
        if resolve(wh, name) is None:
            raise NotFoundError(f"no alias {name!r} (known: {', '.join(sorted(list_aliases(wh))) or 'none'})")
        move_pointer(wh, None, lambda _: {alias_dir(wh) / f"{name}.json": record})
        _log(wh, record | {"action": "removed"})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def list_aliases(wh: Warehouse) -> dict[str, str]:
    """alias -> version (``champion`` is not among them: :func:`pipeline.registry.champion`)."""
    return {p.stem: v for p in sorted(alias_dir(wh).glob("*.json")) if (v := resolve(wh, p.stem)) is not None}


def _log(wh: Warehouse, record: dict) -> None:
    wh.models.mkdir(parents=True, exist_ok=True)
    with open(wh.models / LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
