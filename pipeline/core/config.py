"""Where things live. One explicit object, built from a flag or ``REVIEWFLOW_WAREHOUSE`` (core/settings.py).

Layout (see warehouse/README.md)::

    <root>/lake/reviews/dataset=<name>/part-<hash>.parquet   ingested reviews
    <root>/shards/<prep-id>/                                   prepared tensor shards
    <root>/pretrained/<prep-id>-w2v-<digest>/                  pretrained word vectors
    <root>/models/<version>/                                   registered models (+ champion pointer)
    <root>/reviews.duckdb                                      scored review tables
    <root>/inbox/{processed,failed}/                           files dropped for scheduled ingest+score
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InputError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_name(name: str, what: str = "name") -> str:
    """Dataset names, model versions etc. become directory names: keep them boring."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:   # fullmatch: `$` lets "a\n" by
        raise InputError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '-', '.', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Warehouse:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> "Warehouse":
        """``root`` if given, else ``$REVIEWFLOW_WAREHOUSE``, else ``./warehouse`` (see core/settings.py)."""
        if root is None:
            # deferred: pydantic-settings costs ~0.25 s of imports, paid only when the environment is read
            from pipeline.core.settings import load

            root = load().warehouse
        return cls(Path(root).expanduser().resolve())

    @property
    def lake(self) -> Path:
        return self.root / "lake" / "reviews"

    def dataset_dir(self, name: str) -> Path:
        return self.lake / f"dataset={validate_name(name, 'dataset name')}"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def prep_dir(self, prep_id: str) -> Path:
        return self.shards / validate_name(prep_id, "prep id")

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def pretrained(self) -> Path:
        """Pretrained artifacts (word vectors), one content-addressed directory each."""
        return self.root / "pretrained"

    @property
    def duckdb_path(self) -> Path:
        return self.root / "reviews.duckdb"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def tmp(self) -> Path:
        """Scratch space on the same filesystem as the data, so renames are atomic."""
        return self.root / ".tmp"

    def ensure(self) -> "Warehouse":
        for p in (self.lake, self.shards, self.models, self.tmp):
            p.mkdir(parents=True, exist_ok=True)
        return self
