"""The model registry: immutable versions (:mod:`~pipeline.registry.store`), the pointers that name them
(:mod:`~pipeline.registry.pointers`: champions, aliases) and their model cards (:mod:`~pipeline.registry.card`).

Callers use ``from pipeline import registry`` and ``registry.get(wh, "champion")``."""

from pipeline.registry.card import model_card
from pipeline.registry.pointers import CHAMPION, CHAMPIONS, champion, champions, dataset_of, get, set_champion
from pipeline.registry.store import (CHECKED_FILES, EVAL_SET, ModelVersion, eval_set_fingerprint, list_versions,
                                     open_version, publish, read_version, reserve_version, verify_files)

__all__ = ["CHAMPION", "CHAMPIONS", "CHECKED_FILES", "EVAL_SET", "ModelVersion", "champion", "champions",
           "dataset_of", "eval_set_fingerprint", "get", "list_versions", "model_card", "open_version", "publish",
           "read_version", "reserve_version", "set_champion", "verify_files"]
