"""Named aliases for model versions: ``challenger``, ``candidate``, ``last-good``, any name you choose.

``champion`` is the alias every command uses by default; it keeps its own pointer and rules
(:mod:`pipeline.train.promotion`): setting it is a promotion. Every other alias is one small JSON file,
``models/aliases/<name>.json`` (``{"alias", "version", "set_at", "reason"}``), written atomically, and each
change is appended to ``models/aliases.jsonl``. Wherever a version is asked for (``--model``, ``--shadow``,
``models compare``) an alias works: :func:`pipeline.registry.get` resolves it. An alias name must not
look like a version (``v0001-...``), so a name always means one thing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError, NotFoundError
from pipeline.core.storage import read_json, write_json_atomic

CHAMPION = "champion"
_VERSION_LIKE = re.compile(r"^v\d{4}-")
LOG = "aliases.jsonl"


def alias_dir(wh: Warehouse) -> Path:
    return wh.models / "aliases"


def check_alias_name(name: str) -> str:
    validate_name(name, "alias")
    if _VERSION_LIKE.match(name):
        raise InputError(f"alias {name!r} looks like a model version (v0001-...): pick a name that does not")
    return name


def resolve(wh: Warehouse, name: str) -> str | None:
    """The version alias ``name`` points at, or None when ``name`` is not an alias (``champion`` excluded)."""
    if name == CHAMPION or _VERSION_LIKE.match(name or ""):
        return None
    path = alias_dir(wh) / f"{name}.json"
    try:
        validate_name(name, "alias")
    except InputError:
        return None
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
    :func:`pipeline.registry.get`). ``champion`` is refused here: promote instead."""
    if name == CHAMPION:
        raise InputError("'champion' is set by promotion: reviewflow models promote VERSION")
    check_alias_name(name)
    validate_name(version, "model version")
    if not (wh.models / version / "config.json").is_file():
        raise NotFoundError(f"model version {version!r} not found in {wh.models}")
    record = {"alias": name, "version": version, "reason": reason,
              "set_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(alias_dir(wh) / f"{name}.json", record)
    _log(wh, record | {"action": "set"})
    return record


def remove_alias(wh: Warehouse, name: str) -> None:
    check_alias_name(name)
    if resolve(wh, name) is None:
        raise NotFoundError(f"no alias {name!r} (known: {', '.join(sorted(list_aliases(wh))) or 'none'})")
    record = {"alias": name, "version": None, "removed": True,
              "set_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    # a tombstone, not a deletion: a warehouse on an object store is pushed, never deleted from, so a
    # deleted file would come back with the next pull (pipeline.core.objectstore)
    write_json_atomic(alias_dir(wh) / f"{name}.json", record)
    _log(wh, record | {"action": "removed"})


def list_aliases(wh: Warehouse) -> dict[str, str]:
    """alias -> version (``champion`` is not among them: :func:`pipeline.registry.champion`)."""
    return {p.stem: v for p in sorted(alias_dir(wh).glob("*.json")) if (v := resolve(wh, p.stem)) is not None}


def _log(wh: Warehouse, record: dict) -> None:
    wh.models.mkdir(parents=True, exist_ok=True)
    with open(wh.models / LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
