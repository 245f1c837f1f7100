"""Which version a name means: the serving champion (``models/champion``), the champion of each dataset
(``models/champions/<dataset>.json``), aliases (:mod:`pipeline.registry.aliases`), and the moves of those
pointers. Each pointer is a small JSON file written atomically."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import IntegrityError, NotFoundError
from pipeline.core.storage import read_json, write_json_atomic
from pipeline.registry import aliases
from pipeline.registry.store import ModelVersion, open_version

CHAMPION = "champion"          # the serving champion: what `champion` means for score / predict / sql
CHAMPIONS = "champions"        # champions/<dataset>.json: the champion of each dataset


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
    try:
        return get(wh, version).config.get("dataset")
    except NotFoundError:
        return None


def get(wh: Warehouse, version: str = CHAMPION) -> ModelVersion:
    """A version by name, alias (:mod:`pipeline.registry.aliases`) or the champion; ``NotFoundError`` says what
    exists."""
    name = champion(wh) if version == CHAMPION else (aliases.resolve(wh, version) or version)
    if name is None:
        raise NotFoundError("no champion model yet; train one with `reviewflow train --dataset NAME`")
    return open_version(wh, name)


def set_champion(wh: Warehouse, version: str, *, serving: bool = True, reason: str = "") -> None:
    """Point ``version``'s dataset champion (and, if ``serving``, the serving champion) at ``version``."""
    mv = get(wh, version)
    pointer = {"version": mv.version, "dataset": mv.config.get("dataset"), "val_accuracy": mv.val_accuracy,
               "reason": reason, "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if mv.config.get("dataset"):
        write_json_atomic(wh.models / CHAMPIONS / f"{validate_name(mv.config['dataset'], 'dataset name')}.json",
                          pointer)
    if serving:
        write_json_atomic(wh.models / CHAMPION, pointer)

