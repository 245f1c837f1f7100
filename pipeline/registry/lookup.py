"""What a name given by a user means: ``champion``, an alias, or a version (:func:`get`)."""

from __future__ import annotations

from pipeline.core.config import Warehouse
from pipeline.core.errors import NotFoundError
from pipeline.registry import aliases
from pipeline.registry.pointers import CHAMPION, champion
from pipeline.registry.store import ModelVersion, open_version


def get(wh: Warehouse, version: str = CHAMPION) -> ModelVersion:
    """A version by name, alias (:mod:`pipeline.registry.aliases`) or the champion; ``NotFoundError`` says what
    exists. Reading only: a pointer is moved onto a version after :func:`pipeline.registry.verify_version`."""
    name = champion(wh) if version == CHAMPION else (aliases.resolve(wh, version) or version)
    if name is None:
        raise NotFoundError("no champion model yet; train one with `reviewflow train --dataset NAME`")
    return open_version(wh, name)
